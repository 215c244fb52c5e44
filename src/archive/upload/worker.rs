//! One upload round, the I/O half of the uploader ([`super::plan`] decides, this does): list the store once,
//! list the spool, then upload final files create-only (a few at once), delete superseded `.partial`
//! objects, upload changed `.partial` files, and free the spool (`--remove-uploaded`). A round stops at the
//! first store error; the caller retries it later. A conflict is no error: it is recorded for good.
//!
//! Nothing here fsyncs. The spool's files are already durable (the writer synced and renamed them); an
//! object is durable once its PUT returns; a spool file removed after its upload that reappears after a
//! crash is only uploaded again as "already there" and removed again.

use super::plan::{self, FinalFile, Known, PartialFile, Snapshot};
use super::UploadState;
use crate::archive::catalog::{Catalog, SegmentSize};
use crate::archive::store::{LocalStore, Put, Store, StoreError};
use crate::stream::state::SourceState;
use crate::wal::Lsn;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Memory for uploads in flight: each holds its file twice (the read and the request body).
const PARALLEL_BYTES: u64 = 256 << 20;
/// At most this many uploads at once.
const MAX_PARALLEL: usize = 4;

/// What an upload round can fail on: the store (retried later) or the spool.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not read \"{path}\" from the spool: {source}")]
    Spool { path: String, source: std::io::Error },
}

/// The uploader's state between rounds.
pub struct Worker {
    store: Box<dyn Store>,
    spool: LocalStore,
    spool_dir: PathBuf,
    remove_uploaded: bool,
    known: Known,
    /// True once the store's first listing is in `known`.
    listed: bool,
    /// When the uploader started: before the store's first listing, only spool files newer than this
    /// count as the backlog.
    started: SystemTime,
    source: watch::Receiver<SourceState>,
    state: watch::Sender<UploadState>,
}

/// How a successful round left things.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// `.partial` files changed since their last upload (0 after a round that uploaded them).
    pub partials_left: usize,
}

/// Uploads that may run at once for segments of `segment_size` bytes.
fn parallelism(segment_size: u32) -> usize {
    usize::try_from(PARALLEL_BYTES / u64::from(segment_size.max(1))).unwrap_or(1).clamp(1, MAX_PARALLEL)
}

/// What one create-only upload came to.
enum Outcome {
    Stored(Put),
    Conflict(StoreError),
    Failed(RoundError),
}

impl Worker {
    pub fn new(
        store: Box<dyn Store>,
        spool_dir: PathBuf,
        remove_uploaded: bool,
        source: watch::Receiver<SourceState>,
        state: watch::Sender<UploadState>,
    ) -> Worker {
        Worker {
            store,
            spool: LocalStore::new(&spool_dir),
            spool_dir,
            remove_uploaded,
            known: Known::default(),
            listed: false,
            // A little earlier: file times come from a coarser clock than `now()`.
            started: SystemTime::now() - Duration::from_secs(2),
            source,
            state,
        }
    }

    pub fn location(&self) -> String {
        self.store.location()
    }

    /// One round (module docs). `partials`: upload the changed `.partial` files too.
    pub fn round(&mut self, partials: bool) -> Result<RoundReport, RoundError> {
        // Read before the spool is listed: every byte flushed by then is in a file the listing shows.
        let (flushed, known_size) = {
            let s = self.source.borrow();
            (s.flushed, s.segment_size)
        };
        let size = known_size.map_or(SegmentSize::FromHeaders, SegmentSize::Known);
        let spool = Catalog::read(&self.spool, size)?;
        if known_size.is_none() && !spool.segment_size_known() {
            return Ok(RoundReport::default()); // no WAL to read the segment size from yet
        }
        if !self.listed {
            self.publish_backlog(&spool);
            self.first_listing(spool.segment_size())?;
        }
        let round = plan::plan(&spool, &self.known, self.remove_uploaded);
        let (files, bytes) = round.backlog();
        self.state.send_modify(|s| {
            s.backlog_files = files;
            s.backlog_bytes = bytes;
        });
        self.settle_without_upload(&round.trusted);
        let result = self.upload_finals(&round.uploads, spool.segment_size());
        let result = result.and_then(|()| self.delete_stale_partials(&round.stale_partials));
        let mut report = RoundReport { partials_left: round.partials.len() };
        let result = result.and_then(|()| {
            if partials {
                self.upload_partials(&round.partials, spool.segment_size())?;
                report.partials_left = 0;
            }
            Ok(())
        });
        if result.is_ok() {
            self.remove_uploaded_files(&round.removable);
        }
        if let Some(flushed) = flushed {
            let through = plan::uploaded_through(&spool, &self.known, flushed);
            self.state.send_if_modified(|s| {
                let changed = s.uploaded_through != Some(through);
                s.uploaded_through = Some(through);
                changed
            });
        }
        result.map(|()| report)
    }

