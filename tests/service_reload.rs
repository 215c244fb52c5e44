//! `walkeeper service` and its signals against a real server: SIGHUP adds, removes and restarts sources and
//! keeps the untouched ones on the same connection (same walsender PID); a bad reload (unknown key,
//! duplicate name, shared directory, a directory another process writes) keeps the running configuration;
//! SIGTERM stops every source and exits 0 in time; systemd hears READY, STATUS, WATCHDOG, RELOADING and
//! STOPPING.

mod service_support;
mod support;

use service_support::{create_slot, source_toml, walsender_pid, NotifySocket, Service};
use std::time::Duration;
use support::{run_walkeeper, wait_until, Cluster, LOCK_FILE, TIMEOUT};
use walkeeper::archive::lock::ArchiveLock;

#[test]
fn sighup_adds_removes_and_restarts_sources_and_keeps_the_untouched_ones() {
    let cluster = Cluster::builder().segment_size_mb(1).start();
    let names = ["a", "b", "c", "d", "e"];
    for n in names {
        create_slot(&cluster, n);
    }
    let dirs: Vec<tempfile::TempDir> = names.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let dir = |n: &str| dirs[names.iter().position(|x| *x == n).unwrap()].path();
    let src = |n: &str, extra: &str| source_toml(n, &cluster, dir(n), extra);
    let mut notify = NotifySocket::bind();
    let mut service = Service::start_with(
        &[src("a", ""), src("b", ""), src("d", "")].concat(),
        &[("NOTIFY_SOCKET", notify.path()), ("WATCHDOG_USEC", "2000000")],
    );
    let ready = notify.expect("READY=1");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=3 sources: ")), "{ready:?}");
    notify.expect("WATCHDOG=1");
    let healthy = wait_until(TIMEOUT, || service.health().0 == 200);
    assert!(healthy, "{:?}\n{}", service.health(), service.log());
    notify.expect("STATUS=3 sources: 3 streaming");
    let pid = |n: &str| walsender_pid(&cluster, n);
    let (pid_a, pid_d) = (pid("a").unwrap(), pid("d").unwrap());
    assert!(pid("b").is_some());
    assert_eq!(
        run_walkeeper(&["service", "--health-check", &format!("http://{}/health", service.addr)]).code,
        Some(0)
    );

    // a untouched, b removed, d changed, c added.
    service.rewrite(&[src("a", ""), src("d", "compression = \"zstd\""), src("c", "")].concat());
    let line = service.reload();
    assert!(line.ends_with("3 source(s): started [c], stopped [b], restarted [d], 1 unchanged"), "{line}");
    notify.expect("RELOADING=1");
    notify.expect("READY=1");
    let healthy =
        wait_until(TIMEOUT, || service.health().0 == 200 && pid("c").is_some() && pid("d").is_some());
    assert!(healthy, "{:?}\n{}", service.health(), service.log());
    assert_eq!(pid("a"), Some(pid_a), "the untouched source kept its connection");
    assert_ne!(pid("d"), Some(pid_d), "the changed source reconnected");
    assert!(wait_until(TIMEOUT, || pid("b").is_none()), "b's walsender is still there");
    drop(ArchiveLock::acquire(dir("b")).expect("the removed source released its directory"));
    let metrics = service.metrics();
    assert!(!metrics.keys().any(|k| k.contains("source=\"b\"")), "b still in /metrics");
    assert!(metrics.contains_key("walkeeper_source_up{source=\"c\"}"));
    // The changed source runs with its new settings.
    cluster.generate_wal(1);
    cluster.switch_wal();
    let zst = wait_until(TIMEOUT, || support::names(dir("d")).iter().any(|n| n.ends_with(".zst")));
    assert!(zst, "d never wrote a zstd segment: {:?}", support::names(dir("d")));

    // Bad reloads: each refused with one line naming file, source and key; nothing changes.
    let held = ArchiveLock::acquire(dir("e")).unwrap();
    let running = [src("a", ""), src("d", "compression = \"zstd\""), src("c", "")].concat();
    let bad = [
        (format!("{running}bogus = 1\n"), "source \"c\": unknown key `bogus`"),
        (
            format!(
                "{running}{}",
                src("a", "").replace(&dir("a").display().to_string(), &dir("b").display().to_string())
            ),
            "source \"a\": key \"name\": \"a\" is also the name of an earlier source",
        ),
        (
            format!(
                "{running}{}",
                src("b", "").replace(&dir("b").display().to_string(), &dir("c").display().to_string())
            ),
            "is also the directory of source \"c\"",
        ),
        (
            format!("{running}{}", src("e", "")),
            &*format!(
                "source \"e\": key \"directory\": archive \"{}\" is in use by another walkeeper (pid {}",
                dir("e").display(),
                std::process::id()
            ),
        ),
    ];
    for (text, expected) in &bad {
        service.rewrite(text);
        let line = service.reload();
        let file = service.config.display().to_string();
        assert!(
            line.starts_with(&format!(
                "walkeeper: error: reload refused; the running configuration stays: {file}: "
            )),
            "{line}"
        );
        assert!(line.contains(expected), "{line}\nexpected: {expected}");
        assert_eq!((pid("a"), pid("c").is_some(), pid("b")), (Some(pid_a), true, None));
        let sources: Vec<String> =
            service.get("/status").1.lines().filter(|l| l.contains("\"name\"")).map(str::to_string).collect();
        assert_eq!(sources.len(), 3, "{sources:?}");
    }
    drop(held);
    assert!(
        !dir("b").join(LOCK_FILE).exists() || std::fs::read(dir("b").join(LOCK_FILE)).unwrap().is_empty()
    );

    service.signal(libc::SIGTERM);
    let exit = service.wait_exit(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "SIGTERM: {exit:?}\n{}", service.log());
    notify.expect("STOPPING=1");
    let log = service.log();
    for n in ["a", "c", "d"] {
        assert!(log.contains(&format!("walkeeper: [{n}] stopped")), "{n} did not report stopping:\n{log}");
    }
    for n in ["a", "c", "d"] {
        assert!(wait_until(TIMEOUT, || pid(n).is_none()), "{n} still connected after the service exited");
    }
    assert_eq!(
        std::fs::read(dir("a").join(LOCK_FILE)).unwrap(),
        b"",
        "the lock file is cleared on a clean exit"
    );
}
