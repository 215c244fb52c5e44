//! A disaster-recovery standby fed only by walkeeper, with real PostgreSQL servers: walkeeper's receive loop
//! archives the primary, its walsender serves the archive, and a standby made from a base backup streams
//! from the walsender alone (primary_conninfo to walkeeper, no slot on the primary, no restore_command).
//!
//! - it catches up from the archive, then follows live commits (13, 15, 17);
//! - RPO 0: walkeeper is the primary's synchronous standby; the primary is killed; the DR standby is
//!   promoted and holds every commit the primary acknowledged;
//! - it follows a failover held in the archive onto timeline 2;
//! - a zstd-compressed archive is served alike;
//! - it is listed as a downstream, with the positions it reports.

mod support;

use support::walsender::{Receiver, ReceiverOptions, Walsender};
use support::{require_major, wait_until, Cluster, TIMEOUT};

const USERS: &[(&str, &str)] = &[("standby", "s3cret")];

/// Rows of `t` on a server, or the error while it is not ready to answer.
fn rows(c: &Cluster) -> Result<String, String> {
    c.try_psql("SELECT count(*) FROM t")
}

/// Waits until the standby has as many rows in `t` as the primary; panics with both servers' logs if not.
fn wait_same_rows(primary: &Cluster, standby: &Cluster, what: &str) {
    let want = rows(primary).unwrap();
    if !wait_until(TIMEOUT, || rows(standby).as_deref() == Ok(want.as_str())) {
        panic!(
            "{what}: the standby has {:?} rows, the primary {want}\n--- standby log ---\n{}",
            rows(standby),
            tail(&standby.server_log())
        );
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The primary archived by walkeeper (with a slot, so it keeps the WAL walkeeper has not received), and a
/// table `t` to count.
fn primary_with_receiver(
    major: u32,
    opts: ReceiverOptions,
) -> Option<(Cluster, tempfile::TempDir, Receiver)> {
    let install = require_major(major)?;
    // No reply requests from the primary's walsender: only walkeeper's own rules make it sync.
    let primary =
        Cluster::builder().install(&install).segment_size_mb(1).conf("wal_sender_timeout = 0").start();
    primary.psql("SELECT pg_create_physical_replication_slot('walkeeper', true)");
    primary.psql("CREATE TABLE t (id bigint, pad text)");
    let archive = tempfile::tempdir().unwrap();
    let receiver =
        Receiver::start(&primary, archive.path(), ReceiverOptions { slot: Some("walkeeper".into()), ..opts });
    Some((primary, archive, receiver))
}

/// A base backup taken before a load of several segments catches up from the archive through walkeeper,
/// then follows new commits; the primary knows nothing of it. Without status updates (`-s 0`) the receive
/// loop would sync only complete segments: live commits reach the standby because it syncs every batch
/// while a standby streams.
fn catch_up_then_follow(major: u32, compression: walkeeper::wal::segment::Compression) {
    let opts = ReceiverOptions { compression, status_interval: None, ..ReceiverOptions::default() };
    let Some((mut primary, archive, receiver)) = primary_with_receiver(major, opts) else { return };
    let ws = Walsender::start(archive.path(), Some(receiver.feed()), USERS, None);
    let mut dr = primary.standby_copy();

    primary.psql("INSERT INTO t SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, 20000) g");
    primary.generate_wal(3);
    primary.switch_wal();
    dr.start_standby(&[&ws.primary_conninfo("standby", "s3cret", "dr")]);
    wait_same_rows(&primary, &dr, "catch-up");
    let suffix = compression.suffix();
    let served = support::names(archive.path());
    assert!(
        served.iter().filter(|n| n.len() == 24 + suffix.len() && n.ends_with(suffix)).count() >= 3,
        "complete segments ending in {suffix:?}: {served:?}"
    );

    for round in 0..3 {
        primary.psql(&format!("INSERT INTO t SELECT g, 'live {round}' FROM generate_series(1, 10) g"));
        wait_same_rows(&primary, &dr, "live commits");
    }

    // Streaming from walkeeper only: the primary sees walkeeper's connection and slot, nothing of the DR
    // standby; the standby's walreceiver is connected to the walsender.
    assert_eq!(
        primary.psql("SELECT string_agg(application_name, ',') FROM pg_stat_replication"),
        "walkeeper"
    );
    assert_eq!(primary.psql("SELECT string_agg(slot_name, ',') FROM pg_replication_slots"), "walkeeper");
    assert_eq!(
        dr.psql("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'"),
        ws.port().to_string()
    );
    // Listed as a downstream, with what it reports flushed.
    let flushed = dr.psql("SELECT flushed_lsn FROM pg_stat_wal_receiver");
    let want: walkeeper::wal::Lsn = flushed.parse().unwrap();
    assert!(
        wait_until(TIMEOUT, || ws.downstream_flush("dr").is_some_and(|f| f >= want)),
        "downstreams: {:?}",
        ws.downstreams.list()
    );
    let needed = ws.downstreams.oldest_needed().expect("a connected standby needs WAL");
    assert!(needed.lsn <= walkeeper::wal::Lsn(primary.current_lsn()), "{needed:?}");
}

#[test]
fn standby_catches_up_and_follows_13() {
    catch_up_then_follow(13, walkeeper::wal::segment::Compression::None);
}

#[test]
fn standby_catches_up_and_follows_15() {
    catch_up_then_follow(15, walkeeper::wal::segment::Compression::None);
}

#[test]
fn standby_catches_up_and_follows_17() {
    catch_up_then_follow(17, walkeeper::wal::segment::Compression::None);
}

#[test]
fn zstd_archive_is_served() {
    catch_up_then_follow(15, walkeeper::wal::segment::Compression::Zstd);
}

/// A writer committing one row per transaction over its own session; an id is recorded once its INSERT
/// has returned (ReadyForQuery): with walkeeper as the synchronous standby, that means walkeeper flushed it.
fn committing_writer(
    primary: &Cluster,
) -> (std::sync::Arc<std::sync::Mutex<Vec<i64>>>, std::thread::JoinHandle<String>) {
    use walkeeper::conn::conninfo::{self, Sources};
    use walkeeper::conn::{connect, ConnectOptions};
    let conninfo = format!("host={} port={} user=postgres dbname=postgres", primary.host(), primary.port());
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let acked2 = acked.clone();
    let thread = std::thread::spawn(move || {
        walkeeper::cli::block_on(async move {
            let params =
                conninfo::resolve(&Sources { conninfo: Some(&conninfo), ..Sources::default() }, &|_| None)
                    .unwrap();
            let opts = ConnectOptions { replication: false, ..ConnectOptions::default() };
            let mut conn = connect(&params, &opts).await.unwrap_or_else(|e| panic!("{e}"));
            for id in 1i64.. {
                match conn.simple_query(&format!("INSERT INTO t VALUES ({id}, 'acked')")).await {
                    Ok(_) => acked2.lock().unwrap().push(id),
                    Err(e) => return e.to_string(),
                }
            }
            unreachable!()
        })
    });
    (acked, thread)
}

/// RPO 0: walkeeper is the primary's synchronous standby; the primary is killed while commits are in
/// flight; the DR standby, fed only by walkeeper, is promoted and holds every acknowledged commit. A second
/// standby started after the primary died catches up from the archive at rest (the upstream is down).
#[test]
fn rpo_zero_through_walkeeper() {
    let Some(install) = require_major(15) else { return };
    let mut primary = Cluster::builder().install(&install).segment_size_mb(1).start();
    primary.psql("SELECT pg_create_physical_replication_slot('walkeeper', true)");
    primary.psql("CREATE TABLE t (id bigint, pad text)");
    let archive = tempfile::tempdir().unwrap();
    let opts =
        ReceiverOptions { synchronous: true, slot: Some("walkeeper".into()), ..ReceiverOptions::default() };
    let receiver = Receiver::start(&primary, archive.path(), opts);
    primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'walkeeper'");
    primary.psql("SELECT pg_reload_conf()");
    assert!(
        wait_until(TIMEOUT, || primary.psql("SELECT sync_state FROM pg_stat_replication") == "sync"),
        "walkeeper never became the synchronous standby"
    );
    let ws = Walsender::start(archive.path(), Some(receiver.feed()), USERS, None);
    let mut dr = primary.standby_copy();
    let mut late = primary.standby_copy();
    dr.start_standby(&[&ws.primary_conninfo("standby", "s3cret", "dr")]);
    assert!(wait_until(TIMEOUT, || ws.downstream_flush("dr").is_some()), "the DR standby never streamed");

    let (acked, writer) = committing_writer(&primary);
    primary.generate_wal(2); // commits in flight across segment boundaries
    assert!(wait_until(TIMEOUT, || acked.lock().unwrap().len() >= 300), "the writer got stuck");
    primary.crash();
    let why = writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "{why}");

    // Everything walkeeper made durable reaches the standby, though the primary is gone.
    let flushed = receiver.state().flushed.unwrap();
    let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{flushed}'::pg_lsn");
    assert!(wait_until(TIMEOUT, || dr.psql(&caught_up) == "t"), "DR standby stuck below {flushed}");

    // The upstream is down: a standby that connects now catches up from the archive alone.
    late.start_standby(&[&ws.primary_conninfo("standby", "s3cret", "late")]);
    assert!(wait_until(TIMEOUT, || late.try_psql(&caught_up).as_deref() == Ok("t")), "late standby stuck");
    assert_eq!(rows(&late), rows(&dr));

    dr.promote();
    let held: std::collections::HashSet<i64> =
        dr.psql("SELECT id FROM t WHERE pad = 'acked'").lines().map(|l| l.parse().unwrap()).collect();
    let lost: Vec<i64> = acked.iter().copied().filter(|id| !held.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost, e.g. {:?} (writer ended with: {why})",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// A failover held in the archive: walkeeper follows the promoted standby onto timeline 2, a DR standby
/// streaming from walkeeper follows it across the switch, and one started after the failover crosses the
/// switch from the archive's files (timeline 1 up to the switch point, the switch segment from timeline
/// 2's file) and follows timeline 2.
#[test]
fn standby_follows_a_timeline_switch() {
    let Some(install) = require_major(15) else { return };
    let mut primary = Cluster::builder().install(&install).segment_size_mb(1).start();
    primary.psql("CREATE TABLE t (id bigint, pad text)");
    let failover = primary.standby();
    let archive = tempfile::tempdir().unwrap();
    let conninfo = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres application_name=walkeeper target_session_attrs=read-write",
        primary.port(),
        failover.port()
    );
    let receiver = Receiver::start_conninfo(&conninfo, archive.path(), ReceiverOptions::default());
    let ws = Walsender::start(archive.path(), Some(receiver.feed()), USERS, None);
    let mut live = primary.standby_copy();
    let mut after = primary.standby_copy();
    live.start_standby(&[&ws.primary_conninfo("standby", "s3cret", "live")]);
    primary.psql("INSERT INTO t SELECT g, 'timeline 1' FROM generate_series(1, 5000) g");
    primary.generate_wal(2);
    wait_same_rows(&primary, &live, "before the failover");

    // Switchover: the old primary sends all it has, the standby takes over on timeline 2.
    let end = primary.current_lsn();
    primary.stop();
    failover.wait_for_replay(end);
    failover.promote();
    failover.psql("INSERT INTO t SELECT g, 'timeline 2' FROM generate_series(1, 3000) g");
    failover.generate_wal(2);
    failover.psql("INSERT INTO t SELECT g, 'timeline 2 again' FROM generate_series(1, 10) g");
    assert!(
        wait_until(TIMEOUT, || receiver.state().timeline == Some(2)),
        "walkeeper did not follow the failover: {:?}",
        receiver.state()
    );
    assert!(archive.path().join("00000002.history").exists());
    wait_same_rows(&failover, &live, "a standby streaming through the switch");

    after.start_standby(&[&ws.primary_conninfo("standby", "s3cret", "after")]);
    wait_same_rows(&failover, &after, "a standby started after the failover");
    for standby in [&live, &after] {
        assert_eq!(standby.psql("SELECT received_tli FROM pg_stat_wal_receiver"), "2");
    }
}
