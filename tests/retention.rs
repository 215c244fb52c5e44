//! Retention by the base backups found in the WAL, against real servers: `walkeeper receive` streams a
//! primary into an archive while `pg_basebackup -X none` takes backups at several points; `walkeeper status`
//! must list each with the LSNs its backup_label and manifest give; `walkeeper cleanup --keep-backups N`
//! must remove exactly the segment files before the start of the N-th newest backup — and a point-in-time
//! recovery from that backup must still work afterwards, every row there. Across a failover (timeline 1,
//! then 2) the same, and a backup taken from a standby is invisible (it writes no backup-end record). A
//! directory held by `walkeeper service` is refused. On every major 13–18, a backup through the SQL functions
//! is listed with `pg_backup_start()`'s and `pg_backup_stop()`'s LSNs; over an S3 bucket (SeaweedFS), the
//! same retention through the store.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use support::archive::{create_slot, ArchiveDir, Receiver};
use support::{parse_lsn, run_walkeeper, Cluster, Run};

/// What pg_basebackup wrote about a backup, and what the server said about its checkpoint.
struct Taken {
    cluster: Cluster,
    /// START WAL LOCATION, CHECKPOINT LOCATION (backup_label); End-LSN (backup_manifest).
    start: u64,
    checkpoint: u64,
    end: u64,
    /// pg_control_checkpoint()'s checkpoint time right after it (Unix seconds): the backup's own
    /// checkpoint is the latest, the next timed one comes checkpoint_timeout later.
    checkpoint_time: i64,
}

/// A timestamp (as status prints it) in Unix seconds, as the server reads it.
fn epoch_of(server: &Cluster, time: &str) -> i64 {
    server.psql(&format!("SELECT extract(epoch FROM '{time}'::timestamptz)::bigint")).parse().unwrap()
}

/// `pg_basebackup -X none` of `server`, and its facts.
fn take_backup(server: &Cluster) -> Taken {
    let cluster = server.base_backup();
    let (redo, control_time) = server
        .psql("SELECT redo_lsn || ' ' || extract(epoch FROM checkpoint_time)::bigint FROM pg_control_checkpoint()")
        .split_once(' ')
        .map(|(l, t)| (parse_lsn(l), t.parse::<i64>().unwrap()))
        .unwrap();
    let label = fs::read_to_string(cluster.data_dir().join("backup_label")).unwrap();
    let field = |key: &str| {
        let line = label.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} in {label}"));
        parse_lsn(line[key.len()..].split(' ').next().unwrap())
    };
    let start = field("START WAL LOCATION: ");
    let checkpoint = field("CHECKPOINT LOCATION: ");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(cluster.data_dir().join("backup_manifest")).unwrap()).unwrap();
    let range = &manifest["WAL-Ranges"][0];
    assert_eq!(parse_lsn(range["Start-LSN"].as_str().unwrap()), start, "{manifest}");
    let end = parse_lsn(range["End-LSN"].as_str().unwrap());
    assert_eq!(redo, start, "the latest checkpoint is the backup's");
    Taken { cluster, start, checkpoint, end, checkpoint_time: control_time }
}

