//! Integration-test harness: real PostgreSQL servers in temp dirs, driven through Debian's client tools.
//!
//! Use from any integration test with `mod support;`. Start with [`Cluster::start`] (Debian's 15, or the
//! install named by `$WALKEEPER_PG_BIN`) or [`Cluster::builder`]. Every cluster lives in its own directory
//! under /tmp, on its own free loopback port, and is stopped (`-m immediate`) and removed on drop, even when
//! the test panics. When the tests run as root the server binaries run as the `postgres` account.
//! Harness failures panic with the server log tail. Wait with [`wait_until`], never with fixed sleeps.
//!
//! ```ignore
//! let mut primary = Cluster::builder().segment_size_mb(1).start();
//! primary.create_role("rep", Some("pw"), PasswordEncryption::Scram, true);
//! primary.set_hba(&["host replication rep 127.0.0.1/32 scram-sha-256"]);
//! let end = primary.generate_wal(3);
//! let done = primary.switch_wal(); // e.g. "000000010000000000000004", now complete in pg_wal
//! let standby = primary.standby();
//! standby.wait_for_replay(end);
//! ```
//!
//! Run the binary with [`walkeeper`] or [`run_walkeeper`] (`bin.rs`: a clean environment, a [`Run`] with the
//! exit code, both outputs and the one error line); play a misbehaving server with [`fake_walsender`], or
//! make a real one misbehave through a [`proxy`]. A test that cannot run here calls [`cannot_run`] or
//! [`require_major`], which fail under CI.
//!
//! The whole suite runs against another major with `WALKEEPER_PG_BIN=$PWD/.pg/17/package/native/bin cargo
//! test` (after `scripts/fetch-postgres.sh 17`); [`PgInstall::all_available`] lists every major present.
#![allow(dead_code)]

pub mod archive;
mod bin;
pub mod fake_walsender;
pub mod proxy;
pub mod s3;
mod tls;

#[allow(unused_imports)] // each test binary uses some of them
pub use bin::{run_walkeeper, walkeeper, Run, WALKEEPER};
pub use tls::TestPki;

use std::ffi::CString;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Debian's PostgreSQL 15: the default server, and the client tools (psql, pg_basebackup, pg_receivewal...).
pub const DEBIAN_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long harness operations (start, replay, promote, reload) may take before the harness panics.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The name of the harness-owned config file, included at the end of postgresql.conf.
const HARNESS_CONF: &str = "walkeeper_harness.conf";

/// pg_hba.conf lines always kept first, so the harness's own psql over the socket keeps working.
const HBA_HARNESS: &[&str] = &["local all postgres trust", "local replication postgres trust"];

/// pg_hba.conf lines used until a test calls [`Cluster::set_hba`]: trust everything on the socket and loopback.
const HBA_DEFAULT: &[&str] = &[
    "local all all trust",
    "local replication all trust",
    "host all all 127.0.0.1/32 trust",
    "host replication all 127.0.0.1/32 trust",
];

// ---------------------------------------------------------------------------------------------------------
// Installs
// ---------------------------------------------------------------------------------------------------------

/// A directory of PostgreSQL server binaries (initdb, pg_ctl, postgres) and its major version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgInstall {
    pub bin_dir: PathBuf,
    pub major: u32,
}

impl Default for PgInstall {
    /// `$WALKEEPER_PG_BIN` if set, else Debian's 15; panics if neither holds a runnable `postgres`.
    fn default() -> Self {
        match std::env::var_os("WALKEEPER_PG_BIN") {
            Some(dir) if !dir.is_empty() => PgInstall::at(dir)
                .unwrap_or_else(|e| panic!("WALKEEPER_PG_BIN does not name a PostgreSQL bin dir: {e}")),
            _ => PgInstall::at(DEBIAN_BIN).unwrap_or_else(|e| {
                panic!("no PostgreSQL 15 ({e}); install postgresql-15 or set WALKEEPER_PG_BIN")
            }),
        }
    }
}

