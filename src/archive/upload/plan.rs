//! What one upload round does, decided from the spool's catalog and what the uploader knows of the store —
//! pure, so every rule here is tested without a store:
//!
//! - which final files (complete segments, history and backup history files) still need their one create-only
//!   upload, oldest first; which names the store's first listing already holds with the same size (trusted,
//!   except the newest few, which are compared for real: a crash may have interrupted the uploads just
//!   before). Everything the store lacks goes up, also segments `cleanup` removed there: clean the spool as
//!   far as the store (or use `--remove-uploaded`);
//! - which `.partial` files changed since their last upload, and which `.partial` objects a complete object
//!   now supersedes (to delete);
//! - which spool files `--remove-uploaded` may delete (never the spool's newest segment file, so the start
//!   position found in the spool alone stays right);
//! - how far the off-site copy reaches ([`uploaded_through`]), which `--slot-follows-upload` reports.

use crate::archive::catalog::{Catalog, SegFile};
use crate::wal::segment::{SegmentId, TimeLineId, WalFileName};
use crate::wal::Lsn;
use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

/// Names already in the store at start that are compared for real (HEAD and checksum) instead of trusted by
/// their listed size: the newest ones, where a crash may have cut the uploads short.
pub const CHECKED_AT_START: usize = 8;

/// What the uploader knows about the store, kept from round to round.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// Final names the store holds with the spool's contents (uploaded, found equal, or trusted).
    pub done: BTreeSet<String>,
    /// Final names the store holds with other contents: never retried, never removed from the spool.
    pub conflicts: BTreeSet<String>,
    /// Final names of the store's first listing, with their sizes, not yet settled.
    pub listed: HashMap<String, u64>,
    /// `.partial` objects the store holds (listed, or put by this uploader).
    pub partial_objects: BTreeSet<String>,
    /// `.partial` files this uploader put, as they were when read.
    pub snapshots: HashMap<String, Snapshot>,
}

/// A `.partial` file as uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Every byte of the segment below this position was in the object: the receiver's flushed position,
    /// read before the file, held at most to the segment's end (a flushed byte is in its file).
    pub covers: Lsn,
}

/// A file of the spool under a final name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalFile {
    pub name: String,
    pub len: u64,
}

/// A `.partial` file of the spool to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialFile {
    pub name: String,
    pub id: SegmentId,
    pub len: u64,
    pub modified: Option<SystemTime>,
}

/// The work of one round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Names the store's listing holds with the same size, trusted without a request.
    pub trusted: Vec<String>,
    /// Final files to upload create-only, oldest first (history files first: a timeline's segments are
    /// useless without them).
    pub uploads: Vec<FinalFile>,
    /// `.partial` objects a complete object supersedes: deleted.
    pub stale_partials: Vec<String>,
    /// `.partial` files changed since they were last uploaded (or never uploaded by this run).
    pub partials: Vec<PartialFile>,
    /// Spool segments `--remove-uploaded` deletes.
    pub removable: Vec<String>,
}

impl Round {
    /// Files waiting for their upload, and their bytes: the backlog.
    pub fn backlog(&self) -> (u64, u64) {
        (self.uploads.len() as u64, self.uploads.iter().map(|f| f.len).sum())
    }
}

/// The order final files are uploaded in: history files by timeline, then segments by position (timeline
/// breaking ties), then backup history files.
fn order(spool: &Catalog) -> Vec<FinalFile> {
    let histories = spool.histories().values().map(|e| ((0, 0, 0), e.name.clone(), e.len));
    let segments = spool
        .segments()
        .iter()
        .filter(|s| !s.partial)
        .map(|s| ((1, s.id.number, s.id.timeline), s.file.clone(), s.len));
    let backups = spool.backup_histories().iter().map(|e| ((2, 0, 0), e.name.clone(), e.len));
    let mut all: Vec<((u8, u64, TimeLineId), String, u64)> =
        histories.chain(segments).chain(backups).collect();
    all.sort();
    all.into_iter().map(|(_, name, len)| FinalFile { name, len }).collect()
}

fn is_complete_segment(name: &str) -> bool {
    matches!(WalFileName::parse(name), Some(WalFileName::Segment { partial: false, .. }))
}

