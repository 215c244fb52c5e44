//! Point-in-time recovery end to end: a real primary, `walkeeper receive` streaming into an archive the whole
//! time, a base backup without WAL (`pg_basebackup -X none`), a workload with recorded times, and a new server
//! recovered from the base backup with `restore_command = 'walkeeper restore -D ARCHIVE %f %p'`.
//!
//! Every recovery must take all of its WAL through walkeeper restore (the backup carries none), and the
//! recovered rows are compared exactly with what was committed before the target.

mod support;

use std::fs;
use std::process::Command;
use std::time::Duration;

use support::archive::{
    create_pitr_table, create_slot, insert_batch, rows, target_time, ArchiveDir, Receiver,
};
use support::{chown_to_server, wait_until, Cluster};

const WAIT: Duration = Duration::from_secs(60);

fn status_json(archive: &ArchiveDir) -> serde_json::Value {
    let out = Command::new(support::WALKEEPER)
        .arg("status")
        .arg("-D")
        .arg(archive.path())
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_restored_through_walkeeper(server: &Cluster) {
    let log = server.server_log();
    assert!(log.contains("restored log file"), "no file restored from the archive:\n{log}");
}

fn assert_archive_compression(archive: &ArchiveDir, suffix: &str) {
    let complete: Vec<String> = archive
        .files()
        .into_iter()
        .filter(|f| f.len() > 24 && !f.contains("partial") && !f.contains("history"))
        .collect();
    if suffix.is_empty() {
        assert!(complete.is_empty(), "uncompressed archive has suffixed files: {complete:?}");
    } else {
        assert!(!complete.is_empty() && complete.iter().all(|f| f.ends_with(suffix)), "{complete:?}");
    }
}

/// Stream, back up, write two batches around a recorded time, recover to that time.
fn pitr_to_time(receive_extra: &[&str], suffix: &str) {
    let primary = Cluster::builder().segment_size_mb(1).start();
    let archive = ArchiveDir::new();
    create_slot(&archive, &primary, "pitr");
    let mut args = vec!["-S", "pitr"];
    args.extend_from_slice(receive_extra);
    let rx = Receiver::start(&archive, &primary, &args);
    create_pitr_table(&primary);
    let mut backup = primary.base_backup();
    // Several segments between the backup and the target, so that replay needs many restores.
    primary.generate_wal(4);
    insert_batch(&primary, 1, 100);
    let target = target_time(&primary);
    insert_batch(&primary, 101, 200);
    let last = primary.switch_wal();
    rx.wait_archived(&archive, &last);
    assert_archive_compression(&archive, suffix);

    backup.start_recovery(&[
        &archive.restore_command(""),
        &format!("recovery_target_time = '{target}'"),
        "recovery_target_action = 'promote'",
    ]);
    backup.wait_promoted();
    assert_eq!(rows(&backup), "100 1..100", "rows after recovery to {target}");
    assert_restored_through_walkeeper(&backup);
    let log = backup.server_log();
    assert!(log.contains("recovery stopping before commit of transaction"), "{log}");
    // Prefetch ran in pg_wal of the recovered server.
    assert!(backup.data_dir().join("pg_wal/.walkeeper-prefetch/lock").exists());
}

#[test]
fn pitr_to_a_time_uncompressed() {
    pitr_to_time(&[], "");
}

#[test]
fn pitr_to_a_time_zstd() {
    pitr_to_time(&["-Z", "zstd"], ".zst");
}

/// A primary streamed by a synchronous walkeeper through a slot: the `pitr` table, `backups` base backups,
/// then rows 1..100 in segments that are complete in the archive.
fn synchronous_archive(backups: usize) -> (Cluster, ArchiveDir, Receiver, Vec<Cluster>) {
    let primary = Cluster::builder().segment_size_mb(1).start();
    let archive = ArchiveDir::new();
    create_slot(&archive, &primary, "dr");
    let rx = Receiver::start(&archive, &primary, &["-S", "dr", "--synchronous"]);
    create_pitr_table(&primary);
    let backups = (0..backups).map(|_| primary.base_backup()).collect();
    insert_batch(&primary, 1, 100);
    let last = primary.switch_wal();
    rx.wait_archived(&archive, &last);
    (primary, archive, rx, backups)
}

/// The primary is destroyed; the last transactions exist only in the receiver's `.partial`. Without
/// `--partial` recovery ends at the last complete segment; with it, it reaches the last received commit.
#[test]
fn disaster_recovery_reaches_into_the_partial() {
    let (primary, archive, mut rx, backups) = synchronous_archive(2);
    let [mut without, mut with]: [Cluster; 2] = backups.try_into().ok().unwrap();
    let last = archive.files().into_iter().filter(|f| f.len() == 24).max().unwrap();
    insert_batch(&primary, 101, 150);
    let end = primary.current_lsn();
    let flushed = wait_until(WAIT, || {
        primary.psql(&format!(
            "SELECT count(*) FROM pg_stat_replication WHERE flush_lsn >= '{}'::pg_lsn",
            support::format_lsn(end)
        )) == "1"
    });
    assert!(flushed, "the receiver did not flush up to the end of WAL:\n{}", rx.log_text());
    // walkeeper status sees the open .partial about where the primary is.
    let st = status_json(&archive);
    let tli1 = &st["timelines"][0];
    assert_eq!(tli1["timeline"], 1);
    assert_eq!(tli1["last"], last.as_str(), "{st}");
    let received = support::parse_lsn(tli1["partial"]["received_lsn"].as_str().unwrap());
    let now = primary.current_lsn();
    assert!(received + 512 >= end && received <= now, "received {received:X}, end {end:X}, now {now:X}");
    assert_eq!(st["missing_segments"], 0, "{st}");
    // The disaster: the primary is stopped (immediate) and its directory deleted.
    let primary_dir = primary.data_dir();
    drop(primary);
    assert!(!primary_dir.exists());
    rx.stop();
    assert!(archive.files().iter().any(|f| f.ends_with(".partial")), "{:?}", archive.files());

    without.start_recovery(&[&archive.restore_command("")]);
    without.wait_promoted();
    assert_eq!(rows(&without), "100 1..100", "without --partial recovery ends at the last complete segment");

    with.start_recovery(&[&archive.restore_command("--partial")]);
    with.wait_promoted();
    assert_eq!(rows(&with), "150 1..150", "with --partial the last received commits are recovered");
    assert_restored_through_walkeeper(&with);
}

/// The archive is fed by a standby that gets promoted: it spans timelines 1 and 2. Recovery from a base
/// backup of the old primary follows the history file to timeline 2 and stops at a time on it.
#[test]
fn pitr_across_a_timeline_switch() {
    let mut primary = Cluster::builder().segment_size_mb(1).start();
    create_pitr_table(&primary);
    let standby = primary.standby();
    let archive = ArchiveDir::new();
    let rx = Receiver::start(&archive, &standby, &[]);
    let mut backup = primary.base_backup();
    insert_batch(&primary, 1, 100);
    primary.switch_wal();
    standby.wait_for_replay(primary.current_lsn());
    standby.promote();
    insert_batch(&standby, 101, 200);
    let target = target_time(&standby);
    insert_batch(&standby, 201, 300);
    let last = standby.switch_wal();
    assert!(last.starts_with("00000002"), "{last}");
    rx.wait_archived(&archive, &last);
    assert!(archive.path().join("00000002.history").is_file(), "{:?}", archive.files());
    let st = status_json(&archive);
    assert_eq!(st["timelines"][0]["timeline"], 1, "{st}");
    assert_eq!(st["timelines"][1]["timeline"], 2, "{st}");
    assert_eq!(st["timelines"][1]["last"], last.as_str(), "{st}");
    assert_eq!(st["history_files"][0], "00000002.history", "{st}");
    assert_eq!(st["missing_segments"], 0, "{st}");
    drop(primary);

    backup.start_recovery(&[
        &archive.restore_command(""),
        &format!("recovery_target_time = '{target}'"),
        "recovery_target_action = 'promote'",
        "recovery_target_timeline = 'latest'",
    ]);
    backup.wait_promoted();
    assert_eq!(rows(&backup), "200 1..200", "rows after recovery to {target} across the switch");
    let log = backup.server_log();
    assert!(log.contains("restored log file \"00000002.history\""), "{log}");
    assert!(log.contains("restored log file \"00000002"), "{log}");
}

/// Name of segment `n` of timeline 1 with 1 MB segments.
fn segment_name(n: u64) -> String {
    format!("00000001{:08X}{:08X}", n / 4096, n % 4096)
}

/// #11 finding 1: with `--synchronous` the primary dies while a record crossing from segment N into N+1 is
/// incomplete. walkeeper then holds N.partial (all of N received and acknowledged, not renamed because its
/// last record could not be validated) and N+1.partial. Recovery with `--partial` must replay N: every
/// commit in it was confirmed to the primary's clients.
#[test]
fn disaster_recovery_replays_every_partial_of_the_trailing_run() {
    let (primary, archive, mut rx, backups) = synchronous_archive(1);
    let mut backup = backups.into_iter().next().unwrap();
    // Commits in segment N, then a record from N into N+1.
    insert_batch(&primary, 101, 150);
    let seg = primary.segment_size();
    let at = primary.current_lsn();
    let n = at / seg;
    let size = seg - at % seg + seg / 2;
    let end = support::parse_lsn(
        &primary.psql(&format!("SELECT pg_logical_emit_message(false, 'walkeeper', repeat('x', {size}))")),
    );
    assert_eq!(end / seg, n + 1, "the message should end in the next segment");
    let last = primary.switch_wal();
    assert_eq!(last, segment_name(n + 1));
    rx.wait_archived(&archive, &last);
    rx.stop();
    drop(primary);
    // The archive as walkeeper leaves it when the primary dies with the record half sent.
    let path = |f: &str| archive.path().join(f);
    fs::rename(path(&segment_name(n)), path(&format!("{}.partial", segment_name(n)))).unwrap();
    let mut cut = fs::read(path(&last)).unwrap();
    cut[((end % seg) / 2) as usize..].fill(0);
    fs::remove_file(path(&last)).unwrap();
    fs::write(path(&format!("{last}.partial")), &cut).unwrap();
    chown_to_server(&path(&format!("{last}.partial")));
    for f in archive.files() {
        if f.len() >= 24 && u64::from_str_radix(&f[16..24], 16).unwrap() > n + 1 {
            fs::remove_file(path(&f)).unwrap();
        }
    }
    let st = status_json(&archive);
    assert_eq!(st["missing_segments"], 0, "{st}");

    backup.start_recovery(&[&archive.restore_command("--partial")]);
    backup.wait_promoted();
    assert_eq!(rows(&backup), "150 1..150", "the commits of the fully received .partial are recovered");
    let log = backup.server_log();
    assert!(log.contains(&format!("restored log file \"{}\"", segment_name(n))), "{log}");
}

/// #11 finding 2: a segment damaged in the archive (bits flipped inside records) stops archive recovery
/// instead of ending it early: restore, run in a data directory with `recovery.signal`, exits 126, which is
/// FATAL to PostgreSQL. Served, PostgreSQL would take the bad record for the end of WAL and promote with the
/// commits after it missing.
#[test]
fn a_damaged_segment_stops_archive_recovery() {
    let primary = Cluster::builder().segment_size_mb(1).start();
    let archive = ArchiveDir::new();
    create_slot(&archive, &primary, "pitr");
    let rx = Receiver::start(&archive, &primary, &["-S", "pitr"]);
    create_pitr_table(&primary);
    let mut backup = primary.base_backup();
    primary.generate_wal(1);
    let victim = segment_name(primary.current_lsn() / primary.segment_size());
    primary.generate_wal(2);
    insert_batch(&primary, 1, 100);
    let last = primary.switch_wal();
    rx.wait_archived(&archive, &last);
    let path = archive.path().join(&victim);
    let mut bytes = fs::read(&path).unwrap();
    for off in [4000, 4100, 4200] {
        bytes[5 * 8192 + off] ^= 0x08;
    }
    fs::write(&path, &bytes).unwrap();

    // pg_ctl returns once redo starts (or sees the server stop first): either way, wait for the outcome.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        backup.start_recovery(&[&archive.restore_command("--prefetch 0"), "hot_standby = off"]);
    }));
    let pid_file = backup.data_dir().join("postmaster.pid");
    let promoted = |log: &str| log.contains("database system is ready to accept connections");
    let ended = wait_until(WAIT, || !pid_file.exists() || promoted(&backup.server_log()));
    let log = backup.server_log();
    assert!(ended, "recovery neither stopped nor ended:\n{log}");
    assert!(!promoted(&log), "the server finished recovery past a damaged segment:\n{log}");
    assert!(
        log.contains(&format!("walkeeper: error: WAL file \"{}\" is damaged: ", path.display())),
        "{log}"
    );
    // PostgreSQL words exit code 126 as the shell does ("command not executable"): the line before is
    // walkeeper's.
    assert!(log.contains(&format!("FATAL:  could not restore file \"{victim}\" from archive")), "{log}");
    assert!(!log.contains("database system is ready to accept connections"), "{log}");
}
