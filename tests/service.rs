//! `walkeeper service` against real servers: sources on several majors in one process, whose archives verify
//! and whose metrics match what the servers say; a server that goes away or hangs fails /health without
//! touching the other sources' connections or acknowledgements; the server comes back and its source
//! recovers by itself.

mod service_support;
mod support;

use service_support::{create_slot, current_lsn, replication_lsn, source_toml, walsender_pid, Service};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{names, wait_until, walkeeper, Cluster, Run, TIMEOUT};

const METRICS: [&str; 11] = [
    "walkeeper_source_up",
    "walkeeper_received_lsn_bytes",
    "walkeeper_flushed_lsn_bytes",
    "walkeeper_server_lsn_bytes",
    "walkeeper_lag_bytes",
    "walkeeper_timeline",
    "walkeeper_segments_completed_total",
    "walkeeper_received_bytes_total",
    "walkeeper_reconnects_total",
    "walkeeper_invalid_wal_total",
    "walkeeper_last_message_timestamp_seconds",
];

/// Until the source's positions in /metrics equal the server's end of WAL and its own view of the
/// source (`pg_stat_replication`); panics with both views otherwise.
fn wait_caught_up(service: &Service, cluster: &Cluster, name: &str) {
    let mut seen = String::new();
    let matched = wait_until(TIMEOUT, || {
        let current = current_lsn(cluster);
        let m = |metric| service.metric(metric, name);
        let (received, flushed, server) = (
            m("walkeeper_received_lsn_bytes"),
            m("walkeeper_flushed_lsn_bytes"),
            m("walkeeper_server_lsn_bytes"),
        );
        let (write, flush) =
            (replication_lsn(cluster, name, "write_lsn"), replication_lsn(cluster, name, "flush_lsn"));
        seen = format!(
            "current {current}, metrics received {received} flushed {flushed} server {server}, \
             pg_stat_replication write {write:?} flush {flush:?}"
        );
        received == current
            && flushed == current
            && server == current
            && write == Some(received)
            && flush == Some(flushed)
    });
    assert!(matched, "{name}: metrics never matched the server: {seen}\n{}", service.log());
}

/// Every complete segment of `dir` equals the server's own copy; returns how many were compared.
fn identical_to_server(dir: &Path, cluster: &Cluster) -> usize {
    let mut compared = 0;
    for name in names(dir).into_iter().filter(|n| n.len() == 24) {
        if cluster.wal_segment_path(&name).exists() {
            let ours = std::fs::read(dir.join(&name)).unwrap();
            assert!(ours == cluster.read_wal_segment(&name), "{name} differs from the server's pg_wal copy");
            compared += 1;
        }
    }
    compared
}