    /// Publish the backlog without uploading (while uploads wait for a catch-up, and at a stop): the spool
    /// against what is known of the store; before the store's first listing, the files this run completed.
    pub fn count(&mut self) -> Result<(), RoundError> {
        let known_size = self.source.borrow().segment_size;
        let spool =
            Catalog::read(&self.spool, known_size.map_or(SegmentSize::FromHeaders, SegmentSize::Known))?;
        if known_size.is_none() && !spool.segment_size_known() {
            return Ok(());
        }
        if !self.listed {
            self.publish_backlog(&spool);
            return Ok(());
        }
        let (files, bytes) = plan::plan(&spool, &self.known, self.remove_uploaded).backlog();
        self.state.send_modify(|s| {
            s.backlog_files = files;
            s.backlog_bytes = bytes;
        });
        Ok(())
    }

    /// Before the store's first listing: the files this run has completed since the uploader started.
    fn publish_backlog(&self, spool: &Catalog) {
        let new = |m: Option<SystemTime>| m.is_some_and(|m| m >= self.started);
        let complete = spool.segments().iter().filter(|s| !s.partial && new(s.modified)).map(|s| s.len);
        let histories = spool.histories().values().filter(|e| new(e.modified)).map(|e| e.len);
        let (files, bytes) = complete.chain(histories).fold((0, 0u64), |(n, b), len| (n + 1, b + len));
        self.state.send_modify(|s| {
            s.backlog_files = files;
            s.backlog_bytes = bytes;
        });
    }

    /// What the store holds already: final names and sizes, `.partial` objects.
    fn first_listing(&mut self, segment_size: u32) -> Result<(), RoundError> {
        let store = Catalog::read(&*self.store, SegmentSize::Known(segment_size))?;
        for s in store.segments() {
            if s.partial {
                self.known.partial_objects.insert(s.file.clone());
            } else {
                self.known.listed.insert(s.file.clone(), s.len);
            }
        }
        for e in store.histories().values().chain(store.backup_histories()) {
            self.known.listed.insert(e.name.clone(), e.len);
        }
        self.listed = true;
        tracing::info!(
            "\"{}\" holds {} segment files and {} history files",
            self.store.location(),
            store.segments().len(),
            store.histories().len()
        );
        Ok(())
    }

    fn settle_without_upload(&mut self, trusted: &[String]) {
        for name in trusted {
            self.known.listed.remove(name);
            self.known.done.insert(name.clone());
        }
    }

