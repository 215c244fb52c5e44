//! `walkeeper demo`: walkeeper's main job on a throwaway PostgreSQL. Starts a temporary server (as the
//! `postgres` account when run as root), creates a slot, streams WAL into a directory while a workload
//! runs, stops at a known LSN, and shows the archive next to the server's own segments. Then runs
//! `walkeeper service` on the same archive for a few seconds and shows its /metrics and /health.

use crate::cli::{Exit, Prog};
use crate::conn::{connect, conninfo, ConnParams, ConnectOptions};
use crate::stream::feedback::ApplyReport;
use crate::stream::follow::receive;
use crate::stream::ReceiveConfig;
use crate::wal::segment::Compression;
use crate::wal::Lsn;
use clap::Args;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// directory with PostgreSQL's server programs (initdb, pg_ctl); found automatically when omitted
    #[arg(long = "pg-bin", value_name = "DIR", env = "WALKEEPER_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// megabytes of WAL the demo workload writes
    #[arg(long = "megabytes", default_value_t = 48)]
    pub megabytes: u32,
    /// keep the temporary directory (server and archive) instead of removing it
    #[arg(long = "keep")]
    pub keep: bool,
}

fn find_pg_bin(given: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// uid/gid to run the server as: ourselves, or `postgres` when we are root (PostgreSQL refuses root).
fn server_user() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer to static storage or NULL; read at once, single-threaded here.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("running as root, and there is no \"postgres\" account to run the server as".into());
    }
    // SAFETY: pw is non-null and points to a valid passwd struct.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

struct Server {
    bin: PathBuf,
    data: PathBuf,
    user: Option<(u32, u32)>,
}

impl Server {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let out = self.command(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{program} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn stop(&self) {
        let _ = self.run("pg_ctl", &["stop", "-D", &self.data.to_string_lossy(), "-m", "fast", "-w"]);
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

pub async fn run(args: DemoArgs, prog: &Prog) -> Result<(), Exit> {
    let fail = |m: String| Exit::error(prog, &m);
    let bin = find_pg_bin(args.pg_bin.clone())
        .ok_or_else(|| fail("no PostgreSQL server programs found: install PostgreSQL (e.g. apt-get install postgresql) or pass --pg-bin".into()))?;
    let user = server_user().map_err(fail)?;
    let root =
        tempfile::Builder::new().prefix("walkeeper-demo-").tempdir().map_err(|e| fail(e.to_string()))?;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail(e.to_string()))?;
    let data = root.path().join("pgdata");
    let sockets = root.path().join("sockets");
    let archive = root.path().join("archive");
    std::fs::create_dir(&sockets).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir(&archive).map_err(|e| fail(e.to_string()))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(root.path(), Some(uid), Some(gid)).map_err(|e| fail(e.to_string()))?;
        std::os::unix::fs::chown(&sockets, Some(uid), Some(gid)).map_err(|e| fail(e.to_string()))?;
    }
    let port = free_port().map_err(fail)?;
    let server = Server { bin, data: data.clone(), user };
    crate::outln!("1. starting a temporary PostgreSQL ({}) on port {port}", server.bin.display());
    server
        .run("initdb", &["-D", &data.to_string_lossy(), "-A", "trust", "-U", "postgres", "--no-sync"])
        .map_err(fail)?;
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level=replica -c max_wal_senders=4 -c fsync=off",
        sockets.display()
    );
    let log = root.path().join("server.log");
    server
        .run(
            "pg_ctl",
            &["start", "-w", "-D", &data.to_string_lossy(), "-o", &opts, "-l", &log.to_string_lossy()],
        )
        .map_err(fail)?;
    let mut result = demo_body(&args, port, &sockets, &archive, &data).await;
    if result.is_ok() {
        result = service_demo(port, &sockets, &archive, root.path()).await;
    }
    server.stop();
    if args.keep {
        crate::outln!("kept {} (server data, archive, server.log)", root.keep().display());
    } else {
        crate::outln!("temporary server and archive removed; `walkeeper demo --keep` keeps them to look at");
    }
    result.map_err(fail)
}

