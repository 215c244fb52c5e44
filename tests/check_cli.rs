//! `walkeeper check` against real servers: the facts it prints, and exit 1 with a one-line reason when
//! streaming cannot start.

mod support;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use support::{format_lsn, parse_lsn, walkeeper, Cluster, PasswordEncryption, Run};

/// Runs `walkeeper check ARGS` with a clean libpq environment plus `env`.
fn check(args: &[&str], env: &[(&str, &str)]) -> Run {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = walkeeper();
    cmd.env("HOME", home.path()).env("PGCONNECT_TIMEOUT", "30");
    cmd.envs(env.iter().copied());
    Run::of(cmd.arg("check").args(args))
}

fn sysid(c: &Cluster) -> String {
    c.psql("SELECT system_identifier FROM pg_control_system()")
}

#[test]
fn check_reports_facts_and_refuses_what_cannot_stream() {
    let c = Cluster::builder().segment_size_mb(32).conf("wal_level = logical").start();
    let port = c.port();
    let tcp = format!("host=127.0.0.1 port={port} user=postgres");
    c.psql("SELECT pg_create_physical_replication_slot('wk_slot', true)");
    c.psql("SELECT pg_create_logical_replication_slot('wk_logical', 'test_decoding')");

    // Success: one line per fact, each checked against the server.
    let before = c.current_lsn();
    let r = check(&["-d", &tcp, "-S", "wk_slot"], &[]);
    let after = c.current_lsn();
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stderr, "");
    assert_eq!(r.fact("server"), format!("127.0.0.1:{port}"));
    assert_eq!(r.fact("server version"), c.psql("SHOW server_version"));
    assert_eq!(r.fact("tls"), "no");
    assert_eq!(r.fact("replication role"), "yes");
    assert_eq!(r.fact("system identifier"), sysid(&c));
    assert_eq!(r.fact("timeline"), "1");
    let lsn = parse_lsn(&r.fact("current LSN"));
    assert!(before <= lsn && lsn <= after, "{lsn:X} not within {before:X}..{after:X}");
    assert_eq!(r.fact("segment size"), "32 MB");
    let restart =
        parse_lsn(&c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'wk_slot'"));
    let slot = r.fact("slot");
    let shown = slot
        .strip_prefix("\"wk_slot\" exists, restart LSN ")
        .unwrap_or_else(|| panic!("slot line: {slot:?}"));
    assert_eq!(parse_lsn(shown), restart);
    assert_eq!(r.fact("ready to stream"), "yes");
    assert_eq!(r.stdout.lines().count(), 10, "{}", r.stdout);

    // -h/-p/-U instead of a connection string, over the Unix socket; no slot asked for.
    let sock = c.socket_dir().display().to_string();
    let r = check(&["-h", &sock, "-p", &port.to_string(), "-U", "postgres"], &[]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.fact("server"), format!("{sock}/.s.PGSQL.{port}"));
    assert!(!r.facts().contains_key("slot"), "{}", r.stdout);
    // The environment works too (PGHOST/PGPORT/PGUSER).
    let r = check(&[], &[("PGHOST", "127.0.0.1"), ("PGPORT", &port.to_string()), ("PGUSER", "postgres")]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.fact("system identifier"), sysid(&c));

    // A missing slot: the facts so far, then exit 1 with the reason.
    let r = check(&["-d", &tcp, "-S", "nosuch"], &[]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.fact("slot"), "\"nosuch\" does not exist");
    assert!(!r.stdout.contains("ready to stream"), "{}", r.stdout);
    assert_eq!(
        r.error_line(),
        "walkeeper: error: replication slot \"nosuch\" does not exist; create it with `walkeeper receive --slot nosuch --create-slot`"
    );
    // A logical slot cannot be streamed physically.
    let r = check(&["-d", &tcp, "-S", "wk_logical"], &[]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.error_line(), "walkeeper: error: replication slot \"wk_logical\" is not a physical slot");
    assert_eq!(r.fact("slot"), "\"wk_logical\" exists but is a logical slot");
    // An invalid slot name is refused before connecting.
    let r = check(&["-d", "host=127.0.0.1 port=1", "-S", "Bad-Name"], &[]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.error_line().starts_with("walkeeper: error: invalid replication slot name \"Bad-Name\""),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "");

    // A role without REPLICATION: the server's message.
    c.create_role("norepl", None, PasswordEncryption::Scram, false);
    let r = check(&["-d", &format!("host=127.0.0.1 port={port} user=norepl")], &[]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.error_line(),
        format!(
            "walkeeper: error: connection to server at \"127.0.0.1\", port {port} failed: FATAL:  must be superuser or replication role to start walsender"
        )
    );

    // A refused connection: host, port, cause and libpq's hint on one line.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = check(&["-h", "127.0.0.1", "-p", &dead.to_string(), "-U", "postgres"], &[]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "walkeeper: error: connection to server at \"127.0.0.1\", port {dead} failed: Connection refused (is the server running on that host and accepting TCP/IP connections?)"
        )
    );

    // Passwords: -w without one, PGPASSWORD, a 0600 password file, and a 0644 one (ignored, with a warning).
    c.create_role("pw_user", Some("pw'1"), PasswordEncryption::Scram, true);
    c.set_hba(&[
        "host replication pw_user 127.0.0.1/32 scram-sha-256",
        "host replication all 127.0.0.1/32 trust",
    ]);
    let pw_conn = format!("host=127.0.0.1 port={port} user=pw_user");
    let r = check(&["-d", &pw_conn, "-w"], &[]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.error_line(),
        format!("walkeeper: error: connection to server at \"127.0.0.1\", port {port} failed: fe_sendauth: no password supplied")
    );
    let r = check(&["-d", &pw_conn, "-w"], &[("PGPASSWORD", "pw'1")]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let r = check(&["-d", &pw_conn, "-w"], &[("PGPASSWORD", "wrong")]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.error_line(),
        format!(
            "walkeeper: error: connection to server at \"127.0.0.1\", port {port} failed: FATAL:  password authentication failed for user \"pw_user\""
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let pgpass = dir.path().join("pgpass");
    std::fs::write(&pgpass, format!("127.0.0.1:{port}:replication:pw_user:pw'1\n")).unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pgpass_env = [("PGPASSFILE", pgpass.to_str().unwrap())];
    let r = check(&["-d", &pw_conn, "-w"], &pgpass_env);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stderr, "");
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = check(&["-d", &pw_conn, "-w"], &pgpass_env);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "walkeeper: warning: password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                pgpass.display()
            )
            .as_str(),
            format!(
                "walkeeper: error: connection to server at \"127.0.0.1\", port {port} failed: fe_sendauth: no password supplied"
            )
            .as_str(),
        ]
    );
}

