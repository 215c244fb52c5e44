//! `walkeeper service` measured against real PostgreSQL 15 (never asserted: speed is reported, not tested):
//!
//! 1. **catch-up**: four sources catching up on the same backlog at once, in one service, against four
//!    `pg_receivewal` processes doing the same (rounds alternate A B A B); wall time and CPU (user + sys of
//!    the processes, from `wait4`).
//! 2. **idle**: the resident memory of a service with 20 idle streaming sources (and, for scale, of 20 idle
//!    `pg_receivewal` processes).
//! 3. **scrape**: the cost of a `/metrics` scrape of that 20-source service: latency per request (a new
//!    connection each) and the service's CPU per scrape.
//!
//! `cargo bench --bench service` — knobs (environment):
//!   SERVICE_WAL_MB     backlog of the catch-up phase (default 512)
//!   SERVICE_ROUNDS     rounds of the catch-up phase (default 3)
//!   SERVICE_SCRAPES    scrapes timed (default 1000)
//!   SERVICE_PHASES     comma list of catchup,idle (idle includes scrape; default both)
//!   SERVICE_OUT        also write the markdown report to this file

#[path = "../tests/support/mod.rs"]
mod support;

mod common;
use common::{benchmarking, env_u64, median, publish_report, report_header};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{pg_tool, Cluster, WALKEEPER};

/// Wait for a child and return its CPU seconds (user + sys); panics if it failed.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also yields its rusage
fn reap(child: Child, what: &str) -> f64 {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4 failed");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{what} failed (status {status})");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// GET `path` on a new connection: the body.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

fn metric(page: &str, name: &str, source: &str) -> Option<u64> {
    let series = format!("{name}{{source=\"{source}\"}} ");
    page.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.parse().ok())
}

/// A service config listening on a free port with `sources`.
fn write_config(dir: &Path, sources: &str) -> (std::path::PathBuf, SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let file = dir.join("walkeeper.toml");
    std::fs::write(&file, format!("[service]\nlisten = \"{addr}\"\n\n{sources}")).unwrap();
    (file, addr)
}

fn source(name: &str, cluster: &Cluster, dir: &Path, slot: Option<&str>) -> String {
    let slot = slot.map(|s| format!("slot = \"{s}\"\n")).unwrap_or_default();
    format!(
        "[[source]]\nname = \"{name}\"\nconninfo = \"host={} port={} user=postgres application_name={name}\"\n\
         directory = \"{}\"\n{slot}\n",
        cluster.host(),
        cluster.port(),
        dir.display()
    )
}

fn start_service(config: &Path, log: &Path) -> Child {
    Command::new(WALKEEPER)
        .args(["service", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start walkeeper service")
}

fn catchup(report: &mut String) {
    let wal_mb = env_u64("SERVICE_WAL_MB", 512);
    let rounds = env_u64("SERVICE_ROUNDS", 3);
    const N: usize = 4;
    let cluster = Cluster::builder()
        .conf(&format!("wal_keep_size = '{}MB'", wal_mb * 2))
        .conf("max_replication_slots = 64")
        .conf("max_wal_senders = 20")
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .start();
    let slot = |tool: &str, round: u64, i: usize| format!("svc_{tool}_{round}_{i}");
    for r in 0..rounds {
        for tool in ["pgrw", "wk"] {
            for i in 0..N {
                cluster.psql(&format!(
                    "SELECT pg_create_physical_replication_slot('{}', true)",
                    slot(tool, r, i)
                ));
            }
        }
    }
    eprintln!("service bench: writing {wal_mb} MB of WAL");
    cluster.generate_wal(wal_mb);
    cluster.switch_wal();
    let end_lsn = cluster.current_lsn();
    let end = support::format_lsn(end_lsn);
    // Both stop at the first WAL beyond the end position: write some.
    cluster.switch_wal();
    // (wall, CPU) per round.
    let mut pg: Vec<(f64, f64)> = Vec::new();
    let mut wk: Vec<(f64, f64)> = Vec::new();
    for r in 0..rounds {
        // pg_receivewal: four processes, -n -E END.
        let dirs: Vec<tempfile::TempDir> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
        let started = Instant::now();
        let children: Vec<Child> = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Command::new(pg_tool("pg_receivewal"))
                    .args(["-h", cluster.host(), "-p", &cluster.port().to_string(), "-U", "postgres", "-w"])
                    .args(["-D", &d.path().to_string_lossy(), "-S", &slot("pgrw", r, i), "-n", "-E", &end])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("pg_receivewal")
            })
            .collect();
        let cpu: f64 = children.into_iter().map(|c| reap(c, "pg_receivewal")).sum();
        pg.push((started.elapsed().as_secs_f64(), cpu));
        drop(dirs);

        // The service: four sources; caught up once every source has received past END, then SIGTERM
        // (each source syncs and reports) and the process exits.
        let dirs: Vec<tempfile::TempDir> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
        let conf_dir = tempfile::tempdir().unwrap();
        let sources: String = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| source(&format!("s{i}"), &cluster, d.path(), Some(&slot("wk", r, i))))
            .collect();
        let (config, addr) = write_config(conf_dir.path(), &sources);
        let started = Instant::now();
        let child = start_service(&config, &conf_dir.path().join("log"));
        let caught_up = support::wait_until(Duration::from_secs(600), || {
            get(addr, "/metrics").is_some_and(|page| {
                (0..N).all(|i| {
                    metric(&page, "walkeeper_received_lsn_bytes", &format!("s{i}"))
                        .is_some_and(|l| l >= end_lsn)
                })
            })
        });
        assert!(
            caught_up,
            "the service did not catch up: {}",
            std::fs::read_to_string(conf_dir.path().join("log")).unwrap_or_default()
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let cpu = reap(child, "walkeeper service");
        wk.push((started.elapsed().as_secs_f64(), cpu));
        drop(dirs);
        eprintln!(
            "service bench: round {r}: pg_receivewal ×{N} {:.2}s wall {:.2}s CPU; service ×{N} {:.2}s wall {:.2}s CPU",
            pg[r as usize].0, pg[r as usize].1, wk[r as usize].0, wk[r as usize].1
        );
    }
    let (pw, pc) = (median(pg.iter().map(|x| x.0).collect()), median(pg.iter().map(|x| x.1).collect()));
    let (ww, wc) = (median(wk.iter().map(|x| x.0).collect()), median(wk.iter().map(|x| x.1).collect()));
    report.push_str(&format!(
        "\n### Four sources catching up at once: {wal_mb} MB backlog each, {rounds} rounds A B A B\n\n\
         | | wall s (median) | CPU s (median, all processes) |\n|---|---|---|\n\
         | 4 × pg_receivewal -n -E | {pw:.2} | {pc:.2} |\n\
         | walkeeper service, 4 sources | {ww:.2} | {wc:.2} |\n\
         | ratio | **{:.2}** | **{:.2}** |\n",
        ww / pw,
        wc / pc.max(1e-9)
    ));
}