impl PgInstall {
    /// The install in `bin_dir`, its major read from `postgres --version`.
    pub fn at(bin_dir: impl Into<PathBuf>) -> Result<PgInstall, String> {
        let bin_dir = bin_dir.into();
        let postgres = bin_dir.join("postgres");
        let out = Command::new(&postgres)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", postgres.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = parse_major(&text).ok_or_else(|| {
            format!("cannot read a version from `{} --version`: {text:?}", postgres.display())
        })?;
        Ok(PgInstall { bin_dir, major })
    }

    /// Debian's 15 for 15, else `.pg/<major>/package/native/bin` (see scripts/fetch-postgres.sh), if present.
    pub fn for_major(major: u32) -> Option<PgInstall> {
        let candidates = [
            PathBuf::from(DEBIAN_BIN),
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(".pg/{major}/package/native/bin")),
        ];
        candidates
            .into_iter()
            .filter(|dir| dir.join("postgres").is_file())
            .filter_map(|dir| PgInstall::at(dir).ok())
            .find(|install| install.major == major)
    }

    /// Every major from 13 to 18 that [`PgInstall::for_major`] finds, oldest first.
    pub fn all_available() -> Vec<PgInstall> {
        (13..=18).filter_map(PgInstall::for_major).collect()
    }

    /// Path of one of this install's binaries.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

fn parse_major(version_output: &str) -> Option<u32> {
    // "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)", "postgres (PostgreSQL) 18.4"
    let rest = version_output.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Path of a Debian PostgreSQL 15 client tool (`psql`, `pg_receivewal`, `pg_waldump`...); panics if absent.
pub fn pg_tool(name: &str) -> PathBuf {
    let path = Path::new(DEBIAN_BIN).join(name);
    assert!(path.is_file(), "{} not found: install postgresql-15 / postgresql-client-15", path.display());
    path
}

// ---------------------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------------------

/// Call when a test cannot run here (a missing major, no privilege to mount a tmpfs, no `weed` binary): it
/// says so loudly on stderr and returns, so the caller can `return`; under CI (`WALKEEPER_CI=1`, set by
/// `.ci/run`) it fails the test instead, so a suite that could not run never passes silently.
pub fn cannot_run(reason: &str) {
    if std::env::var_os("WALKEEPER_CI").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("this test could not run, and WALKEEPER_CI is set: {reason}");
    }
    eprintln!("SKIPPED (set WALKEEPER_CI=1 to make this a failure): {reason}");
}

/// [`PgInstall::for_major`], or [`cannot_run`] when that major is not here: a per-major test that skips a
/// missing major fails under CI instead of passing without having run.
pub fn require_major(major: u32) -> Option<PgInstall> {
    let found = PgInstall::for_major(major);
    if found.is_none() {
        cannot_run(&format!("PostgreSQL {major} is not available (run scripts/fetch-postgres.sh {major})"));
    }
    found
}

/// Every major from 13 to 18 that is here, after [`cannot_run`] for each one that is not.
pub fn require_majors(majors: impl IntoIterator<Item = u32>) -> Vec<PgInstall> {
    majors.into_iter().filter_map(require_major).collect()
}

/// Polls `cond` (10 ms, backing off to 100 ms) until it is true or `timeout` passes; returns its last value.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Parses an LSN in PostgreSQL's `%X/%X` text form.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    (hi << 32) | lo
}

/// Formats an LSN as PostgreSQL does (`%X/%08X`), e.g. for `'…'::pg_lsn` in SQL.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:08X}", lsn >> 32, lsn as u32)
}

/// Runs Debian's psql 15 on `conninfo` (optionally with PGPASSWORD); Ok(stdout) or Err(stderr).
pub fn try_psql_at(conninfo: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg_tool("psql"));
    clear_pg_env(&mut cmd);
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql]);
    cmd.env("PGCONNECT_TIMEOUT", "10");
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("cannot run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Removes the libpq environment a developer's shell may carry, so only explicit settings apply.
fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
}

/// The account the server binaries run as: `postgres` when we are root, else ourselves (None).
fn server_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new("postgres").unwrap();
        // SAFETY: getpwnam is given a valid C string; the returned record is read at once, before any
        // other getpw* call could overwrite it (the OnceLock serialises initialisation).
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !pw.is_null(),
            "running as root and there is no `postgres` account to run the server as (install postgresql-15)"
        );
        // SAFETY: pw is non-null and points to a valid passwd record.
        Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
    })
}

