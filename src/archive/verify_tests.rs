use super::*;
use crate::archive::store::LocalStore;
use crate::wal::encoder::WalEncoder;
use std::path::Path;

fn verify_dir(dir: &Path) -> Result<Report, StoreError> {
    verify(&LocalStore::new(dir))
}

const SEG: u32 = 1 << 20;
const MAGIC: u16 = 0xD110;
const SYSID: u64 = 7_300_000_000_000_000_001;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// WAL from segment 1 on, timeline 1: records of many sizes (some spanning pages and segments).
fn wal_until(e: &mut WalEncoder, end: u64) {
    let mut i = 0usize;
    while e.pos() < end {
        let len = [10, 100, 3000, 9000, 40_000][i % 5];
        e.main_data_record(10, 0, i as u32, &data(len.min((end - e.pos()) as usize + 50), i as u8));
        i += 1;
    }
}

fn name(tli: u32, n: u64) -> String {
    SegmentId { timeline: tli, number: n }.file_name(SEG)
}

/// Write segment `n` (from an encoder starting at segment `first`) as `file`, compressed by its suffix.
fn put(dir: &Path, e_bytes: &[u8], first: u64, n: u64, file: &str) {
    let off = ((n - first) * u64::from(SEG)) as usize;
    let mut seg = e_bytes[off..(off + SEG as usize).min(e_bytes.len())].to_vec();
    seg.resize(SEG as usize, 0);
    write_file(dir, file, &seg);
}

fn write_file(dir: &Path, file: &str, bytes: &[u8]) {
    crate::archive::catalog::write_wal_file(dir, file, bytes);
}

/// Timeline 1: segments 1..=3 complete, 4 partial (WAL ends inside it).
fn simple_archive(suffix: &str) -> (tempfile::TempDir, WalEncoder) {
    let dir = tempfile::tempdir().unwrap();
    let mut e = WalEncoder::new(MAGIC, SEG, SYSID, 1, u64::from(SEG));
    wal_until(&mut e, 4 * u64::from(SEG) + 300_000);
    for n in 1..=3 {
        put(dir.path(), e.bytes(), 1, n, &format!("{}{suffix}", name(1, n)));
    }
    put(dir.path(), e.bytes(), 1, 4, &format!("{}{suffix}.partial", name(1, 4)));
    (dir, e)
}

fn kinds(r: &Report) -> Vec<ProblemKind> {
    r.problems.iter().map(|p| p.kind).collect()
}

#[test]
fn clean_archive_in_every_compression() {
    for suffix in ["", ".gz", ".zst", ".lz4"] {
        let (dir, e) = simple_archive(suffix);
        let r = verify_dir(dir.path()).unwrap();
        assert!(r.whole, "{suffix}: {:?}", r.problems);
        assert_eq!(r.exit_code(), 0);
        let s = &r.summary;
        assert_eq!(s.system_identifier, Some(SYSID));
        assert_eq!(s.major, Some(15));
        assert_eq!(s.segment_size, Some(SEG));
        assert_eq!((s.segments, s.partial_segments), (4, 1));
        assert_eq!(s.bytes, 4 * u64::from(SEG), "{suffix}");
        assert_eq!(s.timelines.len(), 1);
        let t = &s.timelines[0];
        assert_eq!(t.records, e.records.len() as u64, "{suffix}");
        assert_eq!(t.start_lsn, Lsn(u64::from(SEG)));
        let p = t.partial.as_ref().unwrap();
        assert_eq!(p.file, format!("{}{suffix}.partial", name(1, 4)));
        // The last record ends at e.pos() (MAXALIGNed): zeros follow.
        assert_eq!((p.received_lsn, p.ends), (Lsn(e.pos()), "end_of_wal"));
        assert_eq!(t.end_lsn, Lsn(e.pos()));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["summary"]["system_identifier"], SYSID.to_string());
        assert_eq!(json["summary"]["timelines"][0]["partial"]["received_lsn"], Lsn(e.pos()).to_string());
        assert_eq!(json["problems"], serde_json::json!([]));
    }
}

#[test]
fn partial_cut_inside_a_record_reports_the_end_of_valid_data() {
    let (dir, e) = simple_archive("");
    // Cut the partial in the middle of its last record.
    let last = *e.records.last().unwrap();
    let cut = e.offset(last) + 30;
    let seg4 = 3 * SEG as usize;
    let mut bytes = e.bytes()[seg4..cut].to_vec();
    bytes.resize(SEG as usize, 0);
    write_file(dir.path(), &format!("{}.partial", name(1, 4)), &bytes);
    let r = verify_dir(dir.path()).unwrap();
    assert!(r.whole, "{:?}", r.problems);
    let p = r.summary.timelines[0].partial.clone().unwrap();
    assert_eq!(p.ends, "inside_record");
    assert_eq!(p.received_lsn, Lsn(last));
}

