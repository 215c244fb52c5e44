//! `walkeeper receive --failover` following real failovers (#12) on PostgreSQL 13 (no
//! READ_REPLICATION_SLOT), 15 and 17. One chain of servers per major — a primary and four cascaded standbys,
//! every one a host of walkeeper's connection string — goes through four changes of primary:
//!
//! 1. timeline 1 → 2, the archive ahead by several complete segments. The first standby is cut off (its
//!    `primary_conninfo` emptied and reloaded: its walreceiver stops, which `pg_wal_replay_pause()` would
//!    not do), the primary commits 20 transactions over ~4 MB that walkeeper receives and the standby never
//!    gets, the primary dies (`-m immediate`), the standby is promoted. The old primary is then started
//!    again without a rewind — read-write on timeline 1, first in the host list — and must be passed over.
//! 2. timeline 2 → 3, the archive ahead within one segment (5 commits).
//! 3. timeline 3 → 4, the standby had everything.
//! 4. timeline 4 → 5, a planned switchover: fast shutdown, promote.
//!
//! After each promotion walkeeper must stream from the new primary: the time is measured and printed; the
//! 30 s deadline is a functional bound, not a speed test (benches/failover.rs measures). At the end:
//! `verify` exits 0 and reports the two diverged tails (their commits, the last commit's time) and no
//! other with a commit; `status` reports the same; every `.history` file equals the server's; every complete
//! segment equals the pg_wal file of the server that wrote it; and a point-in-time recovery from a base
//! backup taken before the load, through `walkeeper restore` with recovery_target_timeline = 'latest',
//! crosses the four forks and ends with exactly the last primary's rows — none of the lost ones.
//!
//! `walkeeper check` lists the five hosts once the first standby is promoted. And one test for the
//! slot-creation gap: when the new primary has recycled the segment the archive needs, receive stops with
//! one line naming the segment, and no segment file of the archive is touched.

mod durability;
mod support;

use durability::{replication_row, reported_write, Walkeeper};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::archive::ArchiveDir;
use support::{parse_lsn, run_as_server_user, wait_until, walkeeper, Cluster, PgInstall, Run};

/// Walkeeper must stream from a newly promoted server within this long (a functional bound; see the module
/// docs): generous, because the machine is shared and several servers start at once.
const STREAMING_DEADLINE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(60);
const UTC: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

fn chain_member(install: &PgInstall, conf: &[&str]) -> Cluster {
    let mut b = Cluster::builder()
        .install(install)
        .segment_size_mb(1)
        .conf("track_commit_timestamp = on")
        .conf("autovacuum = off");
    for line in conf {
        b = b.conf(line);
    }
    b.start()
}

/// The archive directory, owned by the server user (restore runs as that user), and walkeeper's log.
struct Archive {
    dir: ArchiveDir,
}

impl Archive {
    fn new() -> Archive {
        Archive { dir: ArchiveDir::new() }
    }

    fn dir(&self) -> PathBuf {
        self.dir.path()
    }

    /// `walkeeper receive --failover` over `hosts`, as the server user.
    fn receive(&self, hosts: &[&Cluster], extra: &[&str]) -> Walkeeper {
        let mut cmd = walkeeper();
        cmd.arg("receive").arg("-D").arg(self.dir());
        cmd.args(["--failover", "-S", "arch", "-s", "1", "-v", "-w", "-d", &conninfo(hosts)]);
        cmd.args(extra);
        cmd.current_dir(self.dir.root()).env("HOME", self.dir.root());
        run_as_server_user(&mut cmd);
        Walkeeper::spawn(cmd, &self.dir.root().join("receive.log"))
    }

    fn json(&self, command: &str) -> (Option<i32>, Value) {
        let r = Run::of(walkeeper().args([command, "-D", self.dir().to_str().unwrap(), "--json"]));
        let doc = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{command} --json: {e}\n{r}"));
        (r.code, doc)
    }

    fn text(&self, command: &str) -> Run {
        Run::of(walkeeper().args([command, "-D", self.dir().to_str().unwrap()]))
    }
}

/// `host=127.0.0.1,… port=…,… user=postgres connect_timeout=5`.
fn conninfo(hosts: &[&Cluster]) -> String {
    let ports: Vec<String> = hosts.iter().map(|c| c.port().to_string()).collect();
    let addrs = vec!["127.0.0.1"; hosts.len()].join(",");
    format!("host={addrs} port={} user=postgres connect_timeout=5", ports.join(","))
}

