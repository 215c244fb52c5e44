//! `walkeeper receive --upload` through failures of the store and of itself, against a real PostgreSQL and a
//! real SeaweedFS: the S3 gateway killed under load and restarted (receiving goes on, nothing is lost or
//! corrupt, everything goes up after), `kill -9` of walkeeper during uploads (the restart leaves every object
//! as it was and fills the rest in), and `--slot-follows-upload` (the slot's restart_lsn stays put while the
//! store is down and catches up after).

#[path = "s3_common/mod.rs"]
mod s3_common;
mod support;

use s3_common::{complete_segments, run_s3, spool_names, wait_for, Bucket, Receiver, Rig};
use std::fs;
use std::path::Path;
use support::s3::S3Cluster;
use support::{parse_lsn, Cluster};

/// Every complete segment of the spool is in the bucket with the spool's bytes, and nothing else is; the
/// bucket verifies whole.
fn assert_bucket_mirrors_spool(s3: &S3Cluster, bucket: &Bucket, prefix: &str, spool: &Path) {
    let in_spool = complete_segments(&spool_names(spool));
    assert_eq!(complete_segments(&bucket.names(prefix)), in_spool, "no gap, nothing extra");
    for name in &in_spool {
        assert_eq!(bucket.get(prefix, name), fs::read(spool.join(name)).unwrap(), "object {name}");
    }
    let r = run_s3(s3, &["verify", "-D", &s3.url(prefix)]);
    assert_eq!(r.code, Some(0), "{r}");
}

#[test]
fn the_gateway_killed_under_load_loses_and_corrupts_nothing() {
    let Some(Rig { mut s3, bucket, primary, spool, url, dir: _dir }) = Rig::start("arch") else { return };
    let mut rx = Receiver::start(
        &s3,
        &primary,
        &spool,
        &["-S", "arch", "--upload", &url, "--upload-partial-interval", "1"],
    );
    primary.generate_wal(2);
    let first = primary.switch_wal();
    wait_for("the first uploads", || bucket.names("wal").contains(&first), || rx.log());

    let mut last = String::new();
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            for _ in 0..6 {
                primary.generate_wal(1);
            }
            primary.switch_wal()
        });
        s3.kill_gateway();
        last = load.join().unwrap();
    });
    // Receiving went on into the spool while the store was gone.
    wait_for("the spool to receive everything", || spool.join(&last).is_file(), || rx.log());
    assert!(rx.running(), "receive must not stop for the store:\n{}", rx.log());
    assert!(!complete_segments(&bucket.names("wal")).contains(&last), "the gateway was down");
    s3.restart_gateway();
    wait_for("the uploads to catch up", || bucket.names("wal").contains(&last), || rx.log());
    assert_eq!(rx.stop(), Some(0), "{}", rx.log());
    let log = rx.log();
    assert!(log.contains(&format!("warning: upload to \"{url}\" failed: ")), "{log}");
    assert!(log.contains(&format!("uploads to \"{url}\" work again after ")), "{log}");
    assert_bucket_mirrors_spool(&s3, &bucket, "wal", &spool);
}

#[test]
fn kill_9_during_uploads_then_a_restart_changes_no_object_and_fills_the_rest() {
    let Some(Rig { s3, bucket, primary, spool, url, dir: _dir }) = Rig::start("arch") else { return };
    let args = ["-S", "arch", "--upload", url.as_str(), "--upload-partial-interval", "1"];
    let mut rx = Receiver::start(&s3, &primary, &spool, &args);
    let mut before = Default::default();
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            for _ in 0..8 {
                primary.generate_wal(1);
            }
        });
        wait_for("a few uploads", || complete_segments(&bucket.names("wal")).len() >= 3, || rx.log());
        rx.kill9();
        before = bucket.list("wal");
        load.join().unwrap();
    });
    let mut rx = Receiver::start(&s3, &primary, &spool, &args);
    primary.generate_wal(1);
    let last = primary.switch_wal();
    wait_for("the uploads after the restart", || bucket.names("wal").contains(&last), || rx.log());
    assert_eq!(rx.stop(), Some(0), "{}", rx.log());
    let after = bucket.list("wal");
    for (name, object) in before.iter().filter(|(n, _)| !n.ends_with(".partial")) {
        assert_eq!(after.get(name), Some(object), "{name} was changed by the restart");
    }
    assert_bucket_mirrors_spool(&s3, &bucket, "wal", &spool);
}

