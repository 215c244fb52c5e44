//! What an archive holds, from its [`Catalog`] and a few headers: per timeline the first and last complete
//! segment, gaps, the trailing run of `.partial` files and how far the open one got; history files; the
//! database system; total size; how old the newest WAL is. Cheap: one listing, a few header reads, one
//! `.partial` read.
//!
//! A segment counts as present when a complete file holds it or when its `.partial` is in its timeline's
//! trailing run (see `archive::catalog`): that is what `restore --partial` serves, so only the other
//! segments are gaps.
//!
//! The received position of an uncompressed `.partial` (preallocated with zeros) is estimated from its last
//! non-zero byte, rounded up to the 8-byte record alignment: a lower bound that is exact unless the last
//! record ends in zero bytes (then it is short by fewer than the trailing zeros). A compressed `.partial` is
//! written only as far as it was received, so its decoded length is exact.
//!
//! Diverged tails (`archive::fork`): WAL of a timeline past the point where a later timeline forked from it,
//! with its bytes, commit records and last commit time — read by decoding the tail's files (only those).
//!
//! Warnings (also in `--json`): WAL-named entries that are not regular files, names impossible with the
//! segment size, and segment files of another database system than the newest segment's (the first and last
//! file of each timeline are compared; `walkeeper verify` reads them all).
//!
//! The base backups the WAL tells of ([`BackupsStatus`], from `archive::backups`) are listed last: that
//! decodes the complete segments the backup index does not know yet (all of them on a first run).

use super::backups::{self, IndexUpdate};
use super::catalog::{Catalog, NotRegular, SegFile, SegmentSize};
use super::contents;
use super::fork::{self, TailReport};
use super::store::{Store, StoreError};
use crate::wal::segment::{Compression, TimeLineId};
use crate::wal::Lsn;
use serde::Serialize;
use std::time::SystemTime;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ArchiveStatus {
    pub directory: String,
    /// Read from a segment's page header (or the fallback of 16 MB when none could be read).
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
    /// From the long page header of the newest segment file that has one (a string: JSON readers lose digits
    /// of numbers above 2^53).
    pub system_identifier: Option<String>,
    /// Things to look at (module docs), one line each.
    pub warnings: Vec<String>,
    /// WAL past fork points: transactions later timelines do not have (module docs).
    pub diverged_tails: Vec<TailReport>,
    pub backups: BackupsStatus,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TimelineStatus {
    pub timeline: TimeLineId,
    /// First and last complete segments (none when the timeline only has `.partial` files).
    pub first: Option<String>,
    pub last: Option<String>,
    pub complete_segments: u64,
    /// The `.partial` files after the last complete segment, oldest first: all but the last were received
    /// whole (the record crossing their end was not complete yet).
    pub trailing_partials: Vec<String>,
    /// The last of them: the open partial.
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

/// Look at the archive in `store`.
pub fn status(store: &dyn Store) -> Result<ArchiveStatus, StoreError> {
    let catalog = Catalog::read(store, SegmentSize::FromHeaders)?;
    // In a bucket, a `.partial` object next to its complete segment is the uploader's, about to be deleted.
    let catalog = match store.local_dir() {
        Some(_) => catalog,
        None => catalog.without_superseded_partials(),
    };
    let segment_size = catalog.segment_size();
    let mut warnings: Vec<String> =
        catalog.irregular().iter().map(|e| NotRegular(store.location_of(&e.name)).to_string()).collect();
    for e in catalog.impossible() {
        warnings.push(format!(
            "segment file name \"{}\" is impossible with the segment size of {segment_size} bytes",
            e.name
        ));
    }
    let mut timelines = Vec::new();
    let mut missing_segments = 0;
    for (&timeline, files) in &catalog.timelines() {
        let mut complete: Vec<u64> = files.iter().filter(|f| !f.partial).map(|f| f.id.number).collect();
        complete.dedup();
        let run = catalog.trailing_partials(timeline);
        let name = |number| crate::wal::segment::SegmentId { timeline, number }.file_name(segment_size);
        let present: Vec<u64> = complete.iter().copied().chain(run.iter().map(|f| f.id.number)).collect();
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
            trailing_partials: run.iter().map(|f| f.file.clone()).collect(),
            partial: run.last().map(|f| partial_status(store, f, segment_size)),
            gaps,
        });
    }
    let diverged_tails = fork::diverged_tails(store, &catalog).unwrap_or_else(|e| {
        warnings.push(format!("the diverged tails could not be read: {e}"));
        Vec::new()
    });
    let system_identifier = catalog.system_id(store).ok().flatten();
    if let Some((sysid, newest)) = system_identifier {
        warnings.extend(other_systems(store, &catalog, sysid, newest));
    }
    let wal_entries = catalog
        .segments()
        .iter()
        .map(|f| f.len)
        .chain(catalog.impossible().iter().map(|e| e.len))
        .chain(catalog.histories().values().map(|e| e.len))
        .chain(catalog.backup_histories().iter().map(|e| e.len));
    let (wal_files, total_bytes) = wal_entries.fold((0, 0u64), |(n, b), len| (n + 1, b.saturating_add(len)));
    // Ties (coarse file system clocks) go to the later name.
    let newest =
        catalog.segments().iter().filter_map(|f| f.modified.map(|t| (t, &f.file))).max().map(|(t, file)| {
            NewestWal {
                file: file.clone(),
                modified_unix: t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                age_seconds: SystemTime::now().duration_since(t).map(|d| d.as_secs()).unwrap_or(0),
            }
        });
    Ok(ArchiveStatus {
        directory: store.location(),
        segment_size,
        segment_size_known: catalog.segment_size_known(),
        timelines,
        history_files: catalog.histories().values().map(|e| e.name.clone()).collect(),
        backup_history_files: catalog.backup_histories().iter().map(|e| e.name.clone()).collect(),
        wal_files,
        total_bytes,
        newest,
        missing_segments,
        system_identifier: system_identifier.map(|(id, _)| id.to_string()),
        warnings,
        diverged_tails,
        backups: backups_status(store, &catalog),
    })
}

