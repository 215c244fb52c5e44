//! What the decoder reads from records (`RecordInfo::kind`) against what real servers of every available
//! major (13–18) say about the same WAL: commit times against `pg_xact_commit_timestamp()`, checkpoints
//! against `pg_control_checkpoint()`, backup ends against `pg_backup_start()`'s LSN and pg_basebackup's
//! backup_label; on 15 every commit, abort, checkpoint and backup end against pg_waldump's description.
//! Then a real failover (primary, standby cut off, more commits on the primary, standby promoted): the
//! reconciliation and the tail summary against what the two servers say.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use support::{pg_tool, Cluster, PgInstall};
use walkeeper::stream::failover::{reconcile, ArchiveState, HeldSegment, Position, ServerState};
use walkeeper::wal::decoder::{page_magic_for_major, DecoderConfig, RecordInfo, WalDecoder};
use walkeeper::wal::pgtime::PgTimestamp;
use walkeeper::wal::records::RecordKind;
use walkeeper::wal::segment::SegmentId;
use walkeeper::wal::tail::summarize_tail;
use walkeeper::wal::timeline::parse_history;
use walkeeper::wal::Lsn;

const SEG: u32 = 1 << 20;
/// `to_char` format giving `PgTimestamp`'s display form for a `timestamptz AT TIME ZONE 'UTC'`.
const UTC: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

fn primary(install: &PgInstall) -> Cluster {
    Cluster::builder()
        .install(install)
        .segment_size_mb(1)
        .conf("wal_keep_size = '1GB'")
        .conf("track_commit_timestamp = on")
        .conf("max_prepared_transactions = 4")
        .conf("autovacuum = off")
        .start()
}

