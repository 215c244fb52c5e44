//! The uploader of `receive --upload LOCATION`: a second, off-site copy of the archive that `receive` keeps
//! in its directory (here called the spool, the durable first stage: WAL is fsynced there before any
//! acknowledgement, as without upload).
//!
//! - Each complete segment, history and backup history file goes up once, create-only
//!   ([`Store::put_new`](crate::archive::store::Store::put_new): the same size and SHA-256 already there is
//!   success, anything else is a conflict and nothing is overwritten), oldest first, a few at once.
//! - The `.partial` of the open segment goes up every `--upload-partial-interval` when it changed, replaced
//!   in place, and is deleted once its complete segment is in the store.
//! - A conflict is permanent: logged naming the object, counted, never retried; the spool keeps the file,
//!   receiving goes on, and the run's exit says so ([`Finished`]).
//! - Receiving comes first: while the server is more than a few segments ahead of what was received (a
//!   catch-up after an outage, a new slot), uploads wait, for at most a minute per catch-up, then go on
//!   beside it; a clean exit's drain and `--slot-follows-upload` (the server's slot, and with
//!   `--synchronous` its commits, wait on the uploads) never wait.
//! - An outage never stops receiving: the round fails, is retried with a backoff (1 s doubling to 30 s),
//!   and the spool grows meanwhile; [`UploadState`] shows the backlog.
//!
//! It runs on a thread of its own (the store's calls block), at the lowest CPU priority (nice 19, its store
//! client's threads too: receiving comes first on a busy host), off the receive loop: it learns what to do by
//! listing the spool, on start (the spool against the store's listing: after a crash it uploads what is
//! missing and never changes an object) and whenever the loop's published [`SourceState`] says a segment
//! was completed or a timeline began, and every few seconds besides. What it knows is published on a watch
//! channel of its own ([`UploadState`]), next to the loop's `SourceState`: the service's metrics read it, and
//! with `--slot-follows-upload` the loop caps the flush position it reports at
//! [`UploadState::uploaded_through`].

mod plan;
mod worker;

use crate::archive::scan::{self, ScanError, StartPoint};
use crate::archive::store::{self, S3Options, StoreError};
use crate::stream::state::{Phase, SourceState};
use crate::wal::Lsn;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use worker::Worker;

/// Default `--upload-partial-interval`.
pub const DEFAULT_PARTIAL_INTERVAL: Duration = Duration::from_secs(60);
/// Default `--upload-wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// How often the thread looks at the receive loop's state.
const POLL: Duration = Duration::from_millis(200);
/// A round runs at least this often, whatever the loop says (files it did not announce).
const RESCAN: Duration = Duration::from_secs(10);
/// Uploads wait while receiving catches up: while the server's end of WAL is more than this many segments
/// ahead of what the loop has received (a backlog after an outage, a new slot), receiving gets the machine.
const CATCH_UP_SEGMENTS: u64 = 4;
/// ... for at most this long per catch-up: one that does not end (a receiver slower than the server's WAL)
/// delays the off-site copy by this much, no more.
const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// How often the backlog is counted while uploads wait.
const COUNT_WHILE_WAITING: Duration = Duration::from_secs(1);

/// What `--upload` and its options (or the service's `upload` keys) ask for.
#[derive(Clone, Debug)]
pub struct UploadSettings {
    /// `s3://BUCKET/PREFIX`, or a directory (another disk, a network mount).
    pub location: String,
    /// Explicit S3 settings (the service's keys); unset ones come from the AWS environment.
    pub s3: S3Options,
    /// How often the open `.partial` goes up when it changed; `None`: never.
    pub partial_interval: Option<Duration>,
    /// How long a clean exit waits for pending uploads.
    pub wait: Duration,
    /// Delete uploaded segments from the spool (all but its newest segment file).
    pub remove_uploaded: bool,
    /// Report no flush position beyond [`UploadState::uploaded_through`].
    pub slot_follows: bool,
}

