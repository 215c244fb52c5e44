//! The local WAL directory, write side: one segment at a time as `<name>.partial` (padded with zeros
//! when uncompressed, like pg_receivewal), sequential writes, `sync()` returning the LSN that is now
//! safe to report, and on completion fsync + rename to the final name + directory fsync. Also
//! timeline history files, written under a temporary name and renamed into place.
//!
//! Durability bookkeeping (invariants 1–3 of DESIGN.md): a writer tracks two offsets inside its
//! segment, `written` (accepted from the caller) ≥ `durable` (held under the `.partial` name and covered
//! by a successful fsync). Only a successful fsync moves `durable`, so a failed write or fsync can never
//! make the writer claim bytes that are not on disk.
//!
//! Streaming always restarts at a segment's first byte, so an existing `.partial` is written again from
//! its start. Uncompressed, the file is rewritten in place: bytes past the new data stay as they were
//! until overwritten. Compressed, the stream is started afresh under a temporary name and replaces the
//! old `.partial` only once it holds everything of it worth keeping (`archive/restream.rs` says when, and
//! why a sync may claim the new bytes meanwhile).
//!
//! With sync on, uncompressed segments are written with `O_DIRECT` through a staging buffer
//! ([`super::direct`]): the archive never fills the page cache, and an fsync has no dirty pages left to
//! write back (only the device cache to flush, plus a journal commit for blocks reserved with
//! `fallocate`).

use super::compress::Compressor;
use super::direct::StagedWriter;
use super::error::{Result, WalDirError};
use super::fsutil;
use super::restream::{temp_path, Restream};
use crate::wal::segment::{history_file_name, valid_segment_size, Compression, SegmentId, TimeLineId};
use crate::wal::Lsn;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Compressed output is written to the file once this much has piled up in memory (and at every
/// `sync()`), so memory stays bounded between syncs.
const COMPRESSED_WRITE_THRESHOLD: usize = 256 * 1024;

/// Staging buffer of a direct-I/O segment: data reaches the device in writes of this size (and at every
/// `sync()`). 1 MiB writes run the virtual disk at about twice the rate of the 128 kB the server sends
/// per message.
const DIRECT_STAGING: usize = 1 << 20;

/// How segments and history files are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalDirOptions {
    /// WAL segment size of the server, in bytes.
    pub segment_size: u32,
    pub compression: Compression,
    /// Compression level; the method's default when `None`.
    pub compression_level: Option<i32>,
    /// Permission bits of created files (pg_receivewal: 0600, or 0640 with group access).
    pub file_mode: u32,
    /// fsync files and directories (`false` is pg_receivewal's `--no-sync`).
    pub sync: bool,
    /// How uncompressed segments are given their full size.
    pub preallocation: fsutil::Preallocation,
    /// Write uncompressed segments with `O_DIRECT` where the file system allows it (falls back to the
    /// page cache where it does not). Meant for sync on: with `--no-sync` the page cache is the point.
    pub direct_io: bool,
}

impl WalDirOptions {
    /// Uncompressed, mode 0600, synced: pg_receivewal's defaults.
    pub fn new(segment_size: u32) -> WalDirOptions {
        WalDirOptions {
            segment_size,
            compression: Compression::None,
            compression_level: None,
            file_mode: 0o600,
            sync: true,
            preallocation: fsutil::Preallocation::ZeroFill,
            direct_io: true,
        }
    }
}

/// A WAL directory that segments and history files are written into.
#[derive(Debug)]
pub struct LocalWalDir {
    dir: PathBuf,
    options: WalDirOptions,
}

impl LocalWalDir {
    /// Use the existing directory `dir` with `options`.
    pub fn open(dir: impl Into<PathBuf>, options: WalDirOptions) -> Result<LocalWalDir> {
        let dir = dir.into();
        if !valid_segment_size(u64::from(options.segment_size)) {
            return Err(WalDirError::InvalidSegmentSize(u64::from(options.segment_size)));
        }
        // Check the level now rather than at the first segment.
        Compressor::new(options.compression, options.compression_level)?;
        let meta = fs::metadata(&dir).map_err(|e| WalDirError::io("access directory", &dir, e))?;
        if !meta.is_dir() {
            return Err(WalDirError::NotADirectory { path: dir });
        }
        Ok(LocalWalDir { dir, options })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Open `segment` for writing from its first byte, as `<name>[.gz|.lz4|.zst].partial`.
    ///
    /// Uncompressed: a new (or empty) file is padded to the segment size with zeros; an existing
    /// file of exactly the segment size is reused and overwritten from the start; any other size is an
    /// error. Compressed: a new stream, written straight into a new (or empty) `.partial`, or under a
    /// temporary name while an old `.partial` with contents keeps its name (see `archive/restream.rs`).
    /// With sync on, the file that holds the name and the directory entry are made durable before any
    /// data goes in, so a later fsync of the file alone covers its name too.
    pub fn open_segment(&self, segment: SegmentId) -> Result<SegmentWriter> {
        let name = segment.file_name(self.options.segment_size);
        let suffix = self.options.compression.suffix();
        let partial_path = self.dir.join(format!("{name}{suffix}.partial"));
        let final_path = self.dir.join(format!("{name}{suffix}"));
        // Both ends must be representable LSNs; `lsn_at` relies on it.
        let size = self.options.segment_size;
        let start = match (segment.start_lsn(size), segment.end_lsn(size)) {
            (Some(start), Some(_)) => start,
            _ => return Err(WalDirError::LsnOverflow { path: partial_path }),
        };
        let compressor = Compressor::new(self.options.compression, self.options.compression_level)?;
        let mut restream = None;
        let (file, reused) = if compressor.is_some() {
            restream = Restream::start(&partial_path, self.options.compression, self.options.sync)?;
            let path = match &restream {
                Some(r) => r.new_file_path().to_path_buf(),
                None => {
                    // A new stream replaced by nothing: a temporary file left by a crash is garbage.
                    remove_if_present(&temp_path(&partial_path))?;
                    partial_path.clone()
                }
            };
            (fsutil::open_for_write(&path, self.options.file_mode, true)?, false)
        } else {
            self.open_padded(&partial_path)?
        };
        let staged = (compressor.is_none() && self.options.direct_io)
            .then(|| StagedWriter::new(&file, DIRECT_STAGING, reused));
        if self.options.sync {
            // A re-stream's temporary file needs no sync yet: nothing is claimed from it before it is
            // synced and renamed (the old `.partial` was synced by `Restream::start`).
            if restream.is_none() {
                fsutil::sync_file(&file, &partial_path)?;
            }
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(SegmentWriter {
            segment,
            segment_size: self.options.segment_size,
            start,
            partial_path,
            final_path,
            file,
            compressor,
            compressed_len: 0,
            staged,
            restream,
            sync: self.options.sync,
            written: 0,
            durable: 0,
        })
    }

    /// Open an uncompressed `.partial`, padding it to the full segment size unless it already is; true
    /// with the file when it existed at full size (and may hold data past what will be written).
    ///
    /// The padding is written under `<name>.partial.tmp` and renamed into place (synced first with sync
    /// on): a crash while padding leaves only that temporary file, which the next attempt starts over,
    /// never a `.partial` of an odd size that the size check below would refuse at every restart.
    fn open_padded(&self, path: &Path) -> Result<(File, bool)> {
        let expected = u64::from(self.options.segment_size);
        match fs::metadata(path) {
            Ok(meta) if meta.len() == expected => {
                // Readable too: a direct-I/O rewrite reads back the old bytes of blocks it only partly
                // overwrites.
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| WalDirError::io("open", path, e))?;
                return Ok((file, true));
            }
            Ok(meta) if meta.len() != 0 => {
                return Err(WalDirError::PartialSize {
                    path: path.to_path_buf(),
                    size: meta.len(),
                    expected,
                });
            }
            Ok(_) => {} // empty: replaced by a padded file below
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalDirError::io("stat", path, e)),
        }
        let tmp = temp_path(path);
        let file = fsutil::open_for_write(&tmp, self.options.file_mode, true)?;
        // Zeros written directly never occupy the page cache (the segment's writer uses O_DIRECT too).
        let direct = self.options.direct_io && super::direct::set_direct(&file, true).is_ok();
        let mut padded = fsutil::preallocate(&file, &tmp, expected, self.options.preallocation);
        if direct
            && padded
                .as_ref()
                .is_err_and(|e| e.os_error().and_then(io::Error::raw_os_error) == Some(libc::EINVAL))
        {
            // O_DIRECT accepted at open but not at this alignment: pad through the page cache.
            padded = super::direct::set_direct(&file, false)
                .map_err(|e| WalDirError::io("set flags of", &tmp, e))
                .and_then(|()| fsutil::preallocate(&file, &tmp, expected, self.options.preallocation));
        }
        let padded = padded.and_then(|()| {
            if self.options.sync {
                fsutil::sync_file(&file, &tmp)?;
            }
            fsutil::rename(&tmp, path)
        });
        if let Err(e) = padded {
            // Give the space back, as pg_receivewal does; the next attempt starts over.
            drop(file);
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok((file, false))
    }

    /// Path of the history file of `timeline` in this directory.
    fn history_path(&self, timeline: TimeLineId) -> PathBuf {
        self.dir.join(history_file_name(timeline))
    }

    /// True if the history file of `timeline` is present.
    pub fn has_history(&self, timeline: TimeLineId) -> Result<bool> {
        let path = self.history_path(timeline);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(WalDirError::io("stat", &path, e)),
        }
    }

