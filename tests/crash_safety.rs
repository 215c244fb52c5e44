//! Crash safety (DESIGN.md invariants 1–4): walkeeper is killed with SIGKILL at pseudo-random moments while
//! a primary with small segments writes continuously, and restarted each time. After every kill, every
//! complete segment in the archive must equal the server's pg_wal file and every `.partial` must be a
//! prefix of it; at the end, after a final clean run, the archive must hold every segment from the first to
//! the last without a gap. A second test checks that the flush position the server holds (for a
//! `--synchronous` standby with a slot) never runs ahead of the bytes in the directory.
//!
//! SIGKILL loses the process, not the page cache: these tests prove the on-disk protocol (names, renames,
//! restart point, what is acknowledged), not the fsync calls themselves against power loss.

mod durability;
mod support;

use durability::{
    check_archive, check_covers, elapsed, reported_flush, reported_write, segment_name, slot_restart_lsn,
    wait_streaming, Comp, Load, Rng, Walkeeper,
};
use std::time::{Duration, Instant};
use support::{format_lsn, Cluster};

fn primary() -> Cluster {
    Cluster::builder()
        .segment_size_mb(1)
        // The server keeps every segment, so the archive can be compared with pg_wal at the end.
        .conf("wal_keep_size = '8GB'")
        .conf("max_wal_size = '256MB'")
        .start()
}

/// `walkeeper receive --create-slot -S slot`.
/// A physical slot that reserves WAL from now on, so the archive must cover everything from here (on 13/14
/// walkeeper reads the slot's position over SQL, on 15+ with READ_REPLICATION_SLOT).
fn create_slot(cluster: &Cluster, slot: &str) {
    cluster.psql(&format!("SELECT pg_create_physical_replication_slot('{slot}', true)"));
    let reserved = cluster.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND restart_lsn IS NOT NULL"
    ));
    assert_eq!(reserved, "1", "slot {slot} does not reserve WAL");
}