/// The work of the next round (module docs).
pub fn plan(spool: &Catalog, known: &Known, remove_uploaded: bool) -> Round {
    let mut round = Round::default();
    let pending: Vec<FinalFile> = order(spool)
        .into_iter()
        .filter(|f| !known.done.contains(&f.name) && !known.conflicts.contains(&f.name))
        .collect();
    // Names the store already holds with the same size: the newest few are checked for real.
    let same_size: Vec<String> = pending
        .iter()
        .filter(|f| known.listed.get(&f.name) == Some(&f.len))
        .map(|f| f.name.clone())
        .collect();
    let checked_from = same_size.len().saturating_sub(CHECKED_AT_START);
    let trusted: BTreeSet<&str> = same_size[..checked_from].iter().map(String::as_str).collect();
    for f in pending {
        if trusted.contains(f.name.as_str()) {
            round.trusted.push(f.name);
        } else {
            round.uploads.push(f);
        }
    }

    let complete_ids: BTreeSet<SegmentId> =
        spool.segments().iter().filter(|s| !s.partial).map(|s| s.id).collect();
    let settled = |name: &str| known.done.contains(name) || round.trusted.iter().any(|n| n == name);
    // A `.partial` object is stale once the complete segment is in the store (uploaded and checked).
    let done_segments: BTreeSet<&str> = spool
        .segments()
        .iter()
        .filter(|s| !s.partial && settled(&s.file))
        .map(SegFile::segment_name)
        .chain(known.done.iter().filter(|n| is_complete_segment(n)).map(|n| &n[..24]))
        .collect();
    round.stale_partials = known
        .partial_objects
        .iter()
        .filter(|p| done_segments.contains(&p[..24.min(p.len())]))
        .cloned()
        .collect();

    for s in spool.segments().iter().filter(|s| s.partial && !complete_ids.contains(&s.id)) {
        let unchanged = known
            .snapshots
            .get(&s.file)
            .is_some_and(|snap| snap.len == s.len && snap.modified == s.modified && s.modified.is_some());
        if !unchanged {
            round.partials.push(PartialFile {
                name: s.file.clone(),
                id: s.id,
                len: s.len,
                modified: s.modified,
            });
        }
    }

    if remove_uploaded {
        // Never the newest segment file: the start position is found in the spool alone.
        let newest = spool.newest().map(|n| (n.id.number, n.id.timeline, !n.partial));
        round.removable = spool
            .segments()
            .iter()
            .filter(|s| !s.partial && settled(&s.file))
            .filter(|s| Some((s.id.number, s.id.timeline, true)) < newest)
            .map(|s| s.file.clone())
            .collect();
    }
    round
}

