//! The backup index: what decoding each complete segment found — its online checkpoints, its backup-end
//! records, or why its WAL could not be read — kept in the archive as one small JSON file (an object in a
//! bucket), [`INDEX_NAME`], so that a status or retention run decodes only the segments completed since the
//! last one.
//!
//! It is a cache and nothing more: derived from the WAL, rebuilt from it whenever it is missing, unreadable,
//! malformed, or of another database system or segment size, and never trusted over the archive — entries of
//! segments that are no longer there are dropped at every load ([`Index::retain`]). It is written whole with
//! the store's atomic replace (a temporary file fsynced and renamed, a single PUT), so a reader sees the old
//! or the new one. Two writers at once (the service's retention and a `walkeeper status`) are harmless: the
//! last one wins, and each wrote a correct index.
//!
//! The file is not a WAL name: the catalog lists it among the "others", and no other command reads it.
//!
//! On disk (`format` 1), segments as 24-character names and LSNs as PostgreSQL prints them:
//! `{"format":1,"system_identifier":"…","segment_size":…,"scanned":[{"timeline":1,"first":"…","last":"…"}],
//! "checkpoints":[{"segment":"…","lsn":"…","redo":"…","time":<unix seconds>}],
//! "backup_ends":[{"segment":"…","lsn":"…","start":"…","end":"…"}],"unreadable":[{"segment":"…","error":"…"}]}`

use crate::archive::store::{Store, StoreError};
use crate::wal::pgtime::PgTimestamp;
use crate::wal::segment::{SegmentId, TimeLineId};
use crate::wal::Lsn;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Name of the index in the archive.
pub const INDEX_NAME: &str = ".walkeeper-backups";

/// Version of the layout above; another version is rebuilt.
const FORMAT: u32 = 1;

/// An index larger than this is not read (a sane one holds a few hundred bytes per checkpoint).
const MAX_BYTES: u64 = 64 << 20;

/// An online checkpoint record (a shutdown checkpoint never starts a base backup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Where the record is.
    pub lsn: Lsn,
    /// Its redo pointer: the start LSN of a base backup that began with this checkpoint.
    pub redo: Lsn,
    /// When the checkpoint started (whole seconds: `pg_time_t`).
    pub time: PgTimestamp,
}

/// An XLOG_BACKUP_END record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupEnd {
    /// Where the record is.
    pub lsn: Lsn,
    /// The backup's start (its checkpoint's redo pointer).
    pub start: Lsn,
    /// Just past the record, aligned as PostgreSQL's insert position: the LSN `pg_backup_stop()` returns.
    pub end: Lsn,
}

/// What decoding one complete segment found: the records that start in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentRecords {
    pub checkpoints: Vec<Checkpoint>,
    pub backup_ends: Vec<BackupEnd>,
    /// Why its WAL could not be read to the end (the records before that point are kept).
    pub error: Option<String>,
}