fn status_json(archive: &Path) -> serde_json::Value {
    let r = run_walkeeper(&["status", "-D", archive.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, Some(0), "{r}");
    serde_json::from_str(&r.stdout).unwrap()
}

/// Status lists exactly `taken` (oldest first), each with its backup_label's and manifest's LSNs.
fn assert_status_lists(server: &Cluster, archive: &Path, taken: &[&Taken]) -> serde_json::Value {
    let st = status_json(archive);
    let found = st["backups"]["found"].as_array().unwrap_or_else(|| panic!("{st}"));
    assert_eq!(found.len(), taken.len(), "{:#}", st["backups"]);
    for (f, t) in found.iter().zip(taken) {
        let lsn = |key: &str| parse_lsn(f[key].as_str().unwrap_or_else(|| panic!("{key} in {f}")));
        assert_eq!(
            (lsn("start_lsn"), lsn("end_lsn"), lsn("checkpoint_lsn")),
            (t.start, t.end, t.checkpoint),
            "{f}"
        );
        assert_eq!(epoch_of(server, f["checkpoint_time"].as_str().unwrap()), t.checkpoint_time, "{f}");
        assert_eq!(f["restorable"], true, "{f}");
    }
    st
}

fn insert_rows(server: &Cluster, from: u32, to: u32) {
    server.psql(&format!("INSERT INTO kept (id) SELECT g FROM generate_series({from}, {to}) g"));
}

fn rows(server: &Cluster) -> String {
    server.psql("SELECT count(*) || ' ' || coalesce(min(id), 0) || '..' || coalesce(max(id), 0) FROM kept")
}

/// The complete segment files (any timeline) numbered below `number`, with 1 MB segments.
fn complete_below(files: &[String], number: u64) -> BTreeSet<String> {
    files
        .iter()
        .filter(|f| f.len() == 24 && f.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter(|f| {
            u64::from_str_radix(&f[8..16], 16).unwrap() * 4096 + u64::from_str_radix(&f[16..], 16).unwrap()
                < number
        })
        .cloned()
        .collect()
}

fn cleanup(archive: &Path, args: &[&str]) -> Run {
    let mut all = vec!["cleanup", "-D", archive.to_str().unwrap()];
    all.extend_from_slice(args);
    run_walkeeper(&all)
}

/// `pg_backup_start()`/`pg_backup_stop()` (13/14: `pg_start_backup`/`pg_stop_backup`) in one psql session
/// reading its script from stdin, the control file's checkpoint read in between: (start, checkpoint LSN,
/// redo LSN, checkpoint time in Unix seconds, stop LSN).
fn sql_backup(server: &Cluster) -> (u64, u64, u64, i64, u64) {
    let (start, stop) = match server.major() >= 15 {
        true => ("pg_backup_start('retention', true)", "pg_backup_stop()"),
        false => ("pg_start_backup('retention', true, false)", "pg_stop_backup(false)"),
    };
    let script = format!(
        "SELECT {start};\n\
         SELECT checkpoint_lsn, redo_lsn, extract(epoch FROM checkpoint_time)::bigint FROM pg_control_checkpoint();\n\
         SELECT lsn FROM {stop};\n"
    );
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        server.socket_dir().display(),
        server.port()
    );
    let mut child = std::process::Command::new(support::pg_tool("psql"))
        .args(["-X", "-A", "-t", "-q", "-F", " ", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "psql: {}{text}", String::from_utf8_lossy(&out.stderr));
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.len(), 5, "{text}");
    (
        parse_lsn(words[0]),
        parse_lsn(words[1]),
        parse_lsn(words[2]),
        words[3].parse().unwrap(),
        parse_lsn(words[4]),
    )
}

/// On every major: a backup through the SQL functions while receive streams; status gives pg_backup_start's
/// LSN, the control file's checkpoint, and pg_backup_stop's LSN.
#[test]
fn status_agrees_with_pg_backup_stop_on_every_major() {
    for install in support::require_majors(13..=18) {
        let major = install.major;
        let server = Cluster::builder().install(&install).segment_size_mb(1).start();
        let archive = ArchiveDir::new();
        create_slot(&archive, &server, "keep");
        let rx = Receiver::start(&archive, &server, &["-S", "keep"]);
        server.generate_wal(1);
        let (start, checkpoint, redo, time, stop) = sql_backup(&server);
        let last = server.switch_wal();
        rx.wait_archived(&archive, &last);
        let st = status_json(&archive.path());
        let found = st["backups"]["found"].as_array().unwrap();
        assert_eq!(found.len(), 1, "PostgreSQL {major}: {:#}", st["backups"]);
        let f = &found[0];
        let lsn = |key: &str| parse_lsn(f[key].as_str().unwrap());
        assert_eq!((lsn("start_lsn"), lsn("end_lsn")), (start, stop), "PostgreSQL {major}: {f}");
        assert_eq!(f["restorable"], true, "PostgreSQL {major}: {f}");
        // The backup's own checkpoint is the latest (the next timed one comes checkpoint_timeout later).
        assert_eq!(redo, start, "PostgreSQL {major}");
        let secs = epoch_of(&server, f["checkpoint_time"].as_str().unwrap());
        assert_eq!((lsn("checkpoint_lsn"), secs), (checkpoint, time), "PostgreSQL {major}: {f}");
        eprintln!(
            "PostgreSQL {major}: backup {} .. {} found as pg_backup_stop() says",
            f["start_lsn"], f["end_lsn"]
        );
    }
}

/// Backups at three points; keep 2: exactly the WAL before the start of the second newest goes, and a
/// recovery from that backup replays every row.
#[test]
fn keep_backups_removes_exactly_the_wal_before_the_nth_newest() {
    let primary = Cluster::builder().segment_size_mb(1).start();
    let archive = ArchiveDir::new();
    create_slot(&archive, &primary, "keep");
    let mut rx = Receiver::start(&archive, &primary, &["-S", "keep"]);
    primary.psql("CREATE TABLE kept (id int PRIMARY KEY)");
    let mut taken = Vec::new();
    for i in 0..3 {
        primary.generate_wal(2);
        insert_rows(&primary, i * 100 + 1, i * 100 + 100);
        taken.push(take_backup(&primary));
    }
    primary.generate_wal(2);
    insert_rows(&primary, 301, 400);
    let last = primary.switch_wal();
    rx.wait_archived(&archive, &last);
    let dir = archive.path();
    assert_status_lists(&primary, &dir, &taken.iter().collect::<Vec<_>>());
    let text = run_walkeeper(&["status", "-D", dir.to_str().unwrap()]);
    assert!(
        text.stdout.contains("base backups:   3 found in the WAL, 3 restorable from this archive\n"),
        "{text}"
    );

    // The receiver holds the archive: cleanup is refused, naming it (not the service).
    let refused = cleanup(&dir, &["--keep-backups", "2"]);
    assert_eq!(refused.code, Some(1), "{refused}");
    let pid = rx.pid().unwrap();
    assert!(
        refused
            .error_line()
            .contains(&format!("is in use by another walkeeper (pid {pid}: walkeeper receive")),
        "{refused}"
    );
    rx.stop();

    let before = archive.files();
    let keep_from = taken[1].start / primary.segment_size();
    let expected = complete_below(&before, keep_from);
    assert!(expected.len() >= 5, "several segments before the second newest backup: {expected:?}");
    // A dry run lists them; a minimum age of an hour keeps them all (they are minutes old).
    let dry = cleanup(&dir, &["-n", "--keep-backups", "2"]);
    assert_eq!(dry.code, Some(0), "{dry}");
    let listed: BTreeSet<String> =
        dry.stdout.lines().map(|l| Path::new(l).file_name().unwrap().to_str().unwrap().to_string()).collect();
    assert_eq!(listed, expected, "{dry}");
    let young = cleanup(&dir, &["-v", "--keep-backups", "2", "--keep-min-age", "1h"]);
    assert_eq!(young.code, Some(0), "{young}");
    assert!(
        young.stderr.contains(&format!(
            "0 file(s) to remove; {} older file(s) kept for keep_min_age",
            expected.len()
        )),
        "{young}"
    );
    assert_eq!(archive.files(), before);

    let done = cleanup(&dir, &["-v", "--keep-backups", "2"]);
    assert_eq!(done.code, Some(0), "{done}");
    assert!(done.stderr.contains("3 restorable base backup(s) known)"), "{done}");
    let after: BTreeSet<String> = archive.files().into_iter().collect();
    let removed: BTreeSet<String> = before.iter().filter(|f| !after.contains(*f)).cloned().collect();
    assert_eq!(removed, expected, "exactly the complete segments before the second newest backup's start");
    assert!(before.iter().filter(|f| f.ends_with(".partial")).all(|f| after.contains(f)), "{after:?}");

    // The oldest backup went with its WAL (its end record too); the other two are listed, whole.
    assert_status_lists(&primary, &dir, &[&taken[1], &taken[2]]);
    // Nothing more to remove with the same policy.
    assert!(cleanup(&dir, &["-n", "--keep-backups", "2"]).stdout.is_empty());

    // Point-in-time recovery from the backup whose start is the keep point: every row.
    let mut second = taken.remove(1).cluster;
    second.start_recovery(&[&archive.restore_command("")]);
    second.wait_promoted();
    assert_eq!(rows(&second), "400 1..400");
}

/// A failover in the middle: the archive is fed by a standby that is promoted. A backup of the old primary
/// (timeline 1) and one of the promoted server (timeline 2) are found; one taken from the standby before its
/// promotion is not (no backup-end record). Keeping 1 removes the segments of both timelines below the
/// timeline-2 backup's start, never the history file, and recovery from it still works.
#[test]
fn across_a_failover() {
    let mut primary = Cluster::builder().segment_size_mb(1).start();
    primary.psql("CREATE TABLE kept (id int PRIMARY KEY)");
    let standby = primary.standby();
    let archive = ArchiveDir::new();
    // A slot on the standby keeps its WAL through the promotion while the receiver reconnects.
    create_slot(&archive, &standby, "keep");
    let mut rx = Receiver::start(&archive, &standby, &["-S", "keep"]);
    primary.generate_wal(2);
    let on_primary = take_backup(&primary);
    insert_rows(&primary, 1, 100);
    primary.switch_wal();
    standby.wait_for_replay(primary.current_lsn());
    let from_standby = standby.base_backup();
    drop(from_standby);
    primary.generate_wal(1);
    primary.switch_wal();
    standby.wait_for_replay(primary.current_lsn());
    drop(primary);
    standby.promote();
    insert_rows(&standby, 101, 200);
    standby.generate_wal(2);
    let on_tli2 = take_backup(&standby);
    insert_rows(&standby, 201, 300);
    let last = standby.switch_wal();
    assert!(last.starts_with("00000002"), "{last}");
    rx.wait_archived(&archive, &last);
    rx.stop();
    let dir = archive.path();
    let st = assert_status_lists(&standby, &dir, &[&on_primary, &on_tli2]);
    let timelines: Vec<u64> =
        st["backups"]["found"].as_array().unwrap().iter().map(|f| f["timeline"].as_u64().unwrap()).collect();
    assert_eq!(timelines, [1, 2]);

    let before = archive.files();
    let expected = complete_below(&before, on_tli2.start / standby.segment_size());
    assert!(
        expected.iter().any(|f| f.starts_with("00000001"))
            && expected.iter().any(|f| f.starts_with("00000002")),
        "{expected:?}"
    );
    let done = cleanup(&dir, &["--keep-backups", "1"]);
    assert_eq!(done.code, Some(0), "{done}");
    let after: BTreeSet<String> = archive.files().into_iter().collect();
    let removed: BTreeSet<String> = before.iter().filter(|f| !after.contains(*f)).cloned().collect();
    assert_eq!(removed, expected);
    assert!(after.contains("00000002.history"), "{after:?}");

    let mut restored = on_tli2.cluster;
    restored.start_recovery(&[&archive.restore_command("")]);
    restored.wait_promoted();
    assert_eq!(rows(&restored), "300 1..300");
}

/// A directory `walkeeper service` holds: cleanup (by backups or by name) is refused, pointing at the
/// service's own retention; a dry run, which removes nothing, still answers. (The lock is held here as the
/// service holds it — an exclusive flock on `.walkeeper.lock` naming its PID and command line — since the
/// service is another branch's work.)
#[test]
fn a_directory_the_service_holds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.path().join(support::LOCK_FILE))
        .unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let pid = std::process::id();
    fs::write(
        dir.path().join(support::LOCK_FILE),
        format!("{pid}\nwalkeeper service --config /etc/walkeeper/walkeeper.toml\n"),
    )
    .unwrap();
    for args in [&["--keep-backups", "2"][..], &["000000010000000000000003"][..]] {
        let r = cleanup(dir.path(), args);
        assert_eq!(r.code, Some(1), "{r}");
        assert_eq!(
            r.error_line(),
            format!(
                "walkeeper: error: archive \"{}\" is held by walkeeper service (pid {pid}: walkeeper service --config /etc/walkeeper/walkeeper.toml): the service removes old WAL there itself, set keep_backups (and keep_min_age) for this source in its configuration",
                dir.path().display()
            )
        );
    }
    let dry = cleanup(dir.path(), &["-n", "--keep-backups", "2"]);
    assert_eq!(dry.code, Some(0), "{dry}");
    assert_eq!(
        dry.stderr,
        "walkeeper: warning: nothing removed: no restorable base backup found in the WAL\n"
    );
}