#[test]
fn sources_on_three_majors_verify_and_their_metrics_match_the_servers() {
    let installs = support::require_majors([13, 15, 18]);
    if installs.len() < 3 {
        return;
    }
    let clusters: Vec<Cluster> = installs
        .iter()
        .map(|i| Cluster::builder().install(i).segment_size_mb(1).conf("wal_keep_size = '256MB'").start())
        .collect();
    let names: Vec<String> = installs.iter().map(|i| format!("pg{}", i.major)).collect();
    let dirs: Vec<tempfile::TempDir> = names.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut sources = String::new();
    for ((cluster, name), dir) in clusters.iter().zip(&names).zip(&dirs) {
        create_slot(cluster, name);
        sources.push_str(&source_toml(name, cluster, dir.path(), ""));
    }
    let mut service = Service::start(&sources);

    // Every series of every source is there from the start.
    let metrics = service.metrics();
    for metric in METRICS {
        for name in &names {
            let series = format!("{metric}{{source=\"{name}\"}}");
            assert!(metrics.contains_key(&series), "{series} missing from the first scrape: {metrics:?}");
        }
    }
    assert!(metrics.keys().any(|k| k.starts_with("walkeeper_build_info{version=")), "{metrics:?}");

    let mut last_complete = Vec::new();
    for cluster in &clusters {
        cluster.generate_wal(3);
        last_complete.push(cluster.switch_wal());
    }
    for ((cluster, name), last) in clusters.iter().zip(&names).zip(&last_complete) {
        wait_caught_up(&service, cluster, name);
        assert_eq!(service.metric("walkeeper_source_up", name), 1);
        assert_eq!(service.metric("walkeeper_timeline", name), 1);
        assert_eq!(service.metric("walkeeper_lag_bytes", name), 0);
        assert!(service.metric("walkeeper_segments_completed_total", name) >= 3);
        assert!(service.metric("walkeeper_received_bytes_total", name) >= 3 << 20);
        assert_eq!(service.metric("walkeeper_invalid_wal_total", name), 0);
        assert!(service.metric("walkeeper_last_message_timestamp_seconds", name) > 1_600_000_000);
        let status = service.status(name);
        assert_eq!(status["phase"], "streaming");
        assert_eq!(status["server"], format!("{}:{}", cluster.host(), cluster.port()));
        assert!(
            status["server_version"].as_str().unwrap().starts_with(&cluster.major().to_string()),
            "{status}"
        );
        let sysid = cluster.psql("SELECT system_identifier FROM pg_control_system()");
        assert_eq!(status["system_identifier"], sysid);
        let flushed = support::parse_lsn(status["flushed_lsn"].as_str().unwrap());
        assert_eq!(Some(flushed), replication_lsn(cluster, name, "flush_lsn"), "{status}");
        // The archive range, as listed off the request path, reaches the last segment completed.
        let listed = wait_until(TIMEOUT, || {
            service.status(name)["archive"]["timelines"][0]["last_segment"] == last.as_str()
        });
        assert!(listed, "/status never listed {last}: {}", service.status(name));
    }
    let (code, health) = service.health();
    assert_eq!(code, 200, "{health}");

    service.signal(libc::SIGTERM);
    let exit = service.wait_exit(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "SIGTERM: {exit:?}\n{}", service.log());
    for ((cluster, name), dir) in clusters.iter().zip(&names).zip(&dirs) {
        let verify = Run::of(walkeeper().args(["verify", "-D"]).arg(dir.path()));
        assert_eq!(verify.code, Some(0), "{name}: {verify}");
        assert!(identical_to_server(dir.path(), cluster) >= 3, "{name}: too few segments compared");
    }
}

/// Three clusters of the default major, a source each (`a`, `b`, `c`, with `extras` lines), the service
/// streaming them all.
fn three_sources(extras: [&str; 3]) -> (Vec<Cluster>, Vec<tempfile::TempDir>, Service) {
    let clusters: Vec<Cluster> = (0..3).map(|_| Cluster::builder().segment_size_mb(1).start()).collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut sources = String::new();
    for (((cluster, name), dir), extra) in clusters.iter().zip(["a", "b", "c"]).zip(&dirs).zip(extras) {
        create_slot(cluster, name);
        sources.push_str(&source_toml(name, cluster, dir.path(), extra));
    }
    let service = Service::start(&sources);
    let healthy = wait_until(TIMEOUT, || service.health().0 == 200);
    assert!(healthy, "never healthy: {:?}\n{}", service.health(), service.log());
    (clusters, dirs, service)
}

/// Write WAL on `cluster` and wait until the source has it flushed, matching the server's view.
fn advance(service: &Service, cluster: &Cluster, name: &str) {
    cluster.generate_wal(2);
    cluster.switch_wal();
    wait_caught_up(service, cluster, name);
}

