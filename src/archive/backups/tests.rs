//! Finding backups in WAL written by the test encoder (real page and record framing, real CRCs), in a
//! directory laid out as walkeeper writes it: checkpoints and backup ends, a record crossing a segment
//! boundary, a timeline switch with a diverged tail, missing and damaged segments, the index reused,
//! rebuilt and ignored.

use super::*;
use crate::archive::catalog::SegmentSize;
use crate::archive::store::LocalStore;
use crate::wal::encoder::WalEncoder;
use crate::wal::pgtime::PgTimestamp;
use crate::wal::records::{RM_XLOG_ID, XLOG_BACKUP_END, XLOG_CHECKPOINT_ONLINE, XLOG_CHECKPOINT_SHUTDOWN};
use std::path::Path;

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_300_000_000_000_000_042;
const T0: i64 = 1_772_600_000;

fn seg_start(n: u64) -> u64 {
    n * u64::from(SEG)
}

fn encoder(timeline: u32, first_segment: u64) -> WalEncoder {
    WalEncoder::new(0xD110, SEG, SYSID, timeline, seg_start(first_segment))
}

/// An online (or shutdown) checkpoint record with this redo pointer and time; returns its LSN.
fn checkpoint(e: &mut WalEncoder, redo: u64, unix: i64, shutdown: bool) -> u64 {
    let mut c = vec![0u8; 88];
    c[0..8].copy_from_slice(&redo.to_le_bytes());
    c[8..12].copy_from_slice(&e.timeline.to_le_bytes());
    c[12..16].copy_from_slice(&e.timeline.to_le_bytes());
    c[64..72].copy_from_slice(&unix.to_le_bytes());
    let info = if shutdown { XLOG_CHECKPOINT_SHUTDOWN } else { XLOG_CHECKPOINT_ONLINE };
    e.main_data_record(RM_XLOG_ID, info, 0, &c)
}

/// A backup end record naming `start`; returns its LSN and `pg_backup_stop()`'s LSN after it.
fn backup_end(e: &mut WalEncoder, start: u64) -> (u64, u64) {
    let at = e.main_data_record(RM_XLOG_ID, XLOG_BACKUP_END, 0, &start.to_le_bytes());
    (at, e.pos())
}

fn filler(e: &mut WalEncoder, bytes: usize) {
    for _ in 0..bytes / 2000 {
        e.record(10, 0, 700, &[0x5A; 2000]);
    }
}

/// A base backup as the primary writes it: a checkpoint (its redo just before it), some WAL, the end record,
/// a switch. Returns (start, end) as backup_label and pg_backup_stop() give them.
fn base_backup(e: &mut WalEncoder, unix: i64) -> (u64, u64) {
    let redo = e.pos();
    e.record(10, 0, 700, &[1; 16]); // the redo point's record (XLOG_CHECKPOINT_REDO in 17+)
    checkpoint(e, redo, unix, false);
    filler(e, 20_000);
    let (_, end) = backup_end(e, redo);
    e.switch();
    (redo, end)
}