/// Before 15 there is no READ_REPLICATION_SLOT: check reads pg_replication_slots over a normal session.
#[test]
fn check_on_older_and_newer_majors() {
    for major in [13, 18] {
        let Some(install) = support::require_major(major) else { continue };
        let c = Cluster::builder().install(&install).start();
        c.psql("SELECT pg_create_physical_replication_slot('wk_slot', true)");
        let r =
            check(&["-d", &format!("host=127.0.0.1 port={} user=postgres", c.port()), "-S", "wk_slot"], &[]);
        assert_eq!(r.code, Some(0), "PG{major}: {}{}", r.stdout, r.stderr);
        assert!(r.fact("server version").starts_with(&format!("{major}.")), "{}", r.stdout);
        assert_eq!(r.fact("system identifier"), sysid(&c));
        assert_eq!(r.fact("segment size"), "16 MB");
        let restart = c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'wk_slot'");
        let restart = format_lsn(parse_lsn(&restart));
        assert_eq!(r.fact("slot"), format!("\"wk_slot\" exists, restart LSN {restart}"), "{}", r.stdout);
        let r =
            check(&["-d", &format!("host=127.0.0.1 port={} user=postgres", c.port()), "-S", "nosuch"], &[]);
        assert_eq!(r.code, Some(1), "PG{major}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.fact("slot"), "\"nosuch\" does not exist");
        // PostgreSQL 16 changed the message for a role without REPLICATION.
        c.create_role("norepl", None, PasswordEncryption::Scram, false);
        let r = check(&["-d", &format!("host=127.0.0.1 port={} user=norepl", c.port())], &[]);
        assert_eq!(r.code, Some(1));
        let why = if major >= 16 {
            "FATAL:  permission denied to start WAL sender DETAIL:  Only roles with the REPLICATION attribute may start a WAL sender process."
        } else {
            "FATAL:  must be superuser or replication role to start walsender"
        };
        assert!(r.error_line().ends_with(why), "{}", r.stderr);
    }
}
