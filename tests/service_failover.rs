//! `walkeeper service` with `failover = true` and `create_slot = true` follows a promotion by itself, as
//! `receive --failover` does (tests/failover.rs has the cases in depth): a primary and its streaming standby
//! behind one multi-host conninfo, the slot created by the service on the primary, the primary killed, the
//! standby promoted; the source streams from the promoted server on timeline 2 with the slot created there too,
//! /health is 200 again, the metrics say timeline 2, and the archive verifies with the new timeline's history
//! file equal to the server's.

mod service_support;
mod support;

use service_support::{current_lsn, replication_lsn, Service};
use support::{wait_until, walkeeper, Cluster, Run, TIMEOUT};

fn slot_exists(c: &Cluster) -> bool {
    c.try_psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'arch'").is_ok_and(|n| n == "1")
}

/// Until the source has flushed everything `c` has written (its flush position in `pg_stat_replication`).
fn wait_flushed(service: &Service, c: &Cluster) {
    let target = current_lsn(c);
    let ok = wait_until(TIMEOUT, || replication_lsn(c, "main", "flush_lsn").is_some_and(|f| f >= target));
    assert!(ok, "the service never flushed {target} from port {}\n{}", c.port(), service.log());
}

#[test]
fn the_service_follows_a_promotion_and_creates_the_slot_there() {
    let mut primary = Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '128MB'").start();
    let standby = primary.standby();
    let dir = tempfile::tempdir().unwrap();
    // The standby first: a read-write target must pass over it (target_session_attrs defaults to read-write).
    let source = format!(
        "[[source]]\nname = \"main\"\n\
         conninfo = \"host=127.0.0.1,127.0.0.1 port={},{} user=postgres application_name=main connect_timeout=5\"\n\
         directory = \"{}\"\nslot = \"arch\"\ncreate_slot = true\nfailover = true\nstatus_interval = 1\n",
        standby.port(),
        primary.port(),
        dir.path().display()
    );
    let service = Service::start(&source);

    let streaming = wait_until(TIMEOUT, || replication_lsn(&primary, "main", "flush_lsn").is_some());
    assert!(streaming, "the service never streamed from the primary\n{}", service.log());
    assert!(slot_exists(&primary), "the slot was not created on the primary\n{}", service.log());
    assert!(!slot_exists(&standby));
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    wait_flushed(&service, &primary);
    standby.wait_for_replay(current_lsn(&primary));

    primary.crash();
    let down = wait_until(TIMEOUT, || service.health().0 == 503);
    assert!(down, "/health stayed 200 with the primary gone\n{}", service.log());
    standby.promote();
    standby.psql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g");

    let followed = wait_until(TIMEOUT, || replication_lsn(&standby, "main", "flush_lsn").is_some());
    assert!(followed, "the service never streamed from the promoted server\n{}", service.log());
    assert!(slot_exists(&standby), "the slot was not created on the promoted server\n{}", service.log());
    let log = service.log();
    let said = "replication slot \"arch\" was missing; created it";
    assert_eq!(log.matches(said).count(), 2, "creating the slot is said, once per server:\n{log}");
    wait_flushed(&service, &standby);
    let healthy = wait_until(TIMEOUT, || service.health().0 == 200);
    assert!(healthy, "/health never returned to 200: {:?}\n{}", service.health(), service.log());
    assert_eq!(service.metric("walkeeper_timeline", "main"), 2);

    // The new timeline's history file is the server's; the archive is whole.
    standby.psql("SELECT pg_switch_wal()");
    let history = dir.path().join("00000002.history");
    let arrived = wait_until(TIMEOUT, || history.exists());
    assert!(arrived, "00000002.history never archived\n{}", service.log());
    let server_history = std::fs::read(standby.data_dir().join("pg_wal/00000002.history")).unwrap();
    assert_eq!(std::fs::read(&history).unwrap(), server_history);
    let verify = Run::of(walkeeper().args(["verify", "-D"]).arg(dir.path()));
    assert_eq!(verify.code, Some(0), "{verify}");
}
