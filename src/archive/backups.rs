//! The base backups an archive's WAL tells of, for `status` and for retention.
//!
//! A base backup taken from a primary (pg_basebackup, or `pg_backup_start()`/`pg_backup_stop()`) ends with an
//! XLOG_BACKUP_END record naming its start — the redo pointer of the checkpoint it began with, "START WAL
//! LOCATION" in its backup_label — and `pg_backup_stop()` then switches to a new segment, so the segment
//! holding that record is complete at once. A backup is listed with its start LSN, its end LSN (just past
//! the end record: the LSN `pg_backup_stop()` returns, "End-LSN" in the backup manifest) and the time of its
//! starting checkpoint: the online checkpoint record whose redo pointer is the start (the end record carries
//! no time). A backup taken from a standby writes no record at all: it is invisible here, and retention,
//! which counts only the backups it sees, keeps more WAL because of it, never less.
//!
//! Only complete segments are decoded (a `.partial` still grows), each once: what each held goes into the
//! backup index (`backups/index.rs`), so a run decodes only the segments completed since the last one.
//!
//! A backup is *restorable* from the archive when (1) it lies on the history of the archive's newest
//! timeline — on that timeline, or on an ancestor before the point where the history leaves it (a backup on
//! an old timeline's diverged tail after a failover is not), and (2) every segment from its start to its end
//! is there as a complete file, found the way recovery looks for it (PostgreSQL's `XLogFileReadAnyTLI`: the
//! newest timeline of that history that began at or before the segment, then older ones down to the
//! backup's own) and was read without error. Retention counts only restorable backups.

pub mod index;
mod scan;

use self::index::{BackupEnd, Checkpoint, SegmentRecords};
use super::catalog::{Catalog, SegFile};
use super::store::{Store, StoreError};
use crate::wal::segment::{history_file_name, SegmentId, TimeLineId};
use crate::wal::timeline::{parse_history_of, timeline_of, HistoryEntry};
use crate::wal::Lsn;
use std::collections::{BTreeMap, BTreeSet};

/// A base backup found in the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// The timeline it was taken on (for a backup off the newest timeline's history: the timeline of the file
    /// holding its end record).
    pub timeline: TimeLineId,
    /// Its start: the redo pointer of its starting checkpoint.
    pub start: Lsn,
    /// Just past its end record: where the backup becomes consistent.
    pub end: Lsn,
    /// The online checkpoint it began with, when that record is in the archive.
    pub checkpoint: Option<Checkpoint>,
    /// The segment file holding its end record.
    pub end_file: String,
    /// Why it cannot be restored from this archive (module docs); `None` when it can.
    pub problem: Option<String>,
}

impl Backup {
    pub fn restorable(&self) -> bool {
        self.problem.is_none()
    }
}

/// What the index did in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexUpdate {
    /// Nothing new to record.
    Unchanged,
    /// Newly decoded segments were recorded.
    Saved,
    /// It could not be written (a read-only archive, say): the next run decodes the same segments again.
    NotSaved(String),
}

/// The backups of an archive and how they were found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// By end LSN, oldest first.
    pub backups: Vec<Backup>,
    /// Complete segments whose records are known (from the index or decoded now).
    pub segments_known: usize,
    /// Of those, decoded in this run.
    pub segments_decoded: usize,
    pub index: IndexUpdate,
    /// Things to look at, one line each: an index that had to be rebuilt, segments that could not be read,
    /// an unreadable history file.
    pub warnings: Vec<String>,
}

impl Found {
    fn empty() -> Found {
        Found {
            backups: Vec::new(),
            segments_known: 0,
            segments_decoded: 0,
            index: IndexUpdate::Unchanged,
            warnings: Vec::new(),
        }
    }
}