impl UploadSettings {
    pub fn new(location: &str) -> UploadSettings {
        UploadSettings {
            location: location.to_string(),
            s3: S3Options::default(),
            partial_interval: Some(DEFAULT_PARTIAL_INTERVAL),
            wait: DEFAULT_WAIT,
            remove_uploaded: false,
            slot_follows: false,
        }
    }
}

/// What the uploader publishes (the service exports `walkeeper_upload_backlog_segments` from `backlog_files`
/// and `walkeeper_uploads_total{result="ok|failed|conflict"}` from the three counters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadState {
    /// Where uploads go.
    pub location: String,
    /// Every WAL byte the receiver flushed below this position is in the store (complete segments, and the
    /// open segment as far as its last `.partial` upload reached). `None` until the store answered once.
    pub uploaded_through: Option<Lsn>,
    /// Complete segment and history files waiting for their upload.
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    /// Files uploaded (or found already there, identical).
    pub uploads_ok: u64,
    /// Upload attempts that failed (retried): a file's, or a round's that failed before it got to upload a
    /// file (listing the store, a `.partial`), so that a store refusing every request shows here too.
    pub uploads_failed: u64,
    /// Files whose name the store holds with other contents (never retried).
    pub conflicts: u64,
    /// Their locations.
    pub conflicted: Vec<String>,
    /// Uploads of `.partial` files.
    pub partial_uploads: u64,
    /// The last round's error, while rounds fail; cleared by a round that succeeds.
    pub last_error: Option<String>,
    /// Since when rounds fail.
    pub failing_since: Option<SystemTime>,
    pub last_upload: Option<SystemTime>,
}

/// The receiving side of the uploader's state.
pub type UploadWatch = watch::Receiver<UploadState>;

/// How the uploads stood when the run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finished {
    pub location: String,
    /// Objects that hold other contents than the spool's files of the same name.
    pub conflicts: Vec<String>,
    /// Files not uploaded within the wait (the next start uploads them).
    pub pending_files: u64,
    pub pending_bytes: u64,
    /// The last `.partial` state did not go up.
    pub partial_pending: bool,
}

/// What a stop left undone, for the log line or exit message that says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undone {
    /// Objects of the files' names hold other contents (never retried).
    Conflicts(String),
    /// Uploads were still pending when the wait ended (the next start does them).
    Pending(String),
}

impl Finished {
    /// What was left undone, described in one line; `wait_name` is how the user set the wait
    /// (`--upload-wait`, `upload_wait`). None: everything is in the store.
    pub fn undone(&self, spool: &Path, wait_name: &str, wait: Duration) -> Option<Undone> {
        let spool = spool.display();
        if let Some(first) = self.conflicts.first() {
            let more = match self.conflicts.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            return Some(Undone::Conflicts(format!(
                "not uploaded: \"{first}\"{more} already exist with different contents; \"{spool}\" keeps the files (see docs/s3.md, conflicts)"
            )));
        }
        if self.pending_files > 0 || self.partial_pending {
            let partial = if self.partial_pending { " and the last state of the open .partial" } else { "" };
            return Some(Undone::Pending(format!(
                "uploads to \"{}\" did not finish within {wait_name} ({} s): {} files ({} bytes){partial} wait in \"{spool}\"; the next start uploads them",
                self.location,
                wait.as_secs(),
                self.pending_files,
                self.pending_bytes
            )));
        }
        None
    }
}

enum Control {
    /// Upload everything pending, the `.partial` files too, until done or `deadline`; then answer.
    Drain { deadline: Instant, reply: mpsc::Sender<Finished> },
}

/// What the receive loop needs of a running uploader (`ReceiveConfig::upload`): its settings (the start
/// position reads the store with `--remove-uploaded`) and its state (`--slot-follows-upload` caps the flush
/// position reported at `uploaded_through`).
#[derive(Clone, Debug)]
pub struct UploadLink {
    pub settings: UploadSettings,
    pub state: UploadWatch,
}

/// A running uploader. Dropping it without [`Uploader::finish`] stops the thread at its next look.
pub struct Uploader {
    settings: UploadSettings,
    control: mpsc::Sender<Control>,
    state: watch::Receiver<UploadState>,
}