fn restart_lsn(server: &Cluster, slot: &str) -> u64 {
    parse_lsn(
        &server.psql(&format!("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'")),
    )
}

/// Waits until the receiver has sent status updates for `secs` more seconds (by the server's clock).
fn wait_for_status_updates(server: &Cluster, rx: &Receiver, secs: u32) {
    let since = server.psql("SELECT now()");
    let sql = format!(
        "SELECT count(*) FROM pg_stat_replication WHERE reply_time > '{since}'::timestamptz + interval '{secs} s'"
    );
    wait_for("status updates", || server.psql(&sql) == "1", || rx.log());
}

#[test]
fn slot_follows_upload_holds_the_slot_while_the_store_is_down() {
    let Some(Rig { mut s3, bucket, primary, spool, url, dir: _dir }) = Rig::start("arch") else { return };
    let args = [
        "-S",
        "arch",
        "-s",
        "1",
        "--upload",
        url.as_str(),
        "--slot-follows-upload",
        "--upload-partial-interval",
        "1",
    ];
    let mut rx = Receiver::start(&s3, &primary, &spool, &args);
    primary.generate_wal(2);
    let end = primary.current_lsn();
    primary.switch_wal();
    wait_for("the slot to follow the uploads", || restart_lsn(&primary, "arch") >= end, || rx.log());

    s3.kill_gateway();
    // Status updates sent before the gateway died may still be on their way: let them land.
    wait_for_status_updates(&primary, &rx, 2);
    let held = restart_lsn(&primary, "arch");
    primary.generate_wal(3);
    let end = primary.current_lsn();
    let last = primary.switch_wal();
    wait_for("the spool to receive everything", || spool.join(&last).is_file(), || rx.log());
    let written =
        format!("SELECT count(*) FROM pg_stat_replication WHERE write_lsn >= '{}'", support::format_lsn(end));
    wait_for("the receiver to report it written", || primary.psql(&written) == "1", || rx.log());
    wait_for_status_updates(&primary, &rx, 3);
    assert_eq!(restart_lsn(&primary, "arch"), held, "the slot moved while the store was down:\n{}", rx.log());
    assert!(!bucket.names("wal").contains(&last));

    s3.restart_gateway();
    wait_for("the slot to catch up", || restart_lsn(&primary, "arch") >= end, || rx.log());
    assert!(bucket.names("wal").contains(&last));
    assert_eq!(rx.stop(), Some(0), "{}", rx.log());
}

/// A clean stop while the store is down waits `--upload-wait`, then exits 4 naming what is left; the next
/// start uploads it.
#[test]
fn a_clean_stop_with_the_store_down_exits_4_and_the_next_start_uploads_the_rest() {
    let Some(Rig { mut s3, bucket, primary, spool, url, dir: _dir }) = Rig::start("arch") else { return };
    let args = ["-S", "arch", "--upload", url.as_str(), "--upload-wait", "2"];
    let mut rx = Receiver::start(&s3, &primary, &spool, &args);
    primary.generate_wal(1);
    let first = primary.switch_wal();
    wait_for("the first upload", || bucket.names("wal").contains(&first), || rx.log());
    s3.kill_gateway();
    primary.generate_wal(2);
    let last = primary.switch_wal();
    wait_for("the spool to receive everything", || spool.join(&last).is_file(), || rx.log());
    assert_eq!(rx.stop(), Some(4), "{}", rx.log());
    let log = rx.log();
    let line = log.lines().last().unwrap();
    assert!(
        line.starts_with(&format!(
            "walkeeper: error: uploads to \"{url}\" did not finish within --upload-wait (2 s): "
        )) && line.contains(&format!("wait in \"{}\"; the next start uploads them", spool.display())),
        "{log}"
    );

    s3.restart_gateway();
    let mut rx = Receiver::start(&s3, &primary, &spool, &args);
    wait_for("the backlog to go up", || bucket.names("wal").contains(&last), || rx.log());
    assert_eq!(rx.stop(), Some(0), "{}", rx.log());
    assert_bucket_mirrors_spool(&s3, &bucket, "wal", &spool);
}