    /// Store the history file of `timeline`: written as `<name>.tmp`, synced, renamed into place,
    /// directory synced. An existing file with the same contents is left alone; one with other
    /// contents is an error (it belongs to another history).
    pub fn write_history(&self, timeline: TimeLineId, contents: &[u8]) -> Result<PathBuf> {
        let path = self.history_path(timeline);
        match fs::read(&path) {
            Ok(existing) if existing == contents => return Ok(path),
            Ok(_) => return Err(WalDirError::HistoryConflict { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalDirError::io("read", &path, e)),
        }
        let tmp = temp_path(&path);
        remove_if_present(&tmp)?;
        fsutil::write_new_file(&tmp, contents, self.options.file_mode, self.options.sync)?;
        if self.options.sync {
            fsutil::durable_rename(&tmp, &path)?;
        } else {
            fsutil::rename(&tmp, &path)?;
        }
        Ok(path)
    }
}

/// One segment being written. Dropping it without closing it leaves the `.partial` as it is on disk
/// (and a re-stream's temporary file beside it), which the next start resumes from.
pub struct SegmentWriter {
    segment: SegmentId,
    segment_size: u32,
    start: Lsn,
    partial_path: PathBuf,
    final_path: PathBuf,
    /// Where the bytes go: the `.partial`, or a re-stream's temporary file.
    file: File,
    compressor: Option<Compressor>,
    /// Compressed bytes already in the file (where the next compressed output goes).
    compressed_len: u64,
    /// Uncompressed with direct I/O: the staging buffer in front of the file.
    staged: Option<StagedWriter>,
    /// Compressed, while an old `.partial` keeps its name (see `archive/restream.rs`).
    restream: Option<Restream>,
    sync: bool,
    /// Offsets inside the segment; see the module comment.
    written: u64,
    durable: u64,
}

/// What closing a [`SegmentWriter`] left on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedSegment {
    /// The final name for a complete segment, the `.partial` otherwise.
    pub path: PathBuf,
    pub complete: bool,
}

impl SegmentWriter {
    pub fn segment(&self) -> SegmentId {
        self.segment
    }

    /// The `.partial` file being written (under a temporary name while a re-stream has not replaced
    /// the old one yet).
    pub fn path(&self) -> &Path {
        &self.partial_path
    }

    /// The file the bytes go to now.
    fn file_path(&self) -> &Path {
        self.restream.as_ref().map_or(self.partial_path.as_path(), Restream::new_file_path)
    }

    /// True when uncompressed WAL goes to the file with `O_DIRECT` (see [`super::direct`]).
    pub fn is_direct(&self) -> bool {
        self.staged.as_ref().is_some_and(StagedWriter::is_direct)
    }

    /// LSN of the segment's first byte.
    pub fn start_lsn(&self) -> Lsn {
        self.start
    }

    /// LSN just past the last byte accepted by [`SegmentWriter::write_at`].
    pub fn written_lsn(&self) -> Lsn {
        self.lsn_at(self.written)
    }

    /// LSN just past the last byte the `.partial` name holds durably (the segment start before any).
    /// Never advances with sync off.
    pub fn durable_lsn(&self) -> Lsn {
        self.lsn_at(self.durable)
    }

    /// Bytes still to come before the segment is complete.
    pub fn remaining(&self) -> u64 {
        u64::from(self.segment_size) - self.written
    }

    pub fn is_complete(&self) -> bool {
        self.remaining() == 0
    }

    fn lsn_at(&self, offset: u64) -> Lsn {
        // Cannot saturate: offsets never exceed the segment size, and open_segment checked that
        // the segment's end is a valid LSN.
        Lsn(self.start.0.saturating_add(offset))
    }

