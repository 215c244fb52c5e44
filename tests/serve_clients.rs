//! The walsender against the usual clients, with a real primary archived by walkeeper's receive loop:
//! `psql` in replication mode (IDENTIFY_SYSTEM gives the primary's system identifier; a wrong password, an
//! unknown user and a normal session are refused with PostgreSQL's words), SCRAM verifiers copied from
//! `pg_authid`, TLS (`sslmode=require`, `verify-full`, an untrusted CA refused, a standby streaming over
//! TLS), and `pg_receivewal` catching up from the archive through the walsender, byte for byte.

mod support;

use std::process::{Command, Stdio};
use support::walsender::{Receiver, ReceiverOptions, Walsender};
use support::{pg_tool, try_psql_at, wait_until, Cluster, PasswordEncryption, TestPki, TIMEOUT};

/// A PostgreSQL 15 primary (1 MB segments) archived by walkeeper, with some complete segments.
fn archived_primary() -> (Cluster, tempfile::TempDir, Receiver) {
    let primary = Cluster::builder().segment_size_mb(1).start();
    primary.psql("SELECT pg_create_physical_replication_slot('walkeeper', true)");
    let archive = tempfile::tempdir().unwrap();
    let opts = ReceiverOptions { slot: Some("walkeeper".into()), ..ReceiverOptions::default() };
    let receiver = Receiver::start(&primary, archive.path(), opts);
    let end = primary.generate_wal(3);
    primary.switch_wal();
    assert!(receiver.wait_flushed(end), "walkeeper did not archive up to {end:X}: {:?}", receiver.state());
    (primary, archive, receiver)
}

