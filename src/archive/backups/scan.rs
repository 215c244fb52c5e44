//! Decoding one complete segment for the backup index: the online checkpoints and backup-end records that
//! start in it. Every record goes through the WAL decoder (page headers, prev-links, CRCs), so only valid
//! records count.
//!
//! A record that starts in the segment and ends in the next one is read to its end from the next segment's
//! file (of the same timeline, or of a later one holding that segment; a `.partial` will do): only then is
//! the segment's scan complete, and only a complete scan goes into the index. When the rest of the record is
//! not there yet, the scan is used for this run and the segment decoded again in the next. Records that start
//! in the next segment are left to its own scan.
//!
//! A segment whose WAL cannot be read to its end (no long page header, a damaged record, a compressed file
//! that does not decompress, a short file) keeps the records before that point and the reason: the content
//! of a complete segment never changes, so it is not decoded again. An I/O error is an error: nothing is
//! recorded, and the next run tries again.

use super::index::{BackupEnd, Checkpoint, SegmentRecords};
use crate::archive::catalog::SegFile;
use crate::archive::contents::{self, CHUNK};
use crate::archive::store::{Store, StoreError};
use crate::wal::at_rest::Feed;
use crate::wal::decoder::{DecoderConfig, RecordInfo, StreamEnd, WalDecoder};
use crate::wal::records::RecordKind;
use crate::wal::segment::Compression;
use crate::wal::Lsn;

/// Bytes read per step of the next segment, where usually only the first few hundred are needed.
const CONTINUATION_CHUNK: usize = 64 << 10;

/// What decoding a segment found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub records: SegmentRecords,
    /// Every record that starts in the segment was read whole (module docs).
    pub complete: bool,
}

/// How feeding a file ended.
enum Fed {
    /// Its end (or the segment size).
    End,
    /// The caller's stop condition held.
    Stopped,
    /// Its WAL or compression is invalid here.
    Invalid(String),
}

/// Decode the complete segment file `f` of a database system `system_id`; `next` is the file holding the
/// following segment, if any.
pub fn scan(
    store: &dyn Store,
    f: &SegFile,
    next: Option<&SegFile>,
    segment_size: u32,
    system_id: u64,
) -> Result<Scan, StoreError> {
    let invalid = |records: SegmentRecords, why: String| Scan {
        records: SegmentRecords { error: Some(why), ..records },
        complete: true,
    };
    let none = SegmentRecords::default();
    let (Some(start), Some(end)) = (f.id.start_lsn(segment_size), f.id.end_lsn(segment_size)) else {
        return Ok(invalid(none, "its segment number is out of range".into()));
    };
    let header = match contents::read_header(store, &f.file, f.compression, false) {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Ok(invalid(none, e.to_string())),
        Err(e) if is_corrupt(&e) => return Ok(invalid(none, e.to_string())),
        Err(e) => return Err(e),
    };
    let cfg = DecoderConfig {
        segment_size,
        page_magic: header.magic,
        system_id: Some(system_id),
        timeline: f.id.timeline,
    };
    let mut d = WalDecoder::new(cfg, start);
    let mut c = Collector { end, records: SegmentRecords::default(), last_seen: None };
    let seg_len = u64::from(segment_size);
    let fed = feed_file(store, f, seg_len, CHUNK, &mut d, &mut |r| c.observe(r), &|_| false)?;
    if let Fed::Invalid(why) = fed {
        return Ok(invalid(c.records, why));
    }
    if d.position() < end {
        let held = d.position().0 - start.0;
        return Ok(invalid(c.records, format!("the file holds {held} bytes of WAL, not a whole segment")));
    }
    let pending = match d.status() {
        Ok(s) => match s.end {
            StreamEnd::InsideRecord { record: Some(r) } if r < end => r,
            _ => return Ok(Scan { records: c.records, complete: true }),
        },
        Err(e) => return Ok(invalid(c.records, e.to_string())),
    };
    // A record crosses into the next segment: read it to its end there.
    let Some(next) = next else { return Ok(Scan { records: c.records, complete: false }) };
    if next.id.timeline > f.id.timeline && d.set_timeline(next.id.timeline).is_err() {
        return Ok(Scan { records: c.records, complete: false });
    }
    let done = |d: &WalDecoder| d.last_record().is_some_and(|l| l >= pending);
    feed_file(store, next, seg_len, CONTINUATION_CHUNK, &mut d, &mut |r| c.observe(r), &done)?;
    let complete = c.last_seen.is_some_and(|l| l >= pending);
    Ok(Scan { records: c.records, complete })
}

/// The records of one segment, as the decoder passes them.
struct Collector {
    /// End of the segment: records starting there or later belong to the next one.
    end: Lsn,
    records: SegmentRecords,
    /// Start of the last valid record seen, in this segment or the next.
    last_seen: Option<Lsn>,
}

impl Collector {
    fn observe(&mut self, r: &RecordInfo) {
        self.last_seen = Some(r.lsn);
        if r.lsn < self.end {
            collect(&mut self.records, r);
        }
    }
}

/// Keep what `r` says, if it is a record the index holds.
fn collect(records: &mut SegmentRecords, r: &RecordInfo) {
    match r.kind {
        RecordKind::Checkpoint { redo, time, shutdown: false, .. } if redo <= r.lsn => {
            records.checkpoints.push(Checkpoint { lsn: r.lsn, redo, time })
        }
        RecordKind::BackupEnd { start } if start < r.lsn => {
            // pg_backup_stop() returns the insert position after the record: its end, MAXALIGNed.
            if let Some(end) = r.end.0.checked_next_multiple_of(8) {
                records.backup_ends.push(BackupEnd { lsn: r.lsn, start, end: Lsn(end) });
            }
        }
        _ => {}
    }
}

/// A store error that means the file's contents are bad (a compressed stream that does not decode), not that
/// the store could not be read.
fn is_corrupt(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { op: "decompress", .. })
}

/// Feed the decompressed contents of `f` (at most `seg_len` bytes) to `d` in chunks of `chunk` bytes, until
/// its end or until `stop` holds after a chunk.
fn feed_file(
    store: &dyn Store,
    f: &SegFile,
    seg_len: u64,
    chunk: usize,
    d: &mut WalDecoder,
    mut on_record: &mut dyn FnMut(&RecordInfo),
    stop: &dyn Fn(&WalDecoder) -> bool,
) -> Result<Fed, StoreError> {
    let mut reader = match contents::open(store, &f.file, f.compression) {
        Ok(r) => r,
        Err(e) if is_corrupt(&e) => return Ok(Fed::Invalid(e.to_string())),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; chunk];
    let mut feed = Feed::new(f.partial);
    let mut pos = 0u64;
    loop {
        let (n, err) = contents::fill(&mut reader, &mut buf);
        let take = (n as u64).min(seg_len - pos) as usize;
        if take > 0 {
            if let Err(e) = feed.push(d, &buf[..take], &mut on_record) {
                return Ok(Fed::Invalid(e.to_string()));
            }
            pos += take as u64;
            if stop(d) {
                return Ok(Fed::Stopped);
            }
        }
        if let Some(e) = err {
            if contents::is_open_end(f.partial, f.compression, &e) {
                break;
            }
            let e = contents::read_error(store, &f.file, f.compression, e);
            return match f.compression {
                Compression::None => Err(e),
                _ => Ok(Fed::Invalid(e.to_string())),
            };
        }
        if n < buf.len() || pos >= seg_len {
            break;
        }
    }
    if f.partial {
        // The zeros after the data received: fed if they keep the WAL valid (the end of WAL).
        feed.finish(d);
    }
    Ok(Fed::End)
}
