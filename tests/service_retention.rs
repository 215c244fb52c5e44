//! Retention in the service against a real server: base backups taken with `pg_basebackup -X none` while a
//! source with `keep_backups = 2` streams; the service's retention removes exactly the complete segments
//! before the second newest backup's start, and nothing from there on.

mod service_support;
mod support;

use service_support::{create_slot, source_toml, Service};
use std::path::Path;
use support::{names, parse_lsn, wait_until, Cluster, TIMEOUT};

/// The segment number of a base backup's start (its backup_label's START WAL LOCATION).
fn start_segment(backup: &Cluster, segment_size: u64) -> u64 {
    let label = std::fs::read_to_string(backup.data_dir().join("backup_label")).unwrap();
    let line =
        label.lines().find_map(|l| l.strip_prefix("START WAL LOCATION: ")).expect("START WAL LOCATION");
    parse_lsn(line.split(' ').next().unwrap()) / segment_size
}

/// Complete segment files of timeline 1 in `dir`, by number.
fn complete(dir: &Path) -> Vec<u64> {
    names(dir)
        .iter()
        .filter(|n| n.len() == 24 && n.starts_with("00000001"))
        .map(|n| {
            u64::from_str_radix(&n[8..16], 16).unwrap() * 0x100 + u64::from_str_radix(&n[16..], 16).unwrap()
        })
        .collect()
}

#[test]
fn keep_backups_removes_exactly_the_wal_before_the_second_newest_backup() {
    let primary = Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '256MB'").start();
    let seg = primary.segment_size();
    create_slot(&primary, "r");
    let dir = tempfile::tempdir().unwrap();
    let service =
        Service::start(&source_toml("r", &primary, dir.path(), "keep_backups = 2\nretention_interval = 1"));
    let mut starts = Vec::new();
    for _ in 0..3 {
        primary.generate_wal(2);
        primary.switch_wal();
        starts.push(start_segment(&primary.base_backup(), seg));
    }
    primary.generate_wal(1);
    let last = primary.switch_wal();
    let archived = wait_until(TIMEOUT, || names(dir.path()).contains(&last));
    assert!(archived, "{last} never archived: {:?}\n{}", names(dir.path()), service.log());
    let keep_from = starts[1];
    // 1 MB segments, 2 MB of WAL between backups: the second backup starts well past the first segment.
    assert!(keep_from > starts[0] && starts[0] >= 2, "{starts:?}");
    let mut seen = Vec::new();
    let cut = wait_until(TIMEOUT, || {
        seen = complete(dir.path());
        seen.first() == Some(&keep_from)
    });
    assert!(cut, "retention never cut at segment {keep_from:X}: {seen:X?}\n{}", service.log());
    let newest = *seen.last().unwrap();
    assert_eq!(seen, (keep_from..=newest).collect::<Vec<_>>(), "a gap from the keep point on");
    assert!(
        service.log().contains("walkeeper: [r] retention: keeping WAL from segment "),
        "{}",
        service.log()
    );
    // The metrics and /status tell what retention did (published once its run has returned).
    let removed = || service.metric("walkeeper_retention_removed_segments_total", "r");
    let counted = wait_until(TIMEOUT, || removed() >= keep_from - starts[0]);
    assert!(counted, "at least the segments between the backups are counted: {}", removed());
    let removed = removed();
    assert!(service.metric("walkeeper_retention_last_success_timestamp_seconds", "r") > 0);
    assert_eq!(service.metric("walkeeper_retention_failures_total", "r"), 0);
    let status = service.status("r");
    assert_eq!(status["retention_removed_segments"].as_u64(), Some(removed), "{status}");
    assert_eq!(status["retention_last_error"], serde_json::Value::Null, "{status}");
    // The source kept streaming throughout.
    assert_eq!(service.health().0, 200, "{:?}", service.health());
}
