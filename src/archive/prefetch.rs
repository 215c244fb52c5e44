//! Prefetch for `walkeeper restore`: while PostgreSQL replays one segment, a background worker fetches and
//! decompresses the next ones into a spool directory, so that the next `restore_command` is a rename.
//!
//! # The spool
//!
//! Default location: `.walkeeper-prefetch` in the directory of `%p` (that is `pg_wal/` of the server being
//! recovered). That directory is writable by the server's account (restore_command runs as it), needs no
//! configuration, and lies on the same file system as `%p`, so serving a spooled segment is one `rename`.
//! PostgreSQL ignores subdirectories of `pg_wal` it does not know, and a base backup does not copy them.
//! `--spool DIR` puts it elsewhere (then serving copies when it is another file system).
//!
//! Files in it:
//! - `lock`: the worker holds an exclusive `flock` on it for its whole life; a restore that can take the
//!   lock knows no worker runs and starts one. A second worker that cannot take it exits at once.
//! - `archive`: the location of the archive the entries come from (a local archive's canonical path). A
//!   spool of another archive is never served from, and a worker starting for another archive empties it
//!   first.
//! - `request`: `NAME SEGMENT_SIZE` of the last segment served, written by restore (temporary file +
//!   rename); the worker keeps the next `--prefetch N` segments after it.
//! - `TTTTTTTTXXXXXXXXYYYYYYYY`: a ready entry, keyed by the full segment name (timeline included), written
//!   under a temporary name, checked on the way as restore checks every segment (the WAL decoder over all
//!   of it), fsynced, given the archive file's modification time, then renamed into place. Never more than
//!   N entries plus one being written.
//! - `worker.log`: the worker's last errors (it has no terminal).
//!
//! # Safety of what is served
//!
//! An entry is served only for exactly its name, only if the archive still holds the file it was read from
//! (named in the entry's `user.walkeeper.source` attribute; where the file system keeps none, the complete
//! file of that name) with the same modification time, and only after its page header, length, page address
//! and (in a data directory) system identifier are checked again: its WAL was checked when it was fetched.
//! Anything else falls back to reading the archive; a spool problem never fails a restore.
//! Entries before the requested segment, or of timelines recovery is not following, are deleted by the
//! worker. Concurrent restores are safe: taking an entry is an atomic rename, and a loser of that race
//! reads the archive.
//!
//! # Which segments come next
//!
//! The worker plans from one listing of what follows the requested segment in the archive, and lists again
//! only when a plan reaches the end of that listing (new segments may have been archived), when recovery asks
//! for a segment before it, or when it is older than [`LISTING_MAX_AGE`] (a new timeline may have begun):
//! listing after every request would list, per segment replayed, everything after it. A planned segment is
//! read straight from the file the listing named, with no lookup first; the file's modification time as
//! the read found it is the entry's.
//!
//! As PostgreSQL does with `recovery_target_timeline = latest`: the newest timeline is found by probing
//! history files after the requested one (`findNewestTimeLine`); for each next segment number the newest
//! timeline of that history whose begin point is not after the segment and that has the segment in the
//! archive is chosen (`XLogFileReadAnyTLI`). When PostgreSQL keeps asking for an older timeline past a
//! switch point, the worker follows that timeline alone.
//!
//! # From a bucket
//!
//! For an archive in object storage (`-D s3://…`) the worker keeps up to [`BUCKET_JOBS`] fetches running, the
//! next one started as soon as one ends, in replay order: one segment's GETs wait on the network far more
//! than on the CPU, so several in flight keep ahead of replay. A local archive is read one segment at a time
//! (decompression is the cost there, and recovery needs the CPU too). A restore asking for a segment the
//! worker is fetching at that moment waits for it ([`Spool::wait_for_fetch`]) instead of reading it a second
//! time.
//!
//! # Lifetime
//!
//! The worker is a detached child (`walkeeper restore --prefetch-worker`, its own process group, so the
//! server's shutdown signals to the startup process do not reach it). It exits on its own when no new
//! segment has been requested for [`IDLE_EXIT`] (recovery finished or paused), removing its entries, or
//! when the spool directory disappears.