/// Find the base backups in the archive `store`, whose files `catalog` lists: decode the complete segments
/// the index does not know yet, update the index, and judge each backup (module docs). Only the catalog's
/// listing and the system identifier read fail it; a segment that cannot be read is a warning (it is tried
/// again next time, and a backup it would have shown is not counted meanwhile).
pub fn find(store: &dyn Store, catalog: &Catalog) -> Result<Found, StoreError> {
    let mut found = Found::empty();
    let Some((system_id, _)) = catalog.system_id(store)? else { return Ok(found) };
    if !catalog.segment_size_known() {
        return Ok(found);
    }
    let seg = catalog.segment_size();
    let complete = complete_files(catalog);
    let present: BTreeSet<SegmentId> = complete.keys().copied().collect();
    let (mut index, rebuilt) = index::load(store, system_id, seg, &present);
    if let Some(why) = &rebuilt {
        found.warnings.push(format!(
            "backup index \"{}\" rebuilt from the WAL: {why}",
            store.location_of(index::INDEX_NAME)
        ));
    }
    // Scans that could not be completed yet: used now, decoded again next time.
    let mut unfinished: BTreeMap<SegmentId, SegmentRecords> = BTreeMap::new();
    let mut decoded = 0;
    for (&id, f) in &complete {
        if index.segments.contains_key(&id) {
            continue;
        }
        match scan::scan(store, f, next_file(catalog, id), seg, system_id) {
            Ok(s) if s.complete => {
                index.segments.insert(id, s.records);
                decoded += 1;
            }
            Ok(s) => {
                unfinished.insert(id, s.records);
            }
            Err(e) => found.warnings.push(format!("backups: segment not decoded: {e}")),
        }
    }
    found.segments_decoded = decoded;
    found.segments_known = index.segments.len() + unfinished.len();
    found.index = if decoded == 0 && rebuilt.is_none() {
        IndexUpdate::Unchanged
    } else {
        match index::save(store, &index) {
            Ok(()) => IndexUpdate::Saved,
            Err(e) => IndexUpdate::NotSaved(e.to_string()),
        }
    };
    let lineage = Lineage::read(store, catalog, &mut found.warnings);
    let facts = Facts { segment_size: seg, complete: &present, lineage: &lineage };
    let all = index.segments.iter().chain(unfinished.iter());
    found.backups = facts.assess(all, catalog);
    Ok(found)
}

/// One complete file per segment (in the catalog's lookup order of forms).
fn complete_files(catalog: &Catalog) -> BTreeMap<SegmentId, &SegFile> {
    let mut out = BTreeMap::new();
    for f in catalog.segments().iter().filter(|f| !f.partial) {
        out.entry(f.id).or_insert(f);
    }
    out
}

/// The file holding the segment after `id`, for a record that crosses into it: of the same timeline
/// (complete, or the `.partial` of its trailing run), else a complete one of a later timeline.
fn next_file(catalog: &Catalog, id: SegmentId) -> Option<&SegFile> {
    let number = id.number.checked_add(1)?;
    catalog.find(SegmentId { timeline: id.timeline, number }, true).or_else(|| {
        catalog.segments().iter().find(|f| f.id.number == number && f.id.timeline > id.timeline && !f.partial)
    })
}

/// The history of the archive's newest timeline: the timelines recovery follows to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lineage {
    newest: TimeLineId,
    /// The newest timeline's history file, oldest first; `None` when it is missing or unreadable (then only
    /// the newest timeline itself is known to be on it).
    history: Option<Vec<HistoryEntry>>,
}

impl Lineage {
    /// From the newest timeline's history file; a missing or unreadable one is a warning.
    fn read(store: &dyn Store, catalog: &Catalog, warnings: &mut Vec<String>) -> Lineage {
        let newest = catalog
            .segments()
            .iter()
            .map(|f| f.id.timeline)
            .chain(catalog.histories().keys().copied())
            .max()
            .unwrap_or(1);
        if newest == 1 {
            return Lineage { newest, history: Some(Vec::new()) };
        }
        let name = history_file_name(newest);
        let text = match catalog.histories().get(&newest) {
            Some(_) => store.read_all(&name).map_err(|e| e.to_string()),
            None => Err(format!("\"{}\" is missing", store.location_of(&name))),
        };
        let history = text.and_then(|bytes| {
            parse_history_of(newest, &String::from_utf8_lossy(&bytes))
                .map_err(|e| format!("\"{}\": {e}", store.location_of(&name)))
        });
        match history {
            Ok(history) => Lineage { newest, history: Some(history) },
            Err(why) => {
                warnings.push(format!(
                    "backups: the history of timeline {newest} is unknown ({why}): backups on older timelines are not counted"
                ));
                Lineage { newest, history: None }
            }
        }
    }

    /// The timeline a backup ending at `end` (found in a file of timeline `file_tli`) was taken on, when it
    /// lies on this history; `Err` says why not.
    fn place(&self, file_tli: TimeLineId, start: Lsn, end: Lsn) -> Result<TimeLineId, String> {
        let newest = self.newest;
        let Some(history) = &self.history else {
            return match file_tli == newest {
                true => Ok(newest),
                false => Err(format!(
                    "timeline {file_tli}'s place in the history of timeline {newest} is unknown (see the warnings)"
                )),
            };
        };
        let switch = history.iter().find(|e| e.timeline == file_tli).map(|e| e.end);
        match switch {
            _ if file_tli == newest => {}
            Some(at) if end <= at => {}
            Some(at) => {
                return Err(format!(
                    "it ends at {end} on timeline {file_tli}, after timeline {file_tli} was left at {at} for the newest timeline {newest}: a diverged history"
                ))
            }
            None => {
                return Err(format!("timeline {file_tli} is not in the history of the newest timeline {newest}"))
            }
        }
        Ok(timeline_of(history, newest, start))
    }

