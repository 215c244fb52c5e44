//! Tests of the integration-test harness itself (tests/support): real servers, auth, TLS, standbys, WAL.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use support::{format_lsn, pg_tool, try_psql_at, wait_until, Cluster, PasswordEncryption, PgInstall};

fn panic_text(err: Box<dyn std::any::Any + Send>) -> String {
    match err.downcast::<String>() {
        Ok(s) => *s,
        Err(err) => err.downcast::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn cluster_starts_and_answers_queries() {
    let c = Cluster::start();
    assert_eq!(c.major(), PgInstall::default().major);
    assert_eq!(c.psql("SELECT 1 + 1"), "2");
    assert_eq!(c.psql("SHOW wal_level"), "replica");
    assert_eq!(c.psql("SHOW listen_addresses"), "127.0.0.1");
    assert_eq!(c.psql("SHOW port"), c.port().to_string());
    let version_num: u32 = c.psql("SHOW server_version_num").parse().unwrap();
    assert_eq!(version_num / 10000, c.major());
    assert_eq!(c.segment_size(), 16 * 1024 * 1024);
    assert!(c.current_lsn() > 0);
    let err = c.try_psql("SELECT * FROM no_such_table").unwrap_err();
    assert!(err.contains("no_such_table"), "{err}");
    // TCP with the conninfo helper.
    assert_eq!(try_psql_at(&c.conninfo("postgres"), None, "SELECT current_user").unwrap(), "postgres");
    assert!(c.server_log().contains("database system is ready to accept connections"));
}

#[test]
fn unix_socket_connects() {
    let c = Cluster::start();
    let conninfo =
        format!("host={} port={} user=postgres dbname=postgres", c.socket_dir().display(), c.port());
    let via = try_psql_at(&conninfo, None, "SELECT coalesce(inet_server_addr()::text, 'socket')").unwrap();
    assert_eq!(via, "socket");
    assert!(c.socket_dir().join(format!(".s.PGSQL.{}", c.port())).exists());
}

#[test]
fn password_roles_md5_and_scram() {
    let c = Cluster::start();
    c.create_role("alice_md5", Some("secret-md5"), PasswordEncryption::Md5, false);
    c.create_role("bob_scram", Some("secret'scram"), PasswordEncryption::Scram, true);
    let stored = c.psql("SELECT rolname || ' ' || substring(rolpassword from '^(md5|SCRAM-SHA-256)') FROM pg_authid WHERE rolname IN ('alice_md5', 'bob_scram') ORDER BY 1");
    assert_eq!(stored, "alice_md5 md5\nbob_scram SCRAM-SHA-256");
    assert_eq!(c.psql("SELECT rolreplication FROM pg_roles WHERE rolname = 'bob_scram'"), "t");
    c.set_hba(&[
        "host all alice_md5 127.0.0.1/32 md5",
        "host all bob_scram 127.0.0.1/32 scram-sha-256",
        "host replication bob_scram 127.0.0.1/32 scram-sha-256",
    ]);
    for (user, good) in [("alice_md5", "secret-md5"), ("bob_scram", "secret'scram")] {
        let ok = try_psql_at(&c.conninfo(user), Some(good), "SELECT current_user").unwrap();
        assert_eq!(ok, user);
        let err = try_psql_at(&c.conninfo(user), Some("wrong"), "SELECT 1").unwrap_err();
        assert!(err.contains("password authentication failed"), "{user}: {err}");
        let err = try_psql_at(&c.conninfo(user), None, "SELECT 1").unwrap_err();
        assert!(err.contains("password"), "{user} without password: {err}");
    }
    // The harness's own superuser access over the socket survives any pg_hba.conf.
    assert_eq!(c.psql("SELECT current_user"), "postgres");
    // A user pg_hba.conf does not mention is rejected over TCP.
    let err = try_psql_at(&c.conninfo("postgres"), None, "SELECT 1").unwrap_err();
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
}

#[test]
fn tls_verify_full_and_client_certificates() {
    let mut c = Cluster::start();
    let pki = c.enable_tls();
    let port = c.port();
    let ca = pki.ca_cert();
    for host in ["host=localhost hostaddr=127.0.0.1", "host=127.0.0.1"] {
        let conninfo = format!(
            "{host} port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        );
        let ssl = try_psql_at(&conninfo, None, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
        assert_eq!(ssl.unwrap(), "t", "{host}");
    }
    let other = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
        pki.other_ca_cert().display()
    );
    let err = try_psql_at(&other, None, "SELECT 1").unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");

    // Client certificate authentication.
    c.create_role("carol", None, PasswordEncryption::Scram, true);
    c.set_hba(&["hostssl all carol 127.0.0.1/32 cert", "hostssl replication carol 127.0.0.1/32 cert"]);
    let (cert, key) = pki.client_cert("carol");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let base =
        format!("host=localhost hostaddr=127.0.0.1 port={port} user=carol dbname=postgres sslmode=verify-full sslrootcert={}", ca.display());
    let with_cert = format!("{base} sslcert={} sslkey={}", cert.display(), key.display());
    assert_eq!(try_psql_at(&with_cert, None, "SELECT current_user").unwrap(), "carol");
    let err = try_psql_at(&base, None, "SELECT 1").unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn standby_replays_and_promotes() {
    let mut primary = Cluster::start();
    primary.psql("CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
    let standby = primary.standby();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    primary.psql("INSERT INTO t VALUES (2)");
    let lsn = primary.current_lsn();
    standby.wait_for_replay(lsn);
    assert_eq!(standby.psql("SELECT sum(v) FROM t"), "3");
    standby.promote();
    standby.psql("INSERT INTO t VALUES (3)");
    assert_eq!(standby.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), "00000002");
    assert_eq!(standby.psql("SELECT sum(v) FROM t"), "6");
}

#[test]
fn generate_wal_and_read_segments() {
    let c = Cluster::builder().segment_size_mb(1).start();
    assert_eq!(c.segment_size(), 1024 * 1024);
    let before = c.current_lsn();
    let after = c.generate_wal(5);
    assert!(after - before >= 5 * 1024 * 1024, "{} -> {}", format_lsn(before), format_lsn(after));
    assert!(c.current_lsn() >= after);
    let name = c.switch_wal();
    assert_eq!(name.len(), 24, "{name}");
    let bytes = c.read_wal_segment(&name);
    assert_eq!(bytes.len() as u64, c.segment_size());
    // pg_waldump (Debian's 15) can read 15's segments: they are real WAL.
    if c.major() == 15 {
        let out = std::process::Command::new(pg_tool("pg_waldump"))
            .arg("--stats")
            .arg(c.wal_segment_path(&name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // A second switch right away still completes a segment (the harness writes a record first).
    let next = c.switch_wal();
    assert!(next > name, "{next} after {name}");
}

#[test]
fn lifecycle_restart_reload_and_group_access() {
    let mut c = Cluster::builder().group_access(true).fsync(true).conf("work_mem = '7MB'").start();
    assert_eq!(std::fs::metadata(c.data_dir()).unwrap().permissions().mode() & 0o777, 0o750);
    assert_eq!(c.psql("SHOW fsync"), "on");
    assert_eq!(c.psql("SHOW work_mem"), "7MB");
    let port = c.port();
    c.psql("ALTER SYSTEM SET work_mem = '9MB'");
    c.reload();
    assert_eq!(c.psql("SHOW work_mem"), "9MB");
    c.restart();
    assert_eq!(c.port(), port);
    assert_eq!(c.psql("SELECT 1"), "1");
    c.stop();
    assert!(c.try_psql("SELECT 1").is_err());
    c.start_again();
    assert_eq!(c.psql("SELECT 1"), "1");
}

#[test]
fn drop_stops_server_and_removes_dir_even_on_panic() {
    let mut seen = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let c = Cluster::start();
        let pid: i32 = c.psql("SELECT pg_backend_pid()").parse().unwrap();
        let pidfile = std::fs::read_to_string(c.data_dir().join("postmaster.pid")).unwrap();
        let postmaster: i32 = pidfile.lines().next().unwrap().parse().unwrap();
        assert!(pid > 0);
        seen = Some((c.data_dir(), postmaster));
        panic!("deliberate test panic");
    }));
    assert!(result.is_err());
    let (dir, postmaster) = seen.unwrap();
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(postmaster)), "postmaster {postmaster} alive");
}

#[test]
fn startup_failure_reports_server_log() {
    let err = catch_unwind(|| Cluster::builder().conf("shared_buffers = 'lots'").start()).unwrap_err();
    let text = panic_text(err);
    assert!(text.contains("server log tail"), "{text}");
    assert!(text.contains("shared_buffers"), "{text}");
}

#[test]
fn every_available_major_starts_and_streams() {
    let installs = support::require_majors(13..=18);
    // One thread per major; a failure re-raises the original panic (with its server log).
    let handles: Vec<_> = installs
        .into_iter()
        .map(|install| {
            std::thread::spawn(move || {
                let mut primary = Cluster::builder().install(&install).start();
                assert_eq!(primary.major(), install.major);
                let num: u32 = primary.psql("SHOW server_version_num").parse().unwrap();
                assert_eq!(num / 10000, install.major);
                let standby = primary.standby();
                primary.psql("CREATE TABLE t AS SELECT 42 AS v");
                standby.wait_for_replay(primary.current_lsn());
                assert_eq!(standby.psql("SELECT v FROM t"), "42", "major {}", install.major);
            })
        })
        .collect();
    for handle in handles {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn major_17_starts_when_fetched() {
    let Some(install) = support::require_major(17) else { return };
    let c = Cluster::builder().install(&install).segment_size_mb(2).start();
    assert_eq!(c.major(), 17);
    assert!(c.psql("SELECT version()").starts_with("PostgreSQL 17."));
    assert_eq!(c.segment_size(), 2 * 1024 * 1024);
}