use super::catalog::{self, Catalog};
use super::error::WalDirError;
use super::fsutil;
use super::restore::{self, RestoreError, Restored, Source};
use super::store::{Store, StoreError};
use crate::wal::page;
use crate::wal::segment::{history_file_name, SegmentId, TimeLineId};
use crate::wal::timeline::parse_history_of;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Name of the default spool directory, created next to `%p`.
pub const DEFAULT_SPOOL_NAME: &str = ".walkeeper-prefetch";
/// Default number of segments kept ahead.
pub const DEFAULT_DEPTH: usize = 8;
/// The worker exits when no new segment was requested for this long (default of `--prefetch-idle-ms`).
pub const IDLE_EXIT: Duration = Duration::from_secs(30);
/// How long a restore waits for the worker's fetch of the very segment it serves (then it reads the
/// archive itself): as long as the store takes to answer a read.
pub const WAIT_FOR_FETCH: Duration = Duration::from_secs(30);
/// Segments fetched at once from an archive in object storage.
pub const BUCKET_JOBS: usize = 4;
/// How often the worker looks for a new request when it has nothing to fetch.
const POLL: Duration = Duration::from_millis(20);
/// The worker plans from one listing of the archive at most this long.
const LISTING_MAX_AGE: Duration = Duration::from_secs(10);
/// How soon the worker lists again after the archive could not be listed.
const LIST_RETRY: Duration = Duration::from_secs(1);
/// Extended attribute of a spool entry naming the archive file it was read from: serving the entry then
/// checks that one file (one HEAD instead of one per compression form), and another file that has taken the
/// segment's name since is never mistaken for it. Where the file system keeps no user attributes, serving
/// looks the segment up in every form instead.
const SOURCE_ATTR: &std::ffi::CStr = c"user.walkeeper.source";

const LOCK: &str = "lock";
const ARCHIVE: &str = "archive";
const REQUEST: &str = "request";
const LOG: &str = "worker.log";

/// The spool directory used for `%p` when none is given.
pub fn default_spool(dest: &Path) -> PathBuf {
    fsutil::parent_dir(dest).join(DEFAULT_SPOOL_NAME)
}

/// A spool directory serving one archive.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
    /// The archive's location (see the module docs).
    archive: String,
}

fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Spool {
    /// Open (creating it, mode 0700) the spool `dir` for the archive in `store`. The spool's path is made
    /// absolute, as is a local archive's.
    pub fn open(dir: &Path, store: &dyn Store) -> io::Result<Spool> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let archive = match store.local_dir() {
            Some(local) => fs::canonicalize(local)?.display().to_string(),
            None => store.location(),
        };
        Ok(Spool { dir: fs::canonicalize(dir)?, archive })
    }

    fn archive_matches(&self) -> bool {
        fs::read(self.dir.join(ARCHIVE))
            .map(|b| b == format!("{}\n", self.archive).as_bytes())
            .unwrap_or(false)
    }

    /// Serve segment `name` into `dest` from the spool if a valid entry is there (of database system
    /// `system_id`, when known); `None` otherwise (the caller reads the archive).
    pub fn take(
        &self,
        store: &dyn Store,
        name: &str,
        dest: &Path,
        system_id: Option<u64>,
    ) -> Option<Restored> {
        if !is_segment_name(name) || !self.archive_matches() {
            return None;
        }
        let entry = self.dir.join(name);
        let file = File::open(&entry).ok()?;
        let meta = file.metadata().ok()?;
        // The archive must still hold the file this entry was read from, unchanged since.
        let archived = match source_of(&file, name) {
            Some(source) => store.stat(&source).ok()??,
            None => catalog::lookup_complete(store, name).ok()?.ok()??.0,
        };
        if !archived.regular || archived.modified? != meta.modified().ok()? {
            return None;
        }
        let len = meta.len();
        let mut head = [0u8; page::LEN];
        file.read_exact_at(&mut head, 0).ok()?;
        let header = page::parse(&head).ok()?;
        header.check_page_addr(name).ok()?;
        let size = header.segment_size;
        if len != u64::from(size) || system_id.is_some_and(|id| id != header.system_id) {
            return None;
        }
        drop(file);
        match fs::rename(&entry, dest) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                // A spool on another file system: copy atomically instead.
                let data = fs::read(&entry).ok()?;
                restore::write_bytes(dest, &data).ok()?;
                let _ = fs::remove_file(&entry);
            }
            Err(_) => return None, // taken by a concurrent restore, or removed by the worker
        }
        // No directory fsync: `%p` only needs to be atomic (see `restore::persist_for_reading`).
        let source = entry.display().to_string();
        Some(Restored { source, bytes: len, segment_size: Some(size), partial: false })
    }

    /// When the worker is fetching segment `name` right now (its temporary file is in the spool), wait
    /// until the entry lands or the fetch ends, at most `max`: reading the segment again beside the worker
    /// would only slow both down.
    pub fn wait_for_fetch(&self, name: &str, max: Duration) {
        if !is_segment_name(name) || !self.worker_running() {
            return;
        }
        let deadline = Instant::now() + max;
        while Instant::now() < deadline && !self.dir.join(name).exists() && self.fetching(name) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// True while a temporary file of a fetch of `name` is in the spool.
    fn fetching(&self, name: &str) -> bool {
        let prefix = fetch_temp_prefix(name);
        let Ok(rd) = fs::read_dir(&self.dir) else { return false };
        rd.filter_map(|e| e.ok()).any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
    }

    /// Record that `name` (of `segment_size`) was served: the worker keeps the segments after it.
    pub fn request(&self, name: &str, segment_size: u32) -> io::Result<()> {
        let tmp = self.dir.join(format!(".request.{}.tmp", std::process::id()));
        fs::write(&tmp, format!("{name} {segment_size}\n"))?;
        fs::rename(&tmp, self.dir.join(REQUEST))
    }

    fn read_request(&self) -> Option<(SegmentId, u32, SystemTime)> {
        let path = self.dir.join(REQUEST);
        let text = fs::read_to_string(&path).ok()?;
        let modified = mtime(&path)?;
        let (name, size) = text.trim().split_once(' ')?;
        let size: u32 = size.parse().ok()?;
        let id = SegmentId::parse_name(name, size)?;
        Some((id, size, modified))
    }

    fn open_lock(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join(LOCK))
    }

    /// True when a worker holds the lock.
    pub fn worker_running(&self) -> bool {
        let Ok(file) = self.open_lock() else { return true };
        if try_lock(&file) {
            // Dropping the file releases the lock.
            return false;
        }
        true
    }

    /// Start a worker unless one runs. The worker is `exe restore --prefetch-worker ...`, detached.
    pub fn ensure_worker(&self, exe: &Path, depth: usize, idle: Duration) -> io::Result<()> {
        if self.worker_running() {
            return Ok(());
        }
        std::process::Command::new(exe)
            .arg("restore")
            .arg("--prefetch-worker")
            .arg("-D")
            .arg(&self.archive)
            .arg("--spool")
            .arg(&self.dir)
            .arg("--prefetch")
            .arg(depth.to_string())
            .arg("--prefetch-idle-ms")
            .arg(idle.as_millis().to_string())
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .map(drop)
    }

    /// Names of the ready entries.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| is_segment_name(n))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Remove entries not in `keep` (and leftover temporary files, but not those of the fetches in
    /// `busy`); returns the entries removed.
    fn remove_entries_except(&self, keep: &[String], busy: &[&str]) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(rd) = fs::read_dir(&self.dir) else { return removed };
        for entry in rd.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_tmp = name.starts_with('.')
                && name.ends_with(".tmp")
                && !name.starts_with(".request.")
                && !busy.iter().any(|b| name.starts_with(&fetch_temp_prefix(b)));
            let unwanted = is_segment_name(&name) && !keep.contains(&name);
            if stale_tmp {
                let _ = fs::remove_file(entry.path());
            } else if unwanted && fs::remove_file(entry.path()).is_ok() {
                removed.push(name);
            }
        }
        removed
    }

    fn log(&self, msg: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).create(true).mode(0o600).open(self.dir.join(LOG)) {
            let _ = writeln!(f, "{msg}");
        }
    }
}

/// How the temporary file of a fetch of `name` begins (`restore::temp_beside` of the entry).
fn fetch_temp_prefix(name: &str) -> String {
    format!(".{name}.walkeeper-")
}

