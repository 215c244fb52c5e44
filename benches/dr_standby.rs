//! A DR standby catching up through walkeeper against the same standby catching up from the primary
//! directly: copies of one base backup (taken before a WAL backlog was written) are started alternately
//! (A B A B) with primary_conninfo to the primary and to walkeeper's walsender, and timed until they have
//! replayed the whole backlog. Reports medians and walkeeper/primary ratios; asserts nothing.
//!
//! `cargo bench --bench dr_standby` — knobs (environment):
//!   DR_WAL_MB    backlog size (default 512)
//!   DR_ROUNDS    rounds per source (default 3)
//!   DR_OUT       also write the markdown report to this file
//!
//! walkeeper runs in this process (its receive loop archives the primary, its walsender serves the
//! archive), so the bench build is the release build of the library. Both standbys and the primary run
//! with the harness's settings (fsync off): what is compared is the sending side and the stream.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;
use common::{benchmarking, env_u64, median, publish_report};

use std::time::{Duration, Instant};
use support::walsender::{Receiver, ReceiverOptions, Walsender};
use support::{format_lsn, Cluster};

/// User and system CPU seconds of this process so far (walkeeper's receive loop and walsender).
fn own_cpu() -> f64 {
    // SAFETY: rusage is plain data, filled by getrusage for this process.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Primary,
    Walkeeper,
}

fn main() {
    if !benchmarking("dr_standby") {
        return;
    }
    if std::env::var_os("RUST_LOG").is_none() {
        // walkeeper's progress lines would drown the report.
        std::env::set_var("RUST_LOG", "walkeeper=warn");
    }
    let wal_mb = env_u64("DR_WAL_MB", 512);
    let rounds = env_u64("DR_ROUNDS", 3) as usize;
    let mut primary = Cluster::builder()
        .conf(&format!("wal_keep_size = '{}MB'", wal_mb * 2 + 256))
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .start();
    primary.psql("SELECT pg_create_physical_replication_slot('walkeeper', true)");
    let archive = tempfile::tempdir_in(std::env::temp_dir()).expect("archive dir");
    let opts = ReceiverOptions { slot: Some("walkeeper".into()), ..ReceiverOptions::default() };
    let receiver = Receiver::start(&primary, archive.path(), opts);
    let ws = Walsender::start(archive.path(), Some(receiver.feed()), &[("standby", "bench")], None);

    // One copy of the same state per run, all taken before the backlog.
    let mut copies: Vec<Cluster> = (0..rounds * 2).map(|_| primary.standby_copy()).collect();
    let start = primary.current_lsn();
    eprintln!("dr_standby: writing {wal_mb} MB of WAL");
    primary.generate_wal(wal_mb);
    let end = primary.current_lsn();
    primary.switch_wal();
    assert!(receiver.wait_flushed(end), "walkeeper did not archive the backlog: {:?}", receiver.state());
    eprintln!("dr_standby: backlog {} .. {} archived", format_lsn(start), format_lsn(end));

    let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn", format_lsn(end));
    let mut seconds = [Vec::new(), Vec::new()];
    let mut cpu = Vec::new();
    for round in 0..rounds {
        for (i, upstream) in [Upstream::Primary, Upstream::Walkeeper].into_iter().enumerate() {
            let mut standby = copies.pop().expect("a copy per run");
            let conninfo = match upstream {
                Upstream::Primary => format!(
                    "primary_conninfo = 'host={} port={} user=postgres application_name=bench'",
                    primary.host(),
                    primary.port()
                ),
                Upstream::Walkeeper => ws.primary_conninfo("standby", "bench", "bench"),
            };
            let cpu_before = own_cpu();
            let t = Instant::now();
            standby.start_standby(&[&conninfo]);
            let deadline = Instant::now() + Duration::from_secs(1800);
            while standby.try_psql(&caught_up).as_deref() != Ok("t") {
                assert!(Instant::now() < deadline, "standby never caught up:\n{}", standby.server_log());
                std::thread::sleep(Duration::from_millis(20));
            }
            let s = t.elapsed().as_secs_f64();
            let name = if upstream == Upstream::Primary { "primary" } else { "walkeeper" };
            eprintln!("dr_standby: round {round} from {name}: {s:.2} s ({:.0} MB/s)", wal_mb as f64 / s);
            seconds[i].push(s);
            if upstream == Upstream::Walkeeper {
                cpu.push(own_cpu() - cpu_before);
            }
        }
    }
    let (direct, through) = (median(seconds[0].clone()), median(seconds[1].clone()));
    let rate = |s: f64| wal_mb as f64 / s;
    let report = format!(
        "### DR standby catch-up: {wal_mb} MB of WAL, {rounds} rounds A B A B\n\n\
         | standby streams from | seconds (median) | MB/s | each run, s |\n|---|---|---|---|\n\
         | the primary | {direct:.2} | {:.0} | {} |\n\
         | walkeeper | {through:.2} | {:.0} | {} |\n\n\
         Rate through walkeeper / directly: **{:.2}**. walkeeper's CPU while serving (receive loop idle, \
         walsender reading, checking and sending): {:.2} s median per run, {:.2} s per GB.\n",
        rate(direct),
        seconds[0].iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" "),
        rate(through),
        seconds[1].iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" "),
        direct / through,
        median(cpu.clone()),
        median(cpu) * 1024.0 / wal_mb as f64,
    );
    publish_report(&report, "DR_OUT");
}