fn kill_restart_cycles(test: &str, comp: Comp, budget: Duration, max_cycles: usize) {
    let started = Instant::now();
    let mut rng = Rng::from_env_or_time(test);
    let cluster = primary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = durability::archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");
    create_slot(&cluster, "crash");
    let start_lsn = cluster.current_lsn();
    let seg_size = cluster.segment_size();
    let mut load = Load::start(&cluster, 200);

    let mut base = vec!["-S", "crash"];
    if comp == Comp::Zstd {
        base.extend(["-Z", "zstd"]);
    }
    let mut synchronous_runs = 0;
    let mut cycles = 0;
    let mut checked_bytes = 0u64;
    let mut delays = Vec::new();
    let mut acked_checks = 0;
    while cycles < max_cycles && started.elapsed() < budget {
        // Half of the runs flush and report after every write (--synchronous), the others every second.
        let mut args = base.clone();
        if rng.range(0, 1) == 1 {
            args.push("--synchronous");
            synchronous_runs += 1;
        } else {
            args.extend(["-s", "1"]);
        }
        let mut wk = Walkeeper::start(&cluster, &dir, &args, &log);
        let delay = rng.range(50, 1500);
        delays.push(delay);
        std::thread::sleep(Duration::from_millis(delay)); // the deliberate random kill moment
        load.assert_running();
        assert!(wk.is_running(), "walkeeper exited on its own in cycle {cycles}\n{}", wk.log_tail(40));
        wk.kill9();
        cycles += 1;
        // After the crash, before the restart: what is on disk must already be right, and must hold
        // everything the server was told is flushed (the slot's restart_lsn).
        if let Some(restart) = slot_restart_lsn(&cluster, "crash").filter(|&l| l > start_lsn) {
            if let Err(e) = check_covers(&cluster, &dir, comp, start_lsn, restart) {
                panic!(
                    "after kill -9 number {cycles}: the slot's restart_lsn is {}, but {e}",
                    format_lsn(restart)
                );
            }
            acked_checks += 1;
        }
        match check_archive(&cluster, &dir, comp, true) {
            Ok(c) => checked_bytes += c.bytes,
            Err(e) => {
                let files: Vec<String> =
                    durability::list_archive(&dir, seg_size, comp).iter().map(|f| f.name.clone()).collect();
                panic!(
                    "after kill -9 number {cycles} ({delay} ms after start): {e}\nfiles: {files:?}\n{}",
                    std::fs::read_to_string(&log).map(|l| tail(&l, 40)).unwrap_or_default()
                );
            }
        }
    }
    load.stop();

    // A final clean run to an end position: the end of a segment switch record. walkeeper stops by itself.
    cluster.psql("SELECT pg_logical_emit_message(false, 'durability', 'final')");
    let endpos = support::parse_lsn(&cluster.psql("SELECT pg_switch_wal()"));
    let endpos_text = format_lsn(endpos);
    let mut final_args = base.clone();
    final_args.extend(["-E", endpos_text.as_str()]);
    let mut wk = Walkeeper::start(&cluster, &dir, &final_args, &log);
    let status = wk.wait_timeout(Duration::from_secs(60)).unwrap_or_else(|| {
        panic!("walkeeper -E {endpos_text} did not stop within 60 s\n{}", wk.log_tail(30))
    });
    assert!(status.success(), "walkeeper -E {endpos_text} exited with {status}\n{}", wk.log_tail(30));
    let c = check_archive(&cluster, &dir, comp, true).unwrap_or_else(|e| panic!("final archive: {e}"));
    let last = segment_name(1, (endpos - 1) / seg_size, seg_size);
    assert!(
        c.last >= (endpos - 1) / seg_size,
        "the archive ends before {last}, the segment of -E {endpos_text}"
    );
    assert!(
        c.first <= start_lsn / seg_size,
        "the archive starts at segment {} but streaming should have started at or before {}",
        c.first,
        format_lsn(start_lsn)
    );
    check_covers(&cluster, &dir, comp, start_lsn, endpos).unwrap_or_else(|e| panic!("final archive: {e}"));
    assert!(
        c.last - c.first >= 10,
        "too little WAL went through the test ({} segments)",
        c.last - c.first + 1
    );
    println!(
        "{test}: {cycles} kill -9 cycles ({synchronous_runs} with --synchronous; delays ms: {delays:?}); slot \
         restart_lsn covered by the archive after {acked_checks} kills; final run stopped at -E {endpos_text} \
         (segment {last}); archive segments {}..{} ({} complete, {} partial), \
         {} MiB compared after kills, {} MiB in the final comparison; {}",
        segment_name(1, c.first, seg_size),
        segment_name(1, c.last, seg_size),
        c.complete,
        c.partial,
        checked_bytes >> 20,
        c.bytes >> 20,
        elapsed(started)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    format!("--- walkeeper log tail ---\n{}", all[all.len().saturating_sub(lines)..].join("\n"))
}

#[test]
fn kill9_under_load_never_leaves_a_bad_or_missing_segment() {
    kill_restart_cycles("kill9 (uncompressed)", Comp::None, Duration::from_secs(60), 25);
}

#[test]
fn kill9_under_load_zstd() {
    kill_restart_cycles("kill9 (zstd)", Comp::Zstd, Duration::from_secs(30), 15);
}

/// While streaming with `--synchronous` and a slot under load, the flush LSN the server holds for
/// walkeeper (pg_stat_replication.flush_lsn), its write LSN and the slot's restart_lsn never exceed what
/// is in the directory: every byte before them is there, equal to the server's WAL.
#[test]
fn reported_flush_never_beyond_the_directory() {
    let cluster = primary();
    create_slot(&cluster, "flush");
    reported_positions_never_beyond_the_directory(&cluster, Some("flush"), &["--synchronous", "-s", "1"], 2);
}

/// Without a slot, `--synchronous` or status interval, walkeeper only answers the server's keepalive
/// requests (every second here), with a write position and no sync: the bytes it claims may still sit
/// in the direct-I/O staging buffer unless it writes them out first.
#[test]
fn reported_write_never_beyond_the_directory() {
    let cluster = Cluster::builder()
        .segment_size_mb(1)
        .conf("wal_keep_size = '8GB'")
        .conf("max_wal_size = '256MB'")
        .conf("wal_sender_timeout = '2s'")
        .start();
    reported_positions_never_beyond_the_directory(&cluster, None, &["-s", "0"], 1);
}

/// Sample the positions the server holds for walkeeper for 20 s under load and check the directory
/// covers each; `moving` is the column (1 write, 2 flush) that must have moved at least 10 times.
fn reported_positions_never_beyond_the_directory(
    cluster: &Cluster,
    slot: Option<&str>,
    args: &[&str],
    moving: usize,
) {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = durability::archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");
    let slot_start = cluster.current_lsn();
    let mut load = Load::start(cluster, 150);
    let mut wk_args: Vec<&str> = slot.map(|s| vec!["-S", s]).unwrap_or_default();
    wk_args.extend(args);
    let wk = Walkeeper::start(cluster, &dir, &wk_args, &log);
    wait_streaming(cluster, &wk, Duration::from_secs(30));
    // With a slot, streaming starts where it reserved WAL; without one, at the start of the server's
    // segment of the moment, the first file in the directory.
    let start_lsn = match slot {
        Some(_) => slot_start,
        None => {
            let first =
                durability::list_archive(&dir, cluster.segment_size(), Comp::None).first().map(|f| f.segno);
            first.expect("no segment in the directory after streaming started") * cluster.segment_size()
        }
    };
    let mut samples = 0;
    let mut highest = 0u64;
    let mut distinct = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        load.assert_running();
        // Read the server's view first: files only grow, so they must already hold what it reports.
        let write = reported_write(cluster);
        let flush = reported_flush(cluster);
        let restart = slot.and_then(|slot| slot_restart_lsn(cluster, slot));
        for (what, lsn) in [("write_lsn", write), ("flush_lsn", flush), ("restart_lsn", restart)] {
            let Some(lsn) = lsn else { continue };
            if lsn <= start_lsn {
                continue;
            }
            check_covers(cluster, &dir, Comp::None, start_lsn, lsn).unwrap_or_else(|e| {
                panic!(
                    "the server holds {what} {} for walkeeper ({args:?}), but {e}\n{}",
                    format_lsn(lsn),
                    wk.log_tail(30)
                )
            });
        }
        if let Some(lsn) = if moving == 1 { write } else { flush } {
            highest = highest.max(lsn);
            distinct.insert(lsn);
        }
        samples += 1;
    }
    load.stop();
    assert!(
        distinct.len() >= 10,
        "the reported position moved only {} times in 20 s under load: nothing was proven",
        distinct.len()
    );
    // The directory as a whole is consistent too.
    let c = check_archive(cluster, &dir, Comp::None, true).unwrap_or_else(|e| panic!("{e}"));
    drop(wk);
    println!(
        "{args:?}: positions never beyond disk: {samples} samples, {} distinct positions, up to {} ({} MiB \
         after the start), archive {} complete + {} partial; {}",
        distinct.len(),
        format_lsn(highest),
        (highest - start_lsn) >> 20,
        c.complete,
        c.partial,
        elapsed(started)
    );
}