    /// Offset inside the segment of `lsn`, clamped to the segment.
    fn offset_of(&self, lsn: Lsn) -> u64 {
        lsn.0.saturating_sub(self.start.0).min(u64::from(self.segment_size))
    }

    /// Write `data` at `offset` inside the segment. Writes must be sequential: `offset` is where
    /// the previous write ended. If this returns an error, [`SegmentWriter::written_lsn`] tells how
    /// much of `data` was accepted (often nothing), and writing the rest from there can be retried
    /// (after freeing disk space, for instance).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        if let Some(staged) = self.staged.as_mut() {
            let result = staged.append(&self.file, data);
            let taken = result.as_ref().map_or_else(|(taken, _)| *taken, |()| data.len());
            self.written += taken as u64;
            return result.map_err(|(_, e)| WalDirError::io("write", &self.partial_path, e));
        }
        let path = self.restream.as_ref().map_or(self.partial_path.as_path(), Restream::new_file_path);
        match self.compressor.as_mut() {
            None => {
                fsutil::write_at_tracked(&self.file, data, offset)
                    .map_err(|(_, e)| WalDirError::io("write", path, e))?;
            }
            Some(compressor) => {
                // Write out earlier output first: if that fails, `data` is not taken in yet.
                if compressor.output().len() >= COMPRESSED_WRITE_THRESHOLD {
                    write_output(&self.file, path, compressor.output(), &mut self.compressed_len)?;
                }
                compressor.write(data).map_err(|e| WalDirError::io("compress data for", path, e))?;
                if let Some(restream) = self.restream.as_mut() {
                    restream.compare(data);
                }
            }
        }
        self.written += data.len() as u64;
        Ok(())
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        if offset != self.written {
            return Err(WalDirError::UnexpectedOffset {
                path: self.partial_path.clone(),
                offset,
                len,
                expected: self.written,
            });
        }
        let end = u64::try_from(len).ok().and_then(|l| offset.checked_add(l));
        if end.is_none_or(|end| end > u64::from(self.segment_size)) {
            return Err(WalDirError::BeyondSegment {
                path: self.partial_path.clone(),
                offset,
                len,
                segment_size: self.segment_size,
            });
        }
        Ok(())
    }

    /// How much of the new stream an old `.partial` that keeps its name holds; `None` when there is no
    /// such file (any more), or when the new one may now replace it: every byte before `checked` has
    /// passed the caller's validation.
    fn held_by_old_partial(&self, checked: Lsn) -> Option<u64> {
        self.restream.as_ref()?.held(self.offset_of(checked))
    }

    /// Make everything written so far durable and return the LSN that may now be reported to the
    /// server as flushed. Compressed streams get a sync flush first, so the file decodes up to
    /// that LSN. `checked`: the caller's validation has passed every byte before it (the written
    /// position when nothing validates); a re-stream that differs from the old `.partial` replaces it
    /// only past that point, and until then only the bytes the old file holds are claimed.
    /// With sync off (`--no-sync`), the data is only handed to the kernel and that position is returned,
    /// as pg_receivewal reports it; [`SegmentWriter::durable_lsn`] stays put.
    /// On error nothing new is claimed and the call can be retried.
    pub fn sync(&mut self, checked: Lsn) -> Result<Lsn> {
        if let Some(held) = self.held_by_old_partial(checked) {
            // The old `.partial` holds these bytes (compared equal) and was synced when the segment was
            // opened: nothing to write or sync for them.
            if self.sync {
                self.durable = self.durable.max(held);
            }
            return Ok(self.lsn_at(held));
        }
        let target = self.written;
        if let Some(compressor) = self.compressor.as_mut() {
            let path = self.restream.as_ref().map_or(self.partial_path.as_path(), Restream::new_file_path);
            compressor.sync_flush().map_err(|e| WalDirError::io("compress data for", path, e))?;
            write_output(&self.file, path, compressor.output(), &mut self.compressed_len)?;
        }
        self.write_out_staged()?;
        if self.sync {
            fsutil::sync_file(&self.file, self.file_path())?;
        }
        self.take_the_name(self.sync)?;
        if !self.sync {
            return Ok(self.lsn_at(target));
        }
        self.durable = target;
        Ok(self.lsn_at(self.durable))
    }

    /// A re-stream's new file, complete up to the last write and synced, replaces the old `.partial`;
    /// `sync_dir` makes that durable. A no-op for any other writer.
    fn take_the_name(&mut self, sync_dir: bool) -> Result<()> {
        if let Some(restream) = self.restream.as_mut() {
            restream.replace(sync_dir)?;
            self.restream = None;
        }
        Ok(())
    }

    /// Close a segment whose every written byte the caller has validated, as pg_receivewal's
    /// `close_walfile` does: a compressed stream is ended, the file synced; a complete segment is then
    /// renamed to its final name and the directory synced, an incomplete one (shutdown, end of timeline)
    /// stays `.partial`. On error the file stays `.partial`; reopening the segment starts it over.
    pub fn close(mut self) -> Result<ClosedSegment> {
        if !self.is_complete() {
            tracing::info!(file = %self.partial_path.display(), "not renaming, segment is not complete");
            let checked = self.written_lsn();
            return self.close_partial(checked);
        }
        self.end_stream_and_sync()?;
        // A re-stream's file takes the `.partial` name first, so the old one never outlives the final
        // name; the directory sync below covers both renames.
        self.take_the_name(false)?;
        // The contents are synced above, so the final name can never point at missing data.
        if self.sync {
            fsutil::durable_rename(&self.partial_path, &self.final_path)?;
        } else {
            fsutil::rename(&self.partial_path, &self.final_path)?;
        }
        Ok(ClosedSegment { path: self.final_path, complete: true })
    }

    /// Close keeping the `.partial` name even when every byte is there (the caller has not validated
    /// the end yet; `checked` as for [`SegmentWriter::sync`]): a compressed stream is ended, so the file
    /// is a valid compressed file as pg_receivewal leaves its partials, and the file synced. A re-stream
    /// that may not replace the old `.partial` yet is dropped instead: the old file holds everything
    /// of it worth keeping.
    pub fn close_partial(mut self, checked: Lsn) -> Result<ClosedSegment> {
        if self.held_by_old_partial(checked).is_some() {
            let restream = self.restream.take().expect("held implies a re-stream");
            drop(self.file);
            restream.abandon()?;
            return Ok(ClosedSegment { path: self.partial_path, complete: false });
        }
        self.end_stream_and_sync()?;
        self.take_the_name(self.sync)?;
        Ok(ClosedSegment { path: self.partial_path, complete: false })
    }

    /// End a compressed stream (write its trailer), then fsync the file when sync is on.
    fn end_stream_and_sync(&mut self) -> Result<()> {
        let path = self.file_path().to_path_buf();
        if let Some(compressor) = self.compressor.take() {
            let mut rest = compressor.finish().map_err(|e| WalDirError::io("compress data for", &path, e))?;
            write_output(&self.file, &path, &mut rest, &mut self.compressed_len)?;
        }
        self.write_out_staged()?;
        if self.sync {
            fsutil::sync_file(&self.file, &path)?;
        }
        Ok(())
    }

    /// Hand every accepted byte to the file: with direct I/O, write out the staging buffer (a
    /// no-op otherwise). Called before any position that depends on the file's contents is claimed.
    pub fn write_out_staged(&mut self) -> Result<()> {
        match self.staged.as_mut() {
            Some(staged) => {
                staged.flush(&self.file).map_err(|e| WalDirError::io("write", &self.partial_path, e))
            }
            None => Ok(()),
        }
    }
}

