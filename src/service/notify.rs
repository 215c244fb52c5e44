//! systemd's notification protocol, for `Type=notify` units: `READY=1` once every source has started,
//! `STATUS=` with a one-line summary, `WATCHDOG=1` from the main loop, `RELOADING=1` and `STOPPING=1`
//! around a reload and the shutdown. Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use crate::service::metrics::Sample;
use crate::stream::state::Phase;
use sd_notify::NotifyState;
use std::time::Duration;

/// STATUS= lines are cut to this many bytes (systemctl shows one line).
const MAX_STATUS: usize = 200;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("could not notify systemd: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: every source syncs and reports")]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to send WATCHDOG=1: half of the unit's `WatchdogSec`, when it has one.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2).filter(|d| !d.is_zero())
}

/// `3 sources: 2 streaming, 1 retrying (db2: connection refused)`: counts per phase, then the first source
/// that does not stream and why.
pub fn summary(samples: &[Sample]) -> String {
    let phases = [Phase::Streaming, Phase::Starting, Phase::Connecting, Phase::Retrying, Phase::Stopped];
    let counts: Vec<String> = phases
        .iter()
        .filter_map(|&p| {
            let n = samples.iter().filter(|s| s.state.phase == p).count();
            (n > 0).then(|| format!("{n} {}", p.name()))
        })
        .collect();
    let noun = if samples.len() == 1 { "source" } else { "sources" };
    let mut line = format!("{} {noun}: {}", samples.len(), counts.join(", "));
    if let Some(bad) = samples.iter().find(|s| s.state.phase != Phase::Streaming) {
        let why = bad.state.last_error.as_deref().unwrap_or(bad.state.phase.name());
        line.push_str(&format!(" ({}: {why})", bad.source));
    }
    if line.len() > MAX_STATUS {
        let cut = (0..MAX_STATUS - 3).rev().find(|&i| line.is_char_boundary(i)).unwrap_or(0);
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::state::SourceState;

    #[test]
    fn summary_counts_phases_and_names_the_first_failing_source() {
        let s = |name: &str, phase, error: Option<&str>| Sample {
            source: name.into(),
            state: SourceState { phase, last_error: error.map(str::to_string), ..SourceState::default() },
            serve: None,
            upload: None,
        };
        assert_eq!(summary(&[s("a", Phase::Streaming, None)]), "1 source: 1 streaming");
        assert_eq!(
            summary(&[
                s("a", Phase::Streaming, None),
                s("b", Phase::Retrying, Some("connection refused")),
                s("c", Phase::Streaming, None)
            ]),
            "3 sources: 2 streaming, 1 retrying (b: connection refused)"
        );
        let long = summary(&[s("x", Phase::Retrying, Some(&"é".repeat(300)))]);
        assert!(long.len() <= MAX_STATUS && long.ends_with("..."), "{long}");
    }
}