#[test]
fn flipped_bit_names_file_and_record() {
    let (dir, e) = simple_archive("");
    // A record entirely inside segment 2.
    let rec = *e.records.iter().find(|&&r| r > 2 * u64::from(SEG) + 100_000).unwrap();
    let mut bytes = std::fs::read(dir.path().join(name(1, 2))).unwrap();
    let off = (rec - 2 * u64::from(SEG)) as usize + 26; // inside the record's data
    bytes[off] ^= 0x10;
    std::fs::write(dir.path().join(name(1, 2)), &bytes).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(r.exit_code(), 1);
    assert_eq!(kinds(&r), vec![ProblemKind::InvalidWal], "{:?}", r.problems);
    let p = &r.problems[0];
    assert_eq!(p.file.as_deref(), Some(name(1, 2).as_str()));
    assert_eq!(p.lsn, Some(Lsn(rec)));
    assert!(p.message.contains("CRC"), "{}", p.message);
    assert!(r.to_text().contains("archive is NOT whole: 1 problems"));
}

#[test]
fn missing_truncated_and_foreign_segments() {
    let (dir, e) = simple_archive(".zst");
    std::fs::remove_file(dir.path().join(format!("{}.zst", name(1, 2)))).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::MissingSegment], "{:?}", r.problems);
    assert_eq!(r.problems[0].file.as_deref(), Some(name(1, 2).as_str()));
    assert_eq!(r.problems[0].lsn, Some(Lsn(2 * u64::from(SEG))));

    let (dir, e2) = simple_archive("");
    let f = dir.path().join(name(1, 3));
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..500_000]).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::TruncatedSegment], "{:?}", r.problems);
    assert_eq!(r.problems[0].lsn, Some(Lsn(3 * u64::from(SEG) + 500_000)));
    assert_eq!(r.problems[0].file.as_deref(), Some(name(1, 3).as_str()));

    // Same name, another system identifier.
    let mut other = WalEncoder::new(MAGIC, SEG, SYSID + 1, 1, u64::from(SEG));
    wal_until(&mut other, 4 * u64::from(SEG));
    put(dir.path(), other.bytes(), 1, 3, &name(1, 3));
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::InvalidWal], "{:?}", r.problems);
    assert_eq!(r.problems[0].lsn, Some(Lsn(3 * u64::from(SEG))));
    assert!(r.problems[0].message.contains("different database system"), "{}", r.problems[0].message);
    assert_eq!(r.summary.system_identifier, Some(SYSID));
    let _ = (e, e2);
}

#[test]
fn complete_segment_with_zeros_and_partial_in_the_middle() {
    let (dir, e) = simple_archive("");
    // Segment 3 complete but its WAL stops half-way.
    let rec = *e.records.iter().find(|&&r| r > 3 * u64::from(SEG) + 200_000).unwrap();
    let mut bytes = std::fs::read(dir.path().join(name(1, 3))).unwrap();
    let off = (rec - 3 * u64::from(SEG)) as usize;
    bytes[off..].fill(0);
    std::fs::write(dir.path().join(name(1, 3)), &bytes).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::IncompleteSegment], "{:?}", r.problems);
    assert_eq!(r.problems[0].lsn, Some(Lsn(rec)));
    // The same as a .partial followed by segment 4.
    std::fs::rename(dir.path().join(name(1, 3)), dir.path().join(format!("{}.partial", name(1, 3)))).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::IncompleteSegment], "{:?}", r.problems);
    assert_eq!(r.problems[0].lsn, Some(Lsn(rec)));
}

/// Timeline 1 to the switch point S (inside segment 3), timeline 2 from there to segment 5.
fn two_timelines() -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut e = WalEncoder::new(MAGIC, SEG, SYSID, 1, u64::from(SEG));
    wal_until(&mut e, 3 * u64::from(SEG) + 400_000);
    let switch = e.pos();
    let tl1 = e.bytes().to_vec();
    e.timeline = 2;
    wal_until(&mut e, 5 * u64::from(SEG) + 100_000);
    put(dir.path(), &tl1, 1, 1, &name(1, 1));
    put(dir.path(), &tl1, 1, 2, &name(1, 2));
    put(dir.path(), &tl1, 1, 3, &format!("{}.partial", name(1, 3)));
    put(dir.path(), e.bytes(), 1, 3, &name(2, 3));
    put(dir.path(), e.bytes(), 1, 4, &format!("{}.gz", name(2, 4)));
    put(dir.path(), e.bytes(), 1, 5, &format!("{}.partial", name(2, 5)));
    std::fs::write(
        dir.path().join("00000002.history"),
        format!("1\t{}\tno recovery target specified\n", Lsn(switch)),
    )
    .unwrap();
    (dir, switch)
}

