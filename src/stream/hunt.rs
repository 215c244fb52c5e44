//! `receive --failover` (#12): finding the server to stream from among the hosts of the connection string.
//!
//! A round connects to every host in turn (its name resolved again), taking any server, and looks at what
//! is there: IDENTIFY_SYSTEM (system, timeline), its role (`conn::connect::server_role`), then — when
//! `target_session_attrs` (read-write unless the connection string says otherwise) takes that role — where
//! streaming would start (`session::plan_start`: the archive held against the server's history; nothing
//! written, nothing created). A host is passed over when it cannot be reached, when `target_session_attrs`
//! does not take it, or when the archive refuses it: another database system, a timeline older than the
//! archive's newest, a history that does not contain the archive's position (an old primary restarted
//! without a rewind), a server that has not flushed what the archive holds.
//!
//! Of the hosts that qualify, the one on the newest timeline wins, the first listed among equals: an old
//! primary restarted without a rewind — read-write on its old timeline, perhaps listed first — never wins
//! over the promoted standby, even before the archive has seen the new timeline. With `prefer-standby`,
//! standbys are taken first, as libpq does.
//!
//! Every connection makes one log line: host, role, timeline and why it was passed over (the one chosen says
//! "connected to" in `session`). A host that fails the same way round after round is logged again once a
//! minute, not every round; `follow` starts a round at most every second while none qualifies.

use crate::conn::connect::{connect, passes, server_role, ServerRole};
use crate::conn::{ConnParams, Connection, TargetSessionAttrs};
use crate::stream::follow::ReceiveError;
use crate::stream::session::{identify, plan_start, Plan, SessionError};
use crate::stream::state::{set_phase, Phase, StateSender};
use crate::stream::ReceiveConfig;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A host failing the same way is logged again after this long.
const REPEAT_LOG: Duration = Duration::from_secs(60);

/// The hunt's memory between rounds: what was last said about each host, and when.
#[derive(Default)]
pub struct Hunt {
    said: HashMap<String, (String, Instant)>,
}

/// A host that answered: its role, timeline, and its plan or why it cannot be streamed from.
struct Answer {
    conn: Connection,
    role: ServerRole,
    timeline: u32,
    plan: Result<Plan, PassedOver>,
}

/// Why a host that answered cannot be streamed from.
enum PassedOver {
    /// `target_session_attrs` does not take its role (a standby under read-write: expected).
    Attrs(String),
    /// The archive refuses it (`failover::Refusal`).
    Refused(String),
}

impl Hunt {
    pub fn new() -> Hunt {
        Hunt::default()
    }

    /// One round over every host (module docs): the chosen server, connected and planned, or why none
    /// qualifies. An error retrying cannot fix (a file in the archive that does not belong) ends the hunt.
    pub async fn round(
        &mut self,
        cfg: &ReceiveConfig,
        state: &StateSender,
    ) -> Result<(Connection, Plan), ReceiveError> {
        let wanted = passes(cfg.conn.target_session_attrs);
        let mut answers: Vec<Answer> = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        for endpoint in &cfg.conn.endpoints {
            let label = format!("{}:{}", endpoint.host_for_display(), endpoint.port());
            set_phase(state, Phase::Connecting);
            state.send_modify(|s| s.server = Some(label.clone()));
            let params = ConnParams {
                endpoints: vec![endpoint.clone()],
                target_session_attrs: TargetSessionAttrs::Any,
                ..cfg.conn.clone()
            };
            let mut conn = match connect(&params, &cfg.connect).await {
                Ok(conn) => conn,
                Err(e) => {
                    let why = e.to_string();
                    self.say(&label, &why, tracing::Level::WARN);
                    reasons.push(why);
                    continue;
                }
            };
            match look(&mut conn, cfg, &wanted).await {
                Ok((role, timeline, plan)) => answers.push(Answer { conn, role, timeline, plan }),
                Err(e) if e.is_fatal() => {
                    conn.close().await;
                    for a in answers {
                        a.conn.close().await;
                    }
                    return Err(e.into());
                }
                Err(e) => {
                    let why = e.to_string();
                    self.say(conn.server(), &why, tracing::Level::WARN);
                    reasons.push(why);
                    conn.close().await;
                }
            }
        }
        let chosen = choose(answers.iter().map(|a| (a.role, a.timeline, a.plan.is_ok())), &wanted);
        let newest = chosen.map(|i| (answers[i].conn.server().to_string(), answers[i].timeline));
        let mut found = None;
        for (i, a) in answers.into_iter().enumerate() {
            if Some(i) == chosen {
                self.said.remove(a.conn.server());
                found = a.plan.ok().map(|plan| (a.conn, plan));
                continue;
            }
            let (why, level) = match (&a.plan, &newest) {
                (Err(PassedOver::Attrs(why)), _) => (why.clone(), tracing::Level::INFO),
                (Err(PassedOver::Refused(why)), _) => (why.clone(), tracing::Level::WARN),
                (Ok(_), Some((server, timeline))) if *timeline > a.timeline => {
                    (format!("{server} is on the newer timeline {timeline}"), tracing::Level::INFO)
                }
                (Ok(_), Some((server, _))) => (format!("{server} was chosen"), tracing::Level::INFO),
                (Ok(_), None) => ("not chosen".to_string(), tracing::Level::INFO),
            };
            let line = format!("{}, timeline {}: passed over: {why}", a.role.name(), a.timeline);
            self.say(a.conn.server(), &line, level);
            reasons.push(format!("{}: {line}", a.conn.server()));
            a.conn.close().await;
        }
        found.ok_or(ReceiveError::NoServer(reasons))
    }