/// Write segments `from..to` of `wal` (WAL of `timeline` from the start of segment `first`) as complete
/// files; `partial`: the last one as a zero-padded `.partial` holding what `wal` has of it.
fn write(dir: &Path, timeline: u32, wal: &[u8], first: u64, from: u64, to: u64, partial: bool) {
    for n in from..to {
        let off = ((n - first) * u64::from(SEG)) as usize;
        let mut bytes = wal[off.min(wal.len())..].to_vec();
        bytes.truncate(SEG as usize);
        let name = SegmentId { timeline, number: n }.file_name(SEG);
        if n + 1 == to && partial {
            bytes.resize(SEG as usize, 0);
            std::fs::write(dir.join(format!("{name}.partial")), bytes).unwrap();
        } else {
            assert_eq!(bytes.len(), SEG as usize, "segment {name} is not whole");
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn find_in(dir: &Path) -> Found {
    let store = LocalStore::new(dir);
    let catalog = Catalog::read(&store, SegmentSize::FromHeaders).unwrap();
    find(&store, &catalog).unwrap()
}

fn time(unix: i64) -> PgTimestamp {
    PgTimestamp::from_unix_seconds(unix).unwrap()
}

fn summary(b: &Backup) -> (u32, Lsn, Lsn, Option<PgTimestamp>, Option<&str>) {
    (b.timeline, b.start, b.end, b.checkpoint.map(|c| c.time), b.problem.as_deref())
}

#[test]
fn finds_each_backup_once_with_its_checkpoint_and_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = encoder(1, 1);
    e.record(10, 0, 1, &[1; 64]);
    checkpoint(&mut e, seg_start(1), T0 - 100, true); // a shutdown checkpoint is no backup's start
    let (s1, end1) = base_backup(&mut e, T0);
    filler(&mut e, 300_000);
    let (s2, end2) = base_backup(&mut e, T0 + 60);
    filler(&mut e, 100_000);
    // Segments 1, 2 complete (each ended by a backup's switch), 3 open.
    write(tmp.path(), 1, e.bytes(), 1, 1, 4, true);
    let found = find_in(tmp.path());
    assert_eq!(found.warnings, Vec::<String>::new());
    let got: Vec<_> = found.backups.iter().map(summary).collect();
    assert_eq!(
        got,
        [(1, Lsn(s1), Lsn(end1), Some(time(T0)), None), (1, Lsn(s2), Lsn(end2), Some(time(T0 + 60)), None)]
    );
    assert_eq!(end1 % 8, 0, "pg_backup_stop's LSN is aligned");
    assert_eq!(found.backups[0].end_file, "000000010000000000000001");
    assert_eq!((found.segments_known, found.segments_decoded, &found.index), (2, 2, &IndexUpdate::Saved));
    // The second run decodes nothing and writes nothing.
    let before = std::fs::read(tmp.path().join(index::INDEX_NAME)).unwrap();
    let again = find_in(tmp.path());
    assert_eq!(
        (again.segments_decoded, &again.index, &again.backups),
        (0, &IndexUpdate::Unchanged, &found.backups)
    );
    assert_eq!(std::fs::read(tmp.path().join(index::INDEX_NAME)).unwrap(), before);
    // A damaged index is rebuilt from the WAL, with a warning.
    std::fs::write(tmp.path().join(index::INDEX_NAME), b"{\"format\":1,").unwrap();
    let rebuilt = find_in(tmp.path());
    assert_eq!((rebuilt.segments_decoded, &rebuilt.backups), (2, &found.backups));
    assert!(
        rebuilt.warnings[0].contains("rebuilt from the WAL: not a backup index"),
        "{:?}",
        rebuilt.warnings
    );
}

/// The end record starts in one segment and ends in the next: found once the next segment is there, and
/// the first segment is indexed only then.
#[test]
fn a_record_crossing_into_the_next_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = encoder(1, 1);
    let redo = e.pos();
    checkpoint(&mut e, redo, T0, false);
    // Small records up to a few bytes before the end of segment 1: the 34-byte end record then crosses it.
    let boundary = seg_start(2);
    while boundary - e.pos() >= 34 {
        e.record(10, 0, 1, &[3; 8]);
    }
    let (at, end) = backup_end(&mut e, redo);
    assert!(at < boundary && end > boundary, "the record crosses: {at:X} .. {end:X}");
    filler(&mut e, 50_000);
    e.switch();
    // Segment 2 received only up to the middle of the end record: not found, segment 1 not indexed.
    write(tmp.path(), 1, e.bytes(), 1, 1, 2, false);
    let mut cut = e.bytes().to_vec();
    cut[e.offset(boundary) + 40..].fill(0); // its long page header, then nothing
    write(tmp.path(), 1, &cut, 1, 2, 3, true);
    let found = find_in(tmp.path());
    assert!(found.backups.is_empty(), "{:?}", found.backups);
    assert_eq!((found.segments_known, found.segments_decoded, &found.index), (1, 0, &IndexUpdate::Unchanged));
    // The rest arrives in the .partial: found now (segment 1's scan is complete), though not restorable
    // before its segment is complete.
    let partial = tmp.path().join(format!("{}.partial", SegmentId { timeline: 1, number: 2 }.file_name(SEG)));
    let mut more = e.bytes()[e.offset(boundary)..].to_vec();
    more[5000..].fill(0);
    std::fs::write(&partial, &more).unwrap();
    let found = find_in(tmp.path());
    let missing = "segment 000000010000000000000002 of its WAL is not in the archive";
    assert_eq!(
        found.backups.iter().map(summary).collect::<Vec<_>>(),
        [(1, Lsn(redo), Lsn(end), Some(time(T0)), Some(missing))]
    );
    assert_eq!((found.segments_known, found.segments_decoded), (1, 1));
    // Complete: restorable.
    std::fs::remove_file(&partial).unwrap();
    write(tmp.path(), 1, e.bytes(), 1, 2, 3, false);
    let found = find_in(tmp.path());
    assert_eq!(
        found.backups.iter().map(summary).collect::<Vec<_>>(),
        [(1, Lsn(redo), Lsn(end), Some(time(T0)), None)]
    );
    assert_eq!((found.segments_known, found.segments_decoded), (2, 1));
}

/// A failover: timeline 2 forks from 1 in segment 4; the old primary goes on writing timeline 1 (the
/// diverged tail) and takes a backup there. Backups on timeline 1 before the fork and on timeline 2 count;
/// the one on the diverged tail does not.
#[test]
fn backups_across_a_timeline_switch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = encoder(1, 1);
    let (s1, end1) = base_backup(&mut e, T0);
    filler(&mut e, 1_200_000);
    let fork = e.pos();
    assert_eq!(fork / u64::from(SEG), 3, "the fork is in segment 3");
    let mut old = e.clone();
    filler(&mut old, 10_000);
    let (s_div, _) = base_backup(&mut old, T0 + 10);
    filler(&mut old, 1_100_000);
    write(tmp.path(), 1, old.bytes(), 1, 1, 5, true);
    let mut new = e;
    new.timeline = 2;
    let (s2, end2) = base_backup(&mut new, T0 + 20);
    filler(&mut new, 10_000);
    new.switch();
    // Timeline 2's files begin with segment 3 (holding timeline 1's WAL up to the fork).
    let tli2: Vec<u8> = new.bytes()[new.offset(seg_start(3))..].to_vec();
    write(tmp.path(), 2, &tli2, 3, 3, 5, false);
    std::fs::write(
        tmp.path().join("00000002.history"),
        format!("1\t{}\tno recovery target specified\n", Lsn(fork)),
    )
    .unwrap();
    let found = find_in(tmp.path());
    let got: Vec<_> = found.backups.iter().map(summary).collect();
    let div_end = found.backups[2].end;
    let diverged = format!(
        "it ends at {div_end} on timeline 1, after timeline 1 was left at {} for the newest timeline 2: a diverged history",
        Lsn(fork)
    );
    assert_eq!(
        got,
        [
            (1, Lsn(s1), Lsn(end1), Some(time(T0)), None),
            (2, Lsn(s2), Lsn(end2), Some(time(T0 + 20)), None),
            (1, Lsn(s_div), div_end, Some(time(T0 + 10)), Some(diverged.as_str())),
        ]
    );
    assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    // Without the history file, only timeline 2's own backup is known to be on the newest history.
    std::fs::remove_file(tmp.path().join("00000002.history")).unwrap();
    let found = find_in(tmp.path());
    assert_eq!(found.backups.iter().filter(|b| b.restorable()).count(), 1);
    assert!(found.warnings[0].contains("the history of timeline 2 is unknown"), "{:?}", found.warnings);
    assert!(found.backups[0]
        .problem
        .as_deref()
        .unwrap()
        .contains("place in the history of timeline 2 is unknown"));
}