/// kill -9 while walkeeper preallocates a new segment (64 MiB of zeros, so the window is wide): whatever the
/// kill leaves must not stop the next start, which streams and acknowledges WAL again.
#[test]
fn kill9_while_preallocating_never_blocks_the_restart() {
    let started = Instant::now();
    let mut rng = Rng::from_env_or_time("kill9 while preallocating");
    let cluster = Cluster::builder().segment_size_mb(64).start();
    let seg_size = cluster.segment_size();
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("walkeeper.log");
    let (mut attempts, mut hits) = (0, 0);
    let mut left_behind = Vec::new();
    while attempts < 12 && hits < 3 {
        attempts += 1;
        let dir = tmp.path().join(format!("archive{attempts}"));
        std::fs::create_dir(&dir).unwrap();
        let wk = Walkeeper::start(&cluster, &dir, &["--synchronous"], &log);
        // As soon as the first file appears, kill within a few milliseconds: mostly while it is padded.
        let deadline = Instant::now() + Duration::from_secs(20);
        while support::names(&dir).is_empty() {
            assert!(Instant::now() < deadline, "walkeeper created no file in 20 s\n{}", wk.log_tail(20));
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(rng.range(0, 20))); // the deliberate random kill moment
        wk.kill9();
        let files: Vec<(String, u64)> = support::names(&dir)
            .into_iter()
            .map(|name| {
                let len = std::fs::metadata(dir.join(&name)).map_or(0, |m| m.len());
                (name, len)
            })
            .collect();
        if files.iter().any(|(_, len)| *len < seg_size) {
            hits += 1;
            left_behind.push(files.clone());
        }
        // The next start streams, and acknowledges what it wrote.
        let wk = Walkeeper::start(&cluster, &dir, &["--synchronous"], &log);
        let lsn = {
            cluster.psql("SELECT pg_logical_emit_message(false, 'durability', 'after the kill')");
            cluster.current_lsn()
        };
        let acked = support::wait_until(Duration::from_secs(15), || {
            reported_flush(&cluster).is_some_and(|f| f >= lsn)
        });
        assert!(
            acked,
            "after a kill -9 that left {files:?}, the restarted walkeeper did not acknowledge {} within 15 s\n{}",
            format_lsn(lsn),
            wk.log_tail(20)
        );
        check_archive(&cluster, &dir, Comp::None, true).unwrap_or_else(|e| panic!("after the restart: {e}"));
        wk.kill9();
    }
    assert!(hits >= 1, "none of {attempts} kills landed while a segment was being preallocated");
    println!(
        "kill9 while preallocating: {hits} of {attempts} kills left a file shorter than a segment ({left_behind:?}); \
         every restart streamed; {}",
        elapsed(started)
    );
}