fn lsn_of(server: &Cluster, sql: &str) -> Lsn {
    server.psql(sql).trim().parse().unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn sysid(server: &Cluster) -> u64 {
    server.psql("SELECT system_identifier FROM pg_control_system()").parse().unwrap()
}

/// Several statements in one session (psql runs each `-c` in turn); the output of all of them.
fn psql_session(server: &Cluster, statements: &[&str]) -> String {
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        server.socket_dir().display(),
        server.port()
    );
    let mut cmd = Command::new(pg_tool("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", &conninfo]);
    for s in statements {
        cmd.args(["-c", s]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A non-exclusive base backup through the SQL functions (13/14 and 15+ spell them differently); its start.
fn sql_backup(server: &Cluster) -> Lsn {
    let out = if server.major() >= 15 {
        psql_session(
            server,
            &["SELECT pg_backup_start('walkeeper', true)", "SELECT lsn FROM pg_backup_stop()"],
        )
    } else {
        psql_session(
            server,
            &["SELECT pg_start_backup('walkeeper', true, false)", "SELECT lsn FROM pg_stop_backup(false)"],
        )
    };
    out.lines().next().unwrap().trim().parse().unwrap()
}

/// Records of the server's timeline 1 over [start, end): the segments in pg_wal, in 64 KiB chunks.
fn decode(server: &Cluster, sysid: u64, start: Lsn, end: Lsn) -> Vec<RecordInfo> {
    let magic = page_magic_for_major(server.major()).unwrap();
    let cfg = DecoderConfig { segment_size: SEG, page_magic: magic, system_id: Some(sysid), timeline: 1 };
    let mut d = WalDecoder::new(cfg, start);
    let mut recs = Vec::new();
    let mut seg = start;
    while seg < end {
        let name = SegmentId::containing(1, seg, SEG).file_name(SEG);
        let bytes = server.read_wal_segment(&name);
        for chunk in bytes.chunks(64 * 1024) {
            d.feed_with(chunk, |r| recs.push(*r)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        seg = Lsn(seg.0 + u64::from(SEG));
    }
    recs
}

struct Expected {
    /// xid → commit time (UTC text) of every transaction the test committed.
    commits: BTreeMap<u32, String>,
    /// The commit time of the prepared transaction committed with COMMIT PREPARED.
    prepared_commit: String,
    /// (checkpoint LSN, redo, timeline, time, shutdown)
    checkpoints: Vec<(Lsn, Lsn, u32, String, bool)>,
    backup_starts: Vec<Lsn>,
}

fn checkpoint_now(server: &Cluster, shutdown: bool) -> (Lsn, Lsn, u32, String, bool) {
    let row = server.psql(&format!(
        "SELECT checkpoint_lsn, redo_lsn, timeline_id, to_char(checkpoint_time AT TIME ZONE 'UTC', {UTC}) \
         FROM pg_control_checkpoint()"
    ));
    let f: Vec<&str> = row.split('|').collect();
    (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].to_string(), shutdown)
}

/// Commits (plain, with savepoints, a prepared one), aborts, checkpoints (online and, through a restart,
/// shutdown), base backups; returns the range of WAL written and what the server says about it.
fn generate(server: &mut Cluster) -> (Lsn, Lsn, Expected) {
    let start = lsn_of(server, "SELECT pg_current_wal_insert_lsn()").segment_start(SEG);
    server.psql("CREATE TABLE x (xid bigint, pad text)");
    let mut checkpoints = Vec::new();
    let mut backup_starts = Vec::new();
    for i in 0..60 {
        server.psql(&format!("INSERT INTO x SELECT txid_current(), repeat('p', {})", 10 + i * 37));
        if i % 10 == 3 {
            server.psql("BEGIN; INSERT INTO x VALUES (txid_current(), 'rolled back'); ROLLBACK");
            server.psql(
                "BEGIN; INSERT INTO x VALUES (txid_current(), 'kept'); SAVEPOINT s; \
                 INSERT INTO x VALUES (-1, 'subxact'); ROLLBACK TO s; COMMIT",
            );
        }
        if i % 20 == 5 {
            server.psql("CHECKPOINT");
            checkpoints.push(checkpoint_now(server, false));
        }
        if i == 30 {
            backup_starts.push(sql_backup(server));
        }
        if i == 40 {
            server.stop();
            server.start_again();
            checkpoints.push(checkpoint_now(server, true));
        }
    }
    psql_session(
        server,
        &["BEGIN", "INSERT INTO x VALUES (txid_current(), 'prepared')", "PREPARE TRANSACTION 'p1'"],
    );
    server.psql("COMMIT PREPARED 'p1'");
    if server.major() <= 15 {
        // pg_basebackup 15 reads servers up to 15.
        let backup = server.base_backup();
        let label = std::fs::read_to_string(backup.data_dir().join("backup_label")).unwrap();
        let line = label.lines().find(|l| l.starts_with("START WAL LOCATION: ")).unwrap();
        backup_starts.push(line["START WAL LOCATION: ".len()..].split(' ').next().unwrap().parse().unwrap());
    }
    server.psql("INSERT INTO x VALUES (txid_current(), 'last')");
    let rows = server.psql(&format!(
        "SELECT xid, to_char(pg_xact_commit_timestamp(xid::text::xid) AT TIME ZONE 'UTC', {UTC}) \
         FROM x WHERE xid > 0 AND pad <> 'prepared'"
    ));
    let commits = rows
        .lines()
        .map(|l| {
            let (x, t) = l.split_once('|').unwrap();
            (x.parse::<u64>().unwrap() as u32, t.to_string())
        })
        .collect();
    let prepared_commit = server.psql(&format!(
        "SELECT to_char(pg_xact_commit_timestamp(xid::text::xid) AT TIME ZONE 'UTC', {UTC}) FROM x \
         WHERE pad = 'prepared'"
    ));
    let switch_end = lsn_of(server, "SELECT pg_switch_wal()");
    let end = Lsn(switch_end.0.div_ceil(u64::from(SEG)) * u64::from(SEG));
    (start, end, Expected { commits, prepared_commit, checkpoints, backup_starts })
}

fn check_against_server(major: u32, recs: &[RecordInfo], want: &Expected) {
    let unreadable: Vec<&RecordInfo> =
        recs.iter().filter(|r| matches!(r.kind, RecordKind::Unreadable { .. })).collect();
    assert!(unreadable.is_empty(), "PostgreSQL {major}: unreadable records {unreadable:?}");
    // Every transaction the test committed has exactly one commit record, with the server's commit time.
    let mut commits: BTreeMap<u32, Vec<PgTimestamp>> = BTreeMap::new();
    let mut prepared = Vec::new();
    let mut aborts = 0;
    for r in recs {
        match r.kind {
            RecordKind::Commit { time, prepared: false } => commits.entry(r.xid).or_default().push(time),
            RecordKind::Commit { time, prepared: true } => prepared.push(time),
            RecordKind::Abort { .. } => aborts += 1,
            _ => {}
        }
    }
    for (xid, time) in &want.commits {
        let got =
            commits.get(xid).unwrap_or_else(|| panic!("PostgreSQL {major}: no commit record for {xid}"));
        assert_eq!(got.len(), 1, "PostgreSQL {major}: xid {xid}");
        assert_eq!(&got[0].to_string(), time, "PostgreSQL {major}: commit time of xid {xid}");
    }
    assert_eq!(
        prepared.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        vec![want.prepared_commit.clone()]
    );
    // 6 rolled-back transactions and 6 rolled-back subtransactions.
    assert_eq!(aborts, 12, "PostgreSQL {major}: abort records");
    // Checkpoints: at the LSN the control file names, with its redo pointer, timeline and time.
    for (at, redo, timeline, time, shutdown) in &want.checkpoints {
        let r = recs.iter().find(|r| r.lsn == *at).unwrap_or_else(|| panic!("no record at checkpoint {at}"));
        match r.kind {
            RecordKind::Checkpoint { redo: r_redo, timeline: r_tli, time: r_time, shutdown: r_shutdown } => {
                assert_eq!(
                    (r_redo, r_tli, r_time.to_string(), r_shutdown),
                    (*redo, *timeline, time.clone(), *shutdown)
                );
            }
            other => panic!("PostgreSQL {major}: record at checkpoint {at} reads as {other:?}"),
        }
    }
    // Backup ends: one per backup, naming its start.
    let ends: Vec<Lsn> = recs
        .iter()
        .filter_map(|r| if let RecordKind::BackupEnd { start } = r.kind { Some(start) } else { None })
        .collect();
    assert_eq!(ends, want.backup_starts, "PostgreSQL {major}: backup-end records");
    eprintln!(
        "PostgreSQL {major}: {} records, {} commits ({} by the test), {aborts} aborts, {} checkpoints, {} backup ends",
        recs.len(),
        commits.values().map(Vec::len).sum::<usize>() + prepared.len(),
        want.commits.len(),
        recs.iter().filter(|r| matches!(r.kind, RecordKind::Checkpoint { .. })).count(),
        ends.len()
    );
}

#[test]
fn record_contents_match_what_every_major_says() {
    for install in support::require_majors(13..=18) {
        let mut server = primary(&install);
        let sysid = sysid(&server);
        let (start, end, want) = generate(&mut server);
        let recs = decode(&server, sysid, start, end);
        check_against_server(install.major, &recs, &want);
        if install.major == 15 {
            check_against_pg_waldump(&server, start, end, &recs);
        }
    }
}

/// pg_waldump 15's description of every commit, abort, checkpoint and backup end in the range.
fn check_against_pg_waldump(server: &Cluster, start: Lsn, end: Lsn, recs: &[RecordInfo]) {
    let pg_wal = server.data_dir().join("pg_wal");
    let out = Command::new(pg_tool("pg_waldump"))
        .env("TZ", "UTC")
        .args(["-p", pg_wal.to_str().unwrap(), "-s", &start.to_string(), "-e", &end.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_waldump: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut dumped = BTreeMap::new();
    for line in text.lines() {
        let (Some((_, l)), Some((_, desc))) = (line.split_once("lsn: "), line.split_once("desc: ")) else {
            continue;
        };
        let at: Lsn = l.split(',').next().unwrap().trim().parse().unwrap();
        // "COMMIT 2026-03-04 05:06:07.891011 UTC; ...", "ABORT ...", "COMMIT_PREPARED 5: 2026-… UTC",
        // "CHECKPOINT_ONLINE redo 0/2000028; tli 1; ...", "BACKUP_END 0/2000028"
        let word = desc.split([' ', ';']).next().unwrap();
        let ours = match word {
            "COMMIT" | "ABORT" | "COMMIT_PREPARED" | "ABORT_PREPARED" => {
                let ts = desc.split(" UTC").next().unwrap();
                let ts = &ts[ts.len() - 26..];
                format!("{word} {}", ts.replace(' ', "T") + "Z")
            }
            "CHECKPOINT_ONLINE" | "CHECKPOINT_SHUTDOWN" => {
                let redo = desc.split("redo ").nth(1).unwrap().split(';').next().unwrap();
                let tli = desc.split("tli ").nth(1).unwrap().split(';').next().unwrap();
                format!("{word} {} {tli}", redo.parse::<Lsn>().unwrap())
            }
            "BACKUP_END" => format!("BACKUP_END {}", desc[11..].trim().parse::<Lsn>().unwrap()),
            _ => continue,
        };
        dumped.insert(at, ours);
    }
    let mine: BTreeMap<Lsn, String> = recs
        .iter()
        .filter_map(|r| {
            let s = match r.kind {
                RecordKind::Commit { time, prepared } => {
                    format!("{} {time}", if prepared { "COMMIT_PREPARED" } else { "COMMIT" })
                }
                RecordKind::Abort { time, prepared } => {
                    format!("{} {time}", if prepared { "ABORT_PREPARED" } else { "ABORT" })
                }
                RecordKind::Checkpoint { redo, timeline, shutdown, .. } => {
                    format!("CHECKPOINT_{} {redo} {timeline}", if shutdown { "SHUTDOWN" } else { "ONLINE" })
                }
                RecordKind::BackupEnd { start } => format!("BACKUP_END {start}"),
                _ => return None,
            };
            Some((r.lsn, s))
        })
        .collect();
    let keys: BTreeSet<&Lsn> = dumped.keys().chain(mine.keys()).collect();
    for k in keys {
        assert_eq!(mine.get(k), dumped.get(k), "record at {k}: ours against pg_waldump's");
    }
    eprintln!("pg_waldump 15 agrees on {} commit, abort, checkpoint and backup-end records", mine.len());
}

// ---------------------------------------------------------------------------------------------------------
// A real failover
// ---------------------------------------------------------------------------------------------------------

fn wal_files(dir: &Path, tli: u32) -> Vec<HeldSegment> {
    let mut v: Vec<HeldSegment> = support::names(dir)
        .into_iter()
        .filter_map(|name| {
            let id = SegmentId::parse_name(name.trim_end_matches(".partial"), SEG)?;
            (id.timeline == tli).then_some(HeldSegment { id, name })
        })
        .collect();
    v.sort_by_key(|s| s.id.number);
    v
}

#[test]
fn failover_tail_and_reconciliation_against_real_servers() {
    for install in support::require_majors(13..=18) {
        failover_on(&install);
    }
}

fn failover_on(install: &PgInstall) {
    let major = install.major;
    let mut primary = primary(install);
    let sysid = sysid(&primary);
    primary.psql("CREATE TABLE t (xid bigint, pad text)");
    let standby = primary.standby();
    standby.wait_for_replay(primary.current_lsn());
    // Cut the standby off: what the primary writes from now on, it never gets.
    standby.psql("ALTER SYSTEM SET primary_conninfo = ''");
    standby.psql("SELECT pg_reload_conf()");
    assert!(support::wait_until(support::TIMEOUT, || {
        primary.psql("SELECT count(*) FROM pg_stat_replication") == "0"
    }));
    // The lost transactions: 40 commits, over more than one segment of WAL.
    for i in 0..40 {
        primary.psql(&format!(
            "INSERT INTO t SELECT txid_current(), repeat(md5(g::text), 40) FROM generate_series(1, {}) g",
            10 + i * 5
        ));
    }
    let last_commit = primary.psql(&format!(
        "SELECT to_char(pg_xact_commit_timestamp(max(xid)::text::xid) AT TIME ZONE 'UTC', {UTC}) FROM t"
    ));
    // What an archive receiving from the primary holds when the primary dies: everything flushed (the
    // shutdown checkpoint below is left out: an archive may or may not have received it).
    let received = lsn_of(&primary, "SELECT pg_current_wal_flush_lsn()");
    primary.stop();
    standby.promote();
    standby.psql("INSERT INTO t VALUES (0, 'after the promotion')");

    // The old primary's pg_wal stands for an archive that received all of timeline 1.
    let old_wal = primary.data_dir().join("pg_wal");
    let held = wal_files(&old_wal, 1);
    let history_text = std::fs::read_to_string(standby.wal_segment_path("00000002.history")).unwrap();
    let history = parse_history(&history_text).unwrap();
    let fork = history[0].end;
    let fork_segment = fork.segment_start(SEG);
    // Timeline 1 from the fork's segment to its end, through the tail summary. Past the received position the
    // archive's `.partial` holds zeros (pg_wal may hold anything there: 18 writes the next page's header).
    let held: Vec<HeldSegment> =
        held.into_iter().filter(|f| f.id.number <= received.segment_number(SEG)).collect();
    let mut bytes = Vec::new();
    for f in held.iter().filter(|f| f.id.number >= fork.segment_number(SEG)) {
        bytes.extend_from_slice(&std::fs::read(old_wal.join(&f.name)).unwrap());
    }
    bytes[(received.0 - fork_segment.0) as usize..].fill(0);
    let magic = page_magic_for_major(major).unwrap();
    let cfg = DecoderConfig { segment_size: SEG, page_magic: magic, system_id: Some(sysid), timeline: 1 };
    let (tail, status) = summarize_tail(cfg, fork_segment, fork, &bytes).unwrap();
    assert_eq!(tail.commits, 40, "PostgreSQL {major}: commits on the lost tail");
    assert_eq!(tail.last_commit.map(|t| t.to_string()), Some(last_commit.clone()));
    assert!(tail.bytes > u64::from(SEG), "PostgreSQL {major}: {} bytes", tail.bytes);
    let end = tail.to;
    assert!(status.validated_up_to >= end);

    let archive = ArchiveState {
        system_id: sysid,
        segment_size: SEG,
        newest: Position { timeline: 1, lsn: end },
        history: None,
        segments: held.clone(),
    };
    let server = ServerState {
        system_id: sysid,
        timeline: 2,
        history: history.clone(),
        flushed: lsn_of(&standby, "SELECT pg_current_wal_flush_lsn()"),
    };
    let start = reconcile(&archive, &server).unwrap();
    assert_eq!((start.timeline, start.lsn), (2, fork_segment), "PostgreSQL {major}");
    let t = start.tail.unwrap();
    assert_eq!((t.timeline, t.from, t.to), (1, fork, end));
    let expect_files: Vec<String> = held
        .iter()
        .filter(|f| (fork.segment_number(SEG)..=Lsn(end.0 - 1).segment_number(SEG)).contains(&f.id.number))
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(t.files, expect_files);
    // The promoted server holds timeline 2's file of the fork's segment, starting with the shared history:
    // streaming it from its start leaves no gap.
    let name2 = SegmentId::containing(2, fork_segment, SEG).file_name(SEG);
    let new_seg = standby.read_wal_segment(&name2);
    let old_seg =
        std::fs::read(old_wal.join(SegmentId::containing(1, fork_segment, SEG).file_name(SEG))).unwrap();
    let shared = (fork.0 - fork_segment.0) as usize;
    assert!(
        old_seg[..shared] == new_seg[..shared],
        "PostgreSQL {major}: timeline 2's {name2} does not start with timeline 1's WAL up to the fork"
    );
    // And the old primary, were it started again without a rewind, would be refused.
    let old = ServerState { system_id: sysid, timeline: 1, history: vec![], flushed: end };
    let archive_on_2 = ArchiveState {
        newest: Position { timeline: 2, lsn: server.flushed },
        history: Some(history),
        segments: wal_files(&standby.data_dir().join("pg_wal"), 2),
        ..archive
    };
    assert!(reconcile(&archive_on_2, &old).is_err());
    eprintln!(
        "PostgreSQL {major}: fork at {fork}; lost tail {} bytes to {end}, {} commits, last at {last_commit}; \
         start timeline 2 at {fork_segment}",
        tail.bytes, tail.commits
    );
}
