//! What an archive directory holds: per timeline the first and last segment, gaps, the open `.partial` and how
//! far it got; history files; total size; how old the newest WAL is.
//!
//! The received position of an uncompressed `.partial` (preallocated with zeros) is estimated from its last
//! non-zero byte, rounded up to the 8-byte record alignment: a lower bound that is exact unless the last
//! record ends in zero bytes (then it is short by fewer than the trailing zeros). A compressed `.partial` is
//! written only as far as it was received, so its decoded length is exact.

use super::compress;
use super::error::WalDirError;
use super::restore::{parse_long_header, LONG_HEADER};
use crate::wal::segment::{valid_segment_size, Compression, SegmentId, TimeLineId, WalFileName};
use crate::wal::Lsn;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::SystemTime;

/// Segment size assumed when no segment file tells (an archive without a single readable header).
pub const FALLBACK_SEGMENT_SIZE: u32 = 16 << 20;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ArchiveStatus {
    pub directory: String,
    /// Read from a segment's page header (or [`FALLBACK_SEGMENT_SIZE`] when none could be read).
    pub segment_size: u32,
    pub segment_size_known: bool,
    pub timelines: Vec<TimelineStatus>,
    pub history_files: Vec<String>,
    pub backup_history_files: Vec<String>,
    /// Number of WAL files (segments, partials, history and backup history files).
    pub wal_files: usize,
    /// Their total size on disk.
    pub total_bytes: u64,
    pub newest: Option<NewestWal>,
    /// Number of segments missing inside timelines, over all timelines.
    pub missing_segments: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TimelineStatus {
    pub timeline: TimeLineId,
    /// First and last complete segments (none when the timeline only has a `.partial`).
    pub first: Option<String>,
    pub last: Option<String>,
    pub complete_segments: u64,
    pub partial: Option<PartialStatus>,
    pub gaps: Vec<Gap>,
}

/// A run of missing segments, both ends included.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Gap {
    pub first_missing: String,
    pub last_missing: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PartialStatus {
    pub file: String,
    /// LSN up to which WAL was received (see the module docs); None when it cannot be read.
    pub received_lsn: Option<String>,
    pub received_bytes: Option<u64>,
    /// True for the estimate of an uncompressed `.partial`.
    pub approximate: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NewestWal {
    pub file: String,
    /// Seconds since the Unix epoch.
    pub modified_unix: u64,
    pub age_seconds: u64,
}

struct SegFile {
    name: String,
    file: String,
    compression: Compression,
    partial: bool,
}

/// Complete segment numbers and `.partial` files of one timeline.
type TimelineFiles<'a> = (Vec<u64>, Vec<(u64, &'a SegFile)>);

/// Look at `dir`.
pub fn status(dir: &Path) -> Result<ArchiveStatus, WalDirError> {
    let meta = fs::metadata(dir).map_err(|e| WalDirError::io("open directory", dir, e))?;
    if !meta.is_dir() {
        return Err(WalDirError::NotADirectory { path: dir.to_path_buf() });
    }
    let mut segments = Vec::new();
    let mut history_files = Vec::new();
    let mut backup_history_files = Vec::new();
    let mut total_bytes = 0u64;
    let mut wal_files = 0usize;
    let mut newest: Option<(SystemTime, String)> = None;
    for entry in fs::read_dir(dir).map_err(|e| WalDirError::io("open directory", dir, e))? {
        let entry = entry.map_err(|e| WalDirError::io("read directory", dir, e))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(kind) = WalFileName::parse(&file) else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        wal_files += 1;
        total_bytes += meta.len();
        match kind {
            WalFileName::Segment { name, compression, partial } => {
                if name.bytes().any(|b| b.is_ascii_lowercase()) {
                    continue;
                }
                if let Ok(modified) = meta.modified() {
                    // Ties (coarse file system clocks) go to the later name.
                    if newest.as_ref().is_none_or(|(t, f)| (modified, &file) > (*t, f)) {
                        newest = Some((modified, file.clone()));
                    }
                }
                segments.push(SegFile { name, file, compression, partial });
            }
            WalFileName::History { .. } => history_files.push(file),
            WalFileName::BackupHistory { .. } => backup_history_files.push(file),
        }
    }
    history_files.sort();
    backup_history_files.sort();
    segments.sort_by(|a, b| a.file.cmp(&b.file));

    let (segment_size, segment_size_known) = match find_segment_size(dir, &segments) {
        Some(s) => (s, true),
        None => (FALLBACK_SEGMENT_SIZE, false),
    };

    // Per timeline: complete segment numbers and partials.
    let mut per_tli: BTreeMap<TimeLineId, TimelineFiles> = BTreeMap::new();
    for seg in &segments {
        let Some(id) = SegmentId::parse_name(&seg.name, segment_size) else { continue };
        let slot = per_tli.entry(id.timeline).or_default();
        if seg.partial {
            slot.1.push((id.number, seg));
        } else {
            slot.0.push(id.number);
        }
    }
    let mut timelines = Vec::new();
    let mut missing_segments = 0;
    for (timeline, (mut complete, partials)) in per_tli {
        complete.sort_unstable();
        complete.dedup();
        let name = |number| SegmentId { timeline, number }.file_name(segment_size);
        // The open partial: the newest one not superseded by a complete segment.
        let partial = partials
            .iter()
            .filter(|(n, _)| complete.last().is_none_or(|last| n > last))
            .max_by_key(|(n, _)| *n)
            .map(|(number, seg)| {
                partial_status(dir, seg, SegmentId { timeline, number: *number }, segment_size)
            });
        let mut present = complete.clone();
        if let Some((n, _)) =
            partials.iter().filter(|(n, _)| complete.last().is_none_or(|l| n > l)).max_by_key(|(n, _)| *n)
        {
            present.push(*n);
        }
        let mut gaps = Vec::new();
        for pair in present.windows(2) {
            if pair[1] > pair[0] + 1 {
                let count = pair[1] - pair[0] - 1;
                missing_segments += count;
                gaps.push(Gap { first_missing: name(pair[0] + 1), last_missing: name(pair[1] - 1), count });
            }
        }
        timelines.push(TimelineStatus {
            timeline,
            first: complete.first().map(|&n| name(n)),
            last: complete.last().map(|&n| name(n)),
            complete_segments: complete.len() as u64,
            partial,
            gaps,
        });
    }
    let newest = newest.map(|(t, file)| {
        let modified_unix = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let age_seconds = SystemTime::now().duration_since(t).map(|d| d.as_secs()).unwrap_or(0);
        NewestWal { file, modified_unix, age_seconds }
    });
    Ok(ArchiveStatus {
        directory: dir.display().to_string(),
        segment_size,
        segment_size_known,
        timelines,
        history_files,
        backup_history_files,
        wal_files,
        total_bytes,
        newest,
        missing_segments,
    })
}