/// How far the store's copy reaches: every byte below the returned position that the receiver had flushed
/// (`flushed`, read before the spool was listed, so every such byte was in a listed file) is in the store.
/// Held back by the oldest complete file not uploaded yet (a conflict holds it for good), by each open
/// `.partial` as far as its last upload covers it, and by a history file not uploaded yet (from its
/// timeline's first segment on).
pub fn uploaded_through(spool: &Catalog, known: &Known, flushed: Lsn) -> Lsn {
    let size = spool.segment_size();
    let mut cap = flushed;
    let complete_ids: BTreeSet<SegmentId> =
        spool.segments().iter().filter(|s| !s.partial).map(|s| s.id).collect();
    let pending_history =
        spool.histories().iter().filter(|(_, e)| !known.done.contains(&e.name)).map(|(t, _)| *t).min();
    for s in spool.segments() {
        let Some(start) = s.id.start_lsn(size) else { continue };
        let reach = if !s.partial {
            if known.done.contains(&s.file) {
                None
            } else {
                Some(start)
            }
        } else if complete_ids.contains(&s.id) {
            None // superseded by its complete file
        } else {
            Some(known.snapshots.get(&s.file).map_or(start, |snap| snap.covers.max(start)))
        };
        if let Some(reach) = reach {
            cap = cap.min(reach);
        }
        if pending_history.is_some_and(|t| s.id.timeline >= t) {
            cap = cap.min(start);
        }
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u32 = 1 << 20;

    fn catalog(files: &[(&str, u64)]) -> Catalog {
        let tmp = tempfile::tempdir().unwrap();
        for (name, len) in files {
            let f = std::fs::File::create(tmp.path().join(name)).unwrap();
            f.set_len(*len).unwrap();
        }
        Catalog::read(
            &crate::archive::store::LocalStore::new(tmp.path()),
            crate::archive::catalog::SegmentSize::Known(SEG),
        )
        .unwrap()
    }

    fn seg(n: u64) -> String {
        SegmentId { timeline: 1, number: n }.file_name(SEG)
    }

    fn lsn(n: u64) -> Lsn {
        Lsn(n * u64::from(SEG))
    }

    fn entry_names(v: &[FinalFile]) -> Vec<&str> {
        v.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn uploads_histories_first_then_segments_by_position() {
        let c = catalog(&[
            (&format!("{}.zst", seg(3)), 10),
            (&seg(2), u64::from(SEG)),
            ("00000002.history", 40),
            ("000000020000000000000003", u64::from(SEG)),
            (&format!("{}.partial", seg(4)), u64::from(SEG)),
            ("000000010000000000000002.00000028.backup", 100),
            (".walkeeper.lock", 0),
        ]);
        let r = plan(&c, &Known::default(), false);
        assert_eq!(
            entry_names(&r.uploads),
            [
                "00000002.history",
                "000000010000000000000002",
                "000000010000000000000003.zst",
                "000000020000000000000003",
                "000000010000000000000002.00000028.backup"
            ]
        );
        assert_eq!(r.backlog(), (5, 10 + 40 + 100 + 2 * u64::from(SEG)));
        assert_eq!(r.partials.len(), 1);
        assert!(r.removable.is_empty() && r.trusted.is_empty() && r.stale_partials.is_empty());
    }

    #[test]
    fn the_first_listing_is_trusted_except_the_newest_and_other_sizes() {
        let names: Vec<String> = (1..=12).map(seg).collect();
        let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), u64::from(SEG))).collect();
        let c = catalog(&files);
        let mut known = Known::default();
        for n in &names[..11] {
            known.listed.insert(n.clone(), u64::from(SEG));
        }
        known.listed.insert(seg(2), 5); // another size: a conflict, found by the upload's compare
        let r = plan(&c, &known, false);
        // Same size: 10 names (1, 3..11); the newest CHECKED_AT_START of them are checked for real.
        assert_eq!(r.trusted, [seg(1), seg(3)]);
        assert_eq!(
            entry_names(&r.uploads),
            [&seg(2), &seg(4), &seg(5), &seg(6), &seg(7), &seg(8), &seg(9), &seg(10), &seg(11), &seg(12)]
                .map(String::as_str)
        );
        known.done.extend(r.trusted);
        known.conflicts.insert(seg(2));
        let r = plan(&c, &known, false);
        assert_eq!(r.uploads.len(), 9, "a conflict is never retried");
    }

    #[test]
    fn partials_go_up_when_changed_and_are_deleted_once_superseded() {
        let p4 = format!("{}.partial", seg(4));
        let c =
            catalog(&[(&seg(3), u64::from(SEG)), (&p4, u64::from(SEG)), (&format!("{}.partial", seg(3)), 7)]);
        let mut known = Known::default();
        let r = plan(&c, &known, false);
        // The leftover .partial of segment 3 is superseded by the complete file: never uploaded.
        assert_eq!(r.partials.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), [p4.as_str()]);
        let f = &r.partials[0];
        known.snapshots.insert(f.name.clone(), Snapshot { len: f.len, modified: f.modified, covers: lsn(4) });
        assert!(plan(&c, &known, false).partials.is_empty(), "unchanged: not uploaded again");
        known.snapshots.get_mut(&p4).unwrap().modified = None;
        assert_eq!(plan(&c, &known, false).partials.len(), 1, "no time to compare: uploaded again");
        // Objects: segment 3's .partial goes once segment 3 is done; 4's stays.
        known.partial_objects.insert(format!("{}.zst.partial", seg(3)));
        known.partial_objects.insert(p4.clone());
        assert!(plan(&c, &known, false).stale_partials.is_empty());
        known.done.insert(seg(3));
        assert_eq!(plan(&c, &known, false).stale_partials, [format!("{}.zst.partial", seg(3))]);
    }

    #[test]
    fn remove_uploaded_keeps_the_newest_segment_file_and_everything_not_done() {
        let c = catalog(&[(&seg(1), 1), (&seg(2), 1), (&seg(3), 1), ("00000002.history", 1)]);
        let mut known = Known::default();
        known.done.extend([seg(1), seg(3), "00000002.history".to_string()]);
        assert_eq!(plan(&c, &known, true).removable, [seg(1)], "2 is not uploaded, 3 is the newest");
        assert!(plan(&c, &known, false).removable.is_empty());
        let c = catalog(&[(&seg(1), 1), (&format!("{}.partial", seg(2)), 1)]);
        known.done.insert(seg(1));
        assert_eq!(plan(&c, &known, true).removable, [seg(1)], "a newer .partial decides the start");
    }

    #[test]
    fn uploaded_through_stops_at_the_first_byte_not_in_the_store() {
        let p6 = format!("{}.partial", seg(6));
        let c = catalog(&[(&seg(3), 1), (&seg(4), 1), (&seg(5), 1), (&p6, 1), ("00000002.history", 1)]);
        let mut known = Known::default();
        let flushed = Lsn(lsn(6).0 + 100);
        // Nothing settled: the history file is pending, but no segment of timeline 2 is here.
        assert_eq!(uploaded_through(&c, &known, flushed), lsn(3));
        known.done.extend([seg(3), seg(5)]);
        assert_eq!(uploaded_through(&c, &known, flushed), lsn(4), "4 is missing, 5 does not count");
        known.done.insert(seg(4));
        assert_eq!(uploaded_through(&c, &known, flushed), lsn(6), "the .partial was never uploaded");
        known.snapshots.insert(p6.clone(), Snapshot { len: 1, modified: None, covers: Lsn(lsn(6).0 + 50) });
        assert_eq!(uploaded_through(&c, &known, flushed), Lsn(lsn(6).0 + 50));
        known.snapshots.get_mut(&p6).unwrap().covers = lsn(9);
        assert_eq!(uploaded_through(&c, &known, flushed), flushed, "never beyond what was flushed");
        known.conflicts.insert(seg(4));
        known.done.remove(&seg(4));
        assert_eq!(uploaded_through(&c, &known, flushed), lsn(4), "a conflict holds it for good");
        // A history file not uploaded holds its timeline's segments back.
        let c = catalog(&[(&seg(3), 1), ("000000020000000000000004", 1), ("00000002.history", 1)]);
        let known = Known { done: [seg(3), "000000020000000000000004".into()].into(), ..Known::default() };
        assert_eq!(uploaded_through(&c, &known, lsn(9)), lsn(4));
    }
}