/// Warnings for the first and last segment file of each timeline that are WAL of another system than
/// `sysid` (the newest segment's, in `newest`).
fn other_systems(store: &dyn Store, catalog: &Catalog, sysid: u64, newest: &SegFile) -> Vec<String> {
    let mut out = Vec::new();
    for files in catalog.timelines().values() {
        let ends = [files.first(), files.last()];
        for f in ends.into_iter().flatten().filter(|f| f.file != newest.file) {
            if let Ok(Ok(h)) = contents::read_header(store, &f.file, f.compression, f.partial) {
                if h.system_id != sysid && !out.iter().any(|w: &String| w.contains(&f.file)) {
                    out.push(format!(
                        "\"{}\" is WAL of database system {}, but the newest segment \"{}\" is of database system {sysid}: run walkeeper verify",
                        f.file, h.system_id, newest.file
                    ));
                }
            }
        }
    }
    out
}

fn partial_status(store: &dyn Store, f: &SegFile, segment_size: u32) -> PartialStatus {
    let (bytes, approximate) = if f.compression == Compression::None {
        (last_nonzero_end(store, f).map(|end| end.next_multiple_of(8).min(u64::from(segment_size))), true)
    } else {
        (contents::decoded_len(store, &f.file, f.compression, true).ok(), false)
    };
    let received_lsn = bytes.and_then(|b| f.id.start_lsn(segment_size).map(|s| Lsn(s.0 + b).to_string()));
    PartialStatus { file: f.file.clone(), received_lsn, received_bytes: bytes, approximate }
}