impl Uploader {
    /// Start uploading the spool `spool` to `settings.location`, following the receive loop's `source`.
    /// Fails only on a location that cannot be a store (no request is made here).
    pub fn start(
        settings: &UploadSettings,
        spool: &Path,
        source: watch::Receiver<SourceState>,
    ) -> Result<Uploader, StoreError> {
        let (control, commands) = mpsc::channel();
        let (opened_tx, opened) = mpsc::sync_channel(1);
        let (thread_settings, spool) = (settings.clone(), spool.to_path_buf());
        // The caller's span goes with the thread (in the service, the source's: its lines name the source).
        let span = tracing::Span::current();
        let started = std::thread::Builder::new().name("walkeeper-upload".into()).spawn(move || {
            let _span = span.entered();
            // Below the receive loop: acknowledging WAL is latency-critical, uploading it may lag. The store's
            // client threads are started from here, so they inherit this.
            lower_priority();
            let store = match store::open_with(&thread_settings.location, &thread_settings.s3) {
                Ok(store) => store,
                Err(e) => return drop(opened_tx.send(Err(e))),
            };
            let (state_tx, state) =
                watch::channel(UploadState { location: store.location(), ..Default::default() });
            let worker =
                Worker::new(store, spool, thread_settings.remove_uploaded, source.clone(), state_tx.clone());
            if opened_tx.send(Ok(state)).is_ok() {
                run(worker, commands, source, state_tx, &thread_settings);
            }
        });
        let failed = |detail: String| StoreError::Io {
            op: "start uploading to",
            location: settings.location.clone(),
            source: detail.into(),
        };
        started.map_err(|e| failed(e.to_string()))?;
        let state = opened.recv().map_err(|_| failed("the upload thread ended at once".into()))??;
        Ok(Uploader { settings: settings.clone(), control, state })
    }

    /// The published state.
    pub fn state(&self) -> UploadWatch {
        self.state.clone()
    }

    /// For `ReceiveConfig::upload`.
    pub fn link(&self) -> UploadLink {
        UploadLink { settings: self.settings.clone(), state: self.state.clone() }
    }

    /// Upload what is pending (and the last `.partial` state), waiting at most `wait`; blocks. An upload
    /// still running then is abandoned (its PUT is atomic: the object is whole or absent).
    pub fn finish(self, wait: Duration) -> Finished {
        let deadline = Instant::now() + wait;
        let (reply, answer) = mpsc::channel();
        // The thread answers at the deadline, or after the upload it is in the middle of, within a grace;
        // `--upload-wait 0` means not waiting for uploads at all: only for the thread's count.
        let grace = if wait.is_zero() { Duration::from_millis(50) } else { POLL * 2 };
        if self.control.send(Control::Drain { deadline, reply }).is_ok() {
            if let Ok(finished) = answer.recv_timeout(wait + grace) {
                return finished;
            }
        }
        let s = self.state.borrow();
        finished_from(&s, true)
    }
}

/// The nice value of the uploader's threads (the receive loop's is unchanged).
const UPLOAD_NICE: i32 = 19;

/// Give the calling thread (and the threads it starts) [`UPLOAD_NICE`]. Best effort: a failure only means
/// the uploads compete with receiving on equal terms.
fn lower_priority() {
    // SAFETY: gettid and setpriority(PRIO_PROCESS, tid) act on the calling thread only (Linux's per-thread
    // nice value).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, UPLOAD_NICE);
    }
}

fn finished_from(s: &UploadState, partial_pending: bool) -> Finished {
    Finished {
        location: s.location.clone(),
        conflicts: s.conflicted.clone(),
        pending_files: s.backlog_files,
        pending_bytes: s.backlog_bytes,
        partial_pending,
    }
}

/// What makes the thread look at the spool again: a segment completed, a timeline begun, the loop stopped, a
/// catch-up ended.
fn trigger(s: &SourceState) -> (u64, Option<u32>, bool, bool) {
    (s.segments_completed, s.timeline, s.phase == Phase::Stopped, catch_up_backlog(s).is_some())
}

