//! Is the server still there? The walreceiver's `wal_receiver_timeout` rule on our side of a stream: after
//! half the timeout with nothing from the server, send a status update that asks for a reply (a live
//! walsender answers with a keepalive at once); after the whole timeout, give the connection up. Any message
//! from the server starts the clock again. Pure: the caller passes the time.

use std::time::Duration;
use tokio::time::Instant;

/// `--receive-timeout`'s default: the walreceiver's `wal_receiver_timeout` default.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the silence calls for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Half the timeout passed: ask the server for a reply (once per silence).
    Ping,
    /// The whole timeout passed: the connection is dead.
    Dead,
}

#[derive(Clone, Debug)]
pub struct Liveness {
    /// None: never time out (`--receive-timeout 0`).
    timeout: Option<Duration>,
    last_heard: Instant,
    pinged: bool,
}

impl Liveness {
    pub fn new(timeout: Option<Duration>, now: Instant) -> Liveness {
        Liveness { timeout, last_heard: now, pinged: false }
    }

    /// A message arrived from the server.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.pinged = false;
    }

    /// When [`due`](Self::due) next has something to say (None: never).
    pub fn deadline(&self) -> Option<Instant> {
        let timeout = self.timeout?;
        Some(if self.pinged { self.last_heard + timeout } else { self.last_heard + timeout / 2 })
    }

    /// What to do at `now`; a ping is reported once per silence.
    pub fn due(&mut self, now: Instant) -> Option<Due> {
        let timeout = self.timeout?;
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= timeout {
            Some(Due::Dead)
        } else if silent >= timeout / 2 && !self.pinged {
            self.pinged = true;
            Some(Due::Ping)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ping_at_half_then_dead_at_the_whole_timeout() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Some(60 * S), t0);
        assert_eq!(l.deadline(), Some(t0 + 30 * S));
        assert_eq!(l.due(t0 + 29 * S), None);
        assert_eq!(l.due(t0 + 30 * S), Some(Due::Ping));
        // Pinged once: the next deadline is the end of the timeout, and no second ping.
        assert_eq!(l.deadline(), Some(t0 + 60 * S));
        assert_eq!(l.due(t0 + 45 * S), None);
        assert_eq!(l.due(t0 + 60 * S), Some(Due::Dead));
        assert_eq!(l.due(t0 + 61 * S), Some(Due::Dead));
    }

    #[test]
    fn any_message_starts_the_clock_again() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Some(10 * S), t0);
        assert_eq!(l.due(t0 + 6 * S), Some(Due::Ping));
        l.heard(t0 + 7 * S);
        assert_eq!(l.deadline(), Some(t0 + 12 * S));
        assert_eq!(l.due(t0 + 11 * S), None);
        assert_eq!(l.due(t0 + 12 * S), Some(Due::Ping), "a new silence gets its own ping");
        assert_eq!(l.due(t0 + 16 * S), None);
        assert_eq!(l.due(t0 + 17 * S), Some(Due::Dead));
    }

    #[test]
    fn zero_means_never() {
        let t0 = Instant::now();
        let mut l = Liveness::new(None, t0);
        assert_eq!(l.deadline(), None);
        assert_eq!(l.due(t0 + 100_000 * S), None);
    }
}