/// Records in `file` (a spool entry) the archive file `source` it was read from ([`SOURCE_ATTR`]).
fn set_source(file: &File, source: &str) -> io::Result<()> {
    // SAFETY: a descriptor we own, a NUL-terminated name, and a value of `source.len()` bytes.
    let rc = unsafe {
        libc::fsetxattr(file.as_raw_fd(), SOURCE_ATTR.as_ptr(), source.as_ptr().cast(), source.len(), 0)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The archive file a spool entry of segment `name` was read from, when recorded and one of the segment's
/// complete forms.
fn source_of(file: &File, name: &str) -> Option<String> {
    let mut value = [0u8; 64];
    // SAFETY: a descriptor we own, a NUL-terminated name, and a buffer of `value.len()` bytes.
    let n = unsafe {
        libc::fgetxattr(file.as_raw_fd(), SOURCE_ATTR.as_ptr(), value.as_mut_ptr().cast(), value.len())
    };
    let value = std::str::from_utf8(value.get(..usize::try_from(n).ok()?)?).ok()?;
    let suffix = value.strip_prefix(name)?;
    catalog::COMPLETE_FORMS.iter().any(|c| c.suffix() == suffix).then(|| value.to_string())
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a file descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A segment the worker fetches: its name and the archive file holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub source: Source,
}

/// The segments to keep after `requested`, in replay order: up to `depth` of them, stopping at the first
/// that is not in `catalog` (a listing of at least everything after `requested`). Follows timeline switches
/// as PostgreSQL does with `latest` (module docs).
pub fn plan(
    store: &dyn Store,
    catalog: &Catalog,
    requested: SegmentId,
    segment_size: u32,
    depth: usize,
) -> Vec<Planned> {
    let chain = timeline_chain(store, catalog, requested, segment_size);
    let mut out = Vec::with_capacity(depth);
    // Never back to an older timeline than the last file's (XLogFileReadAnyTLI's `tli < curFileTLI`).
    let mut current = requested.timeline;
    for number in (requested.number + 1)..=(requested.number.saturating_add(depth as u64)) {
        let found = chain.iter().filter(|&&(tli, begin)| number >= begin && tli >= current).find_map(
            |&(timeline, _)| {
                let id = SegmentId { timeline, number };
                catalog.find(id, false).map(|f| (timeline, id.file_name(segment_size), f))
            },
        );
        match found {
            Some((timeline, name, f)) => {
                current = timeline;
                let source = Source { file: f.file.clone(), compression: f.compression, partial: false };
                out.push(Planned { name, source });
            }
            None => break,
        }
    }
    out
}

/// The archive listing the worker plans from. Listed again only when needed: listing after every request
/// would cost, per segment replayed, a listing of everything after it (quadratic over a long recovery).
struct Listing {
    /// Everything after this name was listed.
    after: String,
    catalog: Catalog,
    at: Instant,
}

impl Listing {
    fn read(store: &dyn Store, after: String, segment_size: u32) -> Result<Listing, StoreError> {
        let catalog = Catalog::read_after(store, &after, segment_size)?;
        Ok(Listing { after, catalog, at: Instant::now() })
    }

    /// True when this listing holds everything after `after` that there was at [`Listing::at`], and is
    /// recent enough to plan from (a new timeline shows within [`LISTING_MAX_AGE`]).
    fn serves(&self, after: &str, segment_size: u32) -> bool {
        self.after.as_str() <= after
            && self.catalog.segment_size() == segment_size
            && self.at.elapsed() < LISTING_MAX_AGE
    }
}

/// The plan for `requested` (see [`plan`]), from `listing` while it serves and gives a whole plan; else the
/// archive is listed again (the end of the listing may not be the end of the archive any more). An archive
/// that cannot be listed is an error, and the last listing is kept.
fn plan_listed(
    store: &dyn Store,
    listing: &mut Option<Listing>,
    requested: SegmentId,
    segment_size: u32,
    depth: usize,
) -> Result<Vec<Planned>, StoreError> {
    let after = requested.file_name(segment_size);
    if let Some(l) = listing.as_ref().filter(|l| l.serves(&after, segment_size)) {
        let planned = plan(store, &l.catalog, requested, segment_size, depth);
        if planned.len() == depth {
            return Ok(planned);
        }
    }
    let fresh = listing.insert(Listing::read(store, after, segment_size)?);
    Ok(plan(store, &fresh.catalog, requested, segment_size, depth))
}

/// Timelines recovery may take segments from after `requested`, newest first, each with the first segment
/// number it may serve.
fn timeline_chain(
    store: &dyn Store,
    catalog: &Catalog,
    requested: SegmentId,
    segment_size: u32,
) -> Vec<(TimeLineId, u64)> {
    let only_requested = vec![(requested.timeline, 0)];
    let mut newest = requested.timeline;
    while newest < u32::MAX && catalog.histories().contains_key(&(newest + 1)) {
        newest += 1;
    }
    if newest == requested.timeline {
        return only_requested;
    }
    let Ok(bytes) = store.read_all(&history_file_name(newest)) else { return only_requested };
    let Ok(text) = String::from_utf8(bytes) else { return only_requested };
    let Ok(history) = parse_history_of(newest, &text) else { return only_requested };
    let mut chain = Vec::new();
    let mut begin = 0u64;
    for entry in &history {
        chain.push((entry.timeline, begin));
        begin = entry.end.segment_number(segment_size);
    }
    chain.push((newest, begin));
    chain.retain(|(tli, _)| *tli >= requested.timeline);
    if !chain.iter().any(|(tli, _)| *tli == requested.timeline) {
        return only_requested;
    }
    // Recovery asked for the requested timeline at a segment where a newer one had begun: it is not
    // following the newest timeline.
    if chain.iter().any(|&(tli, b)| tli > requested.timeline && requested.number >= b) {
        return only_requested;
    }
    chain.reverse();
    chain
}

/// The worker's main loop (see the module docs). Returns when idle or when the spool is gone.
pub fn run_worker(
    spool: &Spool,
    store: &dyn Store,
    depth: usize,
    idle: Duration,
) -> Result<(), RestoreError> {
    let lock = spool.open_lock().map_err(|e| WalDirError::io("open", &spool.dir.join(LOCK), e))?;
    if !try_lock(&lock) {
        return Ok(()); // another worker serves this spool
    }
    let _ = fs::remove_file(spool.dir.join(LOG));
    if !spool.archive_matches() {
        spool.remove_entries_except(&[], &[]);
        let tmp = spool.dir.join(".archive.tmp");
        fs::write(&tmp, format!("{}\n", spool.archive))
            .and_then(|_| fs::rename(&tmp, spool.dir.join(ARCHIVE)))
            .map_err(|e| WalDirError::io("write", &spool.dir.join(ARCHIVE), e))?;
    }
    std::thread::scope(|scope| work(spool, store, depth, idle, scope))
}

/// The worker's loop, with its fetches running on threads of `scope`: up to `jobs` at once, the next one
/// started as soon as one ends (in replay order, so the segment recovery needs next is always among them).
fn work<'scope>(
    spool: &'scope Spool,
    store: &'scope dyn Store,
    depth: usize,
    idle: Duration,
    scope: &'scope std::thread::Scope<'scope, '_>,
) -> Result<(), RestoreError> {
    let started = SystemTime::now();
    let jobs = if store.local_dir().is_some() { 1 } else { BUCKET_JOBS };
    let mut in_flight: Vec<(String, std::thread::ScopedJoinHandle<'scope, ()>)> = Vec::new();
    // The request the plan was made for, the plan, and when to look at the archive again.
    let mut current: Option<(SegmentId, SystemTime)> = None;
    let mut wanted: Vec<Planned> = Vec::new();
    let mut listing: Option<Listing> = None;
    let mut replan_at: Option<Instant> = None;
    // Entries fetched (or failed, or seen in the spool, or being fetched) and not removed by the worker
    // since: never fetched again, so an entry a restore has just taken is not fetched back before the worker
    // sees the next request. Pruned of everything up to the requested segment.
    let mut seen: Vec<String> = Vec::new();
    loop {
        in_flight.retain(|(_, fetch)| !fetch.is_finished());
        if !spool.dir.is_dir() {
            return Ok(());
        }
        let request = spool.read_request();
        let last_activity = request.map(|r| r.2).unwrap_or(started).max(started);
        if SystemTime::now().duration_since(last_activity).unwrap_or_default() > idle {
            for (_, fetch) in in_flight.drain(..) {
                let _ = fetch.join();
            }
            spool.remove_entries_except(&[], &[]);
            let _ = fs::remove_file(spool.dir.join(REQUEST));
            return Ok(());
        }
        let Some((requested, segment_size, stamp)) = request else {
            std::thread::sleep(POLL);
            continue;
        };
        let new_request = current != Some((requested, stamp));
        if new_request || replan_at.is_some_and(|t| Instant::now() >= t) {
            current = Some((requested, stamp));
            match plan_listed(store, &mut listing, requested, segment_size, depth) {
                Ok(planned) => {
                    wanted = planned;
                    let keep: Vec<String> = wanted.iter().map(|p| p.name.clone()).collect();
                    let busy: Vec<&str> = in_flight.iter().map(|(n, _)| n.as_str()).collect();
                    let removed = spool.remove_entries_except(&keep, &busy);
                    let requested_name = requested.file_name(segment_size);
                    seen.retain(|n| !removed.contains(n) && n[8..] > requested_name[8..]);
                    // Short of the depth: the end of the archive so far; look again later for new segments.
                    replan_at = (wanted.len() < depth).then(|| Instant::now() + Duration::from_millis(200));
                }
                // The store did not answer: the last plan and the ready entries stay; try again in a while.
                Err(e) => {
                    spool.log(&format!("cannot plan after {}: {e}", requested.file_name(segment_size)));
                    replan_at = Some(Instant::now() + LIST_RETRY);
                }
            }
        }
        for n in spool.entries() {
            if !seen.contains(&n) {
                seen.push(n);
            }
        }
        let free = jobs.saturating_sub(in_flight.len());
        let next: Vec<Planned> =
            wanted.iter().filter(|p| !seen.contains(&p.name)).take(free).cloned().collect();
        if next.is_empty() {
            std::thread::sleep(POLL);
            continue;
        }
        for planned in next {
            seen.push(planned.name.clone());
            let name = planned.name.clone();
            in_flight.push((name, scope.spawn(move || fetch_logged(spool, store, &planned))));
        }
    }
}

/// [`fetch`], its failure logged in the spool.
fn fetch_logged(spool: &Spool, store: &dyn Store, planned: &Planned) {
    let started = Instant::now();
    match fetch(spool, store, planned) {
        Ok(()) => tracing::debug!(segment = %planned.name, elapsed = ?started.elapsed(), "prefetched"),
        Err(e) => spool.log(&format!("{}: {e}", planned.name)),
    }
}

/// Decompress the planned segment from the archive into the spool entry of its name, checking it as
/// restore does (its system identifier is checked when the entry is taken: the worker runs outside the data
/// directory). The entry gets the archive file's name ([`SOURCE_ATTR`]) and modification time as the read
/// found it, which [`Spool::take`] compares with the archive's when serving it.
fn fetch(spool: &Spool, store: &dyn Store, planned: &Planned) -> Result<(), RestoreError> {
    let entry = spool.dir.join(&planned.name);
    let mut tmp = restore::temp_beside(&entry)?;
    let (_, found) = restore::fill_segment(store, &planned.name, &planned.source, &mut tmp, None)?;
    // Without the attribute (a file system that keeps none) the entry is still served, after a lookup.
    let _ = set_source(tmp.as_file(), &planned.source.file);
    let modified = found.modified.ok_or_else(|| RestoreError::Damaged {
        location: store.location_of(&found.name),
        detail: "the store gives no modification time".into(),
    })?;
    tmp.as_file().set_modified(modified).map_err(|e| WalDirError::io("set the time of", &entry, e))?;
    restore::persist_durably(tmp, &entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::store::LocalStore;

    const SEG: u32 = 1 << 20;

    fn touch(dir: &Path, tli: u32, numbers: std::ops::RangeInclusive<u64>, suffix: &str) {
        for number in numbers {
            fs::write(
                dir.join(format!("{}{suffix}", SegmentId { timeline: tli, number }.file_name(SEG))),
                b"",
            )
            .unwrap();
        }
    }

    fn names(v: &[Planned]) -> Vec<String> {
        v.iter()
            .map(|p| format!("{}/{}", &p.name[7..8], u64::from_str_radix(&p.name[16..], 16).unwrap()))
            .collect()
    }

    /// [`plan`] from a fresh listing of everything after `requested`.
    fn plan_now(store: &dyn Store, requested: SegmentId, depth: usize) -> Vec<Planned> {
        let catalog = Catalog::read_after(store, &requested.file_name(SEG), SEG).unwrap();
        plan(store, &catalog, requested, SEG, depth)
    }

    /// [`plan_listed`] for segment `number` of timeline 1: the names planned, and whether the archive was
    /// listed for it.
    fn plan_next(
        store: &dyn Store,
        listing: &mut Option<Listing>,
        number: u64,
        segment_size: u32,
        depth: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        // Backdated a little, so a new listing always has another time.
        let before = listing.as_mut().map(|l| {
            l.at = l.at.checked_sub(Duration::from_millis(1)).unwrap();
            l.at
        });
        let planned = plan_listed(store, listing, SegmentId { timeline: 1, number }, segment_size, depth)?;
        Ok((names(&planned), listing.as_ref().map(|l| l.at) != before))
    }

    #[test]
    fn the_worker_lists_the_archive_again_only_when_its_listing_cannot_serve() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("archive");
        fs::create_dir(&dir).unwrap();
        touch(&dir, 1, 1..=20, "");
        let store = LocalStore::new(&dir);
        let mut listing = None;
        let next = |listing: &mut Option<Listing>, number, depth| {
            plan_next(&store, listing, number, SEG, depth).unwrap()
        };
        // What a call should give: the names planned, and whether it listed the archive.
        let want = |names: &[&str], listed| (names.iter().map(|n| n.to_string()).collect::<Vec<_>>(), listed);
        assert_eq!(next(&mut listing, 2, 4), want(&["1/3", "1/4", "1/5", "1/6"], true));
        // The next requests plan from the same listing: one listing per recovery, not per segment.
        assert_eq!(next(&mut listing, 3, 4), want(&["1/4", "1/5", "1/6", "1/7"], false));
        assert_eq!(next(&mut listing, 10, 4), want(&["1/11", "1/12", "1/13", "1/14"], false));
        // A request before what was listed: listed again from there.
        assert_eq!(next(&mut listing, 1, 2), want(&["1/2", "1/3"], true));
        // The end of the listing: listed again, and a segment archived since then is planned.
        touch(&dir, 1, 21..=21, ".zst");
        assert_eq!(next(&mut listing, 18, 4), want(&["1/19", "1/20", "1/21"], true));
        let planned =
            plan_listed(&store, &mut listing, SegmentId { timeline: 1, number: 20 }, SEG, 1).unwrap();
        assert_eq!(
            planned[0].source.file,
            format!("{}.zst", SegmentId { timeline: 1, number: 21 }.file_name(SEG))
        );
        // A request before the listing (it began after 1/20): listed again.
        assert_eq!(next(&mut listing, 5, 2), want(&["1/6", "1/7"], true));
        // A listing too old to plan from: a timeline begun since is seen.
        fs::write(dir.join("00000002.history"), "1\t0/800000\tx\n").unwrap();
        touch(&dir, 2, 8..=9, "");
        assert_eq!(next(&mut listing, 5, 4), want(&["1/6", "1/7", "1/8", "1/9"], false));
        listing.as_mut().unwrap().at = Instant::now().checked_sub(LISTING_MAX_AGE).unwrap();
        assert_eq!(next(&mut listing, 5, 4), want(&["1/6", "1/7", "2/8", "2/9"], true));
        // A segment size other than the listing's: listed again.
        assert!(!next(&mut listing, 5, 2).1 && plan_next(&store, &mut listing, 5, SEG * 2, 2).unwrap().1);
        // The end of the listing, and an archive that cannot be listed: an error (the worker keeps its last
        // plan), and the last listing is kept.
        plan_next(&store, &mut listing, 5, SEG, 2).unwrap();
        fs::rename(&dir, tmp.path().join("gone")).unwrap();
        let err = plan_next(&store, &mut listing, 19, SEG, 4).unwrap_err();
        assert!(err.to_string().contains("could not open directory"), "{err}");
        assert_eq!(listing.as_ref().unwrap().after, SegmentId { timeline: 1, number: 5 }.file_name(SEG));
    }

    #[test]
    fn an_entry_names_its_source_only_as_a_form_of_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let name = SegmentId { timeline: 1, number: 3 }.file_name(SEG);
        let entry = File::create(dir.path().join(&name)).unwrap();
        assert_eq!(source_of(&entry, &name), None, "nothing recorded");
        if let Err(e) = set_source(&entry, &format!("{name}.zst")) {
            // tmpfs before Linux 6.6 keeps no user attributes: serving then looks the segment up.
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
            return;
        }
        assert_eq!(source_of(&entry, &name), Some(format!("{name}.zst")));
        let other = SegmentId { timeline: 1, number: 4 }.file_name(SEG);
        for bad in [other.clone(), format!("{name}.partial"), format!("{name}.zst.bak"), "../x".into()] {
            set_source(&entry, &bad).unwrap();
            assert_eq!(source_of(&entry, &name), None, "{bad}");
        }
        set_source(&entry, &name).unwrap();
        assert_eq!(source_of(&entry, &name), Some(name.clone()));
    }

    #[test]
    fn a_restore_waits_for_the_workers_fetch_of_its_segment() {
        let archive = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool"), &LocalStore::new(archive.path())).unwrap();
        let name = SegmentId { timeline: 1, number: 3 }.file_name(SEG);
        let temp = spool.dir.join(format!("{}abc123.tmp", fetch_temp_prefix(&name)));
        fs::write(&temp, b"").unwrap();
        assert!(spool.fetching(&name));
        assert!(!spool.fetching(&SegmentId { timeline: 1, number: 4 }.file_name(SEG)));
        // Stale: no worker holds the lock, so nothing is waited for.
        assert!(!spool.worker_running());
        // A worker (this test holding its lock) lands the entry a little later.
        let lock = spool.open_lock().unwrap();
        assert!(try_lock(&lock));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                fs::rename(&temp, spool.dir.join(&name)).unwrap();
            });
            spool.wait_for_fetch(&name, Duration::from_secs(60));
            assert!(spool.dir.join(&name).exists(), "returned before the fetch ended");
        });
        // The worker's clean-up spares the temporary files of fetches in flight only.
        let busy = spool.dir.join(format!("{}x.tmp", fetch_temp_prefix(&name)));
        let stale = spool.dir.join(".000000010000000000000009.walkeeper-y.tmp");
        fs::write(&busy, b"").unwrap();
        fs::write(&stale, b"").unwrap();
        spool.remove_entries_except(std::slice::from_ref(&name), &[&name]);
        assert!(busy.exists() && !stale.exists());
    }

    #[test]
    fn plan_follows_latest_timeline_and_stops_at_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let store = LocalStore::new(dir);
        touch(dir, 1, 1..=9, "");
        touch(dir, 2, 5..=7, ".zst");
        touch(dir, 3, 7..=8, ".gz");
        touch(dir, 1, 10..=10, ".partial"); // never prefetched
        fs::write(dir.join("00000002.history"), "1\t0/500010\tx\n").unwrap();
        fs::write(dir.join("00000003.history"), "1\t0/500010\tx\n2\t0/700000\ty\n").unwrap();
        let at = |tli, number| SegmentId { timeline: tli, number };
        assert_eq!(names(&plan_now(&store, at(1, 2), 8)), ["1/3", "1/4", "2/5", "2/6", "3/7", "3/8"]);
        assert_eq!(names(&plan_now(&store, at(2, 5), 2)), ["2/6", "3/7"]);
        // Asked for timeline 1 past the switch: recovery is not following the latest; stay on 1.
        assert_eq!(names(&plan_now(&store, at(1, 6), 8)), ["1/7", "1/8", "1/9"]);
        // A timeline that is not on the newest history: only itself.
        touch(dir, 4, 1..=2, "");
        assert_eq!(names(&plan_now(&store, at(4, 1), 8)), ["4/2"]);
    }
}
