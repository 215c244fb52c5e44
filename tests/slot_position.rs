//! Starting from a slot with an empty directory on PostgreSQL 13 and 14, which have no READ_REPLICATION_SLOT:
//! walkeeper reads the slot's restart_lsn over a normal session and starts there (pg_receivewal starts at the
//! server's current position and never archives what the slot kept); when pg_hba refuses that session, it
//! warns and starts where pg_receivewal would.

mod support;

use std::time::Duration;
use support::{format_lsn, parse_lsn, wait_until, walkeeper, Cluster};

/// `walkeeper receive -n -E end` into a fresh directory; returns (exit code, stderr).
fn receive(c: &Cluster, slot: &str, end: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = walkeeper()
        .args(["receive", "-v", "-n", "-S", slot, "-E", end, "-D"])
        .arg(dir.path())
        .args(["-h", c.host(), "-p", &c.port().to_string(), "-U", "postgres"])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn slot_position_is_used_on_13_and_14() {
    for install in support::require_majors([13, 14]) {
        let c =
            Cluster::builder().install(&install).segment_size_mb(1).conf("wal_keep_size = '256MB'").start();
        c.psql("SELECT pg_create_physical_replication_slot('kept', true)");
        let restart =
            parse_lsn(&c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'kept'"));
        let seg = c.segment_size();
        c.generate_wal(3);
        c.switch_wal();
        let end = format_lsn(c.current_lsn());
        c.switch_wal();
        let expected =
            format!("starting log streaming at {} (timeline 1)", format_lsn(restart - restart % seg));
        let (code, stderr) = receive(&c, "kept", &end);
        assert_eq!(code, Some(0), "PostgreSQL {}: {stderr}", install.major);
        assert!(
            stderr.contains(&expected),
            "PostgreSQL {}: expected {expected:?} in\n{stderr}",
            install.major
        );

        // Without a way in for a normal session: a warning, and the server's current position.
        c.set_hba(&["host replication all 127.0.0.1/32 trust"]);
        let current = c.current_lsn();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut child = walkeeper()
            .args(["receive", "-v", "-n", "-S", "kept", "-D"])
            .arg(dir.path())
            .args(["-h", c.host(), "-p", &c.port().to_string(), "-U", "postgres"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        let started = wait_until(Duration::from_secs(30), || text().contains("starting log streaming at"));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(child.wait().unwrap().code(), Some(0), "PostgreSQL {}: {}", install.major, text());
        let stderr = text();
        assert!(started, "PostgreSQL {}: never started\n{stderr}", install.major);
        assert!(
            stderr.contains("could not read the position of replication slot \"kept\""),
            "PostgreSQL {}: no warning in\n{stderr}",
            install.major
        );
        let fallback =
            format!("starting log streaming at {} (timeline 1)", format_lsn(current - current % seg));
        assert!(
            stderr.contains(&fallback),
            "PostgreSQL {}: expected {fallback:?} in\n{stderr}",
            install.major
        );
    }
}