/// While the loop streams and the server has more than [`CATCH_UP_SEGMENTS`] segments of WAL it has not
/// received yet: how many bytes.
fn catch_up_backlog(s: &SourceState) -> Option<u64> {
    match (s.phase, s.server_end, s.received, s.segment_size) {
        (Phase::Streaming, Some(end), Some(received), Some(size)) => Some(end.0.saturating_sub(received.0))
            .filter(|&behind| behind > CATCH_UP_SEGMENTS.saturating_mul(u64::from(size))),
        _ => None,
    }
}

/// When uploads wait for a catch-up (module docs): the uploader is told to wait by [`Yield::wait_now`].
#[derive(Debug, Default)]
struct Yield {
    /// When the current catch-up began, as this thread first saw it.
    since: Option<Instant>,
    /// Whether the wait for it was logged.
    logged: bool,
}

impl Yield {
    /// Whether uploads wait now: receiving catches up, for less than [`MAX_CATCH_UP_WAIT`] so far, nothing
    /// waits on the uploads (a draining exit, `--slot-follows-upload`: the server's slot, and with
    /// `--synchronous` its commits, follow them).
    fn wait_now(&mut self, s: &SourceState, draining: bool, slot_follows: bool, now: Instant) -> bool {
        let Some(behind) = catch_up_backlog(s) else {
            if self.logged {
                tracing::info!("receiving has caught up: uploads go on");
            }
            *self = Yield::default();
            return false;
        };
        let since = *self.since.get_or_insert(now);
        if draining || slot_follows || now.saturating_duration_since(since) >= MAX_CATCH_UP_WAIT {
            return false;
        }
        if !self.logged {
            self.logged = true;
            tracing::info!(
                "receiving is catching up ({} MB behind the server): uploads wait until it has, at most {} s",
                behind >> 20,
                MAX_CATCH_UP_WAIT.as_secs()
            );
        }
        true
    }
}

/// How long to wait after `failures` failed rounds in a row: 1 s doubling to 30 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
}