fn params(port: u16, sockets: &Path, dbname: &str) -> Result<ConnParams, String> {
    let conninfo = format!(
        "host='{}' port={port} user=postgres dbname={dbname} application_name=walkeeper_demo connect_timeout=10",
        sockets.display()
    );
    let sources = conninfo::Sources { conninfo: Some(&conninfo), ..Default::default() };
    conninfo::resolve(&sources, &|_| None).map_err(|e| e.to_string())
}

async fn sql(port: u16, sockets: &Path, statements: &[&str]) -> Result<Vec<String>, String> {
    let opts = ConnectOptions { replication: false, ..ConnectOptions::default() };
    let mut conn = connect(&params(port, sockets, "postgres")?, &opts).await.map_err(|e| e.to_string())?;
    let mut last = Vec::new();
    for s in statements {
        let rs = conn.simple_query(s).await.map_err(|e| e.to_string())?;
        last = rs
            .rows
            .iter()
            .filter_map(|r| r.first().cloned().flatten())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
    }
    conn.close().await;
    Ok(last)
}

async fn demo_body(
    args: &DemoArgs,
    port: u16,
    sockets: &Path,
    archive: &Path,
    data: &Path,
) -> Result<(), String> {
    sql(port, sockets, &["SELECT pg_create_physical_replication_slot('walkeeper_demo', true)"]).await?;
    crate::outln!("2. created replication slot walkeeper_demo; streaming into {}", archive.display());
    // About 330 bytes of WAL per row.
    let rows = (u64::from(args.megabytes) * 1024 * 1024 / 330).max(1000);
    let workload = format!(
        "INSERT INTO demo SELECT g, repeat(md5(g::text), 8), now() FROM generate_series(1, {rows}) g"
    );
    let lsn = |rows: Vec<String>| -> Result<Lsn, String> {
        rows.first()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "could not read an LSN from the server".to_string())
    };
    let begin = lsn(sql(port, sockets, &["SELECT pg_current_wal_lsn()::text"]).await?)?;
    sql(port, sockets, &["CREATE TABLE demo (id int, payload text, at timestamptz)", &workload]).await?;
    // Close the segment, note where the next one starts, and write a little more so the stream passes it
    // (`--endpos` stops once the received position is beyond it, as pg_receivewal does).
    sql(port, sockets, &["SELECT pg_switch_wal()"]).await?;
    let end = lsn(sql(port, sockets, &["SELECT pg_current_wal_lsn()::text"]).await?)?;
    sql(port, sockets, &["INSERT INTO demo VALUES (0, 'past the end position', now())"]).await?;
    crate::outln!(
        "3. wrote {rows} rows: {} MB of WAL from {begin} to {end}; walkeeper streams up to {end}",
        (end.0 - begin.0) >> 20
    );
    let cfg = ReceiveConfig {
        conn: params(port, sockets, "replication")?,
        connect: ConnectOptions::default(),
        directory: archive.to_path_buf(),
        slot: Some("walkeeper_demo".into()),
        endpos: Some(end),
        status_interval: Some(Duration::from_secs(10)),
        receive_timeout: Some(crate::stream::liveness::DEFAULT_RECEIVE_TIMEOUT),
        synchronous: false,
        fsync: true,
        compression: Compression::None,
        compression_level: None,
        no_loop: true,
        validate: true,
        apply_report: ApplyReport::Invalid,
        live_readers: Default::default(),
        failover: false,
        create_slot: false,
        upload: None,
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let started = std::time::Instant::now();
    receive(&cfg, rx, &crate::stream::state::unobserved()).await.map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    crate::outln!("4. walkeeper received WAL up to {end} in {secs:.2}s; the archive:");
    let mut names: Vec<(String, u64)> = std::fs::read_dir(archive)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    names.sort();
    let mut identical = 0;
    for (name, size) in &names {
        let server_copy = data.join("pg_wal").join(name);
        let same =
            !name.contains('.') && std::fs::read(archive.join(name)).ok() == std::fs::read(&server_copy).ok();
        identical += usize::from(same);
        let note = if same { "identical to the server's pg_wal/".to_string() + name } else { String::new() };
        crate::outln!("   {name:<32} {size:>10} bytes  {note}");
    }
    crate::outln!("5. {identical} complete segment(s) byte-identical to the server's own; every record CRC-checked on the way in.");
    Ok(())
}