/// The index of one archive: the segments decoded so far and what each held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub system_id: u64,
    pub segment_size: u32,
    pub segments: BTreeMap<SegmentId, SegmentRecords>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: u32,
    system_identifier: String,
    segment_size: u32,
    scanned: Vec<WireRange>,
    checkpoints: Vec<WireCheckpoint>,
    backup_ends: Vec<WireBackupEnd>,
    unreadable: Vec<WireUnreadable>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRange {
    timeline: TimeLineId,
    first: String,
    last: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCheckpoint {
    segment: String,
    lsn: String,
    redo: String,
    time: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBackupEnd {
    segment: String,
    lsn: String,
    start: String,
    end: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireUnreadable {
    segment: String,
    error: String,
}

impl Index {
    /// An empty index: nothing decoded yet.
    pub fn new(system_id: u64, segment_size: u32) -> Index {
        Index { system_id, segment_size, segments: BTreeMap::new() }
    }

    /// Read an index from its bytes, for this archive's system and segment size, keeping only the segments in
    /// `present` (so that memory follows the archive, not the file); `Err` says why it cannot be used (the
    /// caller rebuilds it).
    pub fn parse(
        bytes: &[u8],
        system_id: u64,
        segment_size: u32,
        present: &BTreeSet<SegmentId>,
    ) -> Result<Index, String> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| format!("not a backup index: {e}"))?;
        if wire.format != FORMAT {
            return Err(format!("format {} instead of {FORMAT}", wire.format));
        }
        if wire.system_identifier != system_id.to_string() || wire.segment_size != segment_size {
            return Err(format!(
                "it is of database system {} with {}-byte segments, the archive of system {system_id} with {segment_size}-byte segments",
                wire.system_identifier, wire.segment_size
            ));
        }
        let mut index = Index::new(system_id, segment_size);
        let segment = |name: &str| segment_id(name, segment_size);
        for r in &wire.scanned {
            let (first, last) = (segment(&r.first)?, segment(&r.last)?);
            if first.timeline != r.timeline || last.timeline != r.timeline || first.number > last.number {
                return Err(format!(
                    "scanned range {} .. {} is not a range of timeline {}",
                    r.first, r.last, r.timeline
                ));
            }
            for &id in present.range(first..=last) {
                index.segments.insert(id, SegmentRecords::default());
            }
        }
        let lsn = |text: &str| text.parse::<Lsn>().map_err(|e| e.to_string());
        for c in &wire.checkpoints {
            let time = PgTimestamp::from_unix_seconds(c.time)
                .ok_or_else(|| format!("checkpoint time {}", c.time))?;
            let checkpoint = Checkpoint { lsn: lsn(&c.lsn)?, redo: lsn(&c.redo)?, time };
            if checkpoint.redo > checkpoint.lsn {
                return Err(format!("checkpoint at {} has its redo pointer after it", checkpoint.lsn));
            }
            if let Some(r) = index.records_of(&c.segment, Some(checkpoint.lsn), present)? {
                r.checkpoints.push(checkpoint);
            }
        }
        for b in &wire.backup_ends {
            let end = BackupEnd { lsn: lsn(&b.lsn)?, start: lsn(&b.start)?, end: lsn(&b.end)? };
            if end.start >= end.lsn || end.end <= end.lsn {
                return Err(format!("backup end at {} is out of order with its start or end", end.lsn));
            }
            if let Some(r) = index.records_of(&b.segment, Some(end.lsn), present)? {
                r.backup_ends.push(end);
            }
        }
        for u in &wire.unreadable {
            if let Some(r) = index.records_of(&u.segment, None, present)? {
                r.error = Some(u.error.clone());
            }
        }
        Ok(index)
    }

    /// The records of segment `name` while parsing, for a record at `at`: `None` for a segment that is gone.
    /// Every record must lie in its segment, and a segment still present must have been scanned.
    fn records_of(
        &mut self,
        name: &str,
        at: Option<Lsn>,
        present: &BTreeSet<SegmentId>,
    ) -> Result<Option<&mut SegmentRecords>, String> {
        let id = segment_id(name, self.segment_size)?;
        if let Some(at) = at {
            if at.segment_number(self.segment_size) != id.number {
                return Err(format!("{at} is not in segment {name}"));
            }
        }
        if !present.contains(&id) {
            return Ok(None);
        }
        match self.segments.get_mut(&id) {
            Some(records) => Ok(Some(records)),
            None => Err(format!("segment {name} has records but was not scanned")),
        }
    }

    /// The index as stored (compact JSON and a newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let name = |id: SegmentId| id.file_name(self.segment_size);
        let mut wire = Wire {
            format: FORMAT,
            system_identifier: self.system_id.to_string(),
            segment_size: self.segment_size,
            scanned: Vec::new(),
            checkpoints: Vec::new(),
            backup_ends: Vec::new(),
            unreadable: Vec::new(),
        };
        let ids: Vec<SegmentId> = self.segments.keys().copied().collect();
        for run in ids.chunk_by(|a, b| a.timeline == b.timeline && a.number.checked_add(1) == Some(b.number))
        {
            let (first, last) = (run[0], run[run.len() - 1]);
            wire.scanned.push(WireRange { timeline: first.timeline, first: name(first), last: name(last) });
        }
        for (&id, r) in &self.segments {
            for c in &r.checkpoints {
                wire.checkpoints.push(WireCheckpoint {
                    segment: name(id),
                    lsn: c.lsn.to_string(),
                    redo: c.redo.to_string(),
                    time: c.time.unix_micros().map_or(0, |us| us.div_euclid(1_000_000)),
                });
            }
            for b in &r.backup_ends {
                wire.backup_ends.push(WireBackupEnd {
                    segment: name(id),
                    lsn: b.lsn.to_string(),
                    start: b.start.to_string(),
                    end: b.end.to_string(),
                });
            }
            if let Some(error) = &r.error {
                wire.unreadable.push(WireUnreadable { segment: name(id), error: error.clone() });
            }
        }
        let mut out = serde_json::to_vec(&wire).expect("plain data serializes");
        out.push(b'\n');
        out
    }

    /// Keep only the segments for which `present` holds; true when something was dropped.
    pub fn retain(&mut self, present: impl Fn(SegmentId) -> bool) -> bool {
        let before = self.segments.len();
        self.segments.retain(|&id, _| present(id));
        self.segments.len() != before
    }
}