    /// The timelines recovery tries for segment `number`, newest first, down to `oldest` (module docs).
    fn candidates(&self, number: u64, oldest: TimeLineId, segment_size: u32) -> Vec<TimeLineId> {
        let Some(history) = &self.history else { return vec![self.newest] };
        let mut out = Vec::new();
        let mut begin = Lsn(0);
        let mut path: Vec<(TimeLineId, Lsn)> = Vec::new();
        for e in history {
            path.push((e.timeline, begin));
            begin = e.end;
        }
        path.push((self.newest, begin));
        for &(tli, begin) in path.iter().rev() {
            if tli < oldest {
                break;
            }
            if begin.segment_number(segment_size) <= number {
                out.push(tli);
            }
        }
        out
    }
}

/// What judging a backup takes.
struct Facts<'a> {
    segment_size: u32,
    /// Segments held by a complete file.
    complete: &'a BTreeSet<SegmentId>,
    lineage: &'a Lineage,
}

impl Facts<'_> {
    /// The backups the records tell of, judged, deduplicated and sorted (see [`Found::backups`]).
    fn assess<'r>(
        &self,
        records: impl Iterator<Item = (&'r SegmentId, &'r SegmentRecords)>,
        catalog: &Catalog,
    ) -> Vec<Backup> {
        let mut checkpoints: Vec<Checkpoint> = Vec::new();
        let mut ends: Vec<(SegmentId, BackupEnd)> = Vec::new();
        let mut errors: BTreeMap<SegmentId, &str> = BTreeMap::new();
        for (&id, r) in records {
            checkpoints.extend(&r.checkpoints);
            ends.extend(r.backup_ends.iter().map(|&b| (id, b)));
            if let Some(e) = &r.error {
                errors.insert(id, e);
            }
        }
        let mut out: Vec<Backup> = Vec::new();
        for (id, b) in ends {
            let placed = self.lineage.place(id.timeline, b.start, b.end);
            let timeline = *placed.as_ref().unwrap_or(&id.timeline);
            let problem = placed.err().or_else(|| self.missing_wal(timeline, b, &errors));
            // The checkpoint it began with: the last online checkpoint before its end with its start as redo.
            let checkpoint = checkpoints
                .iter()
                .filter(|c| c.redo == b.start && c.lsn < b.lsn)
                .max_by_key(|c| c.lsn)
                .copied();
            let end_file =
                catalog.find(id, false).map_or_else(|| id.file_name(self.segment_size), |f| f.file.clone());
            let backup = Backup { timeline, start: b.start, end: b.end, checkpoint, end_file, problem };
            // The same record in two files (a new timeline's first segment copies its parent's WAL up to the
            // switch point): keep the better-placed one.
            match out.iter_mut().find(|o| (o.start, o.end) == (b.start, b.end)) {
                Some(o) if o.problem.is_some() && backup.problem.is_none() => *o = backup,
                Some(_) => {}
                None => out.push(backup),
            }
        }
        out.sort_by_key(|b| (b.end, b.start, b.timeline));
        out
    }

    /// Why the WAL from the backup's start to its end on `timeline` is not all restorable, if it is not.
    fn missing_wal(
        &self,
        timeline: TimeLineId,
        b: BackupEnd,
        errors: &BTreeMap<SegmentId, &str>,
    ) -> Option<String> {
        let seg = self.segment_size;
        let last = Lsn(b.end.0.saturating_sub(1)).segment_number(seg);
        for number in b.start.segment_number(seg)..=last {
            let found = self
                .lineage
                .candidates(number, timeline, seg)
                .into_iter()
                .map(|tli| SegmentId { timeline: tli, number })
                .find(|id| self.complete.contains(id));
            match found {
                None => {
                    let name = SegmentId { timeline, number }.file_name(seg);
                    return Some(format!("segment {name} of its WAL is not in the archive"));
                }
                Some(id) => {
                    if let Some(e) = errors.get(&id) {
                        return Some(format!("segment {} of its WAL cannot be read: {e}", id.file_name(seg)));
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
