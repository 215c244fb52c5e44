//! Server-side refusals while streaming: a slot already used by another receiver, and a server that has
//! already removed the WAL walkeeper needs. Each must end in a clear message (with `-n`: exit 1) and leave
//! what is already archived exactly as it was.

mod durability;
mod support;

use durability::{archive_dir, switch_and_wait, wait_streaming, Comp, Walkeeper};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use support::Cluster;

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

#[test]
fn slot_already_active_is_refused_and_harms_nothing() {
    let cluster = Cluster::builder().segment_size_mb(1).start();
    cluster.psql("SELECT pg_create_physical_replication_slot('busy', true)");
    let tmp = tempfile::tempdir().unwrap();
    let first_dir = archive_dir(&tmp.path().join("first"));
    let first = Walkeeper::start(&cluster, &first_dir, &["-S", "busy"], &tmp.path().join("first.log"));
    wait_streaming(&cluster, &first, Duration::from_secs(60));
    switch_and_wait(&cluster, &first_dir, Comp::None, &first);

    // A second receiver on the same slot, into its own directory.
    let second_dir = archive_dir(&tmp.path().join("second"));
    let mut second =
        Walkeeper::start(&cluster, &second_dir, &["-S", "busy", "-n"], &tmp.path().join("second.log"));
    let status = second.wait_timeout(Duration::from_secs(60)).expect("second receiver must exit");
    assert_eq!(status.code(), Some(1), "{}", second.log_tail(20));
    let log = second.log_text();
    assert!(
        log.lines().any(|l| l.starts_with("walkeeper: error: ")
            && l.contains("replication slot \"busy\" is active for PID")),
        "no clear slot-active error:\n{log}"
    );

    // The first receiver is unaffected and keeps archiving.
    let before = snapshot(&first_dir);
    let name = switch_and_wait(&cluster, &first_dir, Comp::None, &first);
    let after = snapshot(&first_dir);
    for (file, bytes) in &before {
        if !file.ends_with(".partial") {
            assert_eq!(after.get(file), Some(bytes), "{file} changed");
        }
    }
    assert!(after.contains_key(&name), "the first receiver stopped archiving");
    assert_eq!(first.terminate().code(), Some(0));
}

#[test]
fn wal_removed_by_the_server_is_reported_and_harms_nothing() {
    // No slot and no wal_keep_size: the server recycles WAL as soon as checkpoints allow.
    let cluster = Cluster::builder()
        .segment_size_mb(1)
        .conf("min_wal_size = '2MB'")
        .conf("max_wal_size = '4MB'")
        .start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");
    let wk = Walkeeper::start(&cluster, &dir, &[], &log);
    wait_streaming(&cluster, &wk, Duration::from_secs(60));
    switch_and_wait(&cluster, &dir, Comp::None, &wk);
    assert_eq!(wk.terminate().code(), Some(0));
    let archived = snapshot(&dir);

    // While walkeeper is away the server writes and checkpoints its way far past the archive's end.
    for _ in 0..6 {
        cluster.generate_wal(3);
        cluster.switch_wal();
        cluster.psql("CHECKPOINT");
    }
    let mut again = Walkeeper::start(&cluster, &dir, &["-n"], &log);
    let status = again.wait_timeout(Duration::from_secs(60)).expect("walkeeper must exit with -n");
    assert_eq!(status.code(), Some(1), "{}", again.log_tail(20));
    let text = again.log_text();
    assert!(
        text.lines().any(|l| l.starts_with("walkeeper: error: ")
            && l.contains(": the server no longer has WAL segment 00000001")
            && l.contains("Nothing in the archive was changed")),
        "no clear removed-WAL error:\n{text}"
    );
    // Nothing already archived was touched (the open .partial is restarted from its beginning by design
    // and must keep its bytes: the server no longer has them to send again).
    assert_eq!(snapshot(&dir), archived, "the archive changed");
}
