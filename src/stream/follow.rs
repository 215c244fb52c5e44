//! The receive loop around sessions: connect, stream, and on failure reconnect with a bounded backoff
//! (unless `--no-loop`), stopping cleanly on SIGINT/SIGTERM or `--endpos`. Under `--failover` the server is
//! found by hunting among the hosts (`hunt`), a round at most every [`HUNT_INTERVAL`] while none qualifies
//! or after the server is lost — never the 1 to 30 s backoff, which stays for failures of the archive.

use crate::conn::{connect, Connection};
use crate::protocol::sqlstate;
use crate::stream::hunt::Hunt;
use crate::stream::session::{plan, run_planned, Plan, SessionError, Stopped};
use crate::stream::state::{set_phase, Phase, StateSender};
use crate::stream::ReceiveConfig;
use crate::wal::Lsn;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Give up when the server sends the same invalid WAL this many times in a row.
const MAX_SAME_VALIDATION_FAILURES: u32 = 3;

/// A session that lasted this long counts as healthy: the reconnect backoff starts over after it.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Under `--failover`, hunting rounds start at most this far apart.
pub const HUNT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Connect(#[from] crate::conn::ConnectError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(
        "the server sent the same invalid WAL at {lsn} {count} times in a row; stopping. Last error: {last}. \
         Nothing at or after {lsn} was acknowledged or renamed complete. Check the server's own copy \
         (pg_waldump on its pg_wal) and the network path; to archive the stream as sent anyway, use --no-validate"
    )]
    PersistentInvalidWal { lsn: Lsn, count: u32, last: SessionError },
    /// `--failover`: no host qualifies; why, host by host.
    #[error("no server to stream from: {}", .0.join("; "))]
    NoServer(Vec<String>),
}

impl ReceiveError {
    /// Under `--failover`, failures that mean "the server is gone or not there yet": hunt again at once
    /// (within [`HUNT_INTERVAL`]) rather than back off.
    fn ends_in_hunting(&self) -> bool {
        match self {
            ReceiveError::NoServer(_) | ReceiveError::Connect(_) => true,
            // A server that answered with an error (a slot in use, say) would say the same a second later,
            // unless it is going away.
            ReceiveError::Session(SessionError::Conn(c)) => {
                c.server_error().is_none_or(|se| se.code.starts_with(sqlstate::CLASS_OPERATOR_INTERVENTION))
            }
            ReceiveError::Session(e) => matches!(
                e,
                SessionError::ServerEnded { .. }
                    | SessionError::ReceiveTimeout { .. }
                    | SessionError::Refused { .. }
            ),
            ReceiveError::PersistentInvalidWal { .. } => false,
        }
    }
}

/// Run `walkeeper receive` until it stops: Ok on endpos or signal, Err on a failure with `--no-loop`
/// or on one that retrying cannot fix. What happens is published on `state` (see `stream::state`).
pub async fn receive(
    cfg: &ReceiveConfig,
    shutdown: watch::Receiver<bool>,
    state: &StateSender,
) -> Result<Stopped, ReceiveError> {
    let result = receive_loop(cfg, shutdown, state).await;
    if let Err(e) = &result {
        state.send_modify(|s| s.last_error = Some(e.to_string()));
    }
    set_phase(state, Phase::Stopped);
    result
}

/// The server to stream from, connected and planned: a hunting round under `--failover`, else libpq's first
/// suitable host.
async fn open(
    cfg: &ReceiveConfig,
    hunt: &mut Hunt,
    state: &StateSender,
) -> Result<(Connection, Plan), ReceiveError> {
    if cfg.failover {
        return hunt.round(cfg, state).await;
    }
    let mut conn = connect(&cfg.conn, &cfg.connect).await?;
    set_phase(state, Phase::Connecting);
    state.send_modify(|s| s.server = Some(conn.server().to_string()));
    match plan(&mut conn, cfg).await {
        Ok(plan) => Ok((conn, plan)),
        Err(e) => {
            conn.close().await;
            Err(e.into())
        }
    }
}

