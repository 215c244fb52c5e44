//! `walkeeper service` with `[source.serve]`, against real servers: a DR standby streams from the service's
//! walsender and shows in `/status` and `/metrics`; it keeps streaming while the primary is down; the
//! service stops cleanly with it connected; retention never removes WAL a connected standby still needs;
//! SIGHUP adds, moves and removes a walsender (and starts again one whose address was taken); a bad
//! `[source.serve]` is refused in one line naming file, source and key.

mod service_support;
mod support;

use service_support::{create_slot, free_addr, source_toml, Service};
use std::time::Duration;
use support::{names, try_psql_at, wait_until, walkeeper, Cluster, Run, TIMEOUT};

fn serve_toml(listen: std::net::SocketAddr) -> String {
    format!("[source.serve]\nlisten = \"{listen}\"\nusers = {{ standby = \"s3cret\" }}\n")
}

fn primary_conninfo(listen: std::net::SocketAddr, application_name: &str) -> String {
    format!(
        "primary_conninfo = 'host=127.0.0.1 port={} user=standby password=s3cret application_name={application_name}'",
        listen.port()
    )
}

fn rows(c: &Cluster) -> Result<String, String> {
    c.try_psql("SELECT count(*) FROM t")
}

fn wait_rows(standby: &Cluster, want: &str, service: &Service) {
    assert!(
        wait_until(TIMEOUT, || rows(standby).as_deref() == Ok(want)),
        "the standby has {:?} rows, want {want}\n--- service log ---\n{}\n--- standby log ---\n{}",
        rows(standby),
        service.log(),
        standby.server_log()
    );
}

