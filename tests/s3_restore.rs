//! `walkeeper restore -D s3://…` against a real SeaweedFS: point-in-time recovery of a real server from a
//! base backup with every segment from the bucket (the spool is gone), rows exact; and what restore answers
//! when the store is down, by recovery mode (never "not found" in archive recovery), and for `.history`
//! files (a miss is "not found", and never remembered).

#[path = "s3_common/mod.rs"]
mod s3_common;
mod support;

use s3_common::{run_s3, wait_for, walkeeper_s3, Bucket, Receiver, WAIT};
use std::fs;
use support::archive::{create_pitr_table, insert_batch, rows, target_time};
use support::s3::S3Cluster;
use support::{Cluster, Run};

/// restore_command for the bucket, with the store's settings in the standard variables.
fn restore_command(s3: &S3Cluster, prefix: &str) -> String {
    let env: Vec<String> = s3.env().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "restore_command = 'env {} {} -v restore -D {} %f %p'",
        env.join(" "),
        support::WALKEEPER,
        s3.url(prefix)
    )
}

#[test]
fn pitr_from_a_base_backup_with_every_segment_from_the_bucket() {
    let Some(s3) = S3Cluster::start() else { return };
    let bucket = Bucket::new(&s3);
    let primary = Cluster::builder().segment_size_mb(1).start();
    primary.psql("SELECT pg_create_physical_replication_slot('pitr', true)");
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    fs::create_dir(&spool).unwrap();
    let url = s3.url("pitr");
    let mut rx = Receiver::start(&s3, &primary, &spool, &["-S", "pitr", "-Z", "zstd", "--upload", &url]);
    create_pitr_table(&primary);
    let mut backup = primary.base_backup();
    primary.generate_wal(4);
    insert_batch(&primary, 1, 100);
    let target = target_time(&primary);
    insert_batch(&primary, 101, 200);
    let last = primary.switch_wal();
    wait_for("the uploads", || bucket.names("pitr").contains(&format!("{last}.zst")), || rx.log());
    assert_eq!(rx.stop(), Some(0), "{}", rx.log());
    // Only the bucket can serve recovery now.
    fs::remove_dir_all(&spool).unwrap();

    backup.start_recovery(&[
        &restore_command(&s3, "pitr"),
        &format!("recovery_target_time = '{target}'"),
        "recovery_target_action = 'promote'",
    ]);
    backup.wait_promoted();
    assert_eq!(rows(&backup), "100 1..100", "rows after recovery to {target}");
    let log = backup.server_log();
    assert!(log.contains("restored log file"), "{log}");
    assert!(log.contains("recovery stopping before commit of transaction"), "{log}");
    // The prefetch worker ran (from the bucket) in pg_wal of the recovered server.
    let prefetch = backup.data_dir().join("pg_wal/.walkeeper-prefetch");
    assert!(prefetch.join("lock").exists());
    assert_eq!(fs::read_to_string(prefetch.join("archive")).unwrap().trim(), url);
    let worker_errors = fs::read_to_string(prefetch.join("worker.log")).unwrap_or_default();
    assert_eq!(worker_errors, "", "the prefetch worker failed to fetch");
    assert!(log.contains("from the prefetch spool"), "no segment came from the prefetch worker:\n{log}");
}

/// `walkeeper restore` run in `dir` (as PostgreSQL runs it in the data directory).
fn restore_in(s3: &S3Cluster, dir: &std::path::Path, file: &str) -> Run {
    let mut cmd = walkeeper_s3(s3);
    cmd.current_dir(dir).args(["restore", "--prefetch", "0", "-D", &s3.url("wal"), file, "RECOVERYXLOG"]);
    Run::within(&mut cmd, WAIT)
}

#[test]
fn a_store_that_is_down_is_never_not_found_in_archive_recovery_and_history_misses_are_not_kept() {
    let Some(mut s3) = S3Cluster::start() else { return };
    let bucket = Bucket::new(&s3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str, signal: Option<&str>| {
        let d = tmp.path().join(name);
        fs::create_dir(&d).unwrap();
        if let Some(signal) = signal {
            fs::write(d.join(signal), b"").unwrap();
        }
        d
    };
    let (recovery, standby, by_hand) = (
        dir("recovery", Some("recovery.signal")),
        dir("standby", Some("standby.signal")),
        dir("by_hand", None),
    );

    // A history file that is not there is "not found", silently; once it is there, it is served.
    let history = "00000002.history";
    let r = restore_in(&s3, &recovery, history);
    assert_eq!((r.code, r.stderr.as_str()), (Some(1), ""), "{r}");
    let content = b"1\t0/3000000\tno recovery target specified\n";
    bucket.put("wal", history, content);
    let r = restore_in(&s3, &recovery, history);
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(fs::read(recovery.join("RECOVERYXLOG")).unwrap(), content);

    s3.kill_gateway();
    let endpoint = s3.endpoint();
    for file in ["000000010000000000000003", "00000003.history"] {
        let r = restore_in(&s3, &recovery, file);
        assert_eq!(r.code, Some(126), "archive recovery must stop, not end: {r}");
        let line = r.error_line();
        assert!(line.starts_with("walkeeper: error: ") && line.contains(&endpoint), "{line}");
        let r = restore_in(&s3, &standby, file);
        assert_eq!(r.code, Some(1), "a standby retries: {r}");
        assert!(r.error_line().contains(&endpoint), "{r}");
        let r = restore_in(&s3, &by_hand, file);
        assert_eq!(r.code, Some(2), "{r}");
    }
    let r = run_s3(&s3, &["status", "-D", &s3.url("wal")]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.error_line().contains(&endpoint), "{r}");
}