fn flush_lsn(c: &Cluster) -> u64 {
    parse_lsn(&c.psql("SELECT pg_current_wal_flush_lsn()"))
}

fn streaming_from(c: &Cluster) -> bool {
    replication_row(c).is_some_and(|r| r[0] == "streaming")
}

/// Waits until walkeeper has written everything `c` has flushed.
fn wait_received(c: &Cluster, wk: &Walkeeper) {
    let target = flush_lsn(c);
    let ok = wait_until(WAIT, || reported_write(c).is_some_and(|w| w >= target));
    assert!(
        ok,
        "walkeeper did not receive {} from {}\n{}",
        support::format_lsn(target),
        c.port(),
        wk.log_tail(30)
    );
}

/// Stops `standby` from receiving more WAL from `upstream` (its walreceiver ends) and waits until it is gone.
fn cut_off(standby: &Cluster, upstream: &Cluster) {
    standby.psql("ALTER SYSTEM SET primary_conninfo = ''");
    standby.psql("SELECT pg_reload_conf()");
    let gone = wait_until(WAIT, || {
        upstream.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walkeeper_standby'")
            == "0"
    });
    assert!(gone, "the standby on port {} did not stop streaming", standby.port());
}

/// Promotes `standby` and returns the seconds until walkeeper streams from it.
fn promote_and_follow(standby: &Cluster, wk: &Walkeeper) -> f64 {
    let since = Instant::now();
    standby.promote();
    let ok = wait_until(STREAMING_DEADLINE, || streaming_from(standby));
    let took = since.elapsed().as_secs_f64();
    assert!(
        ok,
        "walkeeper did not stream from the promoted server within {STREAMING_DEADLINE:?}\n{}",
        wk.log_tail(40)
    );
    took
}

/// The rows of the test table: their number, sum and phases.
fn table_rows(c: &Cluster) -> String {
    c.psql("SELECT count(*) || ' ' || coalesce(sum(id), 0) || ' ' || string_agg(DISTINCT phase, ',' ORDER BY phase) FROM t")
}

/// Rows of the test table: one transaction per `commits`, each about `bytes` large. Returns the time of the
/// last commit (UTC, as walkeeper prints it).
struct Rows {
    next: i64,
}

impl Rows {
    fn commit(&mut self, c: &Cluster, phase: &str, commits: u32, bytes: usize) -> String {
        for _ in 0..commits {
            let n = (bytes / 1000).max(1) as i64;
            c.psql(&format!(
                "INSERT INTO t SELECT g, '{phase}', repeat(md5(g::text), 30) FROM generate_series({}, {}) g",
                self.next,
                self.next + n - 1
            ));
            self.next += n;
        }
        c.psql(&format!(
            "SELECT to_char(max(pg_xact_commit_timestamp(xmin)) AT TIME ZONE 'UTC', {UTC}) FROM t WHERE phase = '{phase}'"
        ))
    }
}

/// What a failover with the archive ahead of the promoted standby lost.
struct Lost {
    /// The time of the last commit the standby never had.
    last_commit: String,
    /// The old primary's end of WAL.
    end: u64,
    /// Seconds from the promotion until walkeeper streamed from the promoted standby.
    took: f64,
}

/// The archive gets ahead of `standby`: a few shared commits, then the standby is cut off from `primary`,
/// which commits `lost` = (phase, transactions, bytes each) that walkeeper receives; the primary dies and the
/// standby is promoted.
fn diverge_and_fail_over(
    primary: &mut Cluster,
    standby: &Cluster,
    wk: &Walkeeper,
    rows: &mut Rows,
    lost: (&str, u32, usize),
) -> Lost {
    rows.commit(primary, &lost.0.replace("lost", "shared"), 3, 20_000);
    standby.wait_for_replay(primary.current_lsn());
    cut_off(standby, primary);
    let last_commit = rows.commit(primary, lost.0, lost.1, lost.2);
    wait_received(primary, wk);
    let end = flush_lsn(primary);
    primary.crash();
    let took = promote_and_follow(standby, wk);
    Lost { last_commit, end, took }
}

/// The switch points of a history file: timeline → where it ended.
fn history_ends(text: &str) -> BTreeMap<u32, u64> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split_whitespace();
            (f.next().unwrap().parse().unwrap(), parse_lsn(f.next().unwrap()))
        })
        .collect()
}