#[test]
fn a_lost_server_fails_health_and_the_others_keep_their_connections() {
    let (mut clusters, _dirs, mut service) = three_sources(["", "", ""]);
    let pid_a = walsender_pid(&clusters[0], "a").expect("a streams");
    let pid_c = walsender_pid(&clusters[2], "c").expect("c streams");

    clusters[1].stop();
    let down = Instant::now();
    // A closed connection is noticed at once; the bound is 15 seconds.
    let failing = wait_until(Duration::from_secs(15), || service.failing() == ["b"]);
    assert!(failing, "/health never named b alone: {:?}", service.health());
    eprintln!("/health named the stopped server after {:.2}s", down.elapsed().as_secs_f64());
    let (code, health) = service.health();
    assert_eq!(code, 503);
    assert_eq!(health["failing"][0]["phase"], "retrying", "{health}");
    assert!(!health["failing"][0]["reason"].as_str().unwrap().is_empty(), "{health}");
    assert_eq!(service.metric("walkeeper_source_up", "b"), 0);

    // The others keep streaming on the same connections.
    advance(&service, &clusters[0], "a");
    advance(&service, &clusters[2], "c");
    assert_eq!(walsender_pid(&clusters[0], "a"), Some(pid_a), "a's connection was restarted");
    assert_eq!(walsender_pid(&clusters[2], "c"), Some(pid_c), "c's connection was restarted");

    // The server returns; its source recovers by itself.
    clusters[1].start_again();
    let healthy = wait_until(TIMEOUT, || service.health().0 == 200);
    assert!(healthy, "b never recovered: {:?}\n{}", service.health(), service.log());
    assert!(service.metric("walkeeper_reconnects_total", "b") >= 1);
    assert_eq!(service.status("b")["last_error"], serde_json::Value::Null);
    advance(&service, &clusters[1], "b");
    assert_eq!(walsender_pid(&clusters[0], "a"), Some(pid_a));
    assert_eq!(walsender_pid(&clusters[2], "c"), Some(pid_c));

    service.signal(libc::SIGTERM);
    let exit = service.wait_exit(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "SIGTERM: {exit:?}\n{}", service.log());
}

/// Processes stopped with SIGSTOP, continued on drop (so a failing test never leaves a frozen server).
struct Frozen(Vec<u32>);

impl Frozen {
    fn stop(pids: Vec<u32>) -> Frozen {
        for &pid in &pids {
            // SAFETY: signalling a server process this test started.
            assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0);
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
    }
}

/// Seconds from writing WAL on `cluster` until the server sees the source's flush reach its end of WAL.
fn flush_lag(service: &Service, cluster: &Cluster, name: &str) -> f64 {
    cluster.generate_wal(2);
    let end = current_lsn(cluster);
    let written = Instant::now();
    let acked = wait_until(TIMEOUT, || replication_lsn(cluster, name, "flush_lsn").is_some_and(|f| f >= end));
    assert!(acked, "{name}: flush never reached {end}\n{}", service.log());
    written.elapsed().as_secs_f64()
}

#[test]
fn a_hung_server_delays_no_other_source() {
    // b's server hangs without closing the connection: only its receive timeout can tell. a acknowledges
    // each batch as soon as it is fsynced (synchronous), so its flush lag shows any delay at once.
    let (clusters, _dirs, service) = three_sources(["synchronous = true", "receive_timeout = 6", ""]);
    let pid_a = walsender_pid(&clusters[0], "a").expect("a streams");
    let before: Vec<f64> = (0..3).map(|_| flush_lag(&service, &clusters[0], "a")).collect();

    let postmaster: u32 = std::fs::read_to_string(clusters[1].data_dir().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let frozen = Frozen::stop(vec![walsender_pid(&clusters[1], "b").expect("b streams"), postmaster]);
    let during: Vec<f64> = (0..3).map(|_| flush_lag(&service, &clusters[0], "a")).collect();
    eprintln!(
        "a's flush lag (2 MB written until the server sees them flushed; synchronous): before b hung {before:.2?} s, while b hung {during:.2?} s"
    );
    let named = wait_until(TIMEOUT, || service.failing() == ["b"]);
    assert!(named, "/health never named the hung server: {:?}", service.health());
    advance(&service, &clusters[2], "c");
    assert_eq!(walsender_pid(&clusters[0], "a"), Some(pid_a), "a's connection was restarted");

    drop(frozen);
    let healthy = wait_until(TIMEOUT, || service.health().0 == 200);
    assert!(healthy, "b never recovered: {:?}\n{}", service.health(), service.log());
    advance(&service, &clusters[1], "b");
}
