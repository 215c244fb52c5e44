//! Reconnects and server shutdowns: without `-n` walkeeper survives a server restart and an outage,
//! reconnecting within a bounded backoff and resuming without a gap; with `-n` a server shutdown ends it with
//! a non-zero exit, after the last WAL the server sent (up to its shutdown checkpoint) is in the archive and
//! acknowledged. And a full disk: a clear error, no flush reported beyond the directory, resumption without
//! a gap once space returns.

mod durability;
mod support;

use durability::{
    check_archive, check_covers, elapsed, poll, replication_row, reported_flush, slot_restart_lsn,
    switch_and_wait, wait_streaming, Comp, Walkeeper,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{format_lsn, parse_lsn, pg_tool, wait_until, Cluster};
use walkeeper::wal::decoder::{page_magic_for_major, DecoderConfig, WalDecoder};
use walkeeper::wal::Lsn;

fn primary(slot: &str, extra_conf: &[&str]) -> Cluster {
    let mut b = Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '4GB'");
    for line in extra_conf {
        b = b.conf(line);
    }
    let c = b.start();
    c.psql(&format!("SELECT pg_create_physical_replication_slot('{slot}', true)"));
    c
}

/// The walsender pid serving walkeeper, when it streams.
fn walsender_pid(cluster: &Cluster) -> Option<String> {
    cluster
        .try_psql(
            "SELECT pid FROM pg_stat_replication WHERE application_name = 'walkeeper' AND state = 'streaming'",
        )
        .ok()
        .filter(|s| !s.is_empty())
}

/// How many times walkeeper has logged that it waits before reconnecting.
fn retries(wk: &Walkeeper) -> usize {
    wk.log_text().matches("seconds to try again").count()
}

/// Waits until walkeeper streams on a walsender other than `old`; returns how long that took.
fn wait_reconnected(cluster: &Cluster, wk: &Walkeeper, old: &str, bound: Duration, what: &str) -> Duration {
    let since = Instant::now();
    let ok = wait_until(Duration::from_secs(30), || walsender_pid(cluster).is_some_and(|p| p != old));
    let took = since.elapsed();
    assert!(ok, "walkeeper did not reconnect within 30 s after {what}\n{}", wk.log_tail(30));
    assert!(took <= bound, "walkeeper took {took:?} to reconnect after {what}, more than {bound:?}");
    took
}

#[test]
fn reconnects_after_restart_and_outage_without_gap() {
    let started = Instant::now();
    let mut cluster = primary("rc", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = durability::archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");
    let start_lsn = cluster.current_lsn();
    let wk = Walkeeper::start(&cluster, &dir, &["-S", "rc", "-s", "1"], &log);
    wait_streaming(&cluster, &wk, Duration::from_secs(30));
    cluster.generate_wal(2);

    // Restart (fast shutdown, then start): one failed session, reconnect after the first backoff step.
    let pid = walsender_pid(&cluster).unwrap();
    cluster.restart();
    let after_restart = wait_reconnected(&cluster, &wk, &pid, Duration::from_secs(8), "a server restart");
    // The walsender ended the stream at the planned shutdown: one information line, not an error.
    let text = wk.log_text();
    assert!(text.contains(": server ended streaming; reconnecting"), "{}", wk.log_tail(30));
    assert!(!text.contains("CommandComplete"), "{}", wk.log_tail(30));
    cluster.generate_wal(2);

    // Outage: the server is down through two reconnect attempts (1 s, 2 s), then back.
    let pid = walsender_pid(&cluster).unwrap();
    let before = retries(&wk);
    cluster.stop();
    let ok = wait_until(Duration::from_secs(20), || retries(&wk) >= before + 2);
    assert!(ok, "walkeeper did not retry while the server was down\n{}", wk.log_tail(30));
    cluster.start_again();
    let after_outage = wait_reconnected(&cluster, &wk, &pid, Duration::from_secs(10), "an outage");
    cluster.generate_wal(2);

    let mut wk = wk;
    assert!(wk.is_running());
    let last = switch_and_wait(&cluster, &dir, Comp::None, &wk);
    let end = cluster.current_lsn();
    assert!(wk.terminate().success());
    let c = check_archive(&cluster, &dir, Comp::None, true).unwrap_or_else(|e| panic!("{e}"));
    let last_end = (end / cluster.segment_size()) * cluster.segment_size();
    check_covers(&cluster, &dir, Comp::None, start_lsn, last_end).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "reconnect: after restart {:.1}s, after outage {:.1}s; archive {} complete + {} partial up to {last}, \
         {} MiB equal to the server's; {}",
        after_restart.as_secs_f64(),
        after_outage.as_secs_f64(),
        c.complete,
        c.partial,
        c.bytes >> 20,
        elapsed(started)
    );
}

/// End of the record at `lsn` in the server's pg_wal, found by walkeeper's own decoder (pg_waldump 15 cannot
/// read the WAL of other majors). The server may be down: only its files are read.
fn record_end(cluster: &Cluster, lsn: u64) -> u64 {
    let seg = cluster.segment_size();
    let segment_start = lsn - lsn % seg;
    let name = durability::segment_name(1, segment_start / seg, seg);
    let bytes = std::fs::read(cluster.data_dir().join("pg_wal").join(&name)).expect("segment of the record");
    let cfg = DecoderConfig {
        segment_size: seg as u32,
        page_magic: page_magic_for_major(cluster.major()).expect("a known major"),
        system_id: None,
        timeline: 1,
    };
    let mut end = None;
    let mut decoder = WalDecoder::new(cfg, Lsn(segment_start));
    // The tail of the segment after the shutdown checkpoint may be unwritten: stop at the first error.
    let _ = decoder.feed_with(&bytes, |r| {
        if r.lsn == Lsn(lsn) {
            end = Some(r.end.0);
        }
    });
    end.unwrap_or_else(|| panic!("no record at {} in {name}", format_lsn(lsn)))
}

fn latest_checkpoint(cluster: &Cluster) -> u64 {
    let out = Command::new(pg_tool("pg_controldata")).arg(cluster.data_dir()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("Latest checkpoint location:"))
        .unwrap_or_else(|| panic!("pg_controldata: {text}"));
    parse_lsn(line.split(':').nth(1).unwrap())
}

#[test]
fn no_loop_exits_nonzero_on_shutdown_with_the_last_wal_archived() {
    let started = Instant::now();
    // A walsender waits up to wal_sender_timeout at shutdown for the standby to confirm everything: a quick
    // shutdown shows walkeeper answered the server's reply request with the final flush position.
    let mut cluster = primary("nl", &["wal_sender_timeout = '30s'"]);
    cluster.segment_size(); // asked of the server once: later checks run while it is down
    let tmp = tempfile::tempdir().unwrap();
    let dir = durability::archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");
    let start_lsn = cluster.current_lsn();
    // A long status interval: only the answer to the server's reply request can confirm the last WAL.
    let mut wk = Walkeeper::start(&cluster, &dir, &["-n", "-S", "nl", "-s", "100"], &log);
    wait_streaming(&cluster, &wk, Duration::from_secs(30));
    cluster.generate_wal(1);
    cluster.psql("SELECT pg_logical_emit_message(false, 'durability', 'just before the shutdown')");

    let stopping = Instant::now();
    cluster.stop();
    let stop_took = stopping.elapsed();
    let status = wk.wait_timeout(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!("walkeeper -n still runs 30 s after the server stopped\n{}", wk.log_tail(20))
    });
    assert!(!status.success(), "walkeeper -n exited with {status} after the server shut down");
    assert!(!wk.log_text().contains("panicked"), "{}", wk.log_tail(20));
    // The one error line of -n says what happened: a planned shutdown ended the stream.
    assert!(
        wk.log_text().lines().any(|l| l.starts_with("walkeeper: error: ")
            && l.ends_with(": server ended streaming (shutdown or switchover)")),
        "{}",
        wk.log_tail(20)
    );
    assert!(
        stop_took < Duration::from_secs(10),
        "the server's fast shutdown took {stop_took:?}: its walsender waited for walkeeper's confirmation"
    );

    // Everything up to the end of the shutdown checkpoint record is in the archive.
    let checkpoint = latest_checkpoint(&cluster);
    let end = record_end(&cluster, checkpoint);
    check_covers(&cluster, &dir, Comp::None, start_lsn, end)
        .unwrap_or_else(|e| panic!("{e}\n{}", wk.log_tail(20)));
    let c = check_archive(&cluster, &dir, Comp::None, true).unwrap_or_else(|e| panic!("{e}"));

    // The next run resumes from the archive after the server is back: no gap.
    cluster.start_again();
    let mut wk = Walkeeper::start(&cluster, &dir, &["-n", "-S", "nl"], &log);
    wait_streaming(&cluster, &wk, Duration::from_secs(30));
    switch_and_wait(&cluster, &dir, Comp::None, &wk);
    wk.signal(libc::SIGTERM);
    assert!(wk.wait_timeout(Duration::from_secs(30)).is_some_and(|s| s.success()));
    check_archive(&cluster, &dir, Comp::None, true).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "no-loop shutdown: exit {status}, fast shutdown took {:.1}s, archive covers up to the end of the shutdown \
         checkpoint {} ({} complete + {} partial); {}",
        stop_took.as_secs_f64(),
        format_lsn(end),
        c.complete,
        c.partial,
        elapsed(started)
    );
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn available(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_reports_an_error_never_overclaims_and_resumes() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let fs = match Tmpfs::mount(&tmp.path().join("mnt"), "6m") {
        Ok(fs) => fs,
        Err(e) => {
            support::cannot_run(&format!("the disk-full test needs to mount a tmpfs: {}", e.trim()));
            return;
        }
    };
    let dir = durability::archive_dir(&fs.0);
    let log = tmp.path().join("walkeeper.log");
    let cluster = primary("df", &[]);
    let start_lsn = cluster.current_lsn();
    let seg = cluster.segment_size();
    let mut wk = Walkeeper::start(&cluster, &dir, &["-S", "df", "-s", "1", "--synchronous"], &log);
    wait_streaming(&cluster, &wk, Duration::from_secs(30));

    // Leave less room than one more segment.
    let filler = fs.0.join("filler");
    let room = fs.available().saturating_sub(seg / 2);
    std::fs::write(&filler, vec![0u8; room as usize]).unwrap();
    let before = wk.log_text().len();
    cluster.generate_wal(1);
    let full = wait_until(Duration::from_secs(30), || {
        wk.log_text().get(before..).is_some_and(|t| t.contains("No space left on device"))
    });
    assert!(full, "walkeeper did not report the full disk\n{}", wk.log_tail(20));
    let error_line =
        wk.log_text()[before..].lines().find(|l| l.contains("No space left on device")).unwrap().to_string();
    assert!(error_line.contains(dir.to_str().unwrap()), "the error does not name the file: {error_line}");
    assert!(!wk.log_text().contains("panicked"), "{}", wk.log_tail(20));
    assert!(wk.is_running(), "walkeeper gave up on a full disk instead of retrying\n{}", wk.log_tail(20));

    // While the disk is full, what the server holds as flushed is in the directory.
    let mut samples = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for lsn in [reported_flush(&cluster), slot_restart_lsn(&cluster, "df")].into_iter().flatten() {
            if lsn > start_lsn {
                check_covers(&cluster, &dir, Comp::None, start_lsn, lsn)
                    .unwrap_or_else(|e| panic!("disk full: flush {} reported, but {e}", format_lsn(lsn)));
            }
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let flush_when_full = poll(Duration::from_secs(5), || slot_restart_lsn(&cluster, "df")).unwrap_or(0);
    let wal_end = cluster.current_lsn();
    assert!(
        flush_when_full < wal_end,
        "with the disk full the slot is at {}, the server at {}: nothing was held back",
        format_lsn(flush_when_full),
        format_lsn(wal_end)
    );

    // Space returns: walkeeper resumes by itself, without a gap.
    std::fs::remove_file(&filler).unwrap();
    let name = switch_and_wait(&cluster, &dir, Comp::None, &wk);
    let end = cluster.current_lsn();
    assert!(wk.is_running());
    let caught_up =
        wait_until(Duration::from_secs(30), || reported_flush(&cluster).is_some_and(|f| f >= end));
    assert!(caught_up, "flush did not catch up after space returned: {:?}", replication_row(&cluster));
    assert!(wk.terminate().success());
    let c = check_archive(&cluster, &dir, Comp::None, true).unwrap_or_else(|e| panic!("{e}"));
    check_covers(&cluster, &dir, Comp::None, start_lsn, (end / seg) * seg).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "disk full: error {:?}; {samples} flush samples while full (slot held at {} < {}); resumed up to {name} \
         ({} complete + {} partial, no gap); {}",
        error_line.trim(),
        format_lsn(flush_when_full),
        format_lsn(wal_end),
        c.complete,
        c.partial,
        elapsed(started)
    );
    drop(fs);
}