#[test]
fn failovers_on_13() {
    if let Some(install) = support::require_major(13) {
        failover_chain(&install);
    }
}

#[test]
fn failovers_on_15() {
    if let Some(install) = support::require_major(15) {
        failover_chain(&install);
    }
}

#[test]
fn failovers_on_17() {
    if let Some(install) = support::require_major(17) {
        failover_chain(&install);
    }
}

fn failover_chain(install: &PgInstall) {
    let major = install.major;
    let started = Instant::now();
    let mut p = chain_member(install, &["wal_keep_size = '1GB'"]);
    p.psql("CREATE TABLE t (id bigint PRIMARY KEY, phase text, pad text)");
    p.psql("SELECT pg_create_physical_replication_slot('arch', true)");
    let mut s1 = p.standby();
    let mut s2 = s1.standby();
    let mut s3 = s2.standby();
    let s4 = s3.standby();
    // From 16 on the harness copies a stopped primary's data directory for a standby, slots included: walkeeper
    // must find the slot missing on every promoted server, as after pg_basebackup.
    for standby in [&s1, &s2, &s3, &s4] {
        standby.psql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots");
    }
    let archive = Archive::new();
    let wk = archive.receive(&[&p, &s1, &s2, &s3, &s4], &[]);
    assert!(wait_until(WAIT, || streaming_from(&p)), "walkeeper did not start\n{}", wk.log_tail(30));
    // Before the load: recovery from it needs every segment that follows from the archive.
    let mut backup = p.backup_any_major();
    assert!(wait_until(WAIT, || streaming_from(&p)), "walkeeper did not come back\n{}", wk.log_tail(30));
    let mut rows = Rows { next: 1 };
    let mut took = Vec::new();

    // 1. Timeline 1 → 2: the archive ahead by several complete segments.
    let lost1 = diverge_and_fail_over(&mut p, &s1, &wk, &mut rows, ("lost-1", 20, 200_000));
    took.push(lost1.took);
    rows.commit(&s1, "after-1", 3, 20_000);
    // `check` sees the five hosts: the old primary down, the new one, three standbys now on timeline 2.
    let check =
        Run::of(walkeeper().args(["check", "-S", "arch", "-d", &conninfo(&[&p, &s1, &s2, &s3, &s4])]));
    assert_eq!(check.code, Some(0), "{check}");
    let facts = check.facts();
    assert!(facts["server 1"].contains("not reachable"), "{check}");
    let sysid = s1.psql("SELECT system_identifier FROM pg_control_system()");
    let primary_line = format!("primary, timeline 2, system identifier {sysid}, PostgreSQL ");
    assert!(
        facts["server 2"].contains(&primary_line) && facts["server 2"].contains("slot \"arch\" present"),
        "{check}"
    );
    for n in ["server 3", "server 4", "server 5"] {
        assert!(
            facts[n].contains("standby, timeline 2, ") && facts[n].ends_with("slot \"arch\" missing"),
            "{check}"
        );
    }
    assert_eq!(facts["ready to stream"], format!("yes, from server 2 (127.0.0.1:{})", s1.port()), "{check}");
    // The old primary comes back without a rewind: read-write on timeline 1, first in the list.
    p.start_again();
    s1.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'walkeeper'");
    let refused = format!(
        "127.0.0.1:{}: primary, timeline 1: passed over: timeline 1 is older than the archive's newest timeline 2",
        p.port()
    );
    assert!(wait_until(WAIT, || wk.log_text().contains(&refused)), "{refused}\n{}", wk.log_tail(30));
    assert!(
        wait_until(WAIT, || streaming_from(&s1)),
        "walkeeper did not go back to the new primary\n{}",
        wk.log_tail(30)
    );
    assert!(!streaming_from(&p));
    p.crash();

    // 2. Timeline 2 → 3: the archive ahead within one segment (a fresh one).
    s1.switch_wal();
    let lost2 = diverge_and_fail_over(&mut s1, &s2, &wk, &mut rows, ("lost-2", 5, 1_000));
    took.push(lost2.took);
    rows.commit(&s2, "after-2", 3, 20_000);

    // 3. Timeline 3 → 4: the standby had everything.
    s3.wait_for_replay(flush_lsn(&s2));
    wait_received(&s2, &wk);
    s2.crash();
    took.push(promote_and_follow(&s3, &wk));
    rows.commit(&s3, "after-3", 3, 20_000);

    // 4. Timeline 4 → 5: a planned switchover.
    s3.stop();
    took.push(promote_and_follow(&s4, &wk));
    rows.commit(&s4, "after-4", 3, 20_000);
    let last = s4.switch_wal();
    let complete = archive.dir().join(&last);
    assert!(wait_until(WAIT, || complete.exists()), "{last} not archived\n{}", wk.log_tail(30));
    let expected_rows = table_rows(&s4);
    assert!(wk.terminate().success());
    let log = fs::read_to_string(archive.dir.root().join("receive.log")).unwrap();
    let warned = format!(
        "127.0.0.1:{}: the archive holds WAL this server never had, kept as it is (a diverged tail): timeline 1 \
         continues past {}, where timeline 2 forked from it: ",
        s1.port(),
        support::format_lsn(history_ends(&fs::read_to_string(s1.wal_segment_path("00000002.history")).unwrap())[&1])
    );
    let warning = log.lines().find(|l| l.contains(&warned)).unwrap_or_else(|| panic!("{warned}\n{log}"));
    assert!(warning.contains(&format!(", 20 commits, the last at {} in ", lost1.last_commit)), "{warning}");
    for server in [&s1, &s2, &s3, &s4] {
        let created =
            format!("127.0.0.1:{}: replication slot \"arch\" was missing; created it", server.port());
        assert!(log.contains(&created), "{created}\n{log}");
    }

    // verify: whole, two diverged tails with the commits the test made.
    let (code, doc) = archive.json("verify");
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["whole"], true);
    let servers = [&p, &s1, &s2, &s3, &s4];
    let history = |tli: u32| {
        fs::read_to_string(servers[tli as usize - 1].wal_segment_path(&format!("{tli:08X}.history"))).unwrap()
    };
    let fork1 = history_ends(&history(2))[&1];
    let fork2 = history_ends(&history(3))[&2];
    let tails = doc["summary"]["diverged_tails"].as_array().unwrap().clone();
    let tail = |tli: u32| {
        tails
            .iter()
            .find(|t| t["timeline"] == tli)
            .unwrap_or_else(|| panic!("no tail of timeline {tli}: {doc:#}"))
    };
    let t1 = tail(1);
    assert_eq!(
        (t1["forked_to"].as_u64(), t1["from"].as_str()),
        (Some(2), Some(support::format_lsn(fork1).as_str())),
        "{t1:#}"
    );
    assert_eq!(t1["commits"], 20, "{t1:#}");
    assert_eq!(t1["last_commit"], lost1.last_commit.as_str(), "{t1:#}");
    assert!(parse_lsn(t1["to"].as_str().unwrap()) <= lost1.end, "{t1:#}");
    assert!(t1["bytes"].as_u64().unwrap() > 3 << 20 && t1["files"].as_array().unwrap().len() >= 4, "{t1:#}");
    let t2 = tail(2);
    assert_eq!(
        (t2["forked_to"].as_u64(), t2["from"].as_str()),
        (Some(3), Some(support::format_lsn(fork2).as_str())),
        "{t2:#}"
    );
    assert_eq!(
        (t2["commits"].as_u64(), t2["last_commit"].as_str()),
        (Some(5), Some(lost2.last_commit.as_str())),
        "{t2:#}"
    );
    assert_eq!(t2["files"].as_array().unwrap().len(), 1, "within one segment: {t2:#}");
    assert!(parse_lsn(t2["to"].as_str().unwrap()) <= lost2.end, "{t2:#}");
    // The standby had everything, the switchover lost nothing: no transaction past those forks.
    for t in tails.iter().filter(|t| t["timeline"] != 1 && t["timeline"] != 2) {
        assert_eq!(t["commits"], 0, "{t:#}");
    }
    let text = archive.text("verify");
    assert_eq!(text.code, Some(0), "{text}");
    assert!(text.stdout.contains("\ndiverged tail: timeline 1 continues past "), "{text}");
    assert!(text.stdout.ends_with("archive is whole\n"), "{text}");
    let (code, status) = archive.json("status");
    assert_eq!(code, Some(0));
    assert_eq!(status["diverged_tails"], doc["summary"]["diverged_tails"], "status and verify agree");
    assert!(archive.text("status").stdout.contains("diverged tail:  timeline 2 continues past "));

    // Every history file is the server's; every complete segment the pg_wal file of its writer.
    let mut compared = 0;
    for name in support::names(&archive.dir()) {
        let tli = u32::from_str_radix(&name[..8], 16).unwrap();
        let ours = fs::read(archive.dir().join(&name)).unwrap();
        if name.ends_with(".history") {
            assert_eq!(String::from_utf8(ours).unwrap(), history(tli), "{name}");
        } else if !name.ends_with(".partial") {
            assert!(
                ours == servers[tli as usize - 1].read_wal_segment(&name),
                "{name} differs from the server's"
            );
            compared += 1;
        }
    }
    assert_eq!((2..=5).filter(|t| archive.dir().join(format!("{t:08X}.history")).exists()).count(), 4);

    // Point-in-time recovery through the four forks ends with the last primary's rows.
    let restore = archive.dir.restore_command("");
    backup.start_recovery(&[&restore, "recovery_target_timeline = 'latest'"]);
    backup.wait_promoted();
    let recovered = table_rows(&backup);
    assert_eq!(recovered, expected_rows, "rows after recovery through walkeeper restore");
    assert!(!recovered.contains("lost"), "{recovered}");
    let tl = backup.psql("SELECT timeline_id FROM pg_control_checkpoint()");
    println!(
        "PostgreSQL {major}: streaming from the promoted server {:.2?} s after each promotion; tails: timeline 1 \
         {} bytes / {} commits, timeline 2 {} bytes / {} commits; {compared} complete segments equal the servers'; \
         recovery ends on timeline {tl} with {recovered}; {:.0} s in all",
        took,
        t1["bytes"],
        t1["commits"],
        t2["bytes"],
        t2["commits"],
        started.elapsed().as_secs_f64()
    );
}