#[test]
fn timelines_with_history() {
    let (dir, switch) = two_timelines();
    let r = verify_dir(dir.path()).unwrap();
    assert!(r.whole, "{:?}", r.problems);
    let t = &r.summary.timelines;
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].end_lsn, Lsn(switch));
    assert_eq!((t[1].parent, t[1].forked_at), (Some(1), Some(Lsn(switch))));
    assert_eq!(t[1].start_lsn, Lsn(3 * u64::from(SEG)));
    assert_eq!(r.summary.history_files, 1);

    // Switch point moved later: timeline 2's pages before it.
    let hist = dir.path().join("00000002.history");
    std::fs::write(&hist, format!("1\t{}\tx\n", Lsn(switch + 3 * 8192))).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    // ...and timeline 1's WAL stops short of the claimed fork point.
    assert_eq!(
        kinds(&r),
        vec![ProblemKind::HistoryMismatch, ProblemKind::MissingSegment],
        "{:?}",
        r.problems
    );
    assert_eq!(r.problems[0].file.as_deref(), Some(name(2, 3).as_str()));
    assert_eq!(r.problems[0].lsn, Some(Lsn((switch / 8192 + 1) * 8192)));
    assert_eq!(r.problems[1].lsn, Some(Lsn(switch)));

    // Moved earlier: timeline 2's pages between the claimed and the real switch carry timeline 1. Timeline
    // 1's records past the claimed switch are a diverged tail: information, not a problem of their own.
    let earlier = Lsn(switch - 3 * 8192);
    std::fs::write(&hist, format!("1\t{earlier}\tx\n")).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::HistoryMismatch], "{:?}", r.problems);
    assert_eq!(r.problems[0].file.as_deref(), Some(name(2, 3).as_str()));
    let tails = &r.summary.diverged_tails;
    assert_eq!(tails.len(), 1, "{tails:?}");
    assert_eq!((tails[0].timeline, tails[0].forked_to, tails[0].from), (1, 2, earlier));
    assert_eq!(tails[0].files, [format!("{}.partial", name(1, 3))]);
    assert!(tails[0].records > 0 && tails[0].to <= Lsn(switch));

    // Parent timeline wrong.
    std::fs::write(&hist, format!("3\t{}\tx\n", Lsn(switch))).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::InvalidHistory], "{:?}", r.problems);
    assert_eq!(r.problems[0].file.as_deref(), Some("00000002.history"));

    // Missing history file.
    std::fs::remove_file(&hist).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::MissingHistory], "{:?}", r.problems);
}

/// A real failover's shape: timeline 1 went on past the point where timeline 2 forked from it (the old
/// primary wrote more than the promoted standby had), with commits, into later segments. Timeline 2's first
/// file repeats timeline 1's WAL up to the fork. The archive is whole; the tail is reported.
#[test]
fn a_diverged_tail_is_information_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = WalEncoder::new(MAGIC, SEG, SYSID, 1, u64::from(SEG));
    wal_until(&mut e, 3 * u64::from(SEG) + 400_000);
    let fork = e.pos();
    let mut old = e.clone();
    let mut commits = 0;
    while old.pos() < 5 * u64::from(SEG) + 1000 {
        old.main_data_record(10, 0, 9, &data(20_000, 3));
        let mut main = 776_995_200_000_000i64.to_le_bytes().to_vec();
        main.extend_from_slice(&[0; 4]);
        old.main_data_record(
            crate::wal::records::RM_XACT_ID,
            crate::wal::records::XLOG_XACT_COMMIT,
            9,
            &main,
        );
        commits += 1;
    }
    e.timeline = 2;
    wal_until(&mut e, 4 * u64::from(SEG) + 100_000);
    for n in 1..=4 {
        put(dir.path(), old.bytes(), 1, n, &name(1, n));
    }
    put(dir.path(), old.bytes(), 1, 5, &format!("{}.partial", name(1, 5)));
    put(dir.path(), e.bytes(), 1, 3, &name(2, 3));
    put(dir.path(), e.bytes(), 1, 4, &format!("{}.partial", name(2, 4)));
    std::fs::write(dir.path().join("00000002.history"), format!("1\t{}\tx\n", Lsn(fork))).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert!(r.whole, "{:?}", r.problems);
    assert_eq!(r.exit_code(), 0);
    let t = &r.summary.diverged_tails;
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!((t[0].timeline, t[0].forked_to, t[0].from), (1, 2, Lsn(fork)));
    assert_eq!((t[0].commits, t[0].last_commit.as_deref()), (commits, Some("2024-08-15T00:00:00.000000Z")));
    assert_eq!(t[0].to.0.next_multiple_of(8), old.pos());
    assert_eq!(t[0].files, [name(1, 3), name(1, 4), format!("{}.partial", name(1, 5))]);
    let text = r.to_text();
    assert!(
        text.contains(&format!(
            "\ndiverged tail: timeline 1 continues past {}, where timeline 2 forked",
            Lsn(fork)
        )),
        "{text}"
    );
    assert!(text.ends_with("archive is whole\n"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["summary"]["diverged_tails"][0]["from"], Lsn(fork).to_string());
    assert_eq!(json["summary"]["diverged_tails"][0]["commits"], commits);
}

