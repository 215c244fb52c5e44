//! walkeeper as a synchronous standby (`--synchronous -S slot`, application_name `walkeeper`): commits on
//! the primary return once walkeeper has the WAL durable, and do not return while no standby acknowledges
//! (walkeeper stopped with SIGSTOP, or killed); they complete when it comes back. `remote_apply` commits
//! return only with `--report-apply`.

mod durability;
mod support;

use durability::{elapsed, replication_row, Walkeeper};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{format_lsn, parse_lsn, pg_tool, wait_until, Cluster};

const WAIT: Duration = Duration::from_secs(30);

fn sync_primary() -> Cluster {
    let c = Cluster::builder().conf("synchronous_standby_names = 'walkeeper'").start();
    c.psql("SELECT pg_create_physical_replication_slot('sync', true)");
    c
}

/// psql as `application_name = app`, running each of `commands` with `-c`; stdout and stderr piped.
fn spawn_psql(cluster: &Cluster, app: &str, commands: &[&str]) -> Child {
    let mut cmd = Command::new(pg_tool("psql"));
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
    let conninfo = format!("{} application_name={app}", cluster.conninfo("postgres"));
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &conninfo]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run psql")
}

/// Waits for `child` to exit; (success, stderr).
fn finish(mut child: Child, timeout: Duration, what: &str) -> (bool, String) {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        panic!("{what}: still running after {timeout:?}");
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.success(), err)
}