/// The segment a name in the index stands for (as `XLogFileName` spells it).
fn segment_id(name: &str, segment_size: u32) -> Result<SegmentId, String> {
    SegmentId::parse_name(name, segment_size)
        .filter(|id| id.timeline != 0 && id.file_name(segment_size) == name)
        .ok_or_else(|| format!("\"{}\" is not a segment name", name.escape_debug()))
}

/// The archive's index for the segments in `present`, or an empty one and why the stored one could not be
/// used (`None` when there was none: a first run).
pub fn load(
    store: &dyn Store,
    system_id: u64,
    segment_size: u32,
    present: &BTreeSet<SegmentId>,
) -> (Index, Option<String>) {
    let fresh = Index::new(system_id, segment_size);
    let bytes = match store.stat(INDEX_NAME) {
        Ok(None) => return (fresh, None),
        Ok(Some(e)) if !e.regular => return (fresh, Some("it is not a regular file".to_string())),
        Ok(Some(e)) if e.len > MAX_BYTES => {
            return (fresh, Some(format!("it holds {} bytes, more than the {MAX_BYTES} read", e.len)))
        }
        Ok(Some(_)) => store.read_all(INDEX_NAME),
        Err(e) => Err(e),
    };
    match bytes {
        Ok(bytes) => match Index::parse(&bytes, system_id, segment_size, present) {
            Ok(index) => (index, None),
            Err(why) => (fresh, Some(why)),
        },
        Err(e) if e.is_not_found() => (fresh, None),
        Err(e) => (fresh, Some(e.to_string())),
    }
}