#[test]
fn empty_and_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::NoSegments]);
    // Named as the user named it: a directory here, `s3://bucket/prefix` for a bucket.
    assert_eq!(r.problems[0].message, format!("no WAL segment files in \"{}\"", dir.path().display()));
    assert!(verify_dir(&dir.path().join("nope")).is_err());
}

#[test]
fn foreign_first_segment_is_the_odd_one_out() {
    let (dir, _e) = simple_archive("");
    let mut other = WalEncoder::new(MAGIC, SEG, SYSID + 7, 1, u64::from(SEG));
    wal_until(&mut other, 2 * u64::from(SEG));
    put(dir.path(), other.bytes(), 1, 1, &name(1, 1));
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(r.summary.system_identifier, Some(SYSID), "the majority wins");
    assert_eq!(kinds(&r), vec![ProblemKind::InvalidWal], "{:?}", r.problems);
    assert_eq!(r.problems[0].file.as_deref(), Some(name(1, 1).as_str()));
}

#[test]
fn record_spanning_segments_is_checked_whole() {
    let (dir, e) = simple_archive("");
    let boundary = 3 * u64::from(SEG);
    // The record that crosses from segment 2 into segment 3; damage its part in segment 3.
    let rec = *e.records.iter().rev().find(|&&r| r < boundary).unwrap();
    assert!(e.records.iter().all(|&r| r <= rec || r > boundary + 100));
    let mut bytes = std::fs::read(dir.path().join(name(1, 3))).unwrap();
    bytes[100] ^= 1; // past the long page header, inside the continuation
    std::fs::write(dir.path().join(name(1, 3)), &bytes).unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::InvalidWal], "{:?}", r.problems);
    assert_eq!(r.problems[0].file.as_deref(), Some(name(1, 3).as_str()));
    assert_eq!(r.problems[0].lsn, Some(Lsn(rec)));
}

#[test]
fn a_stale_partial_beside_its_complete_segment_is_checked_on_its_own() {
    let (dir, e) = simple_archive("");
    // A leftover .partial of segment 3 holding the first half of it: fine on its own.
    let off = 2 * SEG as usize;
    let mut half = e.bytes()[off..off + SEG as usize / 2].to_vec();
    half.resize(SEG as usize, 0);
    write_file(dir.path(), &format!("{}.partial", name(1, 3)), &half);
    let r = verify_dir(dir.path()).unwrap();
    assert!(r.whole, "{:?}", r.problems);
    assert_eq!(r.summary.timelines[0].records, e.records.len() as u64, "counted once");
    // A corrupt one is reported.
    half[5000] ^= 0xFF;
    write_file(dir.path(), &format!("{}.partial", name(1, 3)), &half);
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::InvalidWal], "{:?}", r.problems);
    assert_eq!(r.problems[0].file, Some(format!("{}.partial", name(1, 3))));
}