/// Remove `path` if it exists.
fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalDirError::io("remove", path, e)),
    }
}

/// Append the compressed bytes in `out` to the file at `*file_len`. What reached the file is
/// removed from `out` and counted in `*file_len` even on error, so a retry continues exactly there.
fn write_output(file: &File, path: &Path, out: &mut Vec<u8>, file_len: &mut u64) -> Result<()> {
    let result = fsutil::write_at_tracked(file, out, *file_len);
    let done = match &result {
        Ok(()) => out.len(),
        Err((done, _)) => *done,
    };
    out.drain(..done);
    *file_len += done as u64;
    result.map_err(|(_, e)| WalDirError::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::compress::{decompress_available, decompress_file};
    use crate::wal::segment::WalFileName;
    use proptest::prelude::*;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;

    const SEG: u32 = 1 << 20;
    const COMPRESSED: [Compression; 3] = [Compression::Gzip, Compression::Lz4, Compression::Zstd];

    fn options(compression: Compression) -> WalDirOptions {
        WalDirOptions { compression, ..WalDirOptions::new(SEG) }
    }

    fn seg(number: u64) -> SegmentId {
        SegmentId { timeline: 1, number }
    }

    /// Deterministic bytes, half of them incompressible.
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 1000) % 2 == 0 {
                    (i % 251) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    }

    fn write_chunks(w: &mut SegmentWriter, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk) {
            let offset = w.written_lsn().0 - w.start_lsn().0;
            w.write_at(offset, piece).unwrap();
        }
    }

    #[test]
    fn new_segment_is_a_padded_partial_with_the_given_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir =
            LocalWalDir::open(tmp.path(), WalDirOptions { file_mode: 0o640, ..options(Compression::None) })
                .unwrap();
        let w = dir.open_segment(SegmentId { timeline: 2, number: 0x1030 }).unwrap();
        assert_eq!(w.path(), tmp.path().join("000000020000000100000030.partial"));
        assert_eq!(w.start_lsn(), Lsn(0x1_0300_0000));
        assert_eq!(w.durable_lsn(), w.start_lsn());
        assert_eq!(w.remaining(), u64::from(SEG));
        let meta = fs::metadata(w.path()).unwrap();
        assert_eq!(meta.len(), u64::from(SEG));
        assert_eq!(meta.mode() & 0o777, 0o640);
        assert!(fs::read(w.path()).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn complete_segment_is_renamed_and_identical() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalWalDir::open(tmp.path(), options(Compression::None)).unwrap();
        let bytes = data(SEG as usize, 1);
        let mut w = dir.open_segment(seg(5)).unwrap();
        write_chunks(&mut w, &bytes[..1000], 300);
        assert_eq!(w.durable_lsn(), Lsn(5 * u64::from(SEG)));
        assert_eq!(w.sync(w.written_lsn()).unwrap(), Lsn(5 * u64::from(SEG) + 1000));
        assert_eq!(w.durable_lsn(), Lsn(5 * u64::from(SEG) + 1000));
        write_chunks(&mut w, &bytes[1000..], 8192);
        assert!(w.is_complete());
        let closed = w.close().unwrap();
        assert_eq!(
            closed,
            ClosedSegment { path: tmp.path().join("000000010000000000000005"), complete: true }
        );
        assert_eq!(fs::read(&closed.path).unwrap(), bytes);
        assert!(!tmp.path().join("000000010000000000000005.partial").exists());
    }

    #[test]
    fn incomplete_segment_stays_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalWalDir::open(tmp.path(), options(Compression::None)).unwrap();
        let bytes = data(5000, 2);
        let mut w = dir.open_segment(seg(1)).unwrap();
        write_chunks(&mut w, &bytes, 999);
        let closed = w.close().unwrap();
        assert!(!closed.complete);
        assert_eq!(closed.path, tmp.path().join("000000010000000000000001.partial"));
        let on_disk = fs::read(&closed.path).unwrap();
        assert_eq!(on_disk.len(), SEG as usize);
        assert_eq!(&on_disk[..5000], &bytes[..]);
        assert!(on_disk[5000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn existing_partial_is_reused_from_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalWalDir::open(tmp.path(), options(Compression::None)).unwrap();
        let old = data(SEG as usize, 3);
        let path = tmp.path().join("000000010000000000000001.partial");
        fs::write(&path, &old).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut w = dir.open_segment(seg(1)).unwrap();
        w.write_at(0, b"new").unwrap();
        w.sync(w.written_lsn()).unwrap();
        drop(w);
        let on_disk = fs::read(&path).unwrap();
        assert_eq!(&on_disk[..3], b"new");
        assert_eq!(&on_disk[3..], &old[3..]);
        // An existing file keeps its mode.
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
    }

    #[test]
    fn direct_io_follows_the_option_and_the_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let supported = crate::archive::direct::supports_o_direct(tmp.path());
        for (direct_io, compression, expected) in [
            (true, Compression::None, supported),
            (false, Compression::None, false),
            (true, Compression::Zstd, false),
        ] {
            let dir =
                LocalWalDir::open(tmp.path(), WalDirOptions { direct_io, ..options(compression) }).unwrap();
            let w = dir.open_segment(seg(5)).unwrap();
            assert_eq!(w.is_direct(), expected, "direct_io {direct_io}, {compression}");
            // SAFETY: F_GETFL on the writer's own descriptor.
            let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&w.file), libc::F_GETFL) };
            assert_eq!(flags & libc::O_DIRECT != 0, expected, "direct_io {direct_io}, {compression}");
            fs::remove_file(w.path()).unwrap();
        }
    }

    /// Rewriting an old `.partial` (a restart) in pieces, with a sync after each: at every sync the file
    /// holds the new bytes up to the written position and still the old bytes after it, across blocks and
    /// past the 1 MiB staging buffer. Acknowledged WAL is never replaced by padding.
    #[test]
    fn rewritten_partial_keeps_old_bytes_past_every_sync() {
        const BIG: u32 = 4 << 20;
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalWalDir::open(tmp.path(), WalDirOptions::new(BIG)).unwrap();
        let old = data(BIG as usize, 11);
        let new = data(BIG as usize, 12);
        let path = tmp.path().join("000000010000000000000001.partial");
        fs::write(&path, &old).unwrap();
        let mut w = dir.open_segment(SegmentId { timeline: 1, number: 1 }).unwrap();
        let mut at = 0usize;
        for step in [100usize, 5000, 3, 4093, 70_000, 1 << 20, 300_001, 2_000_000] {
            w.write_at(at as u64, &new[at..at + step]).unwrap();
            at += step;
            w.sync(w.written_lsn()).unwrap();
            let on_disk = fs::read(&path).unwrap();
            assert!(on_disk[..at] == new[..at], "new bytes up to {at}");
            assert!(on_disk[at..] == old[at..], "old bytes after {at}");
        }
        w.write_at(at as u64, &new[at..]).unwrap();
        let closed = w.close().unwrap();
        assert!(closed.complete);
        assert!(fs::read(&closed.path).unwrap() == new);
    }

    #[test]
    fn empty_partial_is_padded_and_wrong_size_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalWalDir::open(tmp.path(), options(Compression::None)).unwrap();
        let path = tmp.path().join("000000010000000000000001.partial");
        fs::write(&path, b"").unwrap();
        drop(dir.open_segment(seg(1)).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().len(), u64::from(SEG));
        fs::write(&path, b"12345").unwrap();
        let err = dir.open_segment(seg(1)).err().unwrap().to_string();
        assert_eq!(err, format!("WAL file \"{}\" has 5 bytes, should be 0 or 1048576", path.display()));
        // Untouched.
        assert_eq!(fs::read(&path).unwrap(), b"12345");
    }

    #[test]
    fn padding_cut_short_by_a_crash_never_blocks_the_next_open() {
        // A crash while padding leaves the temporary file, of any size; the `.partial` does not exist yet.
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalWalDir::open(tmp.path(), options(Compression::None)).unwrap();
        let leftover = tmp.path().join("000000010000000000000001.partial.tmp");
        fs::write(&leftover, vec![0u8; 300_000]).unwrap();
        let mut w = dir.open_segment(seg(1)).unwrap();
        w.write_at(0, b"ok").unwrap();
        w.sync(w.written_lsn()).unwrap();
        let partial = tmp.path().join("000000010000000000000001.partial");
        assert_eq!(fs::metadata(&partial).unwrap().len(), u64::from(SEG));
        assert!(!leftover.exists());
        let store = crate::archive::store::LocalStore::new(tmp.path());
        assert!(crate::archive::scan::find_start(&store, SEG, 1).unwrap().is_some());
    }

    #[test]
    fn compressed_segments_decode_to_the_written_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = data(SEG as usize, 4);
        for method in COMPRESSED {
            let dir = LocalWalDir::open(tmp.path(), options(method)).unwrap();
            let mut w = dir.open_segment(seg(7)).unwrap();
            let partial = tmp.path().join(format!("000000010000000000000007{}.partial", method.suffix()));
            assert_eq!(w.path(), partial);
            assert_eq!(fs::metadata(&partial).unwrap().len(), 0, "compressed files are not padded");
            // Sync at uneven points: a reader of the .partial sees every synced byte.
            for cut in [1usize, 70_000, 300_001, 1_000_000] {
                let from = (w.written_lsn().0 - w.start_lsn().0) as usize;
                write_chunks(&mut w, &bytes[from..cut], 8192);
                assert_eq!(w.sync(w.written_lsn()).unwrap(), Lsn(7 * u64::from(SEG) + cut as u64));
                assert_eq!(w.durable_lsn(), w.written_lsn());
                assert_eq!(decompress_available(&partial, method).unwrap(), &bytes[..cut], "{method} {cut}");
            }
            write_chunks(&mut w, &bytes[1_000_000..], 10_000);
            let closed = w.close().unwrap();
            assert!(closed.complete);
            assert_eq!(closed.path, tmp.path().join(format!("000000010000000000000007{}", method.suffix())));
            assert!(!partial.exists());
            assert_eq!(decompress_file(&closed.path, method).unwrap(), bytes, "{method}");
        }
    }

    #[test]
    fn compressed_incomplete_close_ends_the_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = data(100_000, 5);
        for method in COMPRESSED {
            let dir = LocalWalDir::open(tmp.path(), options(method)).unwrap();
            let mut w = dir.open_segment(seg(2)).unwrap();
            write_chunks(&mut w, &bytes, 4096);
            let closed = w.close().unwrap();
            assert!(!closed.complete);
            assert_eq!(decompress_file(&closed.path, method).unwrap(), bytes, "{method}");
        }
    }

    /// `bytes` as one complete compressed stream.
    fn compressed(method: Compression, bytes: &[u8]) -> Vec<u8> {
        let mut c = Compressor::new(method, None).unwrap().unwrap();
        c.write(bytes).unwrap();
        c.finish().unwrap()
    }

    /// An old `.partial` of segment 2 holding `content`; its path and its raw bytes.
    fn old_partial(dir: &Path, method: Compression, content: &[u8]) -> (PathBuf, Vec<u8>) {
        let path = dir.join(format!("000000010000000000000002{}.partial", method.suffix()));
        let raw = compressed(method, content);
        fs::write(&path, &raw).unwrap();
        (path, raw)
    }

    fn at(offset: u64) -> Lsn {
        Lsn(2 * u64::from(SEG) + offset)
    }

    /// Finding 5 of issue 11: streaming a compressed segment again never truncates its old `.partial`.
    /// The new stream goes to a temporary file; the old file keeps its name, untouched, through syncs and
    /// a crash, until the new stream passes its end; then the new file takes the name.
    #[test]
    fn compressed_restream_keeps_the_old_partial_until_the_new_one_passes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = data(300_000, 21);
        for method in COMPRESSED {
            let dir = LocalWalDir::open(tmp.path(), options(method)).unwrap();
            let (partial, raw) = old_partial(tmp.path(), method, &bytes[..200_000]);
            let new_file = temp_path(&partial);
            assert_eq!(WalFileName::parse(&new_file.file_name().unwrap().to_string_lossy()), None);

            // Fewer bytes than the old file holds, synced, then a crash (the writer dropped).
            let mut w = dir.open_segment(seg(2)).unwrap();
            assert_eq!(w.path(), partial);
            write_chunks(&mut w, &bytes[..64_000], 8192);
            assert_eq!(w.sync(w.written_lsn()).unwrap(), at(64_000), "{method}");
            assert_eq!(w.durable_lsn(), at(64_000));
            drop(w);
            assert!(fs::read(&partial).unwrap() == raw, "{method}: old .partial untouched");
            assert!(new_file.exists());

            // Again, with the stale temporary file from the crash; exactly as many bytes as the old file:
            // it still holds everything, and keeps its name.
            let mut w = dir.open_segment(seg(2)).unwrap();
            write_chunks(&mut w, &bytes[..200_000], 65_536);
            assert_eq!(w.sync(w.written_lsn()).unwrap(), at(200_000));
            assert!(fs::read(&partial).unwrap() == raw, "{method}");
            // One byte past its end: the new stream replaces it at the next sync.
            w.write_at(200_000, &bytes[200_000..200_001]).unwrap();
            assert_eq!(w.sync(w.written_lsn()).unwrap(), at(200_001));
            assert!(!new_file.exists(), "{method}");
            assert_eq!(decompress_available(&partial, method).unwrap(), &bytes[..200_001], "{method}");
            write_chunks(&mut w, &bytes[200_001..], 8192);
            let closed = w.close().unwrap();
            assert_eq!(closed, ClosedSegment { path: partial.clone(), complete: false });
            assert_eq!(decompress_file(&partial, method).unwrap(), bytes, "{method}");
            fs::remove_file(&partial).unwrap();
        }
    }

    #[test]
    fn compressed_restream_closed_before_passing_keeps_the_old_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = data(100_000, 22);
        for method in COMPRESSED {
            let dir = LocalWalDir::open(tmp.path(), options(method)).unwrap();
            let (partial, raw) = old_partial(tmp.path(), method, &bytes);
            let mut w = dir.open_segment(seg(2)).unwrap();
            write_chunks(&mut w, &bytes[..10_000], 4096);
            let checked = w.written_lsn();
            let closed = w.close_partial(checked).unwrap();
            assert_eq!(closed, ClosedSegment { path: partial.clone(), complete: false });
            assert!(fs::read(&partial).unwrap() == raw, "{method}");
            assert!(!temp_path(&partial).exists(), "{method}");
            fs::remove_file(&partial).unwrap();
        }
    }

    /// The old `.partial` holds other bytes than the WAL streamed again (a corrupt tail left by a failed
    /// validation). Until validation passes the first differing byte, only the bytes before it are claimed
    /// and the old file keeps its name; once it does, the new stream replaces it. If the new stream is the
    /// corrupt one (validation never passes that byte), the old file stays.
    #[test]
    fn compressed_restream_that_differs_replaces_the_old_partial_only_once_validated() {
        let tmp = tempfile::tempdir().unwrap();
        let good = data(100_000, 23);
        let mut other = good.clone();
        other[40_000..].copy_from_slice(&data(60_000, 24));
        for method in COMPRESSED {
            let dir = LocalWalDir::open(tmp.path(), options(method)).unwrap();

            // Old file with a bad tail, good new stream.
            let (partial, raw) = old_partial(tmp.path(), method, &other);
            let mut w = dir.open_segment(seg(2)).unwrap();
            write_chunks(&mut w, &good[..50_000], 4096);
            assert_eq!(w.sync(at(30_000)).unwrap(), at(40_000), "{method}: only what the old file holds");
            assert_eq!(w.sync(at(40_000)).unwrap(), at(40_000));
            assert!(fs::read(&partial).unwrap() == raw, "{method}");
            assert_eq!(w.sync(at(40_001)).unwrap(), at(50_000), "{method}");
            assert_eq!(decompress_available(&partial, method).unwrap(), &good[..50_000], "{method}");
            assert!(!temp_path(&partial).exists());
            drop(w);

            // Good old file, new stream differing at 40 000 and never validated past it.
            let (partial, raw) = old_partial(tmp.path(), method, &good);
            let mut w = dir.open_segment(seg(2)).unwrap();
            write_chunks(&mut w, &other[..60_000], 4096);
            assert_eq!(w.sync(at(39_000)).unwrap(), at(40_000), "{method}");
            let closed = w.close_partial(at(39_000)).unwrap();
            assert_eq!(closed.path, partial);
            assert!(fs::read(&partial).unwrap() == raw, "{method}: the good old file stays");
            assert!(!temp_path(&partial).exists());
            fs::remove_file(&partial).unwrap();
        }
    }

    /// An old `.partial` cut in the middle of its compressed stream (a crash while writing it): what can
    /// be decoded of it is what it holds.
    #[test]
    fn compressed_restream_over_a_cut_off_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = data(200_000, 25);
        for method in COMPRESSED {
            let dir = LocalWalDir::open(tmp.path(), options(method)).unwrap();
            let (partial, raw) = old_partial(tmp.path(), method, &bytes);
            fs::write(&partial, &raw[..raw.len() / 2]).unwrap();
            let held = decompress_available(&partial, method).unwrap().len();
            assert!(held < bytes.len(), "{method}");
            let mut w = dir.open_segment(seg(2)).unwrap();
            write_chunks(&mut w, &bytes[..held], 8192);
            assert_eq!(w.sync(w.written_lsn()).unwrap(), at(held as u64));
            assert!(fs::read(&partial).unwrap() == raw[..raw.len() / 2], "{method}");
            write_chunks(&mut w, &bytes[held..], 8192);
            assert_eq!(w.sync(w.written_lsn()).unwrap(), at(bytes.len() as u64));
            assert_eq!(decompress_available(&partial, method).unwrap(), bytes, "{method}");
            drop(w);
            fs::remove_file(&partial).unwrap();
        }
    }

    /// A complete segment streamed again over an old `.partial` ends under its final name alone.
    #[test]
    fn compressed_restream_of_a_whole_segment_takes_the_final_name() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = data(SEG as usize, 26);
        for method in COMPRESSED {
            let dir = LocalWalDir::open(tmp.path(), options(method)).unwrap();
            let (partial, _) = old_partial(tmp.path(), method, &bytes);
            let mut w = dir.open_segment(seg(2)).unwrap();
            write_chunks(&mut w, &bytes, 65_536);
            let closed = w.close().unwrap();
            assert!(closed.complete);
            assert_eq!(decompress_file(&closed.path, method).unwrap(), bytes, "{method}");
            assert!(!partial.exists() && !temp_path(&partial).exists(), "{method}");
        }
    }

    #[test]
    fn stale_temporary_file_is_removed_when_a_new_stream_starts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalWalDir::open(tmp.path(), options(Compression::Zstd)).unwrap();
        let partial = tmp.path().join("000000010000000000000002.zst.partial");
        fs::write(temp_path(&partial), b"left by a crash").unwrap();
        let w = dir.open_segment(seg(2)).unwrap();
        assert!(!temp_path(&partial).exists());
        assert_eq!(w.path(), partial);
    }

    #[test]
    fn close_partial_keeps_the_name_and_ends_the_compressed_stream() {
        let tmp = tempfile::tempdir().unwrap();
        for method in [Compression::None, Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let dir = LocalWalDir::open(tmp.path(), options(method)).unwrap();
            for len in [10_000usize, SEG as usize] {
                let bytes = data(len, 8);
                let mut w = dir.open_segment(seg(4)).unwrap();
                write_chunks(&mut w, &bytes, 65_536);
                let partial = w.path().to_path_buf();
                assert_eq!(w.written_lsn(), Lsn(4 * u64::from(SEG) + len as u64));
                let checked = w.written_lsn();
                let closed = w.close_partial(checked).unwrap();
                assert_eq!(closed, ClosedSegment { path: partial.clone(), complete: false });
                assert!(!tmp.path().join(format!("000000010000000000000004{}", method.suffix())).exists());
                // A strict decoder accepts it: the stream has its end.
                let content = decompress_file(&partial, method).unwrap();
                assert_eq!(&content[..len], &bytes[..], "{method} {len}");
                fs::remove_file(&partial).unwrap();
            }
        }
    }

    #[test]
    fn writes_must_be_sequential_and_inside_the_segment() {
        let tmp = tempfile::tempdir().unwrap();
        for method in [Compression::None, Compression::Gzip] {
            let dir = LocalWalDir::open(tmp.path(), options(method)).unwrap();
            let mut w = dir.open_segment(seg(1)).unwrap();
            let err = w.write_at(8, b"x").unwrap_err().to_string();
            assert!(err.contains("at offset 8 is out of order: expected offset 0"), "{err}");
            w.write_at(0, &[1; 10]).unwrap();
            let err = w.write_at(5, b"x").unwrap_err();
            assert!(matches!(err, WalDirError::UnexpectedOffset { expected: 10, .. }), "{err}");
            let err = w.write_at(u64::MAX, b"x").unwrap_err();
            assert!(matches!(err, WalDirError::UnexpectedOffset { .. }), "{err}");
            let too_big = vec![0u8; SEG as usize - 9];
            let err = w.write_at(10, &too_big).unwrap_err().to_string();
            assert!(err.contains("runs past the segment size 1048576"), "{err}");
            w.write_at(10, &too_big[1..]).unwrap();
            assert!(w.is_complete());
            assert!(w.write_at(u64::from(SEG), b"").is_ok());
            assert!(w.write_at(u64::from(SEG), b"x").is_err());
        }
    }

    #[test]
    fn segment_at_the_end_of_the_address_space_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LocalWalDir::open(tmp.path(), options(Compression::None)).unwrap();
        let last = u64::MAX / u64::from(SEG);
        let err = dir.open_segment(seg(last)).err().unwrap();
        assert!(matches!(err, WalDirError::LsnOverflow { .. }), "{err}");
        assert!(dir.open_segment(seg(last - 1)).is_ok());
    }

    #[test]
    fn no_sync_reports_flushed_but_never_durable() {
        let tmp = tempfile::tempdir().unwrap();
        for method in [Compression::None, Compression::Zstd] {
            let dir =
                LocalWalDir::open(tmp.path(), WalDirOptions { sync: false, ..options(method) }).unwrap();
            let mut w = dir.open_segment(seg(3)).unwrap();
            w.write_at(0, &data(5000, 6)).unwrap();
            assert_eq!(w.sync(w.written_lsn()).unwrap(), Lsn(3 * u64::from(SEG) + 5000));
            assert_eq!(w.durable_lsn(), w.start_lsn());
            // The compressor was still flushed to the file.
            assert_eq!(decompress_available(w.path(), method).unwrap()[..5000], data(5000, 6)[..]);
        }
    }

    #[test]
    fn history_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir =
            LocalWalDir::open(tmp.path(), WalDirOptions { file_mode: 0o640, ..options(Compression::None) })
                .unwrap();
        assert!(!dir.has_history(2).unwrap());
        let text = b"1\t0/3000000\tno recovery target specified\n";
        let path = dir.write_history(2, text).unwrap();
        assert_eq!(path, tmp.path().join("00000002.history"));
        assert_eq!(fs::read(&path).unwrap(), text);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert!(dir.has_history(2).unwrap());
        assert!(!tmp.path().join("00000002.history.tmp").exists());
        // Identical again: fine. A stale temporary file is replaced.
        fs::write(tmp.path().join("00000002.history.tmp"), b"junk").unwrap();
        dir.write_history(2, text).unwrap();
        dir.write_history(3, b"x").unwrap();
        assert!(!tmp.path().join("00000003.history.tmp").exists());
        let err = dir.write_history(2, b"other").unwrap_err().to_string();
        assert_eq!(
            err,
            format!("timeline history file \"{}\" already exists with different contents", path.display())
        );
    }

    #[test]
    fn bad_directories_and_options() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        let err = LocalWalDir::open(&missing, options(Compression::None)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "could not access directory \"{}\": No such file or directory (os error 2)",
                missing.display()
            )
        );
        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = LocalWalDir::open(&file, options(Compression::None)).unwrap_err().to_string();
        assert_eq!(err, format!("\"{}\" is not a directory", file.display()));
        let err = LocalWalDir::open(tmp.path(), WalDirOptions::new(3 << 20)).unwrap_err().to_string();
        assert_eq!(err, "invalid WAL segment size 3145728: must be a power of two from 1 MB to 1 GB");
        let bad_level = WalDirOptions { compression_level: Some(0), ..options(Compression::Gzip) };
        assert!(LocalWalDir::open(tmp.path(), bad_level).is_err());
        // The directory disappears after opening.
        let gone = tmp.path().join("gone");
        fs::create_dir(&gone).unwrap();
        let dir = LocalWalDir::open(&gone, options(Compression::None)).unwrap();
        fs::remove_dir(&gone).unwrap();
        let err = dir.open_segment(seg(1)).err().unwrap().to_string();
        assert!(err.starts_with(&format!("could not create \"{}/", gone.display())), "{err}");
        assert!(err.ends_with("No such file or directory (os error 2)"), "{err}");
    }

    /// The rule of tests/support's `cannot_run`, for unit tests: a test that cannot run here says so
    /// loudly and returns, except under CI (`WALKEEPER_CI` set and not `0`, as `.ci/run` sets it), where it
    /// fails, so a suite that could not run never passes silently.
    fn cannot_run(reason: &str) {
        if std::env::var_os("WALKEEPER_CI").is_some_and(|v| !v.is_empty() && v != "0") {
            panic!("this test could not run, and WALKEEPER_CI is set: {reason}");
        }
        eprintln!("SKIPPED (set WALKEEPER_CI=1 to make this a failure): {reason}");
    }

    /// A small tmpfs mounted for one test (needs root, or CAP_SYS_ADMIN); `None`, after
    /// [`cannot_run`], where mounting is not allowed.
    struct TmpMount {
        dir: tempfile::TempDir,
    }

    impl TmpMount {
        fn new(options: &str) -> Option<TmpMount> {
            let dir = tempfile::tempdir().ok()?;
            let out =
                Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(dir.path()).output();
            let why = match out {
                Ok(out) if out.status.success() => return Some(TmpMount { dir }),
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            cannot_run(&format!("cannot mount a tmpfs ({options}) here: {why}"));
            None
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for TmpMount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }

    /// Fill the file system holding `path` completely.
    fn fill(path: &Path) {
        let mut f = File::create(path).unwrap();
        let block = vec![7u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&block[..1]);
    }

    fn is_enospc(e: &WalDirError) -> bool {
        e.os_error().and_then(io::Error::raw_os_error) == Some(libc::ENOSPC)
    }

    #[test]
    fn read_only_file_system_error_names_the_file() {
        let Some(mnt) = TmpMount::new("size=4m,ro") else { return };
        let dir = LocalWalDir::open(mnt.path(), options(Compression::None)).unwrap();
        let err = dir.open_segment(seg(1)).err().unwrap().to_string();
        // The padding is written under a temporary name first: that is the file that could not be created.
        let expected = mnt.path().join("000000010000000000000001.partial.tmp");
        assert_eq!(
            err,
            format!("could not create \"{}\": Read-only file system (os error 30)", expected.display())
        );
    }

    #[test]
    fn disk_full_while_padding_removes_the_partial_and_a_retry_works() {
        let Some(mnt) = TmpMount::new("size=1536k") else { return };
        // Leave about half a segment free.
        let filler = mnt.path().join("filler");
        fs::write(&filler, vec![1u8; 1 << 20]).unwrap();
        let dir = LocalWalDir::open(mnt.path(), options(Compression::None)).unwrap();
        let err = dir.open_segment(seg(1)).err().unwrap();
        assert!(is_enospc(&err), "{err}");
        assert!(err.to_string().starts_with("could not pad \""), "{err}");
        assert!(!mnt.path().join("000000010000000000000001.partial").exists());
        assert!(!mnt.path().join("000000010000000000000001.partial.tmp").exists());
        fs::remove_file(&filler).unwrap();
        let mut w = dir.open_segment(seg(1)).unwrap();
        w.write_at(0, b"ok").unwrap();
        assert_eq!(w.sync(w.written_lsn()).unwrap(), Lsn(u64::from(SEG) + 2));
    }

    #[test]
    fn disk_full_on_compressed_writes_claims_nothing_and_a_retry_works() {
        let Some(mnt) = TmpMount::new("size=2m") else { return };
        let dir = LocalWalDir::open(mnt.path(), options(Compression::Lz4)).unwrap();
        let bytes: Vec<u8> = data(900_000, 7).iter().enumerate().map(|(i, b)| b ^ (i as u8)).collect();
        let mut w = dir.open_segment(seg(1)).unwrap();
        w.write_at(0, &bytes[..100]).unwrap();
        assert_eq!(w.sync(w.written_lsn()).unwrap(), Lsn(u64::from(SEG) + 100));
        let filler = mnt.path().join("filler");
        fill(&filler);
        // Keep writing until the buffered output has to reach the full disk.
        let mut offset = 100usize;
        let failed_at = loop {
            let end = (offset + 65_536).min(bytes.len());
            match w.write_at(offset as u64, &bytes[offset..end]) {
                Ok(()) => offset = end,
                Err(e) => {
                    assert!(is_enospc(&e), "{e}");
                    break offset;
                }
            }
            assert!(offset < bytes.len(), "disk never filled");
        };
        assert_eq!(w.written_lsn(), Lsn(u64::from(SEG) + failed_at as u64));
        let err = w.sync(w.written_lsn()).unwrap_err();
        assert!(is_enospc(&err), "{err}");
        assert_eq!(w.durable_lsn(), Lsn(u64::from(SEG) + 100));
        // Space comes back: retry the very same write, then carry on.
        fs::remove_file(&filler).unwrap();
        write_chunks(&mut w, &bytes[failed_at..], 65_536);
        assert_eq!(w.sync(w.written_lsn()).unwrap(), Lsn(u64::from(SEG) + bytes.len() as u64));
        let closed = w.close().unwrap();
        assert_eq!(decompress_file(&closed.path, Compression::Lz4).unwrap(), bytes);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Random chunked writes at sequential offsets produce exactly the concatenation.
        #[test]
        fn chunked_writes_equal_the_concatenation(
            method_index in 0usize..4,
            seed: u64,
            chunks in prop::collection::vec(1usize..40_000, 0..60),
            complete: bool,
            sync_every in 1usize..8,
            direct_io: bool,
        ) {
            let method = [Compression::None, Compression::Gzip, Compression::Lz4, Compression::Zstd][method_index];
            let tmp = tempfile::tempdir().unwrap();
            let dir = LocalWalDir::open(tmp.path(), WalDirOptions { sync: false, direct_io, ..options(method) }).unwrap();
            let total: usize = if complete { SEG as usize } else { chunks.iter().sum::<usize>().min(SEG as usize) };
            let bytes = data(total, seed);
            let mut w = dir.open_segment(seg(9)).unwrap();
            let mut offset = 0usize;
            for (i, len) in chunks.iter().chain(std::iter::repeat(&65_536)).enumerate() {
                if offset == total {
                    break;
                }
                let end = (offset + len).min(total);
                w.write_at(offset as u64, &bytes[offset..end]).unwrap();
                offset = end;
                if i % sync_every == 0 {
                    w.sync(w.written_lsn()).unwrap();
                }
            }
            let closed = w.close().unwrap();
            prop_assert_eq!(closed.complete, total == SEG as usize);
            let content = decompress_file(&closed.path, method).unwrap();
            prop_assert_eq!(&content[..total], &bytes[..]);
            let expected_len = if method == Compression::None { SEG as usize } else { total };
            prop_assert_eq!(content.len(), expected_len);
            prop_assert!(content[total..].iter().all(|&b| b == 0));
        }
    }
}