#[test]
fn missing_or_damaged_wal_makes_a_backup_unrestorable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = encoder(1, 1);
    let redo = e.pos();
    checkpoint(&mut e, redo, T0, false);
    filler(&mut e, 1_500_000); // into segment 2
    let (_, end) = backup_end(&mut e, redo);
    e.switch();
    base_backup(&mut e, T0 + 60);
    filler(&mut e, 10_000);
    write(tmp.path(), 1, e.bytes(), 1, 1, 5, true);
    let found = find_in(tmp.path());
    assert_eq!(found.backups.len(), 2);
    assert!(found.backups.iter().all(Backup::restorable), "{:?}", found.backups);
    assert_eq!(
        (found.backups[0].end, found.backups[0].end_file.as_str()),
        (Lsn(end), "000000010000000000000002")
    );
    // A damaged record in segment 1, after the checkpoint: the end record in segment 2 is still found, but
    // the backup's WAL cannot be replayed.
    let path = tmp.path().join("000000010000000000000001");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[500_000] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(tmp.path().join(index::INDEX_NAME)).unwrap();
    let found = find_in(tmp.path());
    let problem = found.backups[0].problem.as_deref().unwrap_or_default();
    assert!(
        problem.starts_with("segment 000000010000000000000001 of its WAL cannot be read: record "),
        "{found:?}"
    );
    assert_eq!(found.backups[0].checkpoint.map(|c| c.time), Some(time(T0)));
    assert!(found.backups[1].restorable());
    // Segment 1 removed: the checkpoint record goes with it.
    std::fs::remove_file(&path).unwrap();
    let found = find_in(tmp.path());
    assert_eq!(
        found.backups[0].problem.as_deref(),
        Some("segment 000000010000000000000001 of its WAL is not in the archive")
    );
    assert_eq!(found.backups[0].checkpoint, None);
}

#[test]
fn nothing_to_decode_in_an_archive_without_wal() {
    let tmp = crate::archive::catalog::test_archive(&[
        "000000010000000000000001",
        "000000010000000000000002.partial",
    ]);
    let found = find_in(tmp.path());
    assert_eq!(found, Found::empty());
    assert!(!tmp.path().join(index::INDEX_NAME).exists());
}

#[test]
fn an_index_that_cannot_be_written_is_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = encoder(1, 1);
    base_backup(&mut e, T0);
    write(tmp.path(), 1, e.bytes(), 1, 1, 2, false);
    // A directory in the way of the temporary file's rename.
    std::fs::create_dir(tmp.path().join(index::INDEX_NAME)).unwrap();
    std::fs::write(tmp.path().join(index::INDEX_NAME).join("x"), b"x").unwrap();
    let found = find_in(tmp.path());
    assert_eq!(found.backups.len(), 1);
    assert!(
        matches!(&found.index, IndexUpdate::NotSaved(e) if e.contains(".walkeeper-backups")),
        "{:?}",
        found.index
    );
    assert!(found.warnings[0].contains("it is not a regular file"), "{:?}", found.warnings);
}