async fn receive_loop(
    cfg: &ReceiveConfig,
    mut shutdown: watch::Receiver<bool>,
    state: &StateSender,
) -> Result<Stopped, ReceiveError> {
    let mut failures = 0u32;
    let mut validation_failures: Option<(Lsn, u32)> = None;
    let mut hunt = Hunt::new();
    // Under --failover: whether the last round found no server (its lines are already logged).
    let mut hunting = false;
    loop {
        let round = Instant::now();
        let opened = tokio::select! {
            opened = open(cfg, &mut hunt, state) => opened,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(Stopped::Signal),
        };
        let error: ReceiveError = match opened {
            Err(ReceiveError::Session(e)) if e.is_fatal() => return Err(e.into()),
            Err(e) => e,
            Ok((mut conn, plan)) => {
                hunting = false;
                let started = Instant::now();
                let result =
                    run_planned(&mut conn, cfg, plan, &mut shutdown, &mut validation_failures, state).await;
                conn.close().await;
                match result {
                    Ok(stopped) => return Ok(stopped),
                    Err(e) if e.is_fatal() => return Err(e.into()),
                    Err(e) => {
                        if let Some((lsn, count)) = validation_failures {
                            if count >= MAX_SAME_VALIDATION_FAILURES {
                                return Err(ReceiveError::PersistentInvalidWal { lsn, count, last: e });
                            }
                        }
                        if started.elapsed() >= HEALTHY_SESSION {
                            failures = 0;
                        }
                        e.into()
                    }
                }
            }
        };
        if cfg.no_loop {
            return Err(error);
        }
        state.send_modify(|s| {
            s.last_error = Some(error.to_string());
            s.reconnects += 1;
            if matches!(error, ReceiveError::Session(SessionError::InvalidWal { .. })) {
                s.invalid_wal += 1;
            }
        });
        set_phase(state, Phase::Retrying);
        let wait = if cfg.failover && error.ends_in_hunting() {
            match &error {
                // The hunt has said host by host why none qualifies.
                ReceiveError::NoServer(_) if hunting => {}
                ReceiveError::NoServer(_) => tracing::info!(
                    "no server to stream from yet; looking among the {} hosts every {} second (--failover)",
                    cfg.conn.endpoints.len(),
                    HUNT_INTERVAL.as_secs()
                ),
                ReceiveError::Session(SessionError::ServerEnded { server }) => {
                    tracing::info!("{server}: server ended streaming; looking for the server to stream from")
                }
                other => tracing::error!("{other}"),
            }
            hunting = true;
            HUNT_INTERVAL.saturating_sub(round.elapsed())
        } else {
            let wait = backoff(failures);
            failures = failures.saturating_add(1);
            match &error {
                // A planned shutdown or switchover of the server: expected, not an error.
                ReceiveError::Session(SessionError::ServerEnded { server }) => {
                    tracing::info!("{server}: server ended streaming; reconnecting")
                }
                other => tracing::error!("{other}"),
            }
            tracing::info!("disconnected; waiting {} seconds to try again", wait.as_secs());
            wait
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(Stopped::Signal),
        }
        if *shutdown.borrow() {
            return Ok(Stopped::Signal);
        }
    }
}

/// How long to wait before reconnecting after `attempt` consecutive failures: 1 s doubling to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunting_follows_a_lost_server_not_a_server_that_says_no() {
        let conn = |e: crate::conn::ConnError| ReceiveError::Session(SessionError::from(e));
        let server_error = |code: &str| {
            let error = crate::protocol::messages::ServerError {
                severity: "FATAL".into(),
                code: code.into(),
                message: "x".into(),
                detail: None,
                hint: None,
            };
            conn(crate::conn::ConnError::Server { server: "db1:5432".into(), error })
        };
        assert!(conn(crate::conn::ConnError::Closed { server: "db1:5432".into() }).ends_in_hunting());
        assert!(
            server_error("57P01").ends_in_hunting(),
            "terminating connection due to administrator command"
        );
        assert!(!server_error("55006").ends_in_hunting(), "replication slot is active");
        assert!(ReceiveError::NoServer(vec![]).ends_in_hunting());
        let ended = ReceiveError::Session(SessionError::ServerEnded { server: "db1:5432".into() });
        assert!(ended.ends_in_hunting());
        assert!(!ReceiveError::Session(SessionError::NotReady("slot".into())).ends_in_hunting());
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let waits: Vec<u64> = (0..8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}
