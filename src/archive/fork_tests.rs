use super::*;
use crate::archive::catalog::SegmentSize;
use crate::archive::store::LocalStore;
use crate::wal::encoder::WalEncoder;
use crate::wal::records::{RM_XACT_ID, XLOG_XACT_COMMIT};
use crate::wal::segment::SegmentId;
use std::path::Path;

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_300_000_000_000_000_002;

fn name(tli: TimeLineId, n: u64) -> String {
    SegmentId { timeline: tli, number: n }.file_name(SEG)
}

/// Segment `n` of `e` (which starts at segment 1) as `file`, compressed as its name says.
fn put(dir: &Path, e: &WalEncoder, n: u64, file: &str) {
    let off = ((n - 1) * u64::from(SEG)) as usize;
    let mut seg = e.bytes()[off.min(e.bytes().len())..(off + SEG as usize).min(e.bytes().len())].to_vec();
    seg.resize(SEG as usize, 0);
    crate::archive::catalog::write_wal_file(dir, file, &seg);
}

fn commit(e: &mut WalEncoder, time: i64) -> u64 {
    let mut main = time.to_le_bytes().to_vec();
    main.extend_from_slice(&[0; 4]);
    e.main_data_record(RM_XACT_ID, XLOG_XACT_COMMIT, 700, &main)
}

/// Timeline 1 from segment 1: filler records and a commit every ~100 kB, up to `end`; the commits' LSNs.
fn wal(end: u64) -> (WalEncoder, Vec<u64>) {
    let mut e = WalEncoder::new(0xD110, SEG, SYSID, 1, u64::from(SEG));
    let mut commits = Vec::new();
    let mut i = 0i64;
    while e.pos() < end {
        e.main_data_record(10, 0, 700, &vec![(i as u8) | 1; 5000]);
        if i % 20 == 0 {
            commits.push(commit(&mut e, 1000 + i));
        }
        i += 1;
    }
    (e, commits)
}

fn catalog(dir: &Path) -> (LocalStore, Catalog) {
    let store = LocalStore::new(dir);
    let c = Catalog::read(&store, SegmentSize::Known(SEG)).unwrap();
    (store, c)
}

#[test]
fn fork_points_name_the_child_and_the_latest_switch() {
    let h = |v: &[(TimeLineId, u64)]| {
        v.iter().map(|&(timeline, end)| HistoryEntry { timeline, end: Lsn(end) }).collect::<Vec<_>>()
    };
    let (h2, h3) = (h(&[(1, 100)]), h(&[(1, 100), (2, 500)]));
    let p = fork_points([(2, h2.as_slice()), (3, h3.as_slice())]);
    assert_eq!(p[&1], ForkPoint { at: Lsn(100), child: 2 });
    assert_eq!(p[&2], ForkPoint { at: Lsn(500), child: 3 });
    assert_eq!(p.len(), 2);
    // Timeline 4 forked from timeline 1 later than timeline 2 did: timeline 1's WAL up to there is its history.
    let h4 = h(&[(1, 300)]);
    let p = fork_points([(2, h2.as_slice()), (4, h4.as_slice())]);
    assert_eq!(p[&1], ForkPoint { at: Lsn(300), child: 4 });
}