#[test]
fn a_standby_streams_from_the_service_and_is_listed() {
    let mut primary = Cluster::builder().segment_size_mb(1).start();
    create_slot(&primary, "main");
    primary.psql("CREATE TABLE t (id bigint)");
    let archive = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let service = Service::start(&format!(
        "{}{}",
        source_toml("main", &primary, archive.path(), ""),
        serve_toml(listen)
    ));
    let mut dr = primary.standby_copy();
    let mut late = primary.standby_copy();
    primary.psql("INSERT INTO t SELECT generate_series(1, 50000)");
    primary.switch_wal();
    dr.start_standby(&[&primary_conninfo(listen, "dr")]);
    wait_rows(&dr, &rows(&primary).unwrap(), &service);
    // The walsender's lines name the source, as docs/dr-standby.md shows them.
    let log = service.log();
    assert!(
        log.contains("walkeeper: [main] walsender: replication connection authorized: user=standby"),
        "{log}"
    );
    assert!(log.contains("walkeeper: [main] standby \"dr\" (standby@127.0.0.1:"), "{log}");

    let status = service.status("main");
    let serve = &status["serve"];
    assert_eq!(serve["listen"], listen.to_string(), "{status}");
    let downstreams = serve["downstreams"].as_array().unwrap();
    assert_eq!(downstreams.len(), 1, "{status}");
    assert_eq!(downstreams[0]["application_name"], "dr");
    assert_eq!(downstreams[0]["user"], "standby");
    assert!(serve["oldest_needed_lsn"].is_string(), "{status}");
    assert_eq!(service.metric("walkeeper_downstreams", "main"), 1);
    let flushed_series = "walkeeper_downstream_flushed_lsn_bytes{source=\"main\",application_name=\"dr\"}";
    assert!(
        wait_until(TIMEOUT, || service.metrics().get(flushed_series).is_some_and(|v| v != "0")),
        "{:?}",
        service.metrics()
    );
    assert_eq!(primary.psql("SELECT string_agg(application_name, ',') FROM pg_stat_replication"), "main");

    // The primary goes away: the standby stays connected to the walsender; one started now catches up.
    let want = rows(&primary).unwrap();
    primary.stop();
    assert!(wait_until(TIMEOUT, || service.failing() == ["main"]), "{:?}", service.health());
    assert_eq!(rows(&dr).unwrap(), want);
    late.start_standby(&[&primary_conninfo(listen, "late")]);
    wait_rows(&late, &want, &service);
    assert!(wait_until(TIMEOUT, || service.metric("walkeeper_downstreams", "main") == 2));

    // SIGTERM with a standby connected: the service ends its session and exits 0 in time.
    let mut service = service;
    service.signal(libc::SIGTERM);
    let status = service.wait_exit(Duration::from_secs(15)).expect("the service did not exit");
    assert!(status.success(), "{status}\n{}", service.log());
    assert!(
        wait_until(TIMEOUT, || dr
            .psql("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
            == "0"),
        "the standby still streams from a stopped service"
    );
}

/// SIGSTOP on a process until dropped.
struct Frozen(i32);

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: resuming a process we stopped.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn retention_keeps_what_a_connected_standby_needs() {
    let mut primary = Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '256MB'").start();
    create_slot(&primary, "main");
    primary.psql("CREATE TABLE t (id bigint)");
    let archive = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let extra = "keep_backups = 1\nretention_interval = 1";
    let service = Service::start(&format!(
        "{}{}",
        source_toml("main", &primary, archive.path(), extra),
        serve_toml(listen)
    ));
    let mut dr = primary.standby_copy();
    primary.generate_wal(3);
    primary.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    primary.switch_wal();
    dr.start_standby(&[&primary_conninfo(listen, "dr")]);
    wait_rows(&dr, "1000", &service);
    let needed = || service.status("main")["serve"]["oldest_needed_lsn"].as_str().map(str::to_string);
    assert!(wait_until(TIMEOUT, || needed().is_some()), "{}", service.status("main"));

    // The standby stops reading (its walreceiver frozen): what it flushed stays where it is, while the
    // primary writes on and a base backup moves retention's keep point past it.
    let pid: i32 = dr.psql("SELECT pid FROM pg_stat_wal_receiver").parse().unwrap();
    // SAFETY: stopping the standby's walreceiver, resumed by the guard.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let frozen = Frozen(pid);
    let floor: walkeeper::wal::Lsn = needed().unwrap().parse().unwrap();
    let floor_segment = walkeeper::wal::segment::SegmentId::containing(1, floor, 1 << 20).file_name(1 << 20);
    primary.generate_wal(3);
    primary.switch_wal();
    let _backup = primary.base_backup();
    primary.psql("INSERT INTO t SELECT generate_series(1001, 2000)");
    let last = primary.switch_wal();
    assert!(wait_until(TIMEOUT, || names(archive.path()).contains(&last)), "{last} not archived");
    // Wait for a retention run that knows the new backup: its keep point is the standby's segment (the
    // floor decides) or, were the floor ignored, the backup's start, past it.
    let keep_point = |l: &str| {
        let rest = l.split("retention: keeping WAL from segment ").nth(1)?;
        rest.get(..24).map(str::to_string)
    };
    let ran =
        wait_until(TIMEOUT, || service.log().lines().filter_map(keep_point).any(|s| s >= floor_segment));
    assert!(ran, "retention never moved its keep point to the standby's segment:\n{}", service.log());
    let kept = names(archive.path());
    assert!(kept.contains(&floor_segment), "{floor_segment} (the standby's) was removed: {kept:?}");
    let by_floor = "the oldest WAL a connected standby still needs";
    assert!(
        service.log().lines().any(|l| keep_point(l) == Some(floor_segment.clone()) && l.contains(by_floor)),
        "retention did not say the standby's floor decided:\n{}",
        service.log()
    );
    assert!(
        !kept.iter().any(|n| n.len() == 24 && *n < floor_segment),
        "retention left segments below the standby's: {kept:?}"
    );

    // The standby reads again and catches up from what was kept.
    drop(frozen);
    wait_rows(&dr, "2000", &service);
}

/// IDENTIFY_SYSTEM through the walsender at `listen`: the system identifier, or the client's error.
fn identify(listen: std::net::SocketAddr) -> Result<String, String> {
    let conninfo =
        format!("host=127.0.0.1 port={} user=standby password=s3cret replication=true", listen.port());
    try_psql_at(&conninfo, None, "IDENTIFY_SYSTEM").map(|row| row.split('|').next().unwrap_or("").to_string())
}

#[test]
fn sighup_adds_moves_and_removes_the_walsender() {
    let primary = Cluster::builder().segment_size_mb(1).start();
    create_slot(&primary, "main");
    let sysid = primary.psql("SELECT system_identifier FROM pg_control_system()");
    let archive = tempfile::tempdir().unwrap();
    let plain = source_toml("main", &primary, archive.path(), "");
    let service = Service::start(&plain);
    assert!(service.status("main").get("serve").is_none(), "{}", service.status("main"));
    let backend = || service_support::walsender_pid(&primary, "main");
    assert!(wait_until(TIMEOUT, || backend().is_some()), "the source never streamed:\n{}", service.log());

    // Added on an address someone else holds: the source restarts, archives on, and says why it does not
    // serve; a reload once the address is free starts the walsender.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let first = taken.local_addr().unwrap();
    service.rewrite(&format!("{plain}{}", serve_toml(first)));
    assert!(service.reload().contains("reloaded"), "{}", service.log());
    let error = || service.status("main")["serve"]["error"].as_str().map(str::to_string);
    assert!(wait_until(TIMEOUT, || error().is_some()), "{}", service.status("main"));
    assert!(error().unwrap().contains(&format!("could not listen on {first}")), "{:?}", error());
    assert!(wait_until(TIMEOUT, || backend().is_some()), "the source stopped archiving:\n{}", service.log());
    drop(taken);
    assert!(service.reload().contains("reloaded"), "{}", service.log());
    assert!(
        wait_until(TIMEOUT, || identify(first).as_deref() == Ok(sysid.as_str())),
        "{:?}",
        identify(first)
    );
    assert_eq!(service.status("main")["serve"]["error"], serde_json::Value::Null);

    // Moved: the old address is closed, the new one serves.
    let second = free_addr();
    service.rewrite(&format!("{plain}{}", serve_toml(second)));
    assert!(service.reload().contains("reloaded"), "{}", service.log());
    assert!(
        wait_until(TIMEOUT, || identify(second).as_deref() == Ok(sysid.as_str())),
        "{:?}",
        identify(second)
    );
    assert!(std::net::TcpStream::connect(first).is_err(), "{first} still accepts connections");
    assert_eq!(service.status("main")["serve"]["listen"], second.to_string());

    // Removed: nothing listens, the source archives on.
    service.rewrite(&plain);
    assert!(service.reload().contains("reloaded"), "{}", service.log());
    assert!(std::net::TcpStream::connect(second).is_err(), "{second} still accepts connections");
    assert!(service.status("main").get("serve").is_none(), "{}", service.status("main"));
    assert_eq!(service.metric("walkeeper_downstreams", "main"), 0);
    assert!(wait_until(TIMEOUT, || backend().is_some()), "the source stopped archiving:\n{}", service.log());
}

#[test]
fn bad_serve_sections_are_one_line_naming_file_source_and_key() {
    let root = tempfile::tempdir().unwrap();
    let dirs = ["a", "b"].map(|d| {
        std::fs::create_dir(root.path().join(d)).unwrap();
        root.path().join(d)
    });
    let source = |name: &str, dir: &std::path::Path, serve: &str| {
        format!(
            "[[source]]\nname = \"{name}\"\nconninfo = \"host=127.0.0.1 port=1\"\ndirectory = \"{}\"\n[source.serve]\n{serve}\n",
            dir.display()
        )
    };
    let users = "users = { standby = \"s3cret\" }";
    let cases = [
        (
            format!("listen = \"5499\"\n{users}"),
            "source \"a\": key \"serve\": listen = \"5499\": expected host:port",
        ),
        (
            "listen = \"127.0.0.1:5499\"".to_string(),
            "source \"a\": key \"serve\": users: no user may connect",
        ),
        (
            "listen = \"127.0.0.1:5499\"\nusers = { standby = \"SCRAM-SHA-256$4096:x\" }".to_string(),
            "source \"a\": key \"serve\": users.standby: invalid SCRAM verifier",
        ),
        (
            format!("listen = \"127.0.0.1:5499\"\n{users}\ntls_cert = \"/nonexistent.crt\""),
            "source \"a\": key \"serve\": tls_cert is set but tls_key is not",
        ),
        (
            format!("listen = \"127.0.0.1:5499\"\n{users}\nport = 1"),
            "line 11: source \"a\": key \"serve\": unknown key `port`",
        ),
    ];
    let file = root.path().join("walkeeper.toml");
    let check = |text: String| {
        std::fs::write(&file, format!("[service]\nlisten = \"127.0.0.1:1\"\n\n{text}")).unwrap();
        Run::of(walkeeper().args(["service", "--check", "--config"]).arg(&file))
    };
    for (serve, expected) in cases {
        let r = check(source("a", &dirs[0], &serve));
        assert_eq!(r.code, Some(1), "{serve}: {r}");
        let line = r.error_line();
        let prefix = format!("walkeeper: error: {}: ", file.display());
        assert!(line.starts_with(&prefix) && line.contains(expected), "{line}\nexpected: {expected}");
        assert!(!line.contains("s3cret"), "a secret in an error: {line}");
    }
    let same = format!("listen = \"127.0.0.1:5499\"\n{users}");
    let r = check(format!("{}{}", source("a", &dirs[0], &same), source("b", &dirs[1], &same)));
    assert!(
        r.error_line().ends_with(
            "source \"b\": key \"serve\": listen = \"127.0.0.1:5499\" is also where source \"a\" serves"
        ),
        "{r}"
    );
    let r = check(format!(
        "{}{}",
        source("a", &dirs[0], &same),
        source("b", &dirs[1], &same.replace("5499", "5498"))
    ));
    assert_eq!(r.code, Some(0), "{r}");
}
