//! The retention policy over synthetic catalogs: names, modification times and backups chosen per case.

use super::*;
use crate::archive::store::{Entry, Put, StoreError};
use std::io::Read;

const SEG: u32 = 16 << 20;
const DAY: Duration = Duration::from_secs(86_400);

/// A store that only lists: what a catalog is made from.
#[derive(Debug)]
struct Listing(Vec<Entry>);

impl Store for Listing {
    fn location(&self) -> String {
        "listing".into()
    }
    fn location_of(&self, name: &str) -> String {
        format!("listing/{name}")
    }
    fn list(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(self.0.clone())
    }
    fn stat(&self, name: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.0.iter().find(|e| e.name == name).cloned())
    }
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        Err(StoreError::NotFound { location: self.location_of(name) })
    }
    fn read_range(&self, name: &str, _: u64, _: usize) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::NotFound { location: self.location_of(name) })
    }
    fn put_new(&self, _: &str, _: &[u8]) -> Result<Put, StoreError> {
        unreachable!("the policy never writes")
    }
    fn put_replace(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
        unreachable!("the policy never writes")
    }
    fn delete(&self, _: &str) -> Result<(), StoreError> {
        unreachable!("the policy never removes")
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A catalog of `names`, each modified `age` before [`now`] (`None`: time unknown).
fn catalog_aged(files: &[(&str, Option<Duration>)]) -> Catalog {
    let entries = files
        .iter()
        .map(|&(name, age)| Entry {
            name: name.to_string(),
            len: 1,
            modified: age.map(|a| now() - a),
            regular: true,
        })
        .collect();
    Catalog::read(&Listing(entries), SegmentSize::Known(SEG)).unwrap()
}

fn catalog(names: &[&str]) -> Catalog {
    let files: Vec<(&str, Option<Duration>)> = names.iter().map(|n| (*n, Some(30 * DAY))).collect();
    catalog_aged(&files)
}

/// A restorable backup on `timeline` from segment `start` (offset 0x28) to segment `end`.
fn backup(timeline: u32, start: u64, end: u64) -> Backup {
    Backup {
        timeline,
        start: Lsn(start * u64::from(SEG) + 0x28),
        end: Lsn(end * u64::from(SEG) + 0x100),
        checkpoint: None,
        end_file: SegmentId { timeline, number: end }.file_name(SEG),
        problem: None,
    }
}

fn policy(keep_backups: u32) -> Policy {
    Policy { keep_backups, keep_min_age: Duration::ZERO, floor: None }
}

fn seg(timeline: u32, number: u64) -> String {
    SegmentId { timeline, number }.file_name(SEG)
}

/// Segments `from..to` of timeline 1, complete.
fn run_of(from: u64, to: u64) -> Vec<String> {
    (from..to).map(|n| seg(1, n)).collect()
}

fn names(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn removes_only_the_wal_before_the_nth_newest_backup() {
    let files = run_of(1, 12);
    let c = catalog(&names(&files));
    let backups = [backup(1, 2, 2), backup(1, 5, 6), backup(1, 9, 9)];
    let p = plan(&c, &backups, &policy(2), now());
    assert_eq!(p.remove, run_of(1, 5), "segments 1..=4 go, 5 (holding the 2nd newest start) stays");
    let k = p.keep_point.as_ref().unwrap();
    assert_eq!(
        (k.segment.as_str(), k.backup.start, k.by_floor),
        (seg(1, 5).as_str(), backups[1].start, false)
    );
    assert_eq!(p.restorable_backups, 3);
    assert!(p.summary().starts_with(&format!("keeping WAL from segment {} on (the start of the base backup started at 0/05000028 (timeline 1, ended at 0/06000100); 3 restorable base backup(s) known): 4 file(s) to remove", seg(1, 5))), "{}", p.summary());
    // One backup to keep: the newest.
    assert_eq!(plan(&c, &backups, &policy(1), now()).remove, run_of(1, 9));
    // As many as there are: the oldest one's WAL stays, nothing older than its start was there to begin with
    // except segment 1.
    assert_eq!(plan(&c, &backups, &policy(3), now()).remove, run_of(1, 2));
}

#[test]
fn nothing_without_enough_backups() {
    let files = run_of(1, 12);
    let c = catalog(&names(&files));
    let p = plan(&c, &[], &policy(1), now());
    assert!(p.remove.is_empty() && p.keep_point.is_none());
    assert_eq!(p.summary(), "nothing removed: no restorable base backup found in the WAL");
    // N larger than the number of backups: nothing, not "everything before the oldest".
    let p = plan(&c, &[backup(1, 3, 3), backup(1, 7, 7)], &policy(3), now());
    assert!(p.remove.is_empty(), "{:?}", p.remove);
    assert_eq!(
        p.reason.as_deref(),
        Some("2 restorable base backup(s) found in the WAL, fewer than the 3 to keep")
    );
    // Backups that cannot be restored from the archive do not count.
    let mut gone = backup(1, 9, 9);
    gone.problem = Some("segment … of its WAL is not in the archive".into());
    let p = plan(&c, &[backup(1, 3, 3), gone.clone()], &policy(2), now());
    assert!(p.remove.is_empty());
    assert_eq!(
        p.reason.as_deref(),
        Some("1 restorable base backup(s) found in the WAL (1 more found, not restorable from this archive), fewer than the 2 to keep")
    );
    // ... and do not move the keep point either.
    let p = plan(&c, &[backup(1, 3, 3), gone], &policy(1), now());
    assert_eq!(p.remove, run_of(1, 3));
    // An empty archive with a backup known: nothing to remove.
    assert!(plan(&catalog(&[]), &[backup(1, 3, 3)], &policy(1), now()).remove.is_empty());
}

#[test]
fn overlapping_backups_all_stay_restorable() {
    let files = run_of(1, 12);
    let c = catalog(&names(&files));
    // The newest by end started before the other: the keep point is the earlier start.
    let long = backup(1, 4, 9);
    let short = backup(1, 6, 7);
    let p = plan(&c, &[short.clone(), long.clone()], &policy(1), now());
    assert_eq!(p.remove, run_of(1, 4));
    let p = plan(&c, &[short, long.clone()], &policy(2), now());
    assert_eq!(p.keep_point.unwrap().backup, long);
}

#[test]
fn partials_history_and_other_files_are_never_removed() {
    let c = catalog(&[
        &seg(1, 1),
        &format!("{}.partial", seg(1, 2)),
        &format!("{}.zst", seg(1, 3)),
        &format!("{}.gz.partial", seg(1, 4)),
        &seg(1, 4),
        "00000002.history",
        &format!("{}.00000028.backup", seg(1, 3)),
        ".walkeeper-backups",
        ".walkeeper.lock",
        "0000000100000000000000zz",
        &format!("{}.partial", seg(1, 9)),
    ]);
    let p = plan(&c, &[backup(1, 8, 8)], &policy(1), now());
    assert_eq!(p.remove, [seg(1, 1), format!("{}.zst", seg(1, 3)), seg(1, 4)]);
}

#[test]
fn keep_min_age_keeps_young_and_undated_files() {
    let (a, b, c3, d) = (seg(1, 1), seg(1, 2), seg(1, 3), seg(1, 4));
    let c = catalog_aged(&[
        (&a, Some(10 * DAY)),
        (&b, Some(7 * DAY)), // exactly the minimum age: old enough
        (&c3, Some(7 * DAY - Duration::from_secs(1))), // a second younger
        (&d, None),          // unknown time
    ]);
    let backups = [backup(1, 5, 5)];
    let p = plan(&c, &backups, &Policy { keep_min_age: 7 * DAY, ..policy(1) }, now());
    assert_eq!(p.remove, [a.clone(), b.clone()]);
    assert_eq!(p.kept_young, 2);
    assert!(
        p.summary().ends_with("2 file(s) to remove; 2 older file(s) kept for keep_min_age"),
        "{}",
        p.summary()
    );
    // Without a minimum age the time does not matter, even unknown.
    assert_eq!(plan(&c, &backups, &policy(1), now()).remove, [a, b, c3, d]);
    // A file from the future (a clock step) is young.
    let future = catalog_aged(&[(&seg(1, 1), Some(Duration::ZERO))]);
    let p = plan(&future, &backups, &Policy { keep_min_age: Duration::from_secs(1), ..policy(1) }, now());
    assert_eq!(p.kept_young, 1);
}

#[test]
fn the_floor_keeps_what_standbys_need() {
    let files = run_of(1, 12);
    let c = catalog(&names(&files));
    let backups = [backup(1, 6, 6), backup(1, 9, 9)];
    // A standby still at segment 3 (mid-segment): 3 stays.
    let floor = Some(Lsn(3 * u64::from(SEG) + 0x4000));
    let p = plan(&c, &backups, &Policy { floor, ..policy(1) }, now());
    assert_eq!(p.remove, run_of(1, 3));
    let k = p.keep_point.as_ref().unwrap();
    assert!(k.by_floor && k.segment == seg(1, 3));
    assert!(p.summary().contains("(the oldest WAL a connected standby still needs;"), "{}", p.summary());
    // A floor past the backups' keep point changes nothing.
    let floor = Some(Lsn(11 * u64::from(SEG)));
    let p = plan(&c, &backups, &Policy { floor, ..policy(1) }, now());
    assert_eq!(p.remove, run_of(1, 9));
    assert!(!p.keep_point.unwrap().by_floor);
    // A floor at a segment's first byte keeps that segment.
    let floor = Some(Lsn(4 * u64::from(SEG)));
    assert_eq!(plan(&c, &backups, &Policy { floor, ..policy(1) }, now()).remove, run_of(1, 4));
}

/// A failover in the middle: timeline 1 up to segment 6, where timeline 2 forked (its first file is segment
/// 6, holding timeline 1's WAL up to the switch point); the old primary went on writing timeline 1 up to 8
/// (the diverged tail, whose backups `backups::find` does not count).
#[test]
fn timelines_compare_segment_numbers_only() {
    let mut names_: Vec<String> = run_of(1, 6);
    names_.push(format!("{}.partial", seg(1, 6)));
    names_.extend([seg(1, 7), seg(1, 8)]);
    names_.extend((6..12).map(|n| seg(2, n)));
    names_.push("00000002.history".into());
    let c = catalog(&names(&names_));
    // Keep point on timeline 1, before the fork: only older segments of every timeline go; the parent's
    // segments from there to the fork stay, and so does the diverged tail (numbers above the keep point).
    let p = plan(&c, &[backup(1, 3, 3), backup(2, 9, 9)], &policy(2), now());
    assert_eq!(p.remove, run_of(1, 3));
    // Keep point on timeline 2: timeline 1's segments below it go, complete or not part of the history —
    // except the .partial at the fork point.
    let p = plan(&c, &[backup(1, 3, 3), backup(2, 9, 9)], &policy(1), now());
    let mut expected = run_of(1, 6);
    expected.extend([seg(1, 7), seg(1, 8), seg(2, 6), seg(2, 7), seg(2, 8)]);
    expected.sort();
    assert_eq!(p.remove, expected);
    assert!(c.segments().iter().any(|f| f.partial && f.id.number == 6));
}

#[test]
fn ages_parse_as_the_service_config_spells_them() {
    for (text, secs) in
        [("90", 90), ("90s", 90), ("15m", 900), (" 12h ", 43_200), ("7d", 604_800), ("2w", 1_209_600)]
    {
        assert_eq!(parse_age(text), Ok(Duration::from_secs(secs)), "{text}");
    }
    for bad in ["", "h", "1.5h", "-1d", "7 days", "99999999999999999999w", "9999999999999999999w"] {
        let err = parse_age(bad).unwrap_err();
        assert!(err.starts_with("invalid age \"") && err.ends_with("like 7d or 12h"), "{bad}: {err}");
    }
}

proptest::proptest! {
    #[test]
    fn parse_age_never_panics(text in "\\PC{0,40}") {
        let _ = parse_age(&text);
    }
}
