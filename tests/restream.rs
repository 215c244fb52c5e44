//! A compressed segment streamed again (issue 11, finding 5): walkeeper stopped with a `.zst.partial` holding
//! acknowledged WAL, then a new run streams that segment again from its start and loses its server 64 kB in.
//! The old `.partial` must still hold everything it held (before, it was truncated to what the new run had
//! received), and a later run must complete the segment identical to the server's.

mod durability;
mod support;

use durability::{check_archive, read_archive_file, reported_flush, switch_and_wait, Comp, Walkeeper};
use std::time::Duration;
use support::proxy::{self, Then};
use support::{format_lsn, wait_until, walkeeper, Cluster, Run};

const TIMEOUT: Duration = Duration::from_secs(60);
/// WAL the proxy lets through before it cuts the connection.
const CUT_AFTER: usize = 64 * 1024;

#[test]
fn compressed_restream_cut_short_keeps_the_acknowledged_partial() {
    let cluster = Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '1GB'").start();
    cluster.psql("SELECT pg_create_physical_replication_slot('rs', true)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = durability::archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");

    // A segment about two thirds full, streamed and acknowledged, then a clean stop: its `.zst.partial`.
    cluster.switch_wal();
    cluster.psql(
        "SELECT pg_logical_emit_message(false, 'restream', repeat('x', 2000)) FROM generate_series(1, 330)",
    );
    let insert = || support::parse_lsn(&cluster.psql("SELECT pg_current_wal_insert_lsn()"));
    let end = insert();
    let seg = cluster.segment_size();
    let segment = durability::segment_name(1, end / seg, seg);
    assert_eq!(end / seg, (end - 660_000) / seg, "{segment}: the messages stay in one segment");
    let wk = Walkeeper::start(&cluster, &dir, &["-S", "rs", "-Z", "zstd", "-s", "1"], &log);
    let acked = wait_until(TIMEOUT, || reported_flush(&cluster).is_some_and(|f| f >= end));
    assert!(acked, "walkeeper did not acknowledge {}\n{}", format_lsn(end), wk.log_tail(30));
    assert!(wk.terminate().success());
    let partial = format!("{segment}.zst.partial");
    let old = read_archive_file(&dir, &partial, Comp::Zstd).expect("the .partial");
    let offset = (end % seg) as usize;
    assert!(old.len() >= offset, "the .partial holds {} bytes, {offset} were acknowledged", old.len());

    // Streamed again through a server that dies 64 kB into the segment.
    let proxy = proxy::start(cluster.port(), || {
        let mut wal = 0;
        move |frame: &mut proxy::Frame| {
            wal += frame.wal_len().unwrap_or(0);
            if wal >= CUT_AFTER {
                Then::Cut
            } else {
                Then::Continue
            }
        }
    });
    let conninfo = format!("host=127.0.0.1 port={proxy} user=postgres sslmode=disable");
    let mut cmd = walkeeper();
    cmd.args(["receive", "-n", "-v", "-S", "rs", "-Z", "zstd", "-d", &conninfo]).arg("-D").arg(&dir);
    let run = Run::within(&mut cmd, TIMEOUT);
    let stderr = &run.stderr;
    assert_eq!(run.code, Some(1), "a lost server ends `receive -n` with an error\n{run}");
    let kept = read_archive_file(&dir, &partial, Comp::Zstd).expect("the .partial");
    assert!(
        kept.len() >= old.len(),
        "the re-stream cut after {CUT_AFTER} bytes left {} of the {} bytes the .partial held\n{stderr}",
        kept.len(),
        old.len()
    );
    assert!(!dir.join(format!("{partial}.tmp")).exists(), "the new stream's temporary file is removed");
    check_archive(&cluster, &dir, Comp::Zstd, true).unwrap_or_else(|e| panic!("{e}\n{stderr}"));

    // A run with its server completes the segment, identical to the server's.
    let wk = Walkeeper::start(&cluster, &dir, &["-S", "rs", "-Z", "zstd", "-s", "1"], &log);
    let done = switch_and_wait(&cluster, &dir, Comp::Zstd, &wk);
    assert_eq!(done, segment);
    assert!(wk.terminate().success());
    check_archive(&cluster, &dir, Comp::Zstd, true).unwrap_or_else(|e| panic!("{e}"));
}