/// VmRSS and VmHWM (kB) and the thread count of a process.
fn memory(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

/// user + sys CPU seconds a live process has used so far.
fn cpu_so_far(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / ticks
}

fn idle_and_scrape(report: &mut String) {
    const N: usize = 20;
    let scrapes = env_u64("SERVICE_SCRAPES", 1000);
    let cluster = Cluster::builder().conf("max_wal_senders = 50").start();
    let dirs: Vec<tempfile::TempDir> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
    let conf_dir = tempfile::tempdir().unwrap();
    let sources: String = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| source(&format!("idle{i:02}"), &cluster, d.path(), None))
        .collect();
    let (config, addr) = write_config(conf_dir.path(), &sources);
    let mut child = start_service(&config, &conf_dir.path().join("log"));
    let streaming = support::wait_until(Duration::from_secs(120), || {
        get(addr, "/health").is_some_and(|h| h.contains("\"healthy\": true"))
    });
    assert!(streaming, "20 sources never all streamed");
    // Let the first status interval pass: every source has synced and settled.
    std::thread::sleep(Duration::from_secs(12));
    let (rss, hwm, threads) = memory(child.id());

    // For scale: 20 idle pg_receivewal processes on the same server.
    let pg_dirs: Vec<tempfile::TempDir> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut pgrw: Vec<Child> = pg_dirs
        .iter()
        .map(|d| {
            Command::new(pg_tool("pg_receivewal"))
                .args(["-h", cluster.host(), "-p", &cluster.port().to_string(), "-U", "postgres", "-w"])
                .args(["-D", &d.path().to_string_lossy()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pg_receivewal")
        })
        .collect();
    let connected = support::wait_until(Duration::from_secs(60), || {
        cluster.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pg_receivewal'")
            == N.to_string()
    });
    assert!(connected, "20 pg_receivewal never connected");
    std::thread::sleep(Duration::from_secs(2));
    let pg_rss: u64 = pgrw.iter().map(|c| memory(c.id()).0).sum();
    for c in &mut pgrw {
        let _ = c.kill();
        let _ = c.wait();
    }

    // Scrapes: a new connection each; latency per request, and the service's CPU over all of them.
    let page = get(addr, "/metrics").unwrap_or_default();
    let cpu_before = cpu_so_far(child.id());
    let mut latencies = Vec::with_capacity(scrapes as usize);
    let all = Instant::now();
    for _ in 0..scrapes {
        let t = Instant::now();
        let body = get(addr, "/metrics").expect("scrape");
        assert!(body.len() > 1000);
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = all.elapsed().as_secs_f64();
    let cpu = cpu_so_far(child.id()) - cpu_before;
    // The idle sources used some CPU meanwhile too (status updates): measure that alone for as long.
    let idle_before = cpu_so_far(child.id());
    std::thread::sleep(Duration::from_secs_f64(total));
    let idle_cpu = cpu_so_far(child.id()) - idle_before;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    latencies.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    report.push_str(&format!(
        "\n### Memory of 20 idle sources\n\n\
         | | resident (VmRSS) MB | peak (VmHWM) MB | threads |\n|---|---|---|---|\n\
         | walkeeper service, 20 sources | **{:.1}** | {:.1} | {threads} |\n\
         | 20 × pg_receivewal (sum) | {:.1} | | |\n",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        pg_rss as f64 / 1024.0
    ));
    report.push_str(&format!(
        "\n### A /metrics scrape, 20 sources ({} bytes, {scrapes} scrapes, a new connection each)\n\n\
         | latency µs (median) | latency µs (p99) | service CPU µs per scrape |\n|---|---|---|\n\
         | {:.0} | {:.0} | {:.0} |\n",
        page.len(),
        median(latencies.clone()),
        p99,
        (cpu - idle_cpu).max(0.0) / scrapes as f64 * 1e6
    ));
}

fn main() {
    if !benchmarking("service") {
        return;
    }
    let phases = std::env::var("SERVICE_PHASES").unwrap_or_else(|_| "catchup,idle".into());
    let mut report = report_header("walkeeper service");
    if phases.contains("catchup") {
        catchup(&mut report);
    }
    if phases.contains("idle") {
        idle_and_scrape(&mut report);
    }
    publish_report(&report, "SERVICE_OUT");
}