/// Store `index` in place of the old one.
pub fn save(store: &dyn Store, index: &Index) -> Result<(), StoreError> {
    store.put_replace(INDEX_NAME, &index.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::store::LocalStore;

    const SEG: u32 = 1 << 20;

    fn id(timeline: TimeLineId, number: u64) -> SegmentId {
        SegmentId { timeline, number }
    }

    fn all() -> BTreeSet<SegmentId> {
        (1..=2).flat_map(|t| (0..16).map(move |n| id(t, n))).collect()
    }

    fn sample() -> Index {
        let mut index = Index::new(7_000_000_000_000_000_001, SEG);
        for n in [3, 4, 5, 9] {
            index.segments.insert(id(1, n), SegmentRecords::default());
        }
        index.segments.insert(id(2, 9), SegmentRecords::default());
        let seg = |n: u64| n * u64::from(SEG);
        let r = index.segments.get_mut(&id(1, 4)).unwrap();
        r.checkpoints.push(Checkpoint {
            lsn: Lsn(seg(4) + 0x60),
            redo: Lsn(seg(4) + 0x28),
            time: PgTimestamp::from_unix_seconds(1_772_600_767).unwrap(),
        });
        r.backup_ends.push(BackupEnd {
            lsn: Lsn(seg(4) + 0x900),
            start: Lsn(seg(4) + 0x28),
            end: Lsn(seg(4) + 0x928),
        });
        index.segments.get_mut(&id(2, 9)).unwrap().error =
            Some("record 0/00900100: incorrect prev-link".into());
        index
    }

    #[test]
    fn round_trips_with_ranges() {
        let index = sample();
        let bytes = index.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(r#""scanned":[{"timeline":1,"first":"000000010000000000000003","last":"000000010000000000000005"},{"timeline":1,"first":"000000010000000000000009","last":"000000010000000000000009"},{"timeline":2,"#),
            "{text}"
        );
        assert!(text.contains(r#""time":1772600767"#), "{text}");
        assert_eq!(Index::parse(&bytes, index.system_id, SEG, &all()).unwrap(), index);
        // Only what is present is kept, records of the others are skipped.
        let present: BTreeSet<SegmentId> = [id(1, 5), id(2, 9), id(2, 10)].into();
        let mut expected = index.clone();
        expected.retain(|id| present.contains(&id));
        assert_eq!(Index::parse(&bytes, index.system_id, SEG, &present).unwrap(), expected);
    }

    #[test]
    fn another_archive_or_damage_is_refused_with_a_reason() {
        let index = sample();
        let good = String::from_utf8(index.to_bytes()).unwrap();
        let parse = |text: &str| Index::parse(text.as_bytes(), index.system_id, SEG, &all()).unwrap_err();
        let other = Index::parse(good.as_bytes(), 5, SEG, &all()).unwrap_err();
        assert!(other.contains("of database system 7000000000000000001"), "{other}");
        assert!(Index::parse(good.as_bytes(), index.system_id, 2 * SEG, &all()).is_err());
        assert!(parse(&good[..good.len() / 2]).starts_with("not a backup index: "));
        assert!(parse(&good.replace("\"format\":1", "\"format\":2")).contains("format 2"));
        assert!(parse(&good.replace("\"unreadable\"", "\"unknown\"")).starts_with("not a backup index"));
        // A record outside its segment, or in a segment never scanned.
        assert!(parse(&good.replace("\"lsn\":\"0/00400060\"", "\"lsn\":\"0/00500060\""))
            .contains("is not in segment"));
        let unscanned = good.replace(
            r#"{"timeline":1,"first":"000000010000000000000003","last":"000000010000000000000005"}"#,
            r#"{"timeline":1,"first":"000000010000000000000005","last":"000000010000000000000005"}"#,
        );
        assert!(parse(&unscanned).contains("was not scanned"), "{}", parse(&unscanned));
        assert!(parse(&good.replace("000000010000000000000003", "00000001000000000000000g"))
            .contains("not a segment name"));
        let backwards = good.replace(
            r#""first":"000000010000000000000003","last":"000000010000000000000005""#,
            r#""first":"000000010000000000000005","last":"000000010000000000000003""#,
        );
        assert!(parse(&backwards).contains("is not a range"));
    }

    #[test]
    fn load_and_save_through_a_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        let index = sample();
        let load = |store: &LocalStore| super::load(store, index.system_id, SEG, &all());
        assert_eq!(load(&store), (Index::new(index.system_id, SEG), None));
        save(&store, &index).unwrap();
        assert_eq!(load(&store), (index.clone(), None));
        std::fs::write(tmp.path().join(INDEX_NAME), b"{\"format\":1").unwrap();
        let (fresh, why) = load(&store);
        assert!(fresh.segments.is_empty());
        assert!(why.unwrap().starts_with("not a backup index"));
        std::fs::remove_file(tmp.path().join(INDEX_NAME)).unwrap();
        std::fs::create_dir(tmp.path().join(INDEX_NAME)).unwrap();
        assert_eq!(load(&store).1.unwrap(), "it is not a regular file");
    }

    #[test]
    fn retain_drops_what_is_gone() {
        let mut index = sample();
        assert!(!index.retain(|_| true));
        assert!(index.retain(|id| id.number >= 5));
        assert_eq!(index.segments.keys().copied().collect::<Vec<_>>(), [id(1, 5), id(1, 9), id(2, 9)]);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_an_index_or_a_reason_never_a_panic(text in "\\PC{0,300}") {
            let _ = Index::parse(text.as_bytes(), 1, SEG, &all());
        }
    }
}