/// A child process killed (and reaped) on drop, unless it already exited.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Poll `check` every 100 ms for up to `secs` seconds.
async fn poll<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The value of `name{source="demo"}` in a /metrics page.
fn metric<'a>(page: &'a str, name: &str) -> Option<&'a str> {
    let series = format!("{name}{{source=\"demo\"}} ");
    page.lines().find_map(|l| l.strip_prefix(&series))
}

/// Step 6: the archive kept by `walkeeper service` (this very binary, as a child process) for a few seconds.
async fn service_demo(port: u16, sockets: &Path, archive: &Path, root: &Path) -> Result<(), String> {
    use crate::service::http::get;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?;
    let conninfo =
        format!("host='{}' port={port} user=postgres application_name=walkeeper_demo", sockets.display());
    let config = format!(
        "[service]\nlisten = \"{listen}\"\n\n[[source]]\nname = \"demo\"\nconninfo = {}\ndirectory = {}\n\
         slot = \"walkeeper_demo\"\nstatus_interval = 1\n",
        toml_string(&conninfo),
        toml_string(&archive.to_string_lossy())
    );
    let file = root.join("walkeeper.toml");
    std::fs::write(&file, &config).map_err(|e| format!("{}: {e}", file.display()))?;
    crate::outln!(
        "6. the same archive kept by `walkeeper service --config {}` for a few seconds:",
        file.display()
    );
    for line in config.lines() {
        crate::outln!("{}", if line.is_empty() { String::new() } else { format!("     {line}") });
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find walkeeper's own executable: {e}"))?;
    let log_path = root.join("service.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let child = Command::new(exe)
        .args(["-v", "service", "--config"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("could not start walkeeper service: {e}"))?;
    let mut child = ChildGuard(child);
    let service_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let base = format!("http://{listen}");
    if !poll(30, || async { matches!(get(&format!("{base}/health")).await, Ok((200, _))) }).await {
        return Err(format!(
            "the service did not report healthy within 30 seconds; its log:\n{}",
            service_log()
        ));
    }
    sql(
        port,
        sockets,
        &["INSERT INTO demo VALUES (-1, 'seen by the service', now())", "SELECT pg_switch_wal()"],
    )
    .await?;
    let target = sql(port, sockets, &["SELECT (pg_current_wal_lsn() - '0/0')::bigint::text"]).await?;
    let target: u64 =
        target.first().and_then(|t| t.parse().ok()).ok_or("could not read an LSN from the server")?;
    let mut page = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = get(&format!("{base}/metrics")).await {
            page = body;
        }
        let flushed = metric(&page, "walkeeper_flushed_lsn_bytes").and_then(|v| v.parse::<u64>().ok());
        if flushed.is_some_and(|f| f >= target) {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "the service did not flush the new WAL within 30 seconds; its log:\n{}",
                service_log()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::outln!("   GET {base}/metrics (a few of its lines):");
    for name in [
        "walkeeper_source_up",
        "walkeeper_flushed_lsn_bytes",
        "walkeeper_server_lsn_bytes",
        "walkeeper_lag_bytes",
        "walkeeper_segments_completed_total",
    ] {
        if let Some(v) = metric(&page, name) {
            crate::outln!("     {name}{{source=\"demo\"}} {v}");
        }
    }
    let (code, health) = get(&format!("{base}/health")).await?;
    let compact = health.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::outln!("   GET {base}/health -> {code} {compact}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while matches!(child.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match child.0.try_wait() {
        Ok(Some(status)) if status.success() => {
            crate::outln!("7. SIGTERM: the service synced, reported its position and exited 0. Production setup: docs/service.md");
            Ok(())
        }
        other => Err(format!(
            "the service did not stop cleanly on SIGTERM ({other:?}); its log:\n{}",
            service_log()
        )),
    }
}