/// The slot-creation gap: walkeeper is away while the promoted server recycles the segment the archive must
/// continue from; it stops with one line naming that segment and touches no segment file.
#[test]
fn a_recycled_fork_segment_is_a_clear_error_and_the_archive_is_untouched() {
    let Some(install) = support::require_major(15) else { return };
    let mut p =
        chain_member(&install, &["wal_keep_size = 0", "min_wal_size = '2MB'", "max_wal_size = '4MB'"]);
    p.psql("CREATE TABLE t (id bigint PRIMARY KEY, phase text, pad text)");
    p.psql("SELECT pg_create_physical_replication_slot('arch', true)");
    let s = p.standby();
    let archive = Archive::new();
    let wk = archive.receive(&[&p, &s], &[]);
    assert!(wait_until(WAIT, || streaming_from(&p)), "{}", wk.log_tail(30));
    let mut rows = Rows { next: 1 };
    rows.commit(&p, "shared", 2, 10_000);
    s.wait_for_replay(p.current_lsn());
    cut_off(&s, &p);
    rows.commit(&p, "lost", 3, 10_000);
    wait_received(&p, &wk);
    assert!(wk.terminate().success());
    p.crash();
    s.promote();
    let fork = history_ends(&fs::read_to_string(s.wal_segment_path("00000002.history")).unwrap())[&1];
    let seg = s.segment_size();
    let needed = durability::segment_name(2, fork / seg, seg);
    // Past two checkpoints the fork's segment of timeline 2 is recycled (no slot, no wal_keep_size).
    let gone = wait_until(WAIT, || {
        s.generate_wal(1);
        s.switch_wal();
        s.psql("CHECKPOINT");
        !s.wal_segment_path(&needed).exists()
    });
    assert!(gone, "{needed} stayed in pg_wal");
    let before: Vec<(String, Vec<u8>)> = segment_files(&archive.dir());
    let mut wk = archive.receive(&[&p, &s], &[]);
    let status =
        wk.wait_timeout(WAIT).unwrap_or_else(|| panic!("walkeeper kept running\n{}", wk.log_tail(30)));
    assert_eq!(status.code(), Some(1), "{}", wk.log_tail(30));
    let log = wk.log_text();
    let line = log.lines().last().unwrap();
    assert!(
        line.starts_with(&format!(
            "walkeeper: error: 127.0.0.1:{}: the server no longer has WAL segment {needed}, which the archive needs next",
            s.port()
        )),
        "{log}"
    );
    assert_eq!(segment_files(&archive.dir()), before, "segment files changed");
}

/// The archive's segment files (not history files) and their contents.
fn segment_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    support::names(dir)
        .into_iter()
        .filter(|n| !n.ends_with(".history"))
        .map(|n| {
            let bytes = fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}
