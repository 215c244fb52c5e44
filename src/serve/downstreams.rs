//! The standbys a source's walsender is serving right now, for everyone who watches from outside: the
//! service's `/status` and metrics list them, and retention asks [`Downstreams::oldest_needed`] before it
//! deletes WAL, so that a connected standby never loses WAL it has not flushed yet.
//!
//! Sessions register when START_REPLICATION begins streaming and unregister when it ends (the
//! [`Registration`] guard, also on a panic or a dropped connection); in between they publish what they
//! sent and what the standby reported. Everything goes out on a `tokio::sync::watch` channel: a reader
//! gets the whole list, consistent, and can wait for changes.

use crate::wal::segment::TimeLineId;
use crate::wal::Lsn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// Where a standby is in its stream, as `pg_stat_replication.state` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownstreamState {
    /// Behind the end of the archive's WAL, reading it from segment files.
    Catchup,
    /// Has been sent everything there is; follows new WAL as it becomes durable.
    Streaming,
}

impl DownstreamState {
    pub fn name(self) -> &'static str {
        match self {
            DownstreamState::Catchup => "catchup",
            DownstreamState::Streaming => "streaming",
        }
    }
}

/// One standby streaming from the walsender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downstream {
    /// Unique within the process (also the session's backend "process id").
    pub id: u64,
    /// `application_name` from its connection (a walreceiver sends `cluster_name` or "walreceiver").
    pub application_name: String,
    pub user: String,
    pub client_addr: SocketAddr,
    pub state: DownstreamState,
    /// The timeline being streamed.
    pub timeline: TimeLineId,
    /// Where START_REPLICATION asked to begin.
    pub start: Lsn,
    /// End of the WAL sent so far.
    pub sent: Lsn,
    /// What the standby last reported as written, flushed (durable in its pg_wal) and replayed.
    pub write: Option<Lsn>,
    pub flush: Option<Lsn>,
    pub replay: Option<Lsn>,
    /// Hot standby feedback: its oldest running transaction id (0: none reported).
    pub xmin: Option<u32>,
    pub connected_at: SystemTime,
    pub last_reply: Option<SystemTime>,
}

impl Downstream {
    /// The first WAL this standby still needs from the archive: what it has flushed is safe with it; before
    /// its first report, everything from where it asked to start.
    pub fn needs_from(&self) -> Lsn {
        self.flush.filter(|f| f.0 != 0).unwrap_or(self.start).max(self.start)
    }
}

/// What retention must keep: every segment file ending after `lsn`, of any timeline (a standby behind a
/// timeline switch reads the old timeline up to the switch, then the new one). `timeline` is the one that
/// standby is streaming, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needed {
    pub timeline: TimeLineId,
    pub lsn: Lsn,
}

/// The registry of one source's downstream standbys. Clones share it.
#[derive(Clone, Debug)]
pub struct Downstreams {
    tx: Arc<watch::Sender<Vec<Downstream>>>,
}

impl Default for Downstreams {
    fn default() -> Self {
        Downstreams::new()
    }
}

impl Downstreams {
    pub fn new() -> Downstreams {
        Downstreams { tx: Arc::new(watch::Sender::new(Vec::new())) }
    }

    /// Every connected standby, ordered by connection.
    pub fn list(&self) -> Vec<Downstream> {
        self.tx.borrow().clone()
    }

    /// Wait for changes (a standby connects, reports or leaves).
    pub fn subscribe(&self) -> watch::Receiver<Vec<Downstream>> {
        self.tx.subscribe()
    }

    /// The oldest WAL a connected standby still needs (see [`Downstream::needs_from`]); `None` with no
    /// standby connected. Retention keeps the segment holding it and everything after it.
    pub fn oldest_needed(&self) -> Option<Needed> {
        oldest(&self.tx.borrow())
    }

    /// Start tracking a standby; it is removed when the guard is dropped.
    pub(crate) fn register(&self, d: Downstream) -> Registration {
        let id = d.id;
        self.tx.send_modify(|list| list.push(d));
        Registration { downstreams: self.clone(), id }
    }
}

/// The oldest position needed among `list` (the lowest LSN), as [`Downstreams::oldest_needed`] gives it for
/// the live registry; for a copy of its list (a scrape, a status report).
pub fn oldest(list: &[Downstream]) -> Option<Needed> {
    list.iter()
        .map(|d| Needed { timeline: d.timeline, lsn: d.needs_from() })
        .min_by_key(|n| (n.lsn, n.timeline))
}

/// A process-wide id for a new session (never 0, never reused).
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A registered standby; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct Registration {
    downstreams: Downstreams,
    id: u64,
}

impl Registration {
    /// Change this standby's entry (notifying watchers only when something changed).
    pub(crate) fn update(&self, f: impl FnOnce(&mut Downstream)) {
        self.downstreams.tx.send_if_modified(|list| match list.iter_mut().find(|d| d.id == self.id) {
            Some(d) => {
                let before = d.clone();
                f(d);
                *d != before
            }
            None => false,
        });
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.id;
        self.downstreams.tx.send_if_modified(|list| {
            let n = list.len();
            list.retain(|d| d.id != id);
            list.len() != n
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(id: u64, timeline: TimeLineId, start: u64) -> Downstream {
        Downstream {
            id,
            application_name: format!("s{id}"),
            user: "standby".into(),
            client_addr: "127.0.0.1:5000".parse().unwrap(),
            state: DownstreamState::Catchup,
            timeline,
            start: Lsn(start),
            sent: Lsn(start),
            write: None,
            flush: None,
            replay: None,
            xmin: None,
            connected_at: SystemTime::UNIX_EPOCH,
            last_reply: None,
        }
    }

    #[test]
    fn oldest_needed_follows_registrations_and_reports() {
        let d = Downstreams::new();
        let mut rx = d.subscribe();
        assert_eq!(d.oldest_needed(), None);
        let a = d.register(standby(1, 1, 0x300_0000));
        let b = d.register(standby(2, 1, 0x500_0000));
        assert!(rx.has_changed().unwrap());
        assert_eq!(d.oldest_needed(), Some(Needed { timeline: 1, lsn: Lsn(0x300_0000) }));
        // The first standby reports having flushed more: its need moves on.
        a.update(|s| s.flush = Some(Lsn(0x600_0000)));
        assert_eq!(d.oldest_needed().unwrap().lsn, Lsn(0x500_0000));
        // A zero flush position (nothing flushed yet) does not count, nor one before the start.
        b.update(|s| s.flush = Some(Lsn(0)));
        assert_eq!(d.oldest_needed().unwrap().lsn, Lsn(0x500_0000));
        rx.borrow_and_update();
        b.update(|s| s.flush = Some(Lsn(0)));
        assert!(!rx.has_changed().unwrap(), "no change, no notification");
        drop(b);
        assert_eq!(d.oldest_needed().unwrap().lsn, Lsn(0x600_0000));
        assert_eq!(d.list().len(), 1);
        drop(a);
        assert_eq!(d.oldest_needed(), None);
        assert_ne!(next_id(), next_id());
        assert_eq!(DownstreamState::Streaming.name(), "streaming");
    }
}
