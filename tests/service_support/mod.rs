//! `walkeeper service` as the service tests run it: a config file written from sources, the process (stopped
//! with SIGKILL on drop if a test leaves it running), its HTTP endpoints read with walkeeper's own HTTP/1.1 GET, its
//! metrics as a map, and each source's row of `pg_stat_replication` (every source connects with its name as
//! `application_name`).
#![allow(dead_code)]

use crate::support::{wait_until, walkeeper, Cluster, TIMEOUT};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

/// A `[[source]]` table streaming `cluster` into `dir` with a slot named after the source (create it first
/// with [`create_slot`]), plus `extra` lines.
pub fn source_toml(name: &str, cluster: &Cluster, dir: &Path, extra: &str) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\nconninfo = \"host={} port={} user=postgres application_name={name}\"\n\
         directory = \"{}\"\nslot = \"{name}\"\nstatus_interval = 1\n{extra}\n",
        cluster.host(),
        cluster.port(),
        dir.display()
    )
}

pub fn create_slot(cluster: &Cluster, name: &str) {
    cluster.psql(&format!("SELECT pg_create_physical_replication_slot('{name}', true)"));
}

/// A free loopback port (a race with other processes is possible, and harmless: the service then fails to
/// start, loudly).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A running `walkeeper -v service --config FILE`.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
    pub config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Write a config listening on a free port with `sources` (TOML tables), start the service and wait
    /// until its HTTP endpoints answer.
    pub fn start(sources: &str) -> Service {
        Service::start_with(sources, &[])
    }

    /// [`Service::start`] with extra environment variables.
    pub fn start_with(sources: &str, env: &[(&str, &str)]) -> Service {
        Service::launch(sources, env, |_| false)
    }

    /// [`Service::start`] without any `AWS_*` variable in the service's environment: what it knows of a
    /// store comes from its configuration file alone.
    pub fn start_without_aws(sources: &str) -> Service {
        Service::launch(sources, &[], |name| name.starts_with("AWS_"))
    }

    /// Start with `env` added to the environment and the variables `removed` says removed.
    fn launch(sources: &str, env: &[(&str, &str)], removed: impl Fn(&str) -> bool) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("walkeeper.toml");
        let addr = free_addr();
        std::fs::write(&config, format!("[service]\nlisten = \"{addr}\"\n\n{sources}")).unwrap();
        let log = dir.path().join("service.log");
        let mut cmd = walkeeper();
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(&removed) {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .args(["-v", "service", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start walkeeper service");
        let mut service = Service { child, addr, config, log, _dir: dir };
        let up = wait_until(TIMEOUT, || {
            service.try_get("/").is_ok() || service.child.try_wait().unwrap().is_some()
        });
        assert!(up && service.try_get("/").is_ok(), "the service did not come up:\n{}", service.log());
        service
    }

    /// Everything the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replace the sources (same listen address).
    pub fn rewrite(&self, sources: &str) {
        std::fs::write(&self.config, format!("[service]\nlisten = \"{}\"\n\n{sources}", self.addr)).unwrap();
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    /// SIGHUP, then wait until the log shows the reload's outcome (`reloaded` or `reload refused`).
    pub fn reload(&self) -> String {
        let outcome = |l: &&str| l.starts_with("walkeeper: reloaded ") || l.contains("error: reload refused");
        let before = self.log().lines().filter(outcome).count();
        self.signal(libc::SIGHUP);
        let mut line = String::new();
        let done = wait_until(TIMEOUT, || {
            let log = self.log();
            let lines: Vec<&str> = log.lines().filter(outcome).collect();
            if lines.len() > before {
                line = lines[before].to_string();
                true
            } else {
                false
            }
        });
        assert!(done, "no reload outcome in the log:\n{}", self.log());
        line
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(limit, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status
    }

    /// GET `path` (walkeeper's own client): status code and body, or the connection error.
    pub fn try_get(&self, path: &str) -> Result<(u16, String), String> {
        walkeeper::cli::block_on(walkeeper::service::http::get(&format!("http://{}{path}", self.addr)))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }

    /// `/metrics` as `series → value` (`walkeeper_timeline{source="a"}` → `1`).
    pub fn metrics(&self) -> HashMap<String, String> {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One source's metric as an integer (LSNs, counters, gauges); panics when absent.
    pub fn metric(&self, name: &str, source: &str) -> u64 {
        let series = format!("{name}{{source=\"{source}\"}}");
        let metrics = self.metrics();
        let v = metrics.get(&series).unwrap_or_else(|| panic!("no {series} in {metrics:?}"));
        v.parse::<f64>().unwrap_or_else(|_| panic!("{series} = {v}")) as u64
    }

    pub fn health(&self) -> (u16, serde_json::Value) {
        let (code, body) = self.get("/health");
        (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health is not JSON ({e}): {body}")))
    }

    /// One source's object of `/status`.
    pub fn status(&self, source: &str) -> serde_json::Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        let all: serde_json::Value = serde_json::from_str(&body).unwrap();
        all["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == source)
            .unwrap_or_else(|| panic!("no source {source} in {body}"))
            .clone()
    }

    /// The sources named in /health's failing list.
    pub fn failing(&self) -> Vec<String> {
        let (_, h) = self.health();
        h["failing"].as_array().unwrap().iter().map(|f| f["source"].as_str().unwrap().to_string()).collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `SELECT (col - '0/0')::bigint` of a source's row in `pg_stat_replication`, or None without a row.
pub fn replication_lsn(cluster: &Cluster, source: &str, column: &str) -> Option<u64> {
    let sql = format!(
        "SELECT ({column} - '0/0')::bigint FROM pg_stat_replication WHERE application_name = '{source}'"
    );
    cluster.try_psql(&sql).ok().and_then(|v| v.trim().parse().ok())
}

/// The backend PID of a source's walsender, or None when it is not connected.
pub fn walsender_pid(cluster: &Cluster, source: &str) -> Option<u32> {
    let sql = format!("SELECT pid FROM pg_stat_replication WHERE application_name = '{source}'");
    cluster.try_psql(&sql).ok().and_then(|v| v.trim().parse().ok())
}

/// `pg_current_wal_lsn() - '0/0'`.
pub fn current_lsn(cluster: &Cluster) -> u64 {
    cluster.psql("SELECT (pg_current_wal_lsn() - '0/0')::bigint").parse().unwrap()
}

/// A socket standing in for systemd's: the service sends its `sd_notify` datagrams here when started with
/// `NOTIFY_SOCKET` set to [`NotifySocket::path`].
pub struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    /// Every datagram received so far.
    pub received: Vec<String>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        NotifySocket { socket, path, received: Vec::new(), _dir: dir }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Wait for a datagram with a line equal to `line` (or starting with it, when it ends with `=`) after
    /// those already matched; returns that datagram.
    pub fn expect(&mut self, line: &str) -> String {
        let matches =
            |d: &str| d.lines().any(|l| if line.ends_with('=') { l.starts_with(line) } else { l == line });
        let mut buf = [0u8; 4096];
        let mut found = None;
        wait_until(TIMEOUT, || {
            while let Ok(n) = self.socket.recv(&mut buf) {
                let d = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.received.push(d.clone());
                if matches(&d) {
                    found = Some(d);
                    return true;
                }
            }
            false
        });
        found.unwrap_or_else(|| panic!("no {line:?} among {:?}", self.received))
    }
}
