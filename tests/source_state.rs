//! What a receive loop publishes on its state channel (`stream::state`), read the way the service's metrics,
//! health and the walsender read it, against a real server: positions that match the server's own view,
//! completed segments, and the phases through an outage.

mod support;

use std::sync::mpsc;
use std::time::Duration;
use support::{format_lsn, parse_lsn, wait_until, Cluster, TIMEOUT};
use walkeeper::conn::conninfo::{self, Sources};
use walkeeper::conn::ConnectOptions;
use walkeeper::stream::feedback::ApplyReport;
use walkeeper::stream::state::{Phase, SourceState};
use walkeeper::stream::ReceiveConfig;
use walkeeper::wal::segment::Compression;
use walkeeper::wal::Lsn;

fn config(cluster: &Cluster, dir: &std::path::Path) -> ReceiveConfig {
    let conninfo = format!("host={} port={} user=postgres", cluster.host(), cluster.port());
    let sources = Sources { conninfo: Some(&conninfo), ..Sources::default() };
    ReceiveConfig {
        conn: conninfo::resolve(&sources, &|_| None).unwrap(),
        connect: ConnectOptions::default(),
        directory: dir.to_path_buf(),
        slot: Some("st".into()),
        endpos: None,
        status_interval: Some(Duration::from_secs(1)),
        receive_timeout: Some(Duration::from_secs(60)),
        synchronous: false,
        fsync: true,
        compression: Compression::None,
        compression_level: None,
        no_loop: false,
        validate: true,
        apply_report: ApplyReport::Invalid,
        live_readers: Default::default(),
        failover: false,
        create_slot: false,
        upload: None,
    }
}

#[test]
fn published_state_follows_the_stream_and_an_outage() {
    let mut cluster = Cluster::builder().segment_size_mb(1).start();
    cluster.psql("SELECT pg_create_physical_replication_slot('st', true)");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&cluster, dir.path());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = walkeeper::stream::state::unobserved();
    let watch = state.subscribe();
    let (done_tx, done_rx) = mpsc::channel();
    let runner = std::thread::spawn(move || {
        let result = walkeeper::cli::block_on(walkeeper::stream::follow::receive(&cfg, stop_rx, &state));
        done_tx.send(result.map_err(|e| e.to_string())).unwrap();
    });
    let now = || -> SourceState { watch.borrow().clone() };

    // Streaming: the flushed position reaches what the server says it has, and the server sees it flushed.
    let end = cluster.generate_wal(3);
    cluster.switch_wal();
    let target = parse_lsn(&cluster.psql("SELECT pg_current_wal_lsn()"));
    assert!(
        wait_until(TIMEOUT, || now().flushed.is_some_and(|f| f.0 >= target)),
        "flushed never reached {}: {:?}",
        format_lsn(target),
        now()
    );
    let s = now();
    assert_eq!(s.phase, Phase::Streaming);
    assert_eq!(s.timeline, Some(1));
    assert_eq!(s.segment_size, Some(1 << 20));
    assert!(s.server.as_deref().is_some_and(|h| h.ends_with(&format!(":{}", cluster.port()))), "{s:?}");
    assert!(s.received >= s.flushed, "{s:?}");
    assert!(s.server_end.is_some_and(|e| e.0 >= end), "{s:?}");
    assert!(s.received_bytes >= 3 << 20, "3 MB of WAL were generated: {s:?}");
    assert!(s.segments_completed >= 3, "{s:?}");
    assert!(s.last_message.is_some() && s.last_error.is_none(), "{s:?}");
    let sysid: u64 = cluster.psql("SELECT system_identifier FROM pg_control_system()").parse().unwrap();
    assert_eq!(s.system_id, Some(sysid));
    assert!(
        wait_until(TIMEOUT, || {
            let flush = cluster.psql("SELECT coalesce(flush_lsn::text, '0/0') FROM pg_stat_replication");
            !flush.is_empty() && Some(Lsn(parse_lsn(&flush))) == now().flushed
        }),
        "the server's flush_lsn never matched the published one: {:?}",
        now()
    );

    // The server goes away: the source retries, naming the error; it comes back and streams again.
    cluster.stop();
    assert!(wait_until(TIMEOUT, || now().phase == Phase::Retrying), "{:?}", now());
    let s = now();
    assert!(s.reconnects >= 1 && s.last_error.is_some(), "{s:?}");
    cluster.start_again();
    assert!(wait_until(TIMEOUT, || now().phase == Phase::Streaming), "{:?}", now());
    assert_eq!(now().last_error, None);

    stop_tx.send(true).unwrap();
    let result = done_rx.recv_timeout(TIMEOUT).expect("receive did not stop on the shutdown signal");
    assert!(result.is_ok(), "{result:?}");
    runner.join().unwrap();
    assert_eq!(now().phase, Phase::Stopped);
}