/// The same retention over an S3 bucket (a real SeaweedFS): a real archive uploaded object by object, the
/// backups found through the store (the index kept as an object), keep_min_age read from the objects'
/// last-modified times, and exactly the objects before the newest backup's start deleted.
#[test]
fn over_a_bucket() {
    use std::time::{Duration, SystemTime};
    use walkeeper::archive::retention::{run, Policy};
    use walkeeper::archive::store::{S3Store, Store};
    let Some(s3) = support::s3::S3Cluster::start() else { return };
    let primary = Cluster::builder().segment_size_mb(1).start();
    let archive = ArchiveDir::new();
    create_slot(&archive, &primary, "keep");
    let mut rx = Receiver::start(&archive, &primary, &["-S", "keep"]);
    primary.psql("CREATE TABLE kept (id int PRIMARY KEY)");
    let first = take_backup(&primary);
    primary.generate_wal(3);
    let newest = take_backup(&primary);
    primary.generate_wal(1);
    let last = primary.switch_wal();
    rx.wait_archived(&archive, &last);
    rx.stop();
    let bucket = S3Store::open(&s3.url("retention"), &s3.options()).unwrap();
    let names: Vec<String> = archive.files().into_iter().filter(|f| !f.starts_with('.')).collect();
    for name in &names {
        let data = fs::read(archive.path().join(name)).unwrap();
        match name.ends_with(".partial") {
            true => bucket.put_replace(name, &data).unwrap(),
            false => assert!(bucket.put_new(name, &data).is_ok(), "{name}"),
        }
    }
    let st = walkeeper::archive::status::status(&bucket).unwrap();
    let starts: Vec<u64> = st.backups.found.iter().map(|b| parse_lsn(&b.start_lsn)).collect();
    assert_eq!(starts, [first.start, newest.start], "{:?}", st.backups);
    assert!(bucket.stat(".walkeeper-backups").unwrap().is_some(), "the index is an object");

    let policy = Policy { keep_backups: 1, keep_min_age: Duration::from_secs(3600), floor: None };
    let expected = complete_below(&names, newest.start / primary.segment_size());
    let young = run(&bucket, &policy, false, SystemTime::now()).unwrap();
    assert_eq!(
        (young.plan.remove.len(), young.plan.kept_young),
        (0, expected.len()),
        "{}",
        young.plan.summary()
    );
    assert_eq!(young.found.segments_decoded, 0, "the index object was read");

    let done =
        run(&bucket, &Policy { keep_min_age: Duration::ZERO, ..policy }, false, SystemTime::now()).unwrap();
    assert_eq!(
        done.plan.remove.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{}",
        done.plan.summary()
    );
    let left: BTreeSet<String> = bucket.list().unwrap().into_iter().map(|e| e.name).collect();
    let mut want: BTreeSet<String> = names.iter().filter(|n| !expected.contains(*n)).cloned().collect();
    want.insert(".walkeeper-backups".into());
    assert_eq!(left, want);
}
