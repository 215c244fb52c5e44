//! Seconds from a promotion to streaming: `walkeeper receive --failover` follows a primary and its streaming
//! standby (PostgreSQL 15, 1 MB segments) while a few commits go on; the primary dies (`-m immediate`), the
//! standby is promoted, and the clock runs from `pg_ctl promote` until the promoted server shows walkeeper
//! streaming in `pg_stat_replication` (polled every 10 ms), and again from the moment it accepts writes.
//! A fresh pair per round; reports every round and the median. Asserts nothing (speed is reported, never a
//! test failure).
//!
//! `cargo bench --bench failover` — knobs (environment):
//!   FAILOVER_ROUNDS   rounds (default 5)
//!   FAILOVER_OUT      also write the markdown table to this file

#[path = "../tests/support/mod.rs"]
mod support;

mod common;
use common::{benchmarking, median, publish_report, walkeeper_bin};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{run_as_server_user, wait_until, Cluster};

fn streaming_from(c: &Cluster) -> bool {
    c.try_psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walkeeper' AND state = 'streaming'")
        .is_ok_and(|n| n == "1")
}

struct Round {
    /// From `pg_ctl promote` to streaming.
    from_promote: f64,
    /// From the promoted server accepting writes to streaming.
    from_writable: f64,
}

fn round(bin: &Path) -> Round {
    let mut primary = Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '256MB'").start();
    primary.psql("CREATE TABLE t (id int, pad text)");
    primary.psql("SELECT pg_create_physical_replication_slot('arch', true)");
    let standby = primary.standby();
    let dir = tempfile::Builder::new().prefix("walkeeper-bench-failover-").tempdir_in("/tmp").unwrap();
    support::chown_to_server(dir.path());
    let conninfo = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres connect_timeout=5",
        primary.port(),
        standby.port()
    );
    let mut cmd = Command::new(bin);
    cmd.arg("receive").arg("-D").arg(dir.path()).args(["--failover", "-S", "arch", "-w", "-d", &conninfo]);
    let log = dir.path().join("receive.log");
    let out = std::fs::File::create(&log).expect("receive.log");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .current_dir(dir.path())
        .env("HOME", dir.path());
    run_as_server_user(&mut cmd);
    let mut child: Child = cmd.spawn().expect("start walkeeper");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(60), || streaming_from(&primary)),
        "walkeeper did not start:\n{}",
        log_text()
    );
    for i in 0..20 {
        primary.psql(&format!(
            "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, {}) g",
            100 + i
        ));
    }
    standby.wait_for_replay(primary.current_lsn());
    primary.crash();
    let promoted_at = Instant::now();
    standby.promote();
    let writable_at = Instant::now();
    let mut streaming_at = None;
    wait_until(Duration::from_secs(60), || {
        let yes = streaming_from(&standby);
        if yes {
            streaming_at = Some(Instant::now());
        }
        yes
    });
    let _ = child.kill();
    let _ = child.wait();
    let at = streaming_at.unwrap_or_else(|| {
        panic!("walkeeper did not stream from the promoted standby within 60 s:\n{}", log_text())
    });
    Round {
        from_promote: at.duration_since(promoted_at).as_secs_f64(),
        from_writable: at.saturating_duration_since(writable_at).as_secs_f64(),
    }
}

fn main() {
    if !benchmarking("failover") {
        return;
    }
    let rounds: usize = std::env::var("FAILOVER_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let bin = walkeeper_bin();
    let mut results = Vec::new();
    for i in 1..=rounds {
        let r = round(&bin);
        println!(
            "round {i}: streaming {:.2} s after pg_ctl promote ({:.2} s after the server took writes)",
            r.from_promote, r.from_writable
        );
        results.push(r);
    }
    let promote: Vec<f64> = results.iter().map(|r| r.from_promote).collect();
    let writable: Vec<f64> = results.iter().map(|r| r.from_writable).collect();
    let list = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
    let report = format!(
        "| measured from | median | rounds (s) |\n|---|---|---|\n| `pg_ctl promote` | {:.2} s | {} |\n| the server accepting writes | {:.2} s | {} |\n",
        median(promote.clone()),
        list(&promote),
        median(writable.clone()),
        list(&writable)
    );
    publish_report(&report, "FAILOVER_OUT");
}