/// The wait event of the backend of `app` (empty when it is not waiting).
fn wait_event(cluster: &Cluster, app: &str) -> Option<String> {
    cluster
        .try_psql(&format!(
            "SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .ok()
        .filter(|s| !s.is_empty())
}

/// Asserts that the commit run by `child` (application `app`) is waiting for synchronous replication and
/// has not returned.
fn assert_commit_waits(cluster: &Cluster, child: &mut Child, app: &str) {
    let seen = wait_until(WAIT, || wait_event(cluster, app).as_deref() == Some("SyncRep"));
    assert!(
        seen,
        "the commit of {app} never waited for synchronous replication (wait event {:?}, exited {:?})",
        wait_event(cluster, app),
        child.try_wait()
    );
    // Still waiting a moment later, and the client has no answer.
    let returned = wait_until(Duration::from_millis(1500), || child.try_wait().unwrap().is_some());
    assert!(!returned, "the commit of {app} returned although no standby acknowledged it");
    assert_eq!(wait_event(cluster, app).as_deref(), Some("SyncRep"));
}

fn wait_sync(cluster: &Cluster, wk: &Walkeeper) {
    let ok =
        wait_until(WAIT, || replication_row(cluster).is_some_and(|r| r[0] == "streaming" && r[4] == "sync"));
    assert!(
        ok,
        "walkeeper did not become the synchronous standby: {:?}\n{}",
        replication_row(cluster),
        wk.log_tail(30)
    );
}

#[test]
fn commits_complete_with_walkeeper_and_wait_without_it() {
    let started = Instant::now();
    let cluster = sync_primary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = durability::archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");
    let args = ["-S", "sync", "--synchronous"];
    let wk = Walkeeper::start(&cluster, &dir, &args, &log);
    wait_sync(&cluster, &wk);

    // pgbench: every commit waits for walkeeper's flush; none fails, none hangs.
    let bench = |extra: &[&str]| {
        let mut cmd = Command::new(pg_tool("pgbench"));
        cmd.env_remove("PGHOST").env_remove("PGPORT").env_remove("PGUSER").env_remove("PGDATABASE");
        cmd.args(["-h", cluster.host(), "-p", &cluster.port().to_string(), "-U", "postgres"]);
        cmd.args(extra).arg("postgres");
        let out = cmd.output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "pgbench {extra:?} failed: {text}\n{}", wk.log_tail(30));
        text
    };
    bench(&["-i", "-s", "1", "-q"]);
    let out = bench(&["-n", "-c", "4", "-j", "2", "-T", "5"]);
    let tps: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output: {out}"));
    let processed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench output: {out}"));
    assert!(tps > 0.0 && processed > 0, "pgbench made no progress: {out}");
    if let Some(failed) = out.lines().find_map(|l| l.strip_prefix("number of failed transactions: ")) {
        assert!(failed.starts_with("0 "), "pgbench transactions failed: {failed}");
    }
    // Every one of those commits was acknowledged: the flush position walkeeper reports covers them.
    let end = cluster.current_lsn();
    let acked = wait_until(WAIT, || {
        replication_row(&cluster).is_some_and(|r| !r[2].is_empty() && parse_lsn(&r[2]) >= end)
    });
    assert!(
        acked,
        "walkeeper's flush position did not reach {}: {:?}",
        format_lsn(end),
        replication_row(&cluster)
    );
    cluster.psql("CREATE TABLE probe (id int)");

    // SIGSTOP: a commit waits; SIGCONT: it completes.
    wk.signal(libc::SIGSTOP);
    let mut p1 = spawn_psql(&cluster, "probe_stopped", &["INSERT INTO probe VALUES (1)"]);
    assert_commit_waits(&cluster, &mut p1, "probe_stopped");
    // Cancelling a waiting commit (statement_timeout cannot: PostgreSQL disables it before the commit
    // itself) makes PostgreSQL say that the commit is not known to be replicated.
    let mut p_cancel = spawn_psql(&cluster, "probe_cancel", &["INSERT INTO probe VALUES (2)"]);
    assert_commit_waits(&cluster, &mut p_cancel, "probe_cancel");
    cluster
        .psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'probe_cancel'");
    let (_, err) = finish(p_cancel, WAIT, "cancelled commit");
    assert!(
        err.contains("canceling wait for synchronous replication"),
        "a cancelled commit while the standby is stopped did not report a cancelled synchronous \
         replication wait: {err:?}"
    );
    wk.signal(libc::SIGCONT);
    let (ok, err) = finish(p1, WAIT, "the waiting commit after SIGCONT");
    assert!(ok && !err.contains("WARNING"), "the waiting commit did not complete cleanly: {err}");

    // kill -9: a commit waits; walkeeper restarted: it completes.
    wk.kill9();
    let mut p2 = spawn_psql(
        &cluster,
        "probe_killed",
        &["SET synchronous_commit = on", "INSERT INTO probe VALUES (3)"],
    );
    assert_commit_waits(&cluster, &mut p2, "probe_killed");
    let restarted = Instant::now();
    let wk = Walkeeper::start(&cluster, &dir, &args, &log);
    let (ok, err) = finish(p2, WAIT, "the waiting commit after walkeeper restarted");
    assert!(
        ok && !err.contains("WARNING"),
        "the waiting commit did not complete cleanly: {err}\n{}",
        wk.log_tail(30)
    );
    let resumed = restarted.elapsed();
    assert_eq!(cluster.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM probe"), "1,2,3");
    drop(wk);
    println!(
        "synchronous standby: pgbench {processed} transactions ({tps:.0} tps, 4 clients) acknowledged; commits \
         waited while walkeeper was stopped/killed and completed {:.1}s after its restart; {}",
        resumed.as_secs_f64(),
        elapsed(started)
    );
}

#[test]
fn remote_apply_needs_report_apply() {
    let started = Instant::now();
    let cluster = sync_primary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = durability::archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");

    // With --report-apply, remote_apply commits return.
    let wk = Walkeeper::start(&cluster, &dir, &["-S", "sync", "--synchronous", "--report-apply"], &log);
    wait_sync(&cluster, &wk);
    cluster.psql("CREATE TABLE probe (id int)"); // a commit: it needs the synchronous standby already
    let p = spawn_psql(
        &cluster,
        "apply_on",
        &["SET synchronous_commit = remote_apply", "INSERT INTO probe VALUES (1)"],
    );
    let (ok, err) = finish(p, WAIT, "remote_apply commit with --report-apply");
    assert!(
        ok && !err.contains("WARNING"),
        "remote_apply commit with --report-apply: {err}\n{}",
        wk.log_tail(30)
    );
    let row = replication_row(&cluster).unwrap();
    assert!(!row[3].is_empty(), "no replay position reported with --report-apply: {row:?}");
    assert!(wk.terminate().success());

    // Without it, as pg_receivewal, a remote_apply commit waits (bounded here), while `on` commits return.
    let wk = Walkeeper::start(&cluster, &dir, &["-S", "sync", "--synchronous"], &log);
    wait_sync(&cluster, &wk);
    let mut p = spawn_psql(
        &cluster,
        "apply_off",
        &["SET synchronous_commit = remote_apply", "INSERT INTO probe VALUES (2)"],
    );
    assert_commit_waits(&cluster, &mut p, "apply_off");
    let p_on =
        spawn_psql(&cluster, "flush_on", &["SET synchronous_commit = on", "INSERT INTO probe VALUES (3)"]);
    let (ok, err) = finish(p_on, WAIT, "synchronous_commit = on commit");
    assert!(ok && !err.contains("WARNING"), "an `on` commit did not complete while walkeeper runs: {err}");
    cluster.psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'apply_off'");
    let (_, err) = finish(p, WAIT, "cancelled remote_apply commit");
    assert!(
        err.contains("canceling wait for synchronous replication"),
        "the remote_apply commit without --report-apply was not waiting for replication: {err:?}"
    );
    drop(wk);
    println!(
        "remote_apply: returns with --report-apply, waits without it (while `on` commits return); {}",
        elapsed(started)
    );
}