    /// Upload `files` create-only, a few at once, in order. Stops after the first batch with a failure.
    fn upload_finals(&mut self, files: &[FinalFile], segment_size: u32) -> Result<(), RoundError> {
        for batch in files.chunks(parallelism(segment_size)) {
            let outcomes = self.upload_batch(batch);
            let mut failure = None;
            for (f, outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    Outcome::Stored(put) => {
                        self.known.listed.remove(&f.name);
                        self.known.done.insert(f.name.clone());
                        self.state.send_modify(|s| {
                            s.uploads_ok += 1;
                            s.backlog_files = s.backlog_files.saturating_sub(1);
                            s.backlog_bytes = s.backlog_bytes.saturating_sub(f.len);
                            s.last_upload = Some(SystemTime::now());
                        });
                        let how = if put == Put::AlreadyThere { ", already there" } else { "" };
                        tracing::info!(
                            "uploaded \"{}\" ({} bytes{how})",
                            self.store.location_of(&f.name),
                            f.len
                        );
                    }
                    Outcome::Conflict(e) => {
                        let path = self.spool_dir.join(&f.name);
                        tracing::error!(
                            "upload conflict: {e}; not retried: the spool keeps \"{}\". Move the object away if it does not belong to this archive (another server writing to the same prefix?), then restart",
                            path.display()
                        );
                        self.known.listed.remove(&f.name);
                        self.known.conflicts.insert(f.name.clone());
                        let location = self.store.location_of(&f.name);
                        self.state.send_modify(|s| {
                            s.conflicts += 1;
                            s.conflicted.push(location);
                            s.backlog_files = s.backlog_files.saturating_sub(1);
                            s.backlog_bytes = s.backlog_bytes.saturating_sub(f.len);
                        });
                    }
                    Outcome::Failed(e) => {
                        self.state.send_modify(|s| s.uploads_failed += 1);
                        failure.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(())
    }

    fn upload_batch(&self, batch: &[FinalFile]) -> Vec<Outcome> {
        let one = |f: &FinalFile| upload_one(&*self.store, &self.spool_dir, f);
        if batch.len() == 1 {
            return vec![one(&batch[0])];
        }
        std::thread::scope(|scope| {
            let running: Vec<_> = batch.iter().map(|f| scope.spawn(move || one(f))).collect();
            running
                .into_iter()
                .map(|t| {
                    t.join().unwrap_or_else(|_| {
                        Outcome::Failed(RoundError::Store(StoreError::Io {
                            op: "upload to",
                            location: self.store.location(),
                            source: "an upload thread panicked".into(),
                        }))
                    })
                })
                .collect()
        })
    }

    fn delete_stale_partials(&mut self, stale: &[String]) -> Result<(), RoundError> {
        for name in stale {
            self.store.delete(name)?;
            self.known.partial_objects.remove(name);
            self.known.snapshots.remove(name);
            tracing::debug!("deleted \"{}\": its complete segment is uploaded", self.store.location_of(name));
        }
        Ok(())
    }

    /// Upload each changed `.partial` in place (the one kind of object that is replaced).
    fn upload_partials(&mut self, partials: &[PartialFile], segment_size: u32) -> Result<(), RoundError> {
        for p in partials {
            // Read before the file: the file holds every byte flushed by then.
            let flushed = self.source.borrow().flushed;
            let path = self.spool_dir.join(&p.name);
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                // Renamed to its final name since the listing: the next round uploads that.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RoundError::Spool { path: path.display().to_string(), source: e }),
            };
            self.store.put_replace(&p.name, &data)?;
            let start = p.id.start_lsn(segment_size).unwrap_or(Lsn(u64::MAX));
            let end = p.id.end_lsn(segment_size).unwrap_or(Lsn(u64::MAX));
            let covers = flushed.unwrap_or(start).clamp(start, end);
            self.known.partial_objects.insert(p.name.clone());
            self.known
                .snapshots
                .insert(p.name.clone(), Snapshot { len: p.len, modified: p.modified, covers });
            self.state.send_modify(|s| s.partial_uploads += 1);
            tracing::debug!(
                "uploaded \"{}\" ({} bytes, WAL up to {covers})",
                self.store.location_of(&p.name),
                data.len()
            );
        }
        Ok(())
    }

    /// `--remove-uploaded`: delete uploaded segments from the spool. A failure only costs space: logged.
    fn remove_uploaded_files(&self, names: &[String]) {
        for name in names {
            match self.spool.delete(name) {
                Ok(()) => tracing::debug!(
                    "removed \"{}\" from the spool: it is uploaded",
                    self.spool.location_of(name)
                ),
                Err(e) => tracing::warn!("could not remove an uploaded file from the spool: {e}"),
            }
        }
    }
}

/// Read `f` from the spool and create it in the store; a created object's size is checked with a HEAD (its
/// contents were checked by the store against the request's signed SHA-256).
fn upload_one(store: &dyn Store, spool_dir: &std::path::Path, f: &FinalFile) -> Outcome {
    let path = spool_dir.join(&f.name);
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) => return Outcome::Failed(RoundError::Spool { path: path.display().to_string(), source: e }),
    };
    match store.put_new(&f.name, &data) {
        Ok(Put::Created) => match store.stat(&f.name) {
            Ok(Some(e)) if e.len == data.len() as u64 => Outcome::Stored(Put::Created),
            Ok(found) => Outcome::Failed(RoundError::Store(StoreError::Io {
                op: "check",
                location: store.location_of(&f.name),
                source: format!(
                    "after uploading {} bytes the store has {}",
                    data.len(),
                    found.map_or("no such object".to_string(), |e| format!("{} bytes", e.len))
                )
                .into(),
            })),
            Err(e) => Outcome::Failed(e.into()),
        },
        Ok(Put::AlreadyThere) => Outcome::Stored(Put::AlreadyThere),
        Err(e @ StoreError::Conflict { .. }) => Outcome::Conflict(e),
        Err(e) => Outcome::Failed(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_uploads_fit_the_memory_budget() {
        assert_eq!(parallelism(16 << 20), MAX_PARALLEL);
        assert_eq!(parallelism(128 << 20), 2);
        assert_eq!(parallelism(1 << 30), 1);
        assert_eq!(parallelism(0), MAX_PARALLEL);
    }
}
