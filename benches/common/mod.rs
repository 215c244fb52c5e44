//! What every end-to-end bench needs: its knobs from the environment, the release binary next to it, the cost
//! of a process run, and medians. (Each bench uses some of these.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Whether `cargo bench` runs this bench. `cargo test --all-targets` runs benches too, in test mode and
/// without `--bench`: a bench that starts servers and measures for minutes then says it skipped, and does
/// nothing.
pub fn benchmarking(name: &str) -> bool {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        println!("{name}: skipped (run with `cargo bench --bench {name}`)");
    }
    bench
}

/// A knob: the environment variable `name` as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The release `walkeeper` binary: benches build in release, and it sits in the bench executable's parent
/// directory.
pub fn walkeeper_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("walkeeper");
    assert!(bin.exists(), "{} not built: run `cargo build --release` first", bin.display());
    bin
}

/// The median; NaN for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// What one process run cost: wall time and its user+sys CPU time in seconds, and its peak RSS.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub wall: f64,
    pub cpu: f64,
    pub max_rss_kb: i64,
}

/// Runs `cmd` to completion and measures it (rusage from `wait4`); panics with its stderr unless it exits
/// with one of `codes`.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also yields its rusage
pub fn measure(cmd: &mut Command, codes: &[i32]) -> Cost {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let started = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(log.reopen().expect("log")).spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(rc, pid, "wait4 failed");
    let ok = libc::WIFEXITED(status) && codes.contains(&libc::WEXITSTATUS(status));
    assert!(ok, "{cmd:?} failed ({status}): {}", std::fs::read_to_string(log.path()).unwrap_or_default());
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cost { wall, cpu: secs(usage.ru_utime) + secs(usage.ru_stime), max_rss_kb: usage.ru_maxrss }
}

/// A bench report's title and the machine it ran on.
pub fn report_header(title: &str) -> String {
    format!(
        "## {title}\n\nMachine: {} cores, PostgreSQL 15 (Debian), walkeeper {} release build.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        env!("CARGO_PKG_VERSION")
    )
}

/// Print the report, and write it to the file the environment variable `out` names, if it is set.
pub fn publish_report(report: &str, out: &str) {
    println!("{report}");
    if let Ok(path) = std::env::var(out) {
        std::fs::write(&path, report).expect("write report");
    }
}