/// A command that runs as the server user, in `cwd`, with a clean libpq environment.
fn server_command(program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    clear_pg_env(&mut cmd);
    cmd.current_dir(cwd).env("HOME", cwd).stdin(Stdio::null());
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Hands `path` to the server user (no-op when not root).
fn give_to_server(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Writes `contents` to `path`, owned by the server user with the given mode.
fn write_server_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    give_to_server(path);
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn conf_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

// ---------------------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------------------

/// How [`Cluster::create_role`] stores a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordEncryption {
    Md5,
    Scram,
}

/// Options for a new cluster; finish with [`ClusterBuilder::start`].
#[derive(Clone, Debug, Default)]
pub struct ClusterBuilder {
    install: Option<PgInstall>,
    segment_size_mb: Option<u32>,
    group_access: bool,
    fsync: bool,
    conf: Vec<String>,
}

impl ClusterBuilder {
    /// Server binaries to use (default: [`PgInstall::default`]).
    pub fn install(mut self, install: &PgInstall) -> Self {
        self.install = Some(install.clone());
        self
    }

    /// WAL segment size in MiB (initdb `--wal-segsize`; a power of two from 1 to 1024).
    pub fn segment_size_mb(mut self, mb: u32) -> Self {
        self.segment_size_mb = Some(mb);
        self
    }

    /// initdb `-g`: data directory and files readable by the server's group (0750 / 0640).
    pub fn group_access(mut self, on: bool) -> Self {
        self.group_access = on;
        self
    }

    /// Keep `fsync = on` (the harness turns it off by default, for speed).
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// An extra postgresql.conf line such as `"wal_keep_size = '64MB'"`; later lines override earlier ones.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }

    /// initdb, configure and start the cluster; panics with the server log if it does not come up.
    pub fn start(self) -> Cluster {
        let install = self.install.clone().unwrap_or_default();
        let mut cluster = Cluster::new_dirs(install, self);
        cluster.initdb();
        cluster.write_hba(HBA_DEFAULT);
        cluster.start_on_free_port();
        cluster
    }
}

/// A running (or stopped) PostgreSQL cluster in its own temp dir; stopped and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    install: PgInstall,
    options: ClusterBuilder,
    port: u16,
    running: bool,
    tls_conf: Vec<String>,
    segment_size: OnceLock<u64>,
    // Last field: dropped after Drop::drop has stopped the server.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A builder for a cluster with non-default options.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts a cluster of [`PgInstall::default`] with default options.
    pub fn start() -> Cluster {
        Cluster::builder().start()
    }

    fn new_dirs(install: PgInstall, options: ClusterBuilder) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("walkeeper-pg{}-", install.major))
            .tempdir_in("/tmp")
            .expect("create temp dir under /tmp");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        give_to_server(dir.path());
        let sock = dir.path().join("sock");
        fs::create_dir(&sock).unwrap();
        give_to_server(&sock);
        Cluster {
            install,
            options,
            port: 0,
            running: false,
            tls_conf: Vec::new(),
            segment_size: OnceLock::new(),
            dir,
        }
    }

    fn initdb(&self) {
        let mut cmd = server_command(self.install.bin("initdb"), self.dir.path());
        cmd.arg("-D").arg(self.data_dir());
        cmd.args(["--auth=trust", "-U", "postgres", "--no-locale", "-E", "UTF8", "--no-sync"]);
        if let Some(mb) = self.options.segment_size_mb {
            cmd.arg(format!("--wal-segsize={mb}"));
        }
        if self.options.group_access {
            cmd.arg("-g");
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "initdb ({}) failed: {}",
            self.install.bin_dir.display(),
            describe(&out)
        );
        let conf = self.data_dir().join("postgresql.conf");
        let mut f = fs::OpenOptions::new().append(true).open(&conf).expect("open postgresql.conf");
        writeln!(
            f,
            "\n# Settings of the walkeeper test harness (rewritten by it)\ninclude = '{HARNESS_CONF}'"
        )
        .unwrap();
    }

    /// Rewrites the harness config file: defaults, then TLS, then the builder's lines (which win).
    fn write_conf(&self) {
        let mut text = String::new();
        let sock = self.socket_dir();
        let lines = [
            format!("port = {}", self.port),
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = {}", conf_literal(sock.to_str().unwrap())),
            "wal_level = replica".to_string(),
            "max_wal_senders = 10".to_string(),
            "max_replication_slots = 10".to_string(),
            format!("fsync = {}", if self.options.fsync { "on" } else { "off" }),
            "max_connections = 40".to_string(),
            "shared_buffers = '32MB'".to_string(),
            "log_line_prefix = '%m [%p] %q%u@%d '".to_string(),
            "log_connections = on".to_string(),
            "log_replication_commands = on".to_string(),
        ];
        for line in lines.iter().chain(&self.tls_conf).chain(&self.options.conf) {
            writeln!(text, "{line}").unwrap();
        }
        write_server_file(&self.data_dir().join(HARNESS_CONF), text.as_bytes(), 0o600);
    }

    fn write_hba(&self, lines: &[&str]) {
        let mut text = String::from("# pg_hba.conf written by the walkeeper test harness\n");
        for line in HBA_HARNESS.iter().chain(lines) {
            writeln!(text, "{line}").unwrap();
        }
        write_server_file(&self.data_dir().join("pg_hba.conf"), text.as_bytes(), 0o600);
    }

    /// Picks a free port and starts; retries with another port if someone took it meanwhile.
    fn start_on_free_port(&mut self) {
        for attempt in 1..=5 {
            self.port = free_port();
            self.write_conf();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(log) if attempt < 5 && log.contains("could not bind") => continue,
                Err(log) => self.fail(&format!("server did not start on port {}", self.port), &log),
            }
        }
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let log_before = self.server_log().len();
        let mut cmd = self.pg_ctl("start");
        cmd.arg("-l").arg(self.log_path());
        let out = run(&mut cmd);
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        // pg_ctl -w failed: make sure nothing half-started lingers, then report.
        let _ = run(&mut self.pg_ctl_stop("immediate"));
        let log = self.server_log();
        Err(format!("{}\n{}", describe(&out), log.get(log_before..).unwrap_or(&log)))
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = server_command(self.install.bin("pg_ctl"), self.dir.path());
        cmd.arg(action).arg("-D").arg(self.data_dir()).args(["-w", "-t", "60"]);
        cmd
    }

    fn pg_ctl_stop(&self, mode: &str) -> Command {
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-m", mode]);
        cmd
    }

    fn fail(&self, what: &str, detail: &str) -> ! {
        panic!(
            "{what} (PostgreSQL {} in {}):\n{detail}\n--- server log tail ({}) ---\n{}",
            self.install.major,
            self.data_dir().display(),
            self.log_path().display(),
            self.log_tail(60)
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.server_log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    // ----- accessors -----

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host to connect to over TCP: "127.0.0.1".
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Directory holding the server's Unix socket (use as `host=` in a conninfo).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Major version of the server.
    pub fn major(&self) -> u32 {
        self.install.major
    }

    /// The server binaries this cluster runs.
    pub fn install(&self) -> &PgInstall {
        &self.install
    }

    /// `host=127.0.0.1 port=N user=U dbname=postgres`.
    pub fn conninfo(&self, user: &str) -> String {
        format!("host={} port={} user={user} dbname=postgres", self.host(), self.port)
    }

    /// The whole server log so far.
    pub fn server_log(&self) -> String {
        fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    // ----- SQL -----

    /// Runs SQL as `postgres` over the socket (psql -X -A -t, ON_ERROR_STOP); panics with stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|err| self.fail(&format!("psql failed: {sql}"), &err))
    }

    /// Runs SQL as `postgres` over the socket; Ok(stdout without the final newline) or Err(stderr).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let conninfo =
            format!("host={} port={} user=postgres dbname=postgres", self.socket_dir().display(), self.port);
        try_psql_at(&conninfo, None, sql)
    }

    /// `pg_current_wal_lsn()` (primary only).
    pub fn current_lsn(&self) -> u64 {
        parse_lsn(&self.psql("SELECT pg_current_wal_lsn()"))
    }

    /// Writes a WAL record and switches segment; returns the name of the segment that was completed.
    pub fn switch_wal(&self) -> String {
        // A record first, so that the switch is never a no-op on an idle server.
        self.psql("SELECT pg_logical_emit_message(false, 'walkeeper-harness', 'switch')");
        self.psql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Writes at least `megabytes` MiB of WAL (wide heap inserts); returns the LSN after it.
    pub fn generate_wal(&self, megabytes: u64) -> u64 {
        const ROW: u64 = 1900; // stays under the TOAST threshold, so rows are neither compressed nor toasted
        self.psql("CREATE TABLE IF NOT EXISTS walkeeper_filler (id bigint, pad text)");
        let start = self.current_lsn();
        let target = start + megabytes * 1024 * 1024;
        let mut now = start;
        while now < target {
            let rows = (target - now) / ROW + 1;
            self.psql(&format!(
                "INSERT INTO walkeeper_filler SELECT g, repeat(md5(g::text || random()::text), {}) \
                 FROM generate_series(1, {rows}) g",
                ROW / 32
            ));
            now = self.current_lsn();
        }
        now
    }

    /// WAL segment size in bytes.
    pub fn segment_size(&self) -> u64 {
        *self.segment_size.get_or_init(|| {
            let text = self.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'");
            text.parse().unwrap_or_else(|_| panic!("wal_segment_size: {text:?}"))
        })
    }

    /// Path of a file in the server's pg_wal.
    pub fn wal_segment_path(&self, name: &str) -> PathBuf {
        self.data_dir().join("pg_wal").join(name)
    }

    /// Contents of a file in the server's pg_wal; panics if absent.
    pub fn read_wal_segment(&self, name: &str) -> Vec<u8> {
        let path = self.wal_segment_path(name);
        fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    // ----- lifecycle -----

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        let out = run(&mut self.pg_ctl_stop("fast"));
        if !out.status.success() {
            self.fail("pg_ctl stop failed", &describe(&out));
        }
        self.running = false;
    }

    /// Stops the server at once (`-m immediate`): as if the host died; crash recovery runs at the next start.
    pub fn crash(&mut self) {
        let out = run(&mut self.pg_ctl_stop("immediate"));
        if !out.status.success() {
            self.fail("pg_ctl stop -m immediate failed", &describe(&out));
        }
        self.running = false;
    }

    /// Starts a stopped server again on the same port; panics with the log if it does not come up.
    pub fn start_again(&mut self) {
        self.write_conf();
        if let Err(log) = self.pg_ctl_start() {
            self.fail("server did not start again", &log);
        }
    }

    /// Restarts the server (fast shutdown), rewriting the harness config first.
    pub fn restart(&mut self) {
        if self.running {
            self.stop();
        }
        self.start_again();
    }

    /// Reloads the configuration and waits until new sessions see it.
    pub fn reload(&self) {
        let before = self.psql("SELECT pg_conf_load_time()");
        let out = run(&mut self.pg_ctl("reload"));
        if !out.status.success() {
            self.fail("pg_ctl reload failed", &describe(&out));
        }
        if !wait_until(TIMEOUT, || self.psql("SELECT pg_conf_load_time()") != before) {
            self.fail("configuration reload was not picked up", "");
        }
    }

    // ----- roles and auth -----

    /// Creates a LOGIN role (optionally REPLICATION) whose password is stored as md5 or SCRAM.
    pub fn create_role(
        &self,
        name: &str,
        password: Option<&str>,
        encryption: PasswordEncryption,
        replication: bool,
    ) {
        let method = match encryption {
            PasswordEncryption::Md5 => "md5",
            PasswordEncryption::Scram => "scram-sha-256",
        };
        let password = password.map(|p| format!(" PASSWORD {}", sql_literal(p))).unwrap_or_default();
        let replication = if replication { " REPLICATION" } else { "" };
        // One -c string is one implicit transaction: the SET applies to the CREATE ROLE only.
        self.psql(&format!(
            "SET password_encryption = '{method}'; CREATE ROLE {} LOGIN{replication}{password}",
            sql_ident(name)
        ));
    }

    /// Replaces pg_hba.conf with `lines` (after the harness's own `local … postgres trust`) and reloads.
    pub fn set_hba(&self, lines: &[&str]) {
        self.write_hba(lines);
        self.reload();
        let errors = self.psql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL");
        if errors != "0" {
            let detail =
                self.psql("SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL");
            self.fail("pg_hba.conf has errors", &detail);
        }
    }

    /// Turns on TLS with a fresh test PKI (server cert for localhost / 127.0.0.1) and restarts.
    pub fn enable_tls(&mut self) -> TestPki {
        let pki = TestPki::generate(&self.dir.path().join("tls"));
        let (cert, key) = pki.server_cert_and_key();
        self.tls_conf = vec![
            "ssl = on".to_string(),
            format!("ssl_cert_file = {}", conf_literal(cert.to_str().unwrap())),
            format!("ssl_key_file = {}", conf_literal(key.to_str().unwrap())),
            format!("ssl_ca_file = {}", conf_literal(pki.ca_cert().to_str().unwrap())),
        ];
        self.restart();
        let ssl = self.psql("SHOW ssl");
        if ssl != "on" {
            self.fail("ssl did not turn on", &ssl);
        }
        pki
    }

    // ----- replication -----

    /// A streaming standby of this cluster, started and streaming (pg_basebackup up to 15, else a cold copy).
    pub fn standby(&mut self) -> Cluster {
        let mut standby = Cluster::new_dirs(self.install.clone(), self.options.clone());
        let primary_conninfo = format!(
            "host={} port={} user=postgres application_name=walkeeper_standby",
            self.socket_dir().display(),
            self.port
        );
        if self.major() <= 15 {
            // Not -R: pg_basebackup 15 would write `sslsni`, which older servers' libpq rejects.
            let mut cmd = server_command(pg_tool("pg_basebackup"), standby.dir.path());
            cmd.arg("-D").arg(standby.data_dir());
            cmd.args(["-d", &primary_conninfo, "-X", "stream", "-c", "fast", "--no-sync"]);
            let out = run(&mut cmd);
            if !out.status.success() {
                self.fail("pg_basebackup failed", &describe(&out));
            }
        } else {
            // Debian's pg_basebackup 15 refuses newer servers: copy the data directory of a stopped primary.
            let was_running = self.running;
            if was_running {
                self.stop();
            }
            let mut cmd = server_command("cp", standby.dir.path());
            cmd.arg("-a").arg(self.data_dir()).arg(standby.data_dir());
            let out = run(&mut cmd);
            if was_running {
                self.start_again();
            }
            if !out.status.success() {
                self.fail("copying the data directory for a standby failed", &describe(&out));
            }
            let _ = fs::remove_file(standby.data_dir().join("postmaster.opts"));
        }
        write_server_file(&standby.data_dir().join("standby.signal"), b"", 0o600);
        let auto = standby.data_dir().join("postgresql.auto.conf");
        let mut text = fs::read_to_string(&auto).unwrap_or_default();
        writeln!(text, "primary_conninfo = {}", conf_literal(&primary_conninfo)).unwrap();
        write_server_file(&auto, text.as_bytes(), 0o600);
        standby.start_on_free_port();
        let streaming = wait_until(TIMEOUT, || {
            self.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walkeeper_standby'")
                != "0"
        });
        if !streaming {
            let primary_log = format!("--- primary log tail ---\n{}", self.log_tail(30));
            standby.fail("standby did not connect to its primary", &primary_log);
        }
        standby
    }

    /// Promotes this standby and waits until it accepts writes.
    pub fn promote(&self) {
        let out = run(&mut self.pg_ctl("promote"));
        if !out.status.success() {
            self.fail("pg_ctl promote failed", &describe(&out));
        }
        if !wait_until(TIMEOUT, || self.psql("SELECT pg_is_in_recovery()") == "f") {
            self.fail("standby did not leave recovery after promote", "");
        }
    }

    /// Waits until this standby has replayed up to `lsn`.
    pub fn wait_for_replay(&self, lsn: u64) {
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn", format_lsn(lsn));
        if !wait_until(TIMEOUT, || self.psql(&sql) == "t") {
            let at = self.psql("SELECT pg_last_wal_replay_lsn()");
            self.fail(&format!("standby did not replay up to {} (at {at})", format_lsn(lsn)), "");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.running && !self.data_dir().join("postmaster.pid").exists() {
            return;
        }
        let out = self.pg_ctl_stop("immediate").output();
        let stopped = matches!(&out, Ok(o) if o.status.success());
        if !stopped {
            // Last resort: kill the postmaster we started, by the pid it recorded.
            if let Some(pid) = fs::read_to_string(self.data_dir().join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            {
                // SAFETY: kill with a pid read from our own cluster's postmaster.pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            eprintln!("walkeeper harness: pg_ctl stop failed for {}: {out:?}", self.data_dir().display());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Recovery from an archive (point-in-time recovery tests)
// ---------------------------------------------------------------------------------------------------------

/// Makes `cmd` run as the server user (when we are root), as `restore_command` and an archive's owner do.
pub fn run_as_server_user(cmd: &mut Command) {
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
    }
}

/// Hands `path` to the server user (no-op when not root): e.g. an archive directory the server reads.
pub fn chown_to_server(path: &Path) {
    give_to_server(path);
}

impl Cluster {
    /// A base backup of this running cluster (pg_basebackup, fast checkpoint, `-X none`: no WAL in it, so
    /// recovery needs every segment from an archive) as a new, stopped cluster with the same options. Start
    /// it with [`Cluster::start_recovery`]. Debian's pg_basebackup 15 refuses newer servers: see
    /// [`Cluster::backup_any_major`].
    pub fn base_backup(&self) -> Cluster {
        let backup = Cluster::new_dirs(self.install.clone(), self.options.clone());
        let conninfo = format!("host={} port={} user=postgres", self.socket_dir().display(), self.port);
        let mut cmd = server_command(pg_tool("pg_basebackup"), backup.dir.path());
        cmd.arg("-D").arg(backup.data_dir());
        cmd.args(["-d", &conninfo, "-X", "none", "-c", "fast", "--no-sync"]);
        let out = run(&mut cmd);
        if !out.status.success() {
            self.fail("pg_basebackup failed", &describe(&out));
        }
        backup
    }

    /// [`Cluster::base_backup`] up to 15; from 16 on, a copy of the cleanly stopped cluster without its
    /// pg_wal (the server is started again), which recovery replays from its shutdown checkpoint on, every
    /// segment from the archive as after `pg_basebackup -X none`.
    pub fn backup_any_major(&mut self) -> Cluster {
        if self.major() <= 15 {
            return self.base_backup();
        }
        let backup = Cluster::new_dirs(self.install.clone(), self.options.clone());
        self.stop();
        let mut cmd = server_command("cp", backup.dir.path());
        cmd.arg("-a").arg(self.data_dir()).arg(backup.data_dir());
        let out = run(&mut cmd);
        self.start_again();
        if !out.status.success() {
            self.fail("copying the data directory for a backup failed", &describe(&out));
        }
        let _ = fs::remove_file(backup.data_dir().join("postmaster.opts"));
        // No WAL in the backup: recovery takes every segment from the archive, as after pg_basebackup -X none.
        let wal = backup.data_dir().join("pg_wal");
        for entry in fs::read_dir(&wal).unwrap().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                fs::remove_file(entry.path()).unwrap();
            }
        }
        backup
    }

    /// Starts a cluster made by [`Cluster::base_backup`] in targeted recovery: writes `recovery.signal`,
    /// appends `conf` (restore_command, recovery_target_*) to its settings and starts it on a free port.
    /// pg_ctl returns once the server accepts connections; wait for the end of recovery with
    /// [`Cluster::wait_promoted`]. Panics with the server log if it does not start (for instance when
    /// recovery fails before it is consistent).
    pub fn start_recovery(&mut self, conf: &[&str]) {
        write_server_file(&self.data_dir().join("recovery.signal"), b"", 0o600);
        self.options.conf.extend(conf.iter().map(|l| l.to_string()));
        self.start_on_free_port();
    }

    /// Waits until recovery has ended and the server accepts writes; panics with the log otherwise.
    pub fn wait_promoted(&self) {
        if !wait_until(TIMEOUT, || self.try_psql("SELECT pg_is_in_recovery()").is_ok_and(|r| r == "f")) {
            self.fail("server did not finish recovery", "");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reading an archive directory (independently of walkeeper's own code, as a cross-check)
// ---------------------------------------------------------------------------------------------------------

/// walkeeper's lock file in an archive it writes to: not part of the archive's contents.
pub const LOCK_FILE: &str = ".walkeeper.lock";

/// The backup index `status`, `cleanup` and the service keep in an archive: not WAL either.
pub const BACKUP_INDEX_FILE: &str = ".walkeeper-backups";

/// The file names in `dir`, sorted, without walkeeper's own [`LOCK_FILE`] and [`BACKUP_INDEX_FILE`].
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE && n != BACKUP_INDEX_FILE)
        .collect();
    v.sort();
    v
}

/// A segment file's WAL bytes, decompressed according to its name (`.gz`, `.lz4`, `.zst`, any `.partial`).
pub fn wal_bytes(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let name = path.file_name().unwrap().to_str().unwrap().trim_end_matches(".partial").to_string();
    let raw = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = Vec::new();
    if name.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out)
    } else if name.ends_with(".lz4") {
        lz4_flex::frame::FrameDecoder::new(&raw[..]).read_to_end(&mut out)
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(&raw[..]).unwrap().read_to_end(&mut out)
    } else {
        return raw;
    }
    .unwrap_or_else(|e| panic!("decompress {}: {e}", path.display()));
    out
}
