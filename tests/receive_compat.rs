//! pg_receivewal compatibility: every scenario of PostgreSQL's own `t/020_pg_receivewal.pl`, the
//! interface under the `pg_receivewal` name (help, version, messages, exit codes, signals), the
//! start-position rules and directory refusals, and streaming from every available major — each
//! compared with Debian's real pg_receivewal 15 on the same server wherever both can run.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{format_lsn, names, parse_lsn, pg_tool, wait_until, wal_bytes, Cluster, WALKEEPER};

/// How long one run of a receiver may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------------------
// Running the receivers
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    /// `walkeeper receive ...`
    Walkeeper,
    /// The walkeeper binary through a symlink named `pg_receivewal`.
    AsPgReceivewal,
    /// Debian's real pg_receivewal 15.
    PgReceivewal,
}

/// A symlink named `pg_receivewal` to the walkeeper binary (in the integration tests' temp dir).
fn pg_named_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("as-pg-receivewal");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join("pg_receivewal");
    if fs::read_link(&link).ok().as_deref() != Some(Path::new(WALKEEPER)) {
        let tmp = dir.join(format!("link.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(WALKEEPER, &tmp).unwrap();
        fs::rename(&tmp, &link).unwrap();
    }
    link
}

fn command_at(program: &Path, tool: Tool) -> Command {
    let mut cmd = Command::new(program);
    if tool == Tool::Walkeeper {
        cmd.arg("receive");
    }
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn command(tool: Tool) -> Command {
    let program = match tool {
        Tool::Walkeeper => PathBuf::from(WALKEEPER),
        Tool::AsPgReceivewal => pg_named_binary(),
        Tool::PgReceivewal => pg_tool("pg_receivewal"),
    };
    command_at(&program, tool)
}

/// Connection options for a cluster, over TCP, never prompting.
fn conn_args(c: &Cluster) -> Vec<String> {
    ["-h", c.host(), "-p", &c.port().to_string(), "-U", "postgres", "-w"].map(String::from).to_vec()
}

/// What a finished run left behind.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    /// The signal that ended the process, if one did.
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn assert_ok(&self, what: &str) -> &Self {
        assert_eq!(self.code, Some(0), "{what} failed: {self:#?}");
        self
    }

    fn assert_fails(&self, what: &str) -> &Self {
        assert_eq!(self.code, Some(1), "{what} should exit 1: {self:#?}");
        self
    }
}

/// A running receiver whose output is collected; killed on drop if still running.
struct Proc {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    finished: bool,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), out.clone()),
            collect(child.stderr.take().unwrap(), err.clone()),
        ];
        Proc { child, out, err, readers, finished: false }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill() on the pid of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit; on timeout kills the process and panics with its output.
    fn wait(mut self, timeout: Duration) -> Out {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.finished = true;
                panic!("receiver still running after {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.finished = true;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Out {
            code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
            stdout: String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(tool: Tool, cluster: Option<&Cluster>, args: &[&str]) -> Proc {
    let mut cmd = command(tool);
    cmd.args(args);
    if let Some(c) = cluster {
        cmd.args(conn_args(c));
    }
    Proc::spawn(cmd)
}

fn run(tool: Tool, cluster: Option<&Cluster>, args: &[&str]) -> Out {
    spawn(tool, cluster, args).wait(RUN_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------------------
// WAL files
// ---------------------------------------------------------------------------------------------------------

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Segment file name of `lsn` on `tli`.
fn wal_name(tli: u32, lsn: u64, seg: u64) -> String {
    let segno = lsn / seg;
    let per_id = 0x1_0000_0000 / seg;
    format!("{tli:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

fn names_ending(dir: &Path, suffix: &str) -> Vec<String> {
    names(dir).into_iter().filter(|n| n.ends_with(suffix)).collect()
}

/// The segment name a file holds (`000000010000000000000003` for `000000010000000000000003.gz.partial`).
fn base_name(file: &str) -> &str {
    &file[..24]
}

fn is_segment(file: &str) -> bool {
    file.len() >= 24 && file[..24].bytes().all(|b| b.is_ascii_hexdigit())
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Everything in `dir`: name → (contents, mode).
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    names(dir)
        .into_iter()
        .map(|n| (n.clone(), (fs::read(dir.join(&n)).unwrap(), mode(&dir.join(&n)))))
        .collect()
}

/// Asserts a complete segment file in `dir` decodes to exactly the server's segment.
fn assert_segment_matches_server(dir: &Path, file: &str, server: &Cluster) {
    let got = wal_bytes(&dir.join(file));
    let want = server.read_wal_segment(base_name(file));
    assert_eq!(got.len(), want.len(), "{file}: length differs from the server's segment");
    assert!(got == want, "{file} in {} differs from the server's segment", dir.display());
}

/// `prefix` bytes of a file's WAL content.
fn prefix(path: &Path, len: usize) -> Vec<u8> {
    let bytes = wal_bytes(path);
    assert!(bytes.len() >= len, "{} holds {} bytes, fewer than {len}", path.display(), bytes.len());
    bytes[..len].to_vec()
}

/// The `(lsn, timeline)` of each "starting log streaming at X (timeline T)" line.
fn start_lines(stderr: &str) -> Vec<(u64, u32)> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("starting log streaming at ").map(|(_, rest)| rest))
        .map(|rest| {
            let (lsn, tli) = rest.split_once(" (timeline ").expect("timeline in start line");
            (parse_lsn(lsn), tli.trim_end_matches(')').parse().expect("timeline number"))
        })
        .collect()
}

/// Where the old timeline ended, from a history file's last line.
fn switchpoint(history: &str) -> u64 {
    let line = history.lines().rfind(|l| !l.trim().is_empty() && !l.starts_with('#')).unwrap();
    parse_lsn(line.split('\t').nth(1).unwrap())
}

fn small_cluster() -> Cluster {
    Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '128MB'").start()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("walkeeper-recv-").tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// Options, help, version, messages
// ---------------------------------------------------------------------------------------------------------

/// The refusals of 020_pg_receivewal.pl and a few more: same stderr as the real pg_receivewal, exit 1,
/// nothing connects (no server is running).
#[test]
fn option_refusals_match_pg_receivewal() {
    let dir = tempdir();
    let d = p(dir.path());
    let cases: &[&[&str]] = &[
        &[],
        &["-D", d, "--create-slot", "--drop-slot"],
        &["-D", d, "--create-slot"],
        &["-D", d, "--drop-slot"],
        &["--drop-slot"],
        &["-D", d, "--synchronous", "--no-sync"],
        &["-D", d, "extra1", "extra2"],
        &["-D", d, "--compress", "none:1"],
        &["-D", d, "-Z", "bogus"],
        &["-D", d, "--endpos", "foo"],
        &["-D", d, "-E", "0/"],
        &["-D", d, "-s", "-1"],
        &["-D", d, "-s", "2147484"],
    ];
    for args in cases {
        let real = run(Tool::PgReceivewal, None, args);
        let ours = run(Tool::AsPgReceivewal, None, args);
        real.assert_fails(&format!("pg_receivewal {args:?}"));
        ours.assert_fails(&format!("walkeeper as pg_receivewal {args:?}"));
        assert_eq!(ours.stderr, real.stderr, "stderr for {args:?}");
        assert_eq!(ours.stdout, "", "stdout for {args:?}");
        // As `walkeeper receive` the same message, under walkeeper's name.
        let sub = run(Tool::Walkeeper, None, args);
        sub.assert_fails(&format!("walkeeper receive {args:?}"));
        let expected = real
            .stderr
            .replace("pg_receivewal: ", "walkeeper: ")
            .replace("\"pg_receivewal --help\"", "\"walkeeper receive --help\"");
        assert_eq!(sub.stderr, expected, "walkeeper receive {args:?}");
    }
    // PostgreSQL's test pins this one's text.
    let out = run(Tool::AsPgReceivewal, None, &["-D", d, "--compress", "none:1"]);
    assert!(out.stderr.starts_with(
        "pg_receivewal: error: invalid compression specification: compression algorithm \"none\" does not accept a compression level"
    ));
    // Nothing was written by any of them.
    assert!(names(dir.path()).is_empty());
}

/// `pg_receivewal` as a symlink name: help, `-?`, version, error prefix and hint, unknown options.
#[test]
fn same_interface_under_the_pg_receivewal_name() {
    let bin = tempdir();
    let link = bin.path().join("pg_receivewal");
    std::os::unix::fs::symlink(WALKEEPER, &link).unwrap();
    let go = |args: &[&str]| {
        let mut cmd = command_at(&link, Tool::AsPgReceivewal);
        cmd.args(args);
        Proc::spawn(cmd).wait(RUN_TIMEOUT)
    };
    let help = go(&["--help"]);
    help.assert_ok("--help");
    assert!(help.stdout.starts_with("pg_receivewal receives PostgreSQL streaming write-ahead logs.\n\nUsage:\n  pg_receivewal [OPTION]...\n"), "{}", help.stdout);
    let real_help = run(Tool::PgReceivewal, None, &["--help"]);
    // Every option line of the real help is in ours.
    for line in real_help.stdout.lines().filter(|l| l.trim_start().starts_with('-')) {
        let option = line.split_whitespace().next().unwrap();
        assert!(help.stdout.contains(option), "help lacks {option}");
    }
    let q = go(&["-?"]);
    q.assert_ok("-?");
    assert_eq!(q.stdout, help.stdout);
    let version = go(&["--version"]);
    version.assert_ok("--version");
    let line = version.stdout.lines().next().unwrap_or_default();
    let rest = line.strip_prefix("pg_receivewal (PostgreSQL) ").unwrap_or_else(|| panic!("{line:?}"));
    let major: u32 = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
    assert!((13..=18).contains(&major), "{line}");
    assert_eq!(go(&["-V"]).stdout, version.stdout);
    // Errors: prefix, hint, exit 1.
    let err = go(&[]);
    err.assert_fails("no arguments");
    assert_eq!(
        err.stderr,
        "pg_receivewal: error: no target directory specified\npg_receivewal: hint: Try \"pg_receivewal --help\" for more information.\n"
    );
    let unknown = go(&["--bogus"]);
    unknown.assert_fails("unknown option");
    assert!(unknown.stderr.starts_with("pg_receivewal: error: "), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("--bogus"), "{}", unknown.stderr);
    assert!(
        unknown.stderr.ends_with("pg_receivewal: hint: Try \"pg_receivewal --help\" for more information.\n"),
        "{}",
        unknown.stderr
    );
}

/// Connection refused: `-n` gives exit 1 with libpq's message (the real tool's first line, with libpq's
/// hint joined onto the same line: walkeeper reports each failure on one line); without
/// `-n` the receiver keeps retrying and SIGTERM ends it with exit 0.
#[test]
fn connection_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let dir = tempdir();
    let args = ["-D", p(dir.path()), "-n", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-w"];
    let real = run(Tool::PgReceivewal, None, &args);
    let ours = run(Tool::AsPgReceivewal, None, &args);
    real.assert_fails("real, refused");
    ours.assert_fails("ours, refused");
    let mut real_lines = real.stderr.lines();
    let (first, hint) = (real_lines.next().unwrap(), real_lines.next().unwrap());
    let hint = hint.trim().trim_end_matches('?');
    let hint = format!("{}{}", hint[..1].to_lowercase(), &hint[1..]);
    assert_eq!(ours.stderr, format!("{first} ({hint}?)\n"));
    assert!(ours.stderr.contains("Connection refused"), "{}", ours.stderr);

    let mut looping =
        spawn(Tool::AsPgReceivewal, None, &args[..2].iter().chain(&args[3..]).copied().collect::<Vec<_>>());
    assert!(
        wait_until(Duration::from_secs(30), || looping.stderr().contains("Connection refused")),
        "no connection error reported: {}",
        looping.stderr()
    );
    assert!(looping.running(), "without -n the receiver must keep trying: {}", looping.stderr());
    looping.signal(libc::SIGTERM);
    let out = looping.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(names(dir.path()).is_empty());
}

/// A missing slot without `-n`: like pg_receivewal, keep retrying; streaming starts once the slot exists.
#[test]
fn missing_slot_is_retried_until_created() {
    let c = small_cluster();
    let dir = tempdir();
    let mut receiver = spawn(Tool::Walkeeper, Some(&c), &["-D", p(dir.path()), "--slot", "later", "-v"]);
    assert!(
        wait_until(Duration::from_secs(30), || receiver
            .stderr()
            .contains("replication slot \"later\" does not exist")),
        "no missing-slot error: {}",
        receiver.stderr()
    );
    assert!(receiver.running(), "without -n the receiver must keep trying: {}", receiver.stderr());
    c.psql("SELECT pg_create_physical_replication_slot('later', true)");
    assert!(
        wait_until(Duration::from_secs(60), || receiver.stderr().contains("starting log streaming at")),
        "streaming never started after the slot was created: {}",
        receiver.stderr()
    );
    receiver.signal(libc::SIGTERM);
    let out = receiver.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------------------
// 020_pg_receivewal.pl
// ---------------------------------------------------------------------------------------------------------

/// Slot creation and drop, `--if-not-exists`, and the errors for an existing or missing slot — both tools.
#[test]
fn slot_create_and_drop() {
    let c = small_cluster();
    let slot_row = |name: &str| {
        c.psql(&format!(
            "SELECT slot_type || '|' || coalesce(restart_lsn::text, '') FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
    };
    for tool in [Tool::PgReceivewal, Tool::AsPgReceivewal] {
        run(tool, Some(&c), &["--slot", "test", "--create-slot"]).assert_ok("--create-slot");
        assert_eq!(slot_row("test"), "physical|", "{tool:?}: a physical slot, restart LSN null");
        let again = run(tool, Some(&c), &["--slot", "test", "--create-slot"]);
        again.assert_fails("creating an existing slot");
        assert!(again.stderr.starts_with("pg_receivewal: error: "), "{tool:?}: {}", again.stderr);
        assert!(
            again.stderr.contains("replication slot \"test\" already exists"),
            "{tool:?}: {}",
            again.stderr
        );
        run(tool, Some(&c), &["--slot", "test", "--create-slot", "--if-not-exists"])
            .assert_ok("--if-not-exists");
        assert_eq!(slot_row("test"), "physical|");
        // -D is allowed (and ignored) with --create-slot.
        let dir = tempdir();
        run(tool, Some(&c), &["-D", p(dir.path()), "--slot", "test2", "--create-slot"])
            .assert_ok("-D --create-slot");
        assert!(names(dir.path()).is_empty());
        run(tool, Some(&c), &["--slot", "test2", "--drop-slot"]).assert_ok("drop test2");
        run(tool, Some(&c), &["--slot", "test", "--drop-slot"]).assert_ok("--drop-slot");
        assert_eq!(slot_row("test"), "", "{tool:?}: the slot was removed");
        let missing = run(tool, Some(&c), &["--slot", "test", "--drop-slot"]);
        missing.assert_fails("dropping a missing slot");
        assert!(
            missing.stderr.contains("replication slot \"test\" does not exist"),
            "{tool:?}: {}",
            missing.stderr
        );
    }
}

/// One step of the 020 sequence: switch segment, note the insert position, add a row past it.
fn next_step(c: &Cluster, row: u32) -> String {
    c.psql("SELECT pg_switch_wal()");
    let next = c.psql("SELECT pg_current_wal_insert_lsn()");
    c.psql(&format!("INSERT INTO test_table VALUES ({row})"));
    next
}

/// Asserts two archives hold the same files with the same WAL: complete segments whole (and equal to
/// the server's), partial ones up to the end position of the run that left them.
fn assert_same_archive(a: &Path, b: &Path, server: &Cluster, endpos: &[u64]) {
    let seg = server.segment_size();
    assert_eq!(names(a), names(b), "the two archives hold different files");
    for file in names(a).iter().filter(|f| is_segment(f)) {
        if file.ends_with(".partial") {
            let segno = u64::from_str_radix(&base_name(file)[8..16], 16).unwrap() * (0x1_0000_0000 / seg)
                + u64::from_str_radix(&base_name(file)[16..], 16).unwrap();
            let Some(end) = endpos.iter().find(|e| *e / seg == segno) else { continue };
            let len = (end % seg) as usize;
            assert!(
                prefix(&a.join(file), len) == prefix(&b.join(file), len),
                "{file} differs before {end:X}"
            );
            assert!(
                prefix(&a.join(file), len) == server.read_wal_segment(base_name(file))[..len],
                "{file} differs from the server's before {end:X}"
            );
        } else if !file.ends_with(".history") {
            assert!(wal_bytes(&a.join(file)) == wal_bytes(&b.join(file)), "{file} differs");
            assert_segment_matches_server(a, file, server);
        }
    }
}

/// 020's streaming part: --synchronous with --endpos leaves one `.partial`; a gzip run completes it as
/// `.gz`, an lz4 run completes the gzip partial as `.lz4`; a zstd run (walkeeper only) likewise; a plain
/// run completes the last one uncompressed. Files are 0600. Real pg_receivewal does the same steps into its
/// own directory and both archives are compared file by file, and with the server's segments.
#[test]
fn streaming_with_endpos_and_compression() {
    let c = small_cluster();
    let seg = c.segment_size();
    let (wk, pg) = (tempdir(), tempdir());
    let both = |args: &[&str]| {
        for (tool, dir) in [(Tool::Walkeeper, wk.path()), (Tool::PgReceivewal, pg.path())] {
            let mut full = vec!["-D", p(dir), "--verbose", "--no-loop"];
            full.extend_from_slice(args);
            run(tool, Some(&c), &full).assert_ok(&format!("{tool:?} {args:?}"));
        }
    };
    let mut endpos = Vec::new();

    c.psql("CREATE TABLE test_table(x integer PRIMARY KEY)");
    let next = next_step(&c, 1);
    endpos.push(parse_lsn(&next));
    both(&["--endpos", &next, "--synchronous"]);
    let partials = names_ending(wk.path(), ".partial");
    assert_eq!(partials, [format!("{}.partial", wal_name(1, parse_lsn(&next), seg))], "one partial segment");
    assert_same_archive(wk.path(), pg.path(), &c, &endpos);

    let mut previous = partials[0].clone();
    for (method, suffix, row) in [("gzip:1", ".gz", 2), ("lz4", ".lz4", 3)] {
        let next = next_step(&c, row);
        endpos.push(parse_lsn(&next));
        both(&["--endpos", &next, "--compress", method]);
        let complete = names_ending(wk.path(), suffix);
        assert_eq!(complete.len(), 1, "one {method} segment: {:?}", names(wk.path()));
        let partial = names_ending(wk.path(), &format!("{suffix}.partial"));
        assert_eq!(partial.len(), 1, "one {method} partial: {:?}", names(wk.path()));
        assert_eq!(
            complete[0],
            format!("{}{suffix}", base_name(&previous)),
            "the previous partial is now complete"
        );
        assert_eq!(partial[0], format!("{}{suffix}.partial", wal_name(1, parse_lsn(&next), seg)));
        assert_segment_matches_server(wk.path(), &complete[0], &c);
        assert_same_archive(wk.path(), pg.path(), &c, &endpos);
        previous = partial[0].clone();
    }
    // The external tools accept our compressed files too.
    let gz = wk.path().join(&names_ending(wk.path(), ".gz")[0]);
    assert!(Command::new("gzip").arg("--test").arg(&gz).status().unwrap().success());
    let lz4 = wk.path().join(&names_ending(wk.path(), ".lz4")[0]);
    assert!(Command::new("lz4")
        .arg("-t")
        .arg(&lz4)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success());

    // zstd (walkeeper only: pg_receivewal 15 has no zstd for WAL).
    let next = next_step(&c, 4);
    endpos.push(parse_lsn(&next));
    run(Tool::Walkeeper, Some(&c), &["-D", p(wk.path()), "-n", "--endpos", &next, "-Z", "zstd"])
        .assert_ok("zstd");
    let zst = names_ending(wk.path(), ".zst");
    assert_eq!(zst, [format!("{}.zst", base_name(&previous))]);
    assert_eq!(
        names_ending(wk.path(), ".zst.partial"),
        [format!("{}.zst.partial", wal_name(1, parse_lsn(&next), seg))]
    );
    assert_segment_matches_server(wk.path(), &zst[0], &c);
    assert!(Command::new("zstd")
        .arg("-q")
        .arg("-t")
        .arg(wk.path().join(&zst[0]))
        .status()
        .unwrap()
        .success());
    let zst_partial = names_ending(wk.path(), ".zst.partial")[0].clone();

    // No compression: the zstd partial's segment is now complete, uncompressed.
    let next = next_step(&c, 5);
    endpos.push(parse_lsn(&next));
    run(Tool::Walkeeper, Some(&c), &["-D", p(wk.path()), "-n", "--endpos", &next]).assert_ok("plain");
    assert!(wk.path().join(base_name(&zst_partial)).is_file(), "previously partial WAL is now complete");
    assert_segment_matches_server(wk.path(), base_name(&zst_partial), &c);

    // Permissions: the server's data_directory_mode is 0700, so files are 0600.
    for dir in [wk.path(), pg.path()] {
        for file in names(dir) {
            assert_eq!(mode(&dir.join(&file)), 0o600, "{file} in {}", dir.display());
        }
    }
}

/// With group access on the server (initdb -g, data_directory_mode 0750), files are 0640 — as the real
/// pg_receivewal makes them.
#[test]
fn file_modes_follow_data_directory_mode() {
    let c = Cluster::builder().segment_size_mb(1).group_access(true).conf("wal_keep_size = '128MB'").start();
    assert_eq!(c.psql("SHOW data_directory_mode"), "0750");
    c.psql("CREATE TABLE test_table(x integer PRIMARY KEY)");
    let (wk, pg) = (tempdir(), tempdir());
    for row in [1, 2] {
        let next = next_step(&c, row);
        for (tool, dir) in [(Tool::Walkeeper, wk.path()), (Tool::PgReceivewal, pg.path())] {
            run(tool, Some(&c), &["-D", p(dir), "-n", "--endpos", &next, "-Z", "gzip"]).assert_ok("stream");
        }
    }
    assert_eq!(names(wk.path()), names(pg.path()));
    let files = names(wk.path());
    assert_eq!(files.len(), 2, "a complete gzip segment and a gzip partial: {files:?}");
    for dir in [wk.path(), pg.path()] {
        for file in names(dir) {
            assert_eq!(mode(&dir.join(&file)), 0o640, "{file} in {}", dir.display());
        }
    }
}

/// 020's slot part: a missing slot is an error naming it; with an empty directory and a slot, streaming
/// starts at the slot's restart_lsn (READ_REPLICATION_SLOT) and that segment is archived.
#[test]
fn restart_from_the_slot_position() {
    let c = small_cluster();
    let seg = c.segment_size();
    c.psql("CREATE TABLE test_table(x integer PRIMARY KEY)");
    c.psql("CHECKPOINT");
    c.psql("SELECT pg_create_physical_replication_slot('archive_slot', true), pg_create_physical_replication_slot('archive_slot_pg', true)");
    let restart = c.psql("SELECT string_agg(DISTINCT restart_lsn::text, ',') FROM pg_replication_slots");
    assert!(!restart.contains(','), "both slots reserve from the same LSN: {restart}");
    let walfile_streamed = wal_name(1, parse_lsn(&restart), seg);
    c.psql("INSERT INTO test_table VALUES (5)");
    c.psql("SELECT pg_switch_wal()");
    let next = c.psql("SELECT pg_current_wal_insert_lsn()");
    c.psql("INSERT INTO test_table VALUES (6)");

    let (wk, pg) = (tempdir(), tempdir());
    for tool in [Tool::PgReceivewal, Tool::AsPgReceivewal] {
        let out = run(
            tool,
            Some(&c),
            &[
                "-D",
                p(wk.path()),
                "--slot",
                "nonexistentslot",
                "-n",
                "--no-sync",
                "--verbose",
                "--endpos",
                &next,
            ],
        );
        out.assert_fails("missing slot");
        assert!(
            out.stderr.contains("pg_receivewal: error: replication slot \"nonexistentslot\" does not exist"),
            "{tool:?}: {}",
            out.stderr
        );
    }
    assert!(names(wk.path()).is_empty());
    let mut starts = Vec::new();
    for (tool, dir, slot) in
        [(Tool::Walkeeper, wk.path(), "archive_slot"), (Tool::PgReceivewal, pg.path(), "archive_slot_pg")]
    {
        let out = run(
            tool,
            Some(&c),
            &["-D", p(dir), "--slot", slot, "-n", "--no-sync", "--verbose", "--endpos", &next],
        );
        out.assert_ok(&format!("{tool:?} from the slot"));
        assert!(
            dir.join(&walfile_streamed).is_file(),
            "{tool:?}: {walfile_streamed} archived: {:?}",
            names(dir)
        );
        starts.push(start_lines(&out.stderr));
    }
    assert_eq!(starts[0], [(parse_lsn(&restart) / seg * seg, 1)], "walkeeper starts at the slot's segment");
    assert_eq!(starts[0], starts[1], "same start as pg_receivewal");
    assert_same_archive(wk.path(), pg.path(), &c, &[parse_lsn(&next)]);
    // The slot followed (a slot makes both report their flush position).
    let flushed =
        parse_lsn(&c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'archive_slot'"));
    assert!(flushed >= parse_lsn(&next), "slot at {}, streamed past {next}", format_lsn(flushed));
}

/// 020's timeline part: a slot on a standby, the standby promoted; streaming from the slot crosses from
/// timeline 1 to 2: the history file is archived, the old timeline's last segment stays `.partial`, segments
/// continue on timeline 2 — exactly as pg_receivewal leaves them.
#[test]
fn timeline_switch_via_a_promoted_standby() {
    let mut primary = small_cluster();
    let seg = primary.segment_size();
    primary.psql("CREATE TABLE test_table(x integer PRIMARY KEY)");
    let standby = primary.standby();
    standby.psql("SELECT pg_create_physical_replication_slot('archive_slot', true), pg_create_physical_replication_slot('archive_slot_pg', true)");
    let restart =
        standby.psql("SELECT string_agg(DISTINCT restart_lsn::text, ',') FROM pg_replication_slots");
    assert!(!restart.is_empty() && !restart.contains(','), "{restart}");
    let walfile_before_promotion = wal_name(1, parse_lsn(&restart), seg);
    // Finish the slot's segment, then end timeline 1 in the middle of a segment.
    primary.switch_wal();
    primary.psql("INSERT INTO test_table VALUES (1)");
    standby.wait_for_replay(primary.current_lsn());
    standby.promote();
    let walfile_after_promotion = standby.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    standby.psql("INSERT INTO test_table VALUES (7)");
    standby.psql("SELECT pg_switch_wal()");
    let next = standby.psql("SELECT pg_current_wal_insert_lsn()");
    standby.psql("INSERT INTO test_table VALUES (8)");

    let history = fs::read_to_string(standby.wal_segment_path("00000002.history")).unwrap();
    let switch = switchpoint(&history);
    assert_ne!(switch % seg, 0, "timeline 1 must end inside a segment for this test");
    let old_last = wal_name(1, switch, seg);

    let (wk, pg) = (tempdir(), tempdir());
    let mut logs = Vec::new();
    for (tool, dir, slot) in
        [(Tool::Walkeeper, wk.path(), "archive_slot"), (Tool::PgReceivewal, pg.path(), "archive_slot_pg")]
    {
        let out = run(
            tool,
            Some(&standby),
            &["-D", p(dir), "--verbose", "--endpos", &next, "--slot", slot, "--no-sync", "-n"],
        );
        out.assert_ok(&format!("{tool:?} across the timeline switch"));
        for f in [&walfile_before_promotion, &walfile_after_promotion, &"00000002.history".to_string()] {
            assert!(dir.join(f).is_file(), "{tool:?}: {f} archived: {:?}", names(dir));
        }
        assert!(
            dir.join(format!("{old_last}.partial")).is_file(),
            "{tool:?}: old timeline's last segment stays partial"
        );
        assert!(!dir.join(&old_last).exists(), "{tool:?}: {old_last} must not be complete");
        assert_eq!(fs::read_to_string(dir.join("00000002.history")).unwrap(), history);
        logs.push(out.stderr);
    }
    // Same files, same WAL.
    assert_eq!(names(wk.path()), names(pg.path()));
    for file in names(wk.path()).iter().filter(|f| is_segment(f)) {
        let (a, b) = (wal_bytes(&wk.path().join(file)), wal_bytes(&pg.path().join(file)));
        if file.ends_with(".partial") {
            let end = if file.starts_with("00000001") { switch } else { parse_lsn(&next) };
            let len = (end % seg) as usize;
            assert!(a[..len] == b[..len], "{file} differs before {}", format_lsn(end));
        } else {
            assert!(a == b, "{file} differs");
            let server = if file.starts_with("00000001") { &primary } else { &standby };
            assert_segment_matches_server(wk.path(), file, server);
        }
    }
    // The old timeline's partial holds timeline 1 up to the switch, as the primary wrote it.
    let len = (switch % seg) as usize;
    assert!(
        prefix(&wk.path().join(format!("{old_last}.partial")), len)
            == primary.read_wal_segment(&old_last)[..len]
    );
    // Same start, and both report the switch to timeline 2 at the same position (pg_receivewal does not
    // repeat "starting log streaming" for the next timeline; walkeeper does).
    assert_eq!(start_lines(&logs[0])[0], start_lines(&logs[1])[0]);
    assert_eq!(start_lines(&logs[0])[0].1, 1);
    let switched = |log: &str| {
        log.lines()
            .filter_map(|l| l.split_once("switched to timeline ").map(|(_, r)| r.to_string()))
            .map(|r| {
                let (tli, at) = r.split_once(" at ").unwrap();
                (tli.parse::<u32>().unwrap(), parse_lsn(at))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(switched(&logs[0]), [(2, switch)], "{}", logs[0]);
    assert_eq!(switched(&logs[0]), switched(&logs[1]), "{}", logs[1]);
}

/// Runs both tools from their own slot (created together, so the same start) to `endpos`; returns the
/// (walkeeper, pg_receivewal) directories after checking both succeeded.
fn both_from_slots(c: &Cluster, slots: (&str, &str), endpos: u64) -> (tempfile::TempDir, tempfile::TempDir) {
    let (wk, pg) = (tempdir(), tempdir());
    let e = format_lsn(endpos);
    for (tool, dir, slot) in [(Tool::Walkeeper, wk.path(), slots.0), (Tool::PgReceivewal, pg.path(), slots.1)]
    {
        run(tool, Some(c), &["-D", p(dir), "-S", slot, "-n", "--no-sync", "-E", &e])
            .assert_ok(&format!("{tool:?}"));
    }
    (wk, pg)
}

fn create_slot_pair(c: &Cluster, a: &str, b: &str) {
    c.psql(&format!(
        "SELECT pg_create_physical_replication_slot('{a}', true), pg_create_physical_replication_slot('{b}', true)"
    ));
}

/// With much more WAL on the server than up to `--endpos`, both tools stop at the first message past it:
/// the same files, the segment of endpos is the only `.partial` and nothing later was written.
#[test]
fn endpos_with_much_more_wal_available() {
    let c = small_cluster();
    let seg = c.segment_size();
    create_slot_pair(&c, "wk", "pg");
    c.switch_wal();
    c.psql("SELECT pg_logical_emit_message(false, 'a', 'b')");
    let endpos = c.current_lsn();
    c.generate_wal(6);
    c.switch_wal();
    let (wk, pg) = both_from_slots(&c, ("wk", "pg"), endpos);
    assert_eq!(names(wk.path()), names(pg.path()));
    assert_eq!(names_ending(wk.path(), ".partial"), [format!("{}.partial", wal_name(1, endpos, seg))]);
    assert_eq!(names(wk.path()).last().unwrap(), &format!("{}.partial", wal_name(1, endpos, seg)));
    assert_same_archive(wk.path(), pg.path(), &c, &[endpos]);
}

/// `--endpos` just past a segment boundary, inside a record that began in the previous segment: the previous
/// segment is still renamed complete (walkeeper reads on until that record is whole and checked), as
/// pg_receivewal renames it.
#[test]
fn endpos_inside_a_record_crossing_a_segment_boundary() {
    let c = small_cluster();
    let seg = c.segment_size();
    create_slot_pair(&c, "wk", "pg");
    c.switch_wal();
    // ~900 kB, then ~400 kB that crosses into the next segment.
    let message = |kb: usize| {
        c.psql(&format!("SELECT pg_logical_emit_message(false, 'big', repeat('x', {}))", kb * 1024));
    };
    // Non-transactional messages are not flushed at once: use the insert position.
    let insert_lsn = || parse_lsn(&c.psql("SELECT pg_current_wal_insert_lsn()"));
    message(900);
    let before = insert_lsn();
    message(400);
    let after = insert_lsn();
    assert_eq!(after / seg, before / seg + 1, "the second message crosses a boundary");
    let endpos = after / seg * seg + 1000;
    assert!(endpos < after);
    c.psql("SELECT pg_logical_emit_message(false, 'past', 'endpos')");
    let (wk, pg) = both_from_slots(&c, ("wk", "pg"), endpos);
    assert_eq!(names(wk.path()), names(pg.path()));
    let crossed = wal_name(1, before, seg);
    assert!(wk.path().join(&crossed).is_file(), "{crossed} complete: {:?}", names(wk.path()));
    assert_eq!(names_ending(wk.path(), ".partial"), [format!("{}.partial", wal_name(1, endpos, seg))]);
    assert_same_archive(wk.path(), pg.path(), &c, &[endpos]);
}

// ---------------------------------------------------------------------------------------------------------
// Signals and end position
// ---------------------------------------------------------------------------------------------------------

/// SIGINT and SIGTERM while streaming end the receiver with exit 0, leaving the open segment `.partial`.
/// The real pg_receivewal 15 exits 0 on SIGINT but has no SIGTERM handler (it dies of the signal): there
/// walkeeper deliberately differs.
#[test]
fn signals_during_streaming_exit_zero() {
    let c = small_cluster();
    for (tool, sig) in [
        (Tool::AsPgReceivewal, libc::SIGINT),
        (Tool::AsPgReceivewal, libc::SIGTERM),
        (Tool::PgReceivewal, libc::SIGINT),
        (Tool::PgReceivewal, libc::SIGTERM),
    ] {
        let dir = tempdir();
        let mut proc = spawn(tool, Some(&c), &["-D", p(dir.path()), "-v"]);
        let streaming =
            wait_until(Duration::from_secs(30), || !names_ending(dir.path(), ".partial").is_empty());
        assert!(streaming, "{tool:?}: no .partial appeared: {}", proc.stderr());
        c.psql("SELECT pg_logical_emit_message(false, 'test', 'x')");
        assert!(proc.running(), "{tool:?} exited early: {}", proc.stderr());
        proc.signal(sig);
        let out = proc.wait(Duration::from_secs(30));
        if (tool, sig) == (Tool::PgReceivewal, libc::SIGTERM) {
            assert_eq!(out.signal, Some(libc::SIGTERM), "pg_receivewal 15 dies of SIGTERM: {out:#?}");
        } else {
            assert_eq!(out.code, Some(0), "{tool:?} after signal {sig}: {out:#?}");
        }
        let partials = names_ending(dir.path(), ".partial");
        assert_eq!(partials.len(), 1, "{tool:?}: {:?}", names(dir.path()));
        assert_eq!(names(dir.path()).len(), 1, "{tool:?}: {:?}", names(dir.path()));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Start position and directory checks
// ---------------------------------------------------------------------------------------------------------

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn lz4(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd_bytes(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

/// Where streaming starts for a prepared directory: the same as pg_receivewal (compared on the
/// "starting log streaming at" line) for complete and partial files of every compression method.
#[test]
fn start_position_rules() {
    let c = small_cluster();
    let seg = c.segment_size();
    // Three complete segments on the server: n, n+1, n+2; n+3 is being written.
    c.switch_wal();
    let segs: Vec<String> = (0..3)
        .map(|i| {
            c.psql(&format!("SELECT pg_logical_emit_message(false, 'step', '{i}')"));
            c.switch_wal()
        })
        .collect();
    let lsn_of = |name: &str| {
        let per_id = 0x1_0000_0000 / seg;
        (u64::from_str_radix(&name[8..16], 16).unwrap() * per_id
            + u64::from_str_radix(&name[16..24], 16).unwrap())
            * seg
    };
    let data = |i: usize| c.read_wal_segment(&segs[i]);
    let next = c.psql("SELECT pg_current_wal_insert_lsn()");
    c.psql("SELECT pg_logical_emit_message(false, 'past', 'endpos')");

    // (files to create, expected start segment, whether pg_receivewal can read the directory too)
    type Files = Vec<(String, Vec<u8>)>;
    let cases: Vec<(&str, Files, u64, bool)> = vec![
        ("complete", vec![(segs[0].clone(), data(0))], lsn_of(&segs[1]), true),
        ("partial", vec![(format!("{}.partial", segs[1]), data(1))], lsn_of(&segs[1]), true),
        (
            "complete then partial",
            vec![(segs[0].clone(), data(0)), (format!("{}.partial", segs[1]), data(1))],
            lsn_of(&segs[1]),
            true,
        ),
        (
            "partial and complete of one segment",
            vec![(format!("{}.partial", segs[1]), data(1)), (segs[1].clone(), data(1))],
            lsn_of(&segs[2]),
            true,
        ),
        ("gzip complete", vec![(format!("{}.gz", segs[1]), gzip(&data(1)))], lsn_of(&segs[2]), true),
        (
            "gzip partial",
            vec![(format!("{}.gz.partial", segs[1]), gzip(&data(1)[..5000]))],
            lsn_of(&segs[1]),
            true,
        ),
        ("lz4 complete", vec![(format!("{}.lz4", segs[0]), lz4(&data(0)))], lsn_of(&segs[1]), true),
        (
            "lz4 partial",
            vec![(format!("{}.lz4.partial", segs[2]), lz4(&data(2)[..100]))],
            lsn_of(&segs[2]),
            true,
        ),
        (
            "mixed methods, newest wins",
            vec![
                (segs[0].clone(), data(0)),
                (format!("{}.gz", segs[1]), gzip(&data(1))),
                (format!("{}.lz4.partial", segs[2]), lz4(&data(2)[..100])),
                ("00000001.history.bak".into(), b"junk".to_vec()),
            ],
            lsn_of(&segs[2]),
            true,
        ),
        ("zstd complete", vec![(format!("{}.zst", segs[1]), zstd_bytes(&data(1)))], lsn_of(&segs[2]), false),
        (
            "zstd partial",
            vec![(format!("{}.zst.partial", segs[2]), zstd_bytes(&data(2)[..64]))],
            lsn_of(&segs[2]),
            false,
        ),
    ];
    for (what, files, expected, pg_too) in cases {
        let tools: &[Tool] = if pg_too { &[Tool::Walkeeper, Tool::PgReceivewal] } else { &[Tool::Walkeeper] };
        let mut starts = Vec::new();
        let mut dirs = Vec::new();
        for tool in tools {
            let dir = tempdir();
            for (name, bytes) in &files {
                fs::write(dir.path().join(name), bytes).unwrap();
            }
            let out =
                run(*tool, Some(&c), &["-D", p(dir.path()), "-n", "--no-sync", "-v", "--endpos", &next]);
            out.assert_ok(&format!("{what}: {tool:?}"));
            starts.push(start_lines(&out.stderr));
            dirs.push(dir);
        }
        assert_eq!(starts[0], [(expected, 1)], "{what}: walkeeper's start");
        if pg_too {
            assert_eq!(starts[0], starts[1], "{what}: same start as pg_receivewal");
            assert_eq!(names(dirs[0].path()), names(dirs[1].path()), "{what}");
        }
        // What was streamed is the server's WAL.
        for file in names(dirs[0].path()).into_iter().filter(|f| is_segment(f) && !f.contains('.')) {
            assert_segment_matches_server(dirs[0].path(), &file, &c);
        }
    }
}

/// A directory written for another segment size (the server's segment size changed under it with
/// pg_resetwal, system identifier unchanged) is refused with an error about the size, and nothing changes.
#[test]
fn segment_size_contradiction_is_refused() {
    let mut c = small_cluster();
    let dir = tempdir();
    c.switch_wal();
    // Stream a complete segment and a partial one with 1 MB segments.
    let proc = spawn(Tool::Walkeeper, Some(&c), &["-D", p(dir.path()), "--no-sync"]);
    c.psql("SELECT pg_logical_emit_message(true, 'a', 'b')");
    assert!(
        wait_until(Duration::from_secs(30), || !names_ending(dir.path(), ".partial").is_empty()),
        "{}",
        proc.stderr()
    );
    c.switch_wal();
    assert!(
        wait_until(Duration::from_secs(30), || names(dir.path()).iter().any(|f| !f.ends_with(".partial"))),
        "{}",
        proc.stderr()
    );
    proc.signal(libc::SIGINT);
    assert_eq!(proc.wait(Duration::from_secs(30)).code, Some(0));
    let before = snapshot(dir.path());

    c.stop();
    let data = c.data_dir();
    let meta = fs::metadata(&data).unwrap();
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let out = Command::new(pg_tool("pg_resetwal"))
        .args(["--wal-segsize=2", "-D"])
        .arg(&data)
        .uid(meta.uid())
        .gid(meta.gid())
        .current_dir("/tmp")
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_resetwal: {}", String::from_utf8_lossy(&out.stderr));
    c.start_again();
    assert_eq!(c.psql("SHOW wal_segment_size"), "2MB");

    for tool in [Tool::Walkeeper, Tool::AsPgReceivewal] {
        let out = run(tool, Some(&c), &["-D", p(dir.path()), "-n", "--no-sync"]);
        out.assert_fails("segment size changed");
        assert!(
            out.stderr.contains("holds 1048576 bytes of WAL, but the WAL segment size is 2097152 bytes"),
            "{tool:?}: {}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
        assert!(snapshot(dir.path()) == before, "the archive was changed");
    }
}

/// The brief's version of the contradiction: a directory from a 16 MB cluster pointed at a 32 MB one.
/// They are different clusters, so the system identifier check names both; nothing is damaged.
#[test]
fn directory_from_a_cluster_with_another_segment_size() {
    let a = Cluster::start();
    let b = Cluster::builder().segment_size_mb(32).start();
    let dir = tempdir();
    let next = a.psql("SELECT pg_current_wal_insert_lsn()");
    a.psql("SELECT pg_logical_emit_message(false, 'a', 'b')");
    run(Tool::Walkeeper, Some(&a), &["-D", p(dir.path()), "-n", "--no-sync", "--endpos", &next])
        .assert_ok("fill");
    let before = snapshot(dir.path());
    assert_eq!(before.len(), 1);
    let out = run(Tool::Walkeeper, Some(&b), &["-D", p(dir.path()), "-n", "--no-sync"]);
    out.assert_fails("other cluster, other segment size");
    let (ida, idb) = (
        a.psql("SELECT system_identifier FROM pg_control_system()"),
        b.psql("SELECT system_identifier FROM pg_control_system()"),
    );
    assert!(out.stderr.contains(&ida) && out.stderr.contains(&idb), "{}", out.stderr);
    assert!(snapshot(dir.path()) == before, "the archive was changed");
}

/// A directory holding another cluster's WAL is refused, naming both system identifiers; nothing changes.
#[test]
fn foreign_system_identifier_is_refused() {
    let a = small_cluster();
    let b = small_cluster();
    let (ida, idb) = (
        a.psql("SELECT system_identifier FROM pg_control_system()"),
        b.psql("SELECT system_identifier FROM pg_control_system()"),
    );
    assert_ne!(ida, idb);
    let dir = tempdir();
    a.switch_wal();
    let next = a.psql("SELECT pg_current_wal_insert_lsn()");
    a.psql("SELECT pg_logical_emit_message(false, 'a', 'b')");
    run(Tool::Walkeeper, Some(&a), &["-D", p(dir.path()), "-n", "--no-sync", "--endpos", &next])
        .assert_ok("fill from A");
    let before = snapshot(dir.path());
    for tool in [Tool::Walkeeper, Tool::AsPgReceivewal] {
        let out = run(tool, Some(&b), &["-D", p(dir.path()), "-n", "--no-sync"]);
        out.assert_fails("stream B into A's directory");
        assert!(out.stderr.contains(&ida) && out.stderr.contains(&idb), "{tool:?}: {}", out.stderr);
        assert!(out.stderr.contains("system identifier"), "{}", out.stderr);
        assert!(snapshot(dir.path()) == before, "the archive was changed");
    }
}

/// Missing directory, a regular file as the directory, a read-only file system: the same messages as
/// pg_receivewal, exit 1.
#[test]
fn unusable_directories() {
    let c = small_cluster();
    let tmp = tempdir();
    let missing = tmp.path().join("missing");
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    for target in [&missing, &file] {
        let real = run(Tool::PgReceivewal, Some(&c), &["-D", p(target), "-n"]);
        let ours = run(Tool::AsPgReceivewal, Some(&c), &["-D", p(target), "-n"]);
        real.assert_fails("real");
        ours.assert_fails("ours");
        assert!(
            ours.stderr
                .starts_with(&format!("pg_receivewal: error: could not open directory \"{}\": ", p(target))),
            "{}",
            ours.stderr
        );
        assert_eq!(ours.stderr, real.stderr);
    }
    assert!(!missing.exists());
    assert_eq!(fs::read(&file).unwrap(), b"x");

    // Root ignores permission bits, so use a read-only tmpfs (needs mount rights; skipped without them).
    let mnt = tempdir();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,ro", "tmpfs"])
        .arg(mnt.path())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        support::cannot_run("the read-only file system case needs to mount a tmpfs, which failed here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    for tool in [Tool::PgReceivewal, Tool::AsPgReceivewal] {
        let out = run(tool, Some(&c), &["-D", p(mnt.path()), "-n"]);
        out.assert_fails(&format!("{tool:?} on a read-only file system"));
        assert!(out.stderr.starts_with("pg_receivewal: error: "), "{tool:?}: {}", out.stderr);
        assert!(out.stderr.contains("Read-only file system"), "{tool:?}: {}", out.stderr);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Every major
// ---------------------------------------------------------------------------------------------------------

/// On every available major (13–18): stream a few segments live with --endpos; complete segments equal the
/// server's files and exactly one `.partial` remains.
#[test]
fn every_major_streams_with_endpos() {
    let installs = support::require_majors(13..=18);
    assert!(!installs.is_empty());
    let threads: Vec<_> = installs
        .into_iter()
        .map(|install| {
            std::thread::spawn(move || {
                let c = Cluster::builder()
                    .install(&install)
                    .segment_size_mb(1)
                    .conf("wal_keep_size = '128MB'")
                    .start();
                let seg = c.segment_size();
                let dir = tempdir();
                let start = c.current_lsn();
                // Mid-segment: the message that passes it cannot start in the previous segment.
                let endpos = start / seg * seg + 3 * seg + seg / 2;
                let proc = spawn(
                    Tool::Walkeeper,
                    Some(&c),
                    &["-D", p(dir.path()), "-n", "--no-sync", "-E", &format_lsn(endpos)],
                );
                assert!(
                    wait_until(Duration::from_secs(30), || !names(dir.path()).is_empty()),
                    "{}: {}",
                    install.major,
                    proc.stderr()
                );
                while c.current_lsn() <= endpos {
                    c.generate_wal(1);
                }
                c.switch_wal();
                let out = proc.wait(Duration::from_secs(60));
                out.assert_ok(&format!("PostgreSQL {}", install.major));
                let files = names(dir.path());
                let complete: Vec<_> = files.iter().filter(|f| !f.ends_with(".partial")).collect();
                assert!(complete.len() >= 3, "{}: {files:?}", install.major);
                assert_eq!(names_ending(dir.path(), ".partial").len(), 1, "{}: {files:?}", install.major);
                assert_eq!(
                    complete[0],
                    &wal_name(1, start, seg),
                    "{}: starts at the server's segment",
                    install.major
                );
                for file in complete {
                    assert_segment_matches_server(dir.path(), file, &c);
                }
                install.major
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in threads {
        match t.join() {
            Ok(major) => done.push(major),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
    eprintln!("streamed from majors {done:?}");
}

/// The server shuts down while streaming: with `-n` both tools exit 1 and keep the `.partial` with what
/// they received; without `-n` walkeeper reconnects when the server is back and continues where it was.
#[test]
fn server_restart_while_streaming() {
    let mut c = small_cluster();
    let seg = c.segment_size();
    c.switch_wal();
    let (a, b, looping) = (tempdir(), tempdir(), tempdir());
    let mut procs = vec![
        (Tool::AsPgReceivewal, spawn(Tool::AsPgReceivewal, Some(&c), &["-D", p(a.path()), "-n"])),
        (Tool::PgReceivewal, spawn(Tool::PgReceivewal, Some(&c), &["-D", p(b.path()), "-n"])),
    ];
    let mut follower = spawn(Tool::Walkeeper, Some(&c), &["-D", p(looping.path()), "-s", "1"]);
    c.psql("SELECT pg_logical_emit_message(true, 'before', 'shutdown')");
    for dir in [a.path(), b.path(), looping.path()] {
        assert!(wait_until(Duration::from_secs(30), || !names(dir).is_empty()), "{}", follower.stderr());
    }
    let before = c.current_lsn();
    c.stop();
    for (tool, proc) in procs.drain(..) {
        let out = proc.wait(Duration::from_secs(60));
        assert_eq!(out.code, Some(1), "{tool:?} with -n after the server stopped: {out:#?}");
    }
    assert_eq!(names(a.path()), names(b.path()));
    let file = format!("{}.partial", wal_name(1, before, seg));
    assert_eq!(names(a.path()), std::slice::from_ref(&file));
    let len = (before % seg) as usize;
    assert!(
        prefix(&a.path().join(&file), len) == prefix(&b.path().join(&file), len),
        "same WAL before the stop"
    );
    assert!(follower.running(), "without -n walkeeper waits for the server: {}", follower.stderr());
    c.start_again();
    c.psql("SELECT pg_logical_emit_message(true, 'after', 'restart')");
    c.switch_wal();
    c.psql("SELECT pg_logical_emit_message(true, 'next', 'segment')");
    let next = c.current_lsn();
    assert!(
        wait_until(Duration::from_secs(60), || looping.path().join(wal_name(1, before, seg)).is_file()),
        "the segment of the restart was not completed: {:?}\n{}",
        names(looping.path()),
        follower.stderr()
    );
    assert_segment_matches_server(looping.path(), &wal_name(1, before, seg), &c);
    assert!(wait_until(Duration::from_secs(30), || looping
        .path()
        .join(format!("{}.partial", wal_name(1, next, seg)))
        .is_file()));
    follower.signal(libc::SIGINT);
    let out = follower.wait(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}