#[test]
fn a_trailing_run_of_partials_is_whole() {
    // The primary died while a record crossing from segment 3 into 4 was incomplete: 3 stays .partial
    // (received whole), 4 is .partial too.
    let dir = tempfile::tempdir().unwrap();
    let mut e = WalEncoder::new(MAGIC, SEG, SYSID, 1, u64::from(SEG));
    wal_until(&mut e, 4 * u64::from(SEG) + 300_000);
    put(dir.path(), e.bytes(), 1, 1, &name(1, 1));
    put(dir.path(), e.bytes(), 1, 2, &name(1, 2));
    put(dir.path(), e.bytes(), 1, 3, &format!("{}.partial", name(1, 3)));
    put(dir.path(), e.bytes(), 1, 4, &format!("{}.partial", name(1, 4)));
    let r = verify_dir(dir.path()).unwrap();
    assert!(r.whole, "{:?}", r.problems);
    assert_eq!((r.summary.partial_segments, r.summary.timelines[0].end_lsn), (2, Lsn(e.pos())));
    // A .partial followed by a complete segment is not served by restore: a hole for recovery.
    wal_until(&mut e, 5 * u64::from(SEG) + 1000);
    std::fs::remove_file(dir.path().join(format!("{}.partial", name(1, 4)))).unwrap();
    put(dir.path(), e.bytes(), 1, 4, &name(1, 4));
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::MissingSegment], "{:?}", r.problems);
    assert_eq!(r.problems[0].file.as_deref(), Some(name(1, 3).as_str()));
    assert!(r.problems[0].message.contains("held only by"), "{}", r.problems[0].message);
}

#[test]
fn entries_that_are_not_regular_files_are_problems() {
    let (dir, _e) = simple_archive(".zst");
    std::fs::create_dir(dir.path().join(name(1, 9))).unwrap();
    std::os::unix::fs::symlink(dir.path().join(format!("{}.zst", name(1, 1))), dir.path().join(name(1, 8)))
        .unwrap();
    let r = verify_dir(dir.path()).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::NotRegularFile, ProblemKind::NotRegularFile], "{:?}", r.problems);
    assert_eq!(r.problems[0].file.as_deref(), Some(name(1, 8).as_str()));
    assert!(r.problems[0].message.ends_with("is not a regular file"), "{}", r.problems[0].message);
    assert_eq!(r.exit_code(), 1);
}

/// A receiver writing the archive while verify reads it. `partial` is listed, but when it is opened: with
/// `complete`, the receiver has just completed it (the `.partial` is gone, the final name written) the first
/// time; without, it has vanished every time.
#[derive(Debug)]
struct Racing {
    local: LocalStore,
    partial: String,
    complete: Option<Vec<u8>>,
    opened: std::sync::atomic::AtomicBool,
}

impl Store for Racing {
    fn location(&self) -> String {
        self.local.location()
    }
    fn location_of(&self, name: &str) -> String {
        self.local.location_of(name)
    }
    fn list(&self) -> Result<Vec<crate::archive::store::Entry>, StoreError> {
        self.local.list()
    }
    fn stat(&self, name: &str) -> Result<Option<crate::archive::store::Entry>, StoreError> {
        self.local.stat(name)
    }
    fn open(&self, name: &str) -> Result<Box<dyn std::io::Read + Send>, StoreError> {
        if name != self.partial {
            return self.local.open(name);
        }
        match &self.complete {
            Some(complete) if !self.opened.swap(true, std::sync::atomic::Ordering::SeqCst) => {
                let dir = self.local.local_dir().unwrap();
                std::fs::remove_file(dir.join(name)).unwrap();
                write_file(dir, name.trim_end_matches(".partial"), complete);
            }
            None => return Err(StoreError::NotFound { location: self.local.location_of(name) }),
            Some(_) => {}
        }
        self.local.open(name)
    }
    fn read_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        self.local.read_range(name, offset, len)
    }
    fn put_new(&self, name: &str, data: &[u8]) -> Result<crate::archive::store::Put, StoreError> {
        self.local.put_new(name, data)
    }
    fn put_replace(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.local.put_replace(name, data)
    }
    fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.local.delete(name)
    }
}

#[test]
fn a_partial_completed_while_verify_reads_is_no_damage() {
    let (dir, mut e) = simple_archive("");
    wal_until(&mut e, 5 * u64::from(SEG) + 1000);
    let off = 3 * SEG as usize;
    let partial = format!("{}.partial", name(1, 4));
    let racing = |dir: &Path, complete| Racing {
        local: LocalStore::new(dir),
        partial: partial.clone(),
        complete,
        opened: false.into(),
    };
    let r = verify(&racing(dir.path(), Some(e.bytes()[off..off + SEG as usize].to_vec()))).unwrap();
    assert!(r.whole, "{:?}", r.problems);
    assert_eq!((r.summary.segments, r.summary.partial_segments), (4, 0), "the second listing is reported");
    // A file that vanishes every time is reported once the attempts are spent.
    let (dir, _) = simple_archive("");
    let r = verify(&racing(dir.path(), None)).unwrap();
    assert_eq!(kinds(&r), vec![ProblemKind::Io], "{:?}", r.problems);
    assert_eq!(r.problems[0].file.as_deref(), Some(partial.as_str()));
}