/// The thread: rounds when something changed, `.partial` uploads at their interval, retries with backoff.
fn run(
    mut worker: Worker,
    commands: mpsc::Receiver<Control>,
    source: watch::Receiver<SourceState>,
    state: watch::Sender<UploadState>,
    settings: &UploadSettings,
) {
    let (partial_interval, slot_follows) = (settings.partial_interval, settings.slot_follows);
    let location = worker.location();
    let mut seen = None;
    let mut next_round = Instant::now();
    let mut next_partials = partial_interval.map(|_| Instant::now());
    let mut retry_at: Option<Instant> = None;
    let mut failures = 0u32;
    let mut failing_since: Option<Instant> = None;
    let mut drain: Option<(Instant, mpsc::Sender<Finished>)> = None;
    // The `.partial` files went up after the receive loop stopped (so they hold its last state), or none are
    // to go up at all.
    let mut partials_final = partial_interval.is_none();
    let mut catch_up = Yield::default();
    let mut last_count: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wake = [Some(next_round), retry_at, drain.as_ref().map(|d| d.0)].into_iter().flatten().min();
        let timeout = wake.map_or(POLL, |w| w.saturating_duration_since(now).min(POLL));
        match commands.recv_timeout(timeout) {
            Ok(Control::Drain { deadline, reply }) => {
                drain = Some((deadline, reply));
                retry_at = None; // the store may be back: try now rather than after the backoff
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if let Some((deadline, reply)) = &drain {
            if now >= *deadline {
                // Rounds may not have run (a catch-up, a short wait): say exactly what is left.
                let _ = worker.count();
                let _ = reply.send(finished_from(&state.borrow(), !partials_final));
                return;
            }
        }
        let current = trigger(&source.borrow());
        let partials_due = next_partials.is_some_and(|t| drain.is_some() || now >= t);
        let due = drain.is_some() || partials_due || now >= next_round || seen != Some(current);
        if !due || retry_at.is_some_and(|t| now < t) {
            continue;
        }
        if catch_up.wait_now(&source.borrow(), drain.is_some(), slot_follows, now) {
            // No upload, but the backlog the metrics show stays true.
            if last_count.is_none_or(|t| now >= t + COUNT_WHILE_WAITING) {
                let _ = worker.count();
                last_count = Some(now);
            }
            continue;
        }
        seen = Some(current);
        next_round = now + RESCAN;
        let failed_before = state.borrow().uploads_failed;
        match worker.round(partials_due) {
            Ok(report) => {
                if let Some(since) = failing_since.take() {
                    let backlog = state.borrow().backlog_files;
                    tracing::info!(
                        "uploads to \"{location}\" work again after {} s; {backlog} files to catch up",
                        since.elapsed().as_secs()
                    );
                }
                failures = 0;
                retry_at = None;
                state.send_if_modified(|s| {
                    let changed = s.last_error.is_some();
                    s.last_error = None;
                    s.failing_since = None;
                    changed
                });
                if partials_due && report.partials_left == 0 {
                    next_partials = partial_interval.map(|i| Instant::now() + i);
                    partials_final |= current.2;
                }
                if let Some((_, reply)) = &drain {
                    let s = state.borrow().clone();
                    if s.backlog_files == 0 && (!partials_due || report.partials_left == 0) {
                        let _ = reply.send(finished_from(&s, false));
                        return;
                    }
                }
            }
            Err(e) => {
                let wait = backoff(failures);
                failures = failures.saturating_add(1);
                retry_at = Some(Instant::now() + wait);
                failing_since.get_or_insert_with(Instant::now);
                let message = e.to_string();
                state.send_modify(|s| {
                    if s.uploads_failed == failed_before {
                        s.uploads_failed += 1; // no file's upload failed: the round did
                    }
                    s.last_error = Some(message.clone());
                    s.failing_since.get_or_insert_with(SystemTime::now);
                });
                let s = state.borrow().clone();
                tracing::warn!(
                    "upload to \"{location}\" failed: {message}; {} files ({} bytes) wait in the spool; retrying in {} s",
                    s.backlog_files,
                    s.backlog_bytes,
                    wait.as_secs()
                );
            }
        }
    }
}

/// `--remove-uploaded`: where streaming resumes, from the spool's start (`spool`, see `archive::scan`) and
/// the store's newest complete segment, whichever is later. The uploader never removes the spool's newest
/// segment file, so the spool alone is right unless it was emptied by hand; the store is asked anyway. When
/// it cannot answer, a spool that holds segments decides alone (with a warning); an empty one is an error,
/// retried: nothing else tells where the archive ends.
pub fn resume_point(
    settings: &UploadSettings,
    spool: Option<StartPoint>,
    segment_size: u32,
    system_id: u64,
) -> Result<Option<StartPoint>, ScanError> {
    let found = store::open_with(&settings.location, &settings.s3)
        .map_err(ScanError::Store)
        .and_then(|store| scan::after_newest_complete(&*store, segment_size, system_id));
    match (found, spool) {
        (Ok(Some(stored)), Some(spool)) if stored.lsn <= spool.lsn => Ok(Some(spool)),
        (Ok(Some(stored)), _) => {
            tracing::info!(
                "resuming after \"{}\", the newest complete segment in \"{}\"",
                stored.file,
                settings.location
            );
            Ok(Some(stored))
        }
        (Ok(None), spool) => Ok(spool),
        (Err(e), Some(spool)) if !e.is_fatal() => {
            tracing::warn!("{e}; resuming from the spool's newest file \"{}\"", spool.file);
            Ok(Some(spool))
        }
        (Err(e), _) => Err(e),
    }
}

/// Refuse an upload location that cannot be a store, or is the spool itself (no request is made).
pub fn check_location(settings: &UploadSettings, spool: &Path) -> Result<(), String> {
    if settings.location.is_empty() {
        return Err("the upload location is empty".into());
    }
    if settings.location.starts_with("s3://") {
        return store::open_with(&settings.location, &settings.s3).map(drop).map_err(|e| e.to_string());
    }
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if canonical(Path::new(&settings.location)) == canonical(spool) {
        return Err(format!("upload location \"{}\" is the receive directory itself", settings.location));
    }
    store::open_with(&settings.location, &settings.s3).map(drop).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