/// The segment size from the first segment file whose long page header can be read.
fn find_segment_size(dir: &Path, segments: &[SegFile]) -> Option<u32> {
    for seg in segments.iter().filter(|s| !s.partial).chain(segments.iter().filter(|s| s.partial)).take(8) {
        let Ok(file) = File::open(dir.join(&seg.file)) else { continue };
        let Ok(mut reader) = compress::decoder(seg.compression, file) else { continue };
        let mut head = [0u8; LONG_HEADER];
        if super::restore::read_full(&mut reader, &mut head).ok() != Some(LONG_HEADER) {
            continue;
        }
        if let Some(h) = parse_long_header(&head) {
            if valid_segment_size(u64::from(h.segment_size)) {
                return Some(h.segment_size);
            }
        }
    }
    None
}

fn partial_status(dir: &Path, seg: &SegFile, id: SegmentId, segment_size: u32) -> PartialStatus {
    let path = dir.join(&seg.file);
    let (bytes, approximate) = if seg.compression == Compression::None {
        (last_nonzero_end(&path).map(|end| end.next_multiple_of(8).min(u64::from(segment_size))), true)
    } else {
        (compress::decompress_available(&path, seg.compression).ok().map(|d| d.len() as u64), false)
    };
    let received_lsn = bytes.and_then(|b| id.start_lsn(segment_size).map(|s| Lsn(s.0 + b).to_string()));
    PartialStatus { file: seg.file.clone(), received_lsn, received_bytes: bytes, approximate }
}

/// Offset just past the last non-zero byte of the file (0 for an all-zero file).
fn last_nonzero_end(path: &Path) -> Option<u64> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut buf = vec![0u8; 1 << 16];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start).ok()?;
        if let Some(pos) = chunk.iter().rposition(|&b| b != 0) {
            return Some(start + pos as u64 + 1);
        }
        end = start;
    }
    Some(0)
}

/// Human-readable report.
pub fn render_text(s: &ArchiveStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "archive:        {}", s.directory);
    let _ = writeln!(
        out,
        "segment size:   {} MB{}",
        s.segment_size >> 20,
        if s.segment_size_known { "" } else { " (assumed: no readable segment header)" }
    );
    let _ = writeln!(out, "WAL files:      {} ({} bytes)", s.wal_files, s.total_bytes);
    if s.timelines.is_empty() {
        let _ = writeln!(out, "timelines:      none (no WAL segment)");
    }
    for t in &s.timelines {
        let range = match (&t.first, &t.last) {
            (Some(f), Some(l)) => format!("{f} .. {l} ({} complete)", t.complete_segments),
            _ => "no complete segment".to_string(),
        };
        let _ = writeln!(out, "timeline {}:     {range}", t.timeline);
        if let Some(p) = &t.partial {
            let pos = match (&p.received_lsn, p.approximate) {
                (Some(l), true) => format!("received up to about {l}"),
                (Some(l), false) => format!("received up to {l}"),
                (None, _) => "unreadable".to_string(),
            };
            let _ = writeln!(out, "  open partial: {} ({pos})", p.file);
        }
        for g in &t.gaps {
            let _ = writeln!(
                out,
                "  gap:          {} .. {} ({} missing)",
                g.first_missing, g.last_missing, g.count
            );
        }
    }
    let _ = writeln!(
        out,
        "history files:  {}",
        if s.history_files.is_empty() { "none".to_string() } else { s.history_files.join(" ") }
    );
    if !s.backup_history_files.is_empty() {
        let _ = writeln!(out, "backup history: {}", s.backup_history_files.join(" "));
    }
    match &s.newest {
        Some(n) => {
            let _ = writeln!(out, "newest WAL:     {} (modified {} s ago)", n.file, n.age_seconds);
        }
        None => {
            let _ = writeln!(out, "newest WAL:     none");
        }
    }
    let _ = writeln!(
        out,
        "gaps:           {}",
        if s.missing_segments == 0 {
            "none".to_string()
        } else {
            format!("{} segments missing", s.missing_segments)
        }
    );
    out
}