#[test]
fn psql_identify_system_and_refusals() {
    let (primary, archive, receiver) = archived_primary();
    // A verifier copied from pg_authid is a configured secret like a password.
    primary.create_role("copied", Some("from the primary"), PasswordEncryption::Scram, true);
    let verifier = primary.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'copied'");
    let users = [("standby", "s3cret"), ("copied", verifier.as_str())];
    let ws = Walsender::start(archive.path(), Some(receiver.feed()), &users, None);
    let replication =
        |user: &str, password: &str| format!("{} replication=true", ws.conninfo(user, password));

    let row = try_psql_at(&replication("standby", "s3cret"), None, "IDENTIFY_SYSTEM").unwrap();
    let fields: Vec<&str> = row.split('|').collect();
    let sysid = primary.psql("SELECT system_identifier FROM pg_control_system()");
    assert_eq!((fields[0], fields[1], fields[3]), (sysid.as_str(), "1", ""), "{row}");
    let xlogpos: walkeeper::wal::Lsn = fields[2].parse().unwrap();
    // The end of durable WAL: what the receive loop had flushed (it only moves forward).
    assert!(xlogpos.0 > 0 && Some(xlogpos) <= receiver.state().flushed, "{row}");
    assert_eq!(try_psql_at(&replication("standby", "s3cret"), None, "SHOW wal_segment_size").unwrap(), "1MB");
    let copied = try_psql_at(&replication("copied", "from the primary"), None, "IDENTIFY_SYSTEM").unwrap();
    assert!(copied.starts_with(&sysid), "{copied}");

    // Refusals, worded as PostgreSQL words them.
    let wrong = try_psql_at(&replication("standby", "guess"), None, "IDENTIFY_SYSTEM").unwrap_err();
    assert!(wrong.contains("FATAL:  password authentication failed for user \"standby\""), "{wrong}");
    let unknown = try_psql_at(&replication("nobody", "s3cret"), None, "IDENTIFY_SYSTEM").unwrap_err();
    assert!(unknown.contains("FATAL:  password authentication failed for user \"nobody\""), "{unknown}");
    let sql = try_psql_at(&ws.conninfo("standby", "s3cret"), None, "SELECT 1").unwrap_err();
    assert!(sql.contains("FATAL:  walkeeper accepts only physical replication connections"), "{sql}");
    let history = try_psql_at(&replication("standby", "s3cret"), None, "TIMELINE_HISTORY 2").unwrap_err();
    assert!(history.contains("could not open file \"pg_wal/00000002.history\""), "{history}");
    // No TLS configured: sslmode=require is refused by the client, as with a server without ssl.
    let tls = try_psql_at(
        &format!("{} sslmode=require", replication("standby", "s3cret")),
        None,
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(tls.contains("server does not support SSL"), "{tls}");
}

#[test]
fn tls_require_verify_full_and_a_standby_over_tls() {
    let (mut primary, archive, receiver) = archived_primary();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(pki_dir.path());
    let ws = Walsender::start(
        archive.path(),
        Some(receiver.feed()),
        &[("standby", "s3cret")],
        Some(pki.server_cert_and_key()),
    );
    let port = ws.port();
    let base = format!("port={port} user=standby password=s3cret replication=true");
    let ca = pki.ca_cert();
    for conninfo in [
        format!("host=127.0.0.1 {base} sslmode=require"),
        format!("host=localhost {base} sslmode=verify-full sslrootcert={}", ca.display()),
    ] {
        let row =
            try_psql_at(&conninfo, None, "IDENTIFY_SYSTEM").unwrap_or_else(|e| panic!("{conninfo}: {e}"));
        assert!(row.contains("|1|"), "{row}");
    }
    let untrusted =
        format!("host=localhost {base} sslmode=verify-full sslrootcert={}", pki.other_ca_cert().display());
    let err = try_psql_at(&untrusted, None, "IDENTIFY_SYSTEM").unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");

    // A standby whose primary_conninfo asks for verify-full streams through TLS.
    let mut standby = primary.standby_copy();
    let conninfo = format!(
        "host=localhost port={port} user=standby password=s3cret sslmode=verify-full sslrootcert={} application_name=tls",
        ca.display()
    );
    standby.start_standby(&[&format!("primary_conninfo = '{conninfo}'")]);
    primary.psql("CREATE TABLE t AS SELECT 42 AS answer");
    assert!(
        wait_until(TIMEOUT, || standby.try_psql("SELECT answer FROM t").as_deref() == Ok("42")),
        "standby over TLS did not replay: {}",
        standby.server_log()
    );
    let used = standby.psql("SELECT conninfo FROM pg_stat_wal_receiver WHERE status = 'streaming'");
    assert!(used.contains("sslmode=verify-full"), "{used}");
}

#[test]
fn pg_receivewal_catches_up_through_walkeeper() {
    let (primary, archive, receiver) = archived_primary();
    let ws = Walsender::start(archive.path(), Some(receiver.feed()), &[("standby", "s3cret")], None);
    // Start pg_receivewal after the oldest complete segment: it streams the rest from the walsender.
    let mut complete: Vec<String> =
        support::names(archive.path()).into_iter().filter(|n| n.len() == 24).collect();
    complete.sort();
    assert!(complete.len() >= 3, "{complete:?}");
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(archive.path().join(&complete[0]), out.path().join(&complete[0])).unwrap();
    let last = complete.last().unwrap();
    let end =
        walkeeper::wal::segment::SegmentId::parse_name(last, 1 << 20).unwrap().end_lsn(1 << 20).unwrap();
    // Past the end: WAL written now, so that pg_receivewal sees a message beyond it and stops.
    primary.generate_wal(1);
    let status = Command::new(pg_tool("pg_receivewal"))
        .env("PGPASSWORD", "s3cret")
        .args(["-D", out.path().to_str().unwrap(), "-h", "127.0.0.1", "-p", &ws.port().to_string()])
        .args(["-U", "standby", "-n", "--no-sync", "-E", &end.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    for name in &complete[1..] {
        let theirs = std::fs::read(out.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(theirs == std::fs::read(archive.path().join(name)).unwrap(), "{name} differs");
    }
}