#[test]
fn the_newest_timeline_ends_where_its_valid_wal_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, _) = wal(3 * u64::from(SEG) + 200_000);
    let end = e.pos();
    for n in 1..=2 {
        put(tmp.path(), &e, n, &name(1, n));
    }
    let (store, c) = catalog(tmp.path());
    assert_eq!(newest_end(&store, &c).unwrap(), Some((1, Lsn(3 * u64::from(SEG)))));
    // A trailing .partial, in every form: decoded to the end of its last record (aligned).
    for sfx in ["", ".zst", ".gz", ".lz4"] {
        let partial = format!("{}{sfx}.partial", name(1, 3));
        put(tmp.path(), &e, 3, &partial);
        let (store, c) = catalog(tmp.path());
        assert_eq!(newest_end(&store, &c).unwrap(), Some((1, Lsn(end.next_multiple_of(8)))), "{sfx}");
        std::fs::remove_file(tmp.path().join(partial)).unwrap();
    }
    // A run of two: decoded from the first of the run.
    put(tmp.path(), &e, 2, &format!("{}.partial", name(1, 2)));
    std::fs::remove_file(tmp.path().join(name(1, 2))).unwrap();
    put(tmp.path(), &e, 3, &format!("{}.partial", name(1, 3)));
    let (store, c) = catalog(tmp.path());
    assert_eq!(newest_end(&store, &c).unwrap(), Some((1, Lsn(end.next_multiple_of(8)))));
    // A fresh .partial of a later timeline holds nothing yet: that timeline ends at its start.
    std::fs::write(tmp.path().join(format!("{}.partial", name(2, 3))), vec![0u8; SEG as usize]).unwrap();
    let (store, c) = catalog(tmp.path());
    assert_eq!(newest_end(&store, &c).unwrap(), Some((2, Lsn(3 * u64::from(SEG)))));
    let empty = tempfile::tempdir().unwrap();
    let (store, c) = catalog(empty.path());
    assert_eq!(newest_end(&store, &c).unwrap(), None);
}

#[test]
fn a_tail_is_summarised_from_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, commits) = wal(4 * u64::from(SEG) + 300_000);
    for n in 1..=3 {
        put(tmp.path(), &e, n, &name(1, n));
    }
    put(tmp.path(), &e, 4, &format!("{}.zst.partial", name(1, 4)));
    // Timeline 2 forked at the start of a commit in segment 2: that commit and all later ones are the tail.
    let k = commits.iter().position(|&c| c > 2 * u64::from(SEG) + 100_000).unwrap();
    let fork = Lsn(commits[k]);
    std::fs::write(tmp.path().join("00000002.history"), format!("1\t{fork}\tno recovery target specified\n"))
        .unwrap();
    let (store, c) = catalog(tmp.path());
    let tails = diverged_tails(&store, &c).unwrap();
    assert_eq!(tails.len(), 1, "{tails:?}");
    let t = &tails[0];
    assert_eq!((t.timeline, t.forked_to, t.from), (1, 2, fork));
    assert_eq!(t.commits, (commits.len() - k) as u64);
    assert_eq!(
        t.last_commit.as_deref(),
        Some(crate::wal::pgtime::PgTimestamp(1000 + 20 * (commits.len() as i64 - 1)).to_string().as_str())
    );
    // Just past the last record (the encoder's position is aligned).
    assert_eq!(t.to.0.next_multiple_of(8), e.pos());
    assert_eq!(t.bytes, t.to.0 - fork.0);
    assert_eq!(t.files, [name(1, 2), name(1, 3), format!("{}.zst.partial", name(1, 4))]);
    let line = t.describe();
    assert!(
        line.starts_with(&format!("timeline 1 continues past {fork}, where timeline 2 forked from it: ")),
        "{line}"
    );
    assert!(line.ends_with(&format!("in {} .. {}.zst.partial (3 files)", name(1, 2), name(1, 4))), "{line}");

    // Forked at the end of the WAL held: nothing lies past it.
    std::fs::write(tmp.path().join("00000002.history"), format!("1\t{}\tx\n", Lsn(e.pos()))).unwrap();
    let (store, c) = catalog(tmp.path());
    assert_eq!(diverged_tails(&store, &c).unwrap(), []);
    // A gap stops the reading: only the files before it count.
    std::fs::write(tmp.path().join("00000002.history"), format!("1\t{fork}\tx\n")).unwrap();
    std::fs::remove_file(tmp.path().join(name(1, 3))).unwrap();
    let (store, c) = catalog(tmp.path());
    let t = summarize(&store, &c, 1, ForkPoint { at: fork, child: 2 }).unwrap().unwrap();
    assert_eq!(t.files, [name(1, 2)]);
    assert!(t.to <= Lsn(3 * u64::from(SEG)));
}
