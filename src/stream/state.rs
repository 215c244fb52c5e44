//! What a source publishes about itself, for everyone who watches it from outside the receive loop: the
//! service's metrics, health and status endpoints, the uploader and the walsender read a
//! `watch::Receiver<SourceState>`; nobody reaches into the loop (as ripgrep's searcher never knows who prints).
//!
//! The receive loop updates it after each batch of messages (positions, the server's end of WAL), after each
//! sync (the flushed position: durable *and* validated, the only WAL that may be acknowledged or served
//! downstream), when a segment is completed, and when a session starts or fails. Counters only grow.

use crate::archive::fork::TailReport;
use crate::wal::segment::TimeLineId;
use crate::wal::Lsn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// Where a source is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Not connected yet.
    #[default]
    Starting,
    /// Connected, before START_REPLICATION (identify, history, slot); under `--failover`, also while hunting
    /// (`server` is then the host being tried).
    Connecting,
    /// In the CopyBoth loop.
    Streaming,
    /// The last session failed; waiting to try again.
    Retrying,
    /// The receive loop ended (endpos, signal, a fatal error).
    Stopped,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Connecting => "connecting",
            Phase::Streaming => "streaming",
            Phase::Retrying => "retrying",
            Phase::Stopped => "stopped",
        }
    }
}

/// One source's state, as last published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    pub phase: Phase,
    /// When `phase` last changed.
    pub phase_since: Option<SystemTime>,
    /// `host:port` of the server of the current (or last) session.
    pub server: Option<String>,
    /// `primary`, `standby` (or `read-only` when PostgreSQL 13 cannot tell) — see `conn::connect::ServerRole`.
    pub server_role: Option<&'static str>,
    pub server_version: Option<String>,
    pub system_id: Option<u64>,
    pub segment_size: Option<u32>,
    /// Timeline being streamed.
    pub timeline: Option<TimeLineId>,
    /// End of the WAL written to the archive's files.
    pub received: Option<Lsn>,
    /// End of the WAL that is durable and validated: what the server is told is flushed, and the only WAL
    /// that may be served downstream.
    pub flushed: Option<Lsn>,
    /// The server's end of WAL, as it last reported it.
    pub server_end: Option<Lsn>,
    /// When the last message from the server arrived.
    pub last_message: Option<SystemTime>,
    /// The error that ended the last failed session (cleared when a session streams again).
    pub last_error: Option<String>,
    pub segments_completed: u64,
    /// WAL bytes received (re-streamed bytes count again).
    pub received_bytes: u64,
    /// Sessions that failed and were retried.
    pub reconnects: u64,
    /// Sessions that ended on WAL failing validation.
    pub invalid_wal: u64,
    /// Old-timeline WAL the archive holds past the fork point of the timeline now streamed, if the last
    /// failover left any (what the old primary wrote that the new one never had).
    pub diverged_tail: Option<TailReport>,
    /// The service's retention runs for this source (`keep_backups`); untouched by the receive loop.
    pub retention: RetentionState,
}

/// What the service's retention runs for one source have done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionState {
    /// Segment files removed so far.
    pub removed: u64,
    /// Runs that failed.
    pub failures: u64,
    /// When the last run succeeded (removing something or not).
    pub last_success: Option<SystemTime>,
    /// Why the last run failed; cleared by the next success.
    pub last_error: Option<String>,
}

/// The sending side, owned by the receive loop.
pub type StateSender = watch::Sender<SourceState>;

/// A sender nobody listens to, for `walkeeper receive` run alone.
pub fn unobserved() -> StateSender {
    watch::Sender::new(SourceState::default())
}

/// Set the phase (and its time) if it changed.
pub fn set_phase(state: &StateSender, phase: Phase) {
    state.send_if_modified(|s| {
        if s.phase == phase {
            return false;
        }
        s.phase = phase;
        s.phase_since = Some(SystemTime::now());
        true
    });
}

/// Readers of a source's newest WAL as it becomes durable: standbys streaming from the walsender. While
/// there are any, the receive loop syncs (and publishes `flushed`) after every batch of messages, as with
/// `--synchronous` but without reporting to the server, instead of only at the status interval: live WAL
/// reaches them without waiting up to that interval. Clones share the count.
#[derive(Clone, Debug, Default)]
pub struct LiveReaders(Arc<AtomicUsize>);

impl LiveReaders {
    /// True while at least one reader is registered.
    pub fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Count one reader until the guard is dropped.
    pub fn join(&self) -> LiveReader {
        self.0.fetch_add(1, Ordering::Relaxed);
        LiveReader(self.clone())
    }
}

/// One registered reader of [`LiveReaders`].
#[derive(Debug)]
pub struct LiveReader(LiveReaders);

impl Drop for LiveReader {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_changes_are_stamped_once() {
        let tx = unobserved();
        let mut rx = tx.subscribe();
        set_phase(&tx, Phase::Streaming);
        assert!(rx.has_changed().unwrap());
        let since = rx.borrow_and_update().phase_since;
        assert!(since.is_some());
        set_phase(&tx, Phase::Streaming);
        assert!(!rx.has_changed().unwrap(), "same phase: no notification");
        assert_eq!(Phase::Retrying.name(), "retrying");
    }

    #[test]
    fn live_readers_count_guards() {
        let readers = LiveReaders::default();
        assert!(!readers.any());
        let a = readers.join();
        let b = readers.clone().join();
        assert!(readers.any());
        drop(a);
        assert!(readers.any());
        drop(b);
        assert!(!readers.any());
    }
}