    /// Log `what` about `host` unless it was said last time, less than [`REPEAT_LOG`] ago.
    fn say(&mut self, host: &str, what: &str, level: tracing::Level) {
        let now = Instant::now();
        if let Some((said, at)) = self.said.get(host) {
            if said == what && now.duration_since(*at) < REPEAT_LOG {
                return;
            }
        }
        self.said.insert(host.to_string(), (what.to_string(), now));
        // Connection errors name the host themselves.
        let line = if what.starts_with("connection to server") {
            what.to_string()
        } else {
            format!("{host}: {what}")
        };
        if level == tracing::Level::WARN {
            tracing::warn!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
}

/// Which host to stream from, of those that answered as (role, timeline, the archive can continue there):
/// in the first pass of `target_session_attrs` that takes any, the newest timeline, the first listed among
/// equals.
fn choose(
    answers: impl Iterator<Item = (ServerRole, u32, bool)> + Clone,
    wanted: &[TargetSessionAttrs],
) -> Option<usize> {
    wanted.iter().find_map(|&w| {
        let fit = answers.clone().enumerate().filter(|(_, (role, _, ok))| *ok && role.refusal(w).is_none());
        fit.max_by_key(|&(i, (_, timeline, _))| (timeline, std::cmp::Reverse(i))).map(|(i, _)| i)
    })
}

/// What a host is: its role and timeline, and its plan — or why it cannot be streamed from: no pass of
/// `target_session_attrs` takes its role, or the archive refuses it.
async fn look(
    conn: &mut Connection,
    cfg: &ReceiveConfig,
    wanted: &[TargetSessionAttrs],
) -> Result<(ServerRole, u32, Result<Plan, PassedOver>), SessionError> {
    conn.set_reply_timeout(cfg.receive_timeout);
    let info = identify(conn).await?;
    let role = server_role(conn).await?;
    let timeline = info.identity.timeline;
    if let Some(reason) = wanted.iter().map(|&w| role.refusal(w)).reduce(|a, b| a.and(b)).flatten() {
        let attrs = cfg.conn.target_session_attrs;
        let why = format!("{reason} (target_session_attrs={})", attrs.name());
        return Ok((role, timeline, Err(PassedOver::Attrs(why))));
    }
    match plan_start(conn, cfg, info, role).await {
        Ok(plan) => Ok((role, timeline, Ok(plan))),
        Err(SessionError::Refused { refusal, .. }) => {
            Ok((role, timeline, Err(PassedOver::Refused(refusal.to_string()))))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetSessionAttrs::*;

    const PRIMARY: ServerRole = ServerRole { in_recovery: Some(false), read_only: false };
    const STANDBY: ServerRole = ServerRole { in_recovery: Some(true), read_only: true };

    fn pick(answers: &[(ServerRole, u32, bool)], attrs: TargetSessionAttrs) -> Option<usize> {
        choose(answers.iter().copied(), &passes(attrs))
    }

    #[test]
    fn the_newest_timeline_that_qualifies_wins() {
        // The old primary restarted without a rewind, listed first, and the promoted standby.
        let after_failover = [(PRIMARY, 1, true), (PRIMARY, 2, true), (STANDBY, 2, true)];
        assert_eq!(pick(&after_failover, ReadWrite), Some(1));
        // Refused by the archive: passed over whatever its timeline.
        assert_eq!(pick(&[(PRIMARY, 1, true), (PRIMARY, 3, false)], ReadWrite), Some(0));
        // Among equals, the first listed.
        assert_eq!(pick(&[(STANDBY, 2, true), (PRIMARY, 2, true), (PRIMARY, 2, true)], ReadWrite), Some(1));
        assert_eq!(pick(&[(STANDBY, 2, true), (PRIMARY, 2, true)], Any), Some(0));
        // Nothing qualifies: standbys only, under read-write.
        assert_eq!(pick(&[(STANDBY, 1, true), (STANDBY, 1, true)], ReadWrite), None);
        assert_eq!(pick(&[], ReadWrite), None);
    }

    #[test]
    fn prefer_standby_takes_a_standby_first_then_anything() {
        assert_eq!(pick(&[(PRIMARY, 2, true), (STANDBY, 2, true)], PreferStandby), Some(1));
        assert_eq!(pick(&[(PRIMARY, 2, true), (STANDBY, 2, false)], PreferStandby), Some(0));
        assert_eq!(pick(&[(PRIMARY, 3, true), (STANDBY, 2, true)], Standby), Some(1));
    }
}