/// Offset just past the last non-zero byte of the file (0 for an all-zero file), read backwards in chunks.
fn last_nonzero_end(store: &dyn Store, f: &SegFile) -> Option<u64> {
    const STEP: u64 = 1 << 16;
    let mut end = f.len;
    while end > 0 {
        let start = end.saturating_sub(STEP);
        let chunk = store.read_range(&f.file, start, (end - start) as usize).ok()?;
        if chunk.len() as u64 != end - start {
            return None; // changed size while read
        }
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
    if let Some(id) = &s.system_identifier {
        let _ = writeln!(out, "system id:      {id}");
    }
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
        for earlier in &t.trailing_partials[..t.trailing_partials.len().saturating_sub(1)] {
            let _ = writeln!(out, "  partial:      {earlier} (received whole; restore --partial serves it)");
        }
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
    for t in &s.diverged_tails {
        let _ = writeln!(out, "diverged tail:  {}", t.describe());
    }
    for w in &s.warnings {
        let _ = writeln!(out, "warning:        {w}");
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
    render_backups(&mut out, &s.backups);
    out
}

/// The base backups found in the WAL (see `archive::backups`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackupsStatus {
    /// By end LSN, oldest first.
    pub found: Vec<BackupStatus>,
    /// Complete segments whose records are known, and how many of them this run decoded.
    pub segments_known: usize,
    pub segments_decoded: usize,
    /// The backup index: `unchanged`, `saved`, or `not saved: …`.
    pub index: String,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackupStatus {
    pub timeline: TimeLineId,
    /// "START WAL LOCATION" of its backup_label.
    pub start_lsn: String,
    /// What `pg_backup_stop()` returned: just past its end record.
    pub end_lsn: String,
    /// Its starting checkpoint (record and time, UTC), when that record is in the archive.
    pub checkpoint_lsn: Option<String>,
    pub checkpoint_time: Option<String>,
    /// The segment file holding its end record.
    pub end_file: String,
    /// Whether it can be restored from this archive (its WAL is all here); retention counts only these.
    pub restorable: bool,
    pub problem: Option<String>,
}

fn backups_status(store: &dyn Store, catalog: &Catalog) -> BackupsStatus {
    let found = match backups::find(store, catalog) {
        Ok(found) => found,
        Err(e) => {
            return BackupsStatus {
                found: Vec::new(),
                segments_known: 0,
                segments_decoded: 0,
                index: "unchanged".into(),
                warnings: vec![format!("backups: {e}")],
            }
        }
    };
    BackupsStatus {
        found: found
            .backups
            .iter()
            .map(|b| BackupStatus {
                timeline: b.timeline,
                start_lsn: b.start.to_string(),
                end_lsn: b.end.to_string(),
                checkpoint_lsn: b.checkpoint.map(|c| c.lsn.to_string()),
                checkpoint_time: b.checkpoint.map(|c| c.time.to_string()),
                end_file: b.end_file.clone(),
                restorable: b.restorable(),
                problem: b.problem.clone(),
            })
            .collect(),
        segments_known: found.segments_known,
        segments_decoded: found.segments_decoded,
        index: match found.index {
            IndexUpdate::Unchanged => "unchanged".into(),
            IndexUpdate::Saved => "saved".into(),
            IndexUpdate::NotSaved(e) => format!("not saved: {e}"),
        },
        warnings: found.warnings,
    }
}

fn render_backups(out: &mut String, b: &BackupsStatus) {
    use std::fmt::Write as _;
    let restorable = b.found.iter().filter(|f| f.restorable).count();
    let _ = match b.found.len() {
        0 => writeln!(
            out,
            "base backups:   none found in the WAL (a backup taken from a standby leaves no trace)"
        ),
        n => writeln!(out, "base backups:   {n} found in the WAL, {restorable} restorable from this archive"),
    };
    for f in &b.found {
        let checkpoint = match &f.checkpoint_time {
            Some(t) => format!("checkpoint at {t}"),
            None => "checkpoint not in the archive".into(),
        };
        let problem = f.problem.as_ref().map(|p| format!("; not restorable: {p}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  backup:       {} .. {}, timeline {}, {checkpoint}{problem}",
            f.start_lsn, f.end_lsn, f.timeline
        );
    }
    if let Some(e) = b.index.strip_prefix("not saved: ") {
        let _ =
            writeln!(out, "  index:        not saved ({e}): the next status decodes the same segments again");
    }
    for w in &b.warnings {
        let _ = writeln!(out, "  warning:      {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::store::LocalStore;

    #[test]
    fn a_trailing_run_is_no_gap_a_leftover_partial_is() {
        let tmp = crate::archive::catalog::test_archive(&[
            "000000010000000000000001",
            "000000010000000000000002.partial",
            "000000010000000000000003.zst.partial",
            "000000020000000000000001",
            "000000020000000000000002.partial",
            "000000020000000000000003",
        ]);
        std::fs::create_dir(tmp.path().join("000000020000000000000004")).unwrap();
        let s = status(&LocalStore::new(tmp.path())).unwrap();
        assert!(!s.segment_size_known);
        let t1 = &s.timelines[0];
        assert_eq!(
            t1.trailing_partials,
            ["000000010000000000000002.partial", "000000010000000000000003.zst.partial"]
        );
        assert_eq!(t1.partial.as_ref().unwrap().file, "000000010000000000000003.zst.partial");
        assert!(t1.gaps.is_empty());
        let t2 = &s.timelines[1];
        assert!(t2.trailing_partials.is_empty() && t2.partial.is_none());
        assert_eq!(
            t2.gaps,
            [Gap {
                first_missing: "000000020000000000000002".into(),
                last_missing: "000000020000000000000002".into(),
                count: 1
            }]
        );
        assert_eq!(s.missing_segments, 1);
        assert_eq!(s.wal_files, 6);
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(
            s.warnings[0].ends_with("000000020000000000000004\" is not a regular file"),
            "{:?}",
            s.warnings
        );
        let text = render_text(&s);
        assert!(text.contains("  partial:      000000010000000000000002.partial (received whole; restore --partial serves it)\n"), "{text}");
        assert!(text.contains("warning:        \""), "{text}");
        // Empty files hold no WAL: no backup, nothing decoded.
        assert_eq!(
            (s.backups.found.len(), s.backups.segments_known, s.backups.index.as_str()),
            (0, 0, "unchanged")
        );
        assert!(
            text.ends_with(
                "base backups:   none found in the WAL (a backup taken from a standby leaves no trace)\n"
            ),
            "{text}"
        );
    }
}
