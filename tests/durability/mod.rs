//! Shared pieces of the durability tests (crash_safety, sync_standby, reconnect): running walkeeper as a
//! child process, a background write load, and checking an archive directory against the server's own
//! pg_wal byte for byte.
#![allow(dead_code)]

use crate::support::{format_lsn, parse_lsn, pg_tool, wait_until, walkeeper, Cluster, WALKEEPER};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A small deterministic PRNG (xorshift64*), seeded from the test so a failing run can be repeated.
pub struct Rng(u64);

impl Rng {
    /// Seed from `$WALKEEPER_TEST_SEED` if set, else from the clock; prints the seed.
    pub fn from_env_or_time(test: &str) -> Rng {
        let seed =
            std::env::var("WALKEEPER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            });
        println!("{test}: seed {seed} (repeat with WALKEEPER_TEST_SEED={seed})");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

// ---------------------------------------------------------------------------------------------------------
// walkeeper as a child process
// ---------------------------------------------------------------------------------------------------------

/// A running `walkeeper receive`; killed (SIGKILL) on drop if still running. Its stderr and stdout are
/// appended to `log`, which accumulates across runs.
pub struct Walkeeper {
    child: Child,
    pub log: PathBuf,
}

impl Walkeeper {
    /// `walkeeper receive -D dir -h 127.0.0.1 -p PORT -U postgres <extra...>`.
    pub fn start(cluster: &Cluster, dir: &Path, extra: &[&str], log: &Path) -> Walkeeper {
        let mut cmd = walkeeper();
        cmd.arg("receive").arg("-D").arg(dir);
        cmd.args(["-h", cluster.host(), "-p", &cluster.port().to_string(), "-U", "postgres", "-v"]);
        cmd.args(extra);
        Walkeeper::spawn(cmd, log)
    }

    /// Runs `cmd` (a `walkeeper` command line) with its output appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Walkeeper {
        let out = OpenOptions::new().create(true).append(true).open(log).expect("open walkeeper log");
        let err = out.try_clone().unwrap();
        let child =
            cmd.stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("cannot run {WALKEEPER}: {e}"));
        Walkeeper { child, log: log.to_path_buf() }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: a signal to our own child, which has not been reaped yet (we hold its Child).
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.child.wait().expect("wait for walkeeper")
    }

    /// Exit status if it has exited within `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().expect("try_wait walkeeper");
            status.is_some()
        });
        status
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait walkeeper").is_none()
    }

    /// SIGTERM and wait (a clean stop: files synced, open segment left `.partial`).
    pub fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_timeout(Duration::from_secs(30)) {
            Some(status) => status,
            None => panic!("walkeeper did not exit within 30 s of SIGTERM\n{}", self.log_tail(40)),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        format!("--- walkeeper log tail ---\n{}", all[all.len().saturating_sub(lines)..].join("\n"))
    }
}

impl Drop for Walkeeper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGCONT);
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Replication state as the server sees it
// ---------------------------------------------------------------------------------------------------------

/// `pg_stat_replication` row of application_name `walkeeper`: (state, write, flush, replay, sync_state).
pub fn replication_row(cluster: &Cluster) -> Option<Vec<String>> {
    let row = cluster
        .try_psql(
            "SELECT state, coalesce(write_lsn::text, ''), coalesce(flush_lsn::text, ''), \
             coalesce(replay_lsn::text, ''), sync_state FROM pg_stat_replication \
             WHERE application_name = 'walkeeper'",
        )
        .ok()?;
    let line = row.lines().next()?;
    Some(line.split('|').map(str::to_string).collect())
}

/// The write LSN the server holds for walkeeper, if it is connected and has reported one.
pub fn reported_write(cluster: &Cluster) -> Option<u64> {
    let row = replication_row(cluster)?;
    (!row[1].is_empty()).then(|| parse_lsn(&row[1]))
}

/// The flush LSN the server holds for walkeeper, if it is connected and has reported one.
pub fn reported_flush(cluster: &Cluster) -> Option<u64> {
    let row = replication_row(cluster)?;
    (!row[2].is_empty()).then(|| parse_lsn(&row[2]))
}

pub fn slot_restart_lsn(cluster: &Cluster, slot: &str) -> Option<u64> {
    let text = cluster.psql(&format!(
        "SELECT coalesce(restart_lsn::text, '') FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    (!text.is_empty()).then(|| parse_lsn(&text))
}

/// Waits until walkeeper streams (state `streaming`); panics with its log otherwise.
pub fn wait_streaming(cluster: &Cluster, wk: &Walkeeper, timeout: Duration) {
    let ok = wait_until(timeout, || replication_row(cluster).is_some_and(|r| r[0] == "streaming"));
    assert!(ok, "walkeeper did not start streaming within {timeout:?}\n{}", wk.log_tail(40));
}

// ---------------------------------------------------------------------------------------------------------
// Write load
// ---------------------------------------------------------------------------------------------------------

/// pgbench running a mixed INSERT / large-logical-message script against `cluster` until stopped, so
/// records of many sizes cross page and segment boundaries all the time.
pub struct Load {
    child: Child,
    _script_dir: tempfile::TempDir,
}

impl Load {
    /// About `rate` transactions per second from 2 clients (each ~10–40 kB of WAL).
    pub fn start(cluster: &Cluster, rate: u32) -> Load {
        cluster.psql("CREATE TABLE IF NOT EXISTS durability_load (id bigint, pad text)");
        let dir = tempfile::tempdir().unwrap();
        let insert = dir.path().join("insert.sql");
        fs::write(
            &insert,
            "\\set n random(1, 60)\n\
             INSERT INTO durability_load SELECT g, repeat(md5(g::text || random()::text), 8) \
             FROM generate_series(1, :n) g;\n",
        )
        .unwrap();
        let message = dir.path().join("message.sql");
        fs::write(
            &message,
            "\\set n random(100, 40000)\n\
             SELECT pg_logical_emit_message(true, 'durability', repeat(md5(random()::text), :n / 32 + 1));\n",
        )
        .unwrap();
        let mut cmd = Command::new(pg_tool("pgbench"));
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("PG")) {
                cmd.env_remove(key);
            }
        }
        cmd.args(["-n", "-h", cluster.host(), "-p", &cluster.port().to_string(), "-U", "postgres"]);
        cmd.args(["-c", "2", "-j", "1", "-T", "3600", "-R", &rate.to_string()]);
        cmd.arg("-f").arg(format!("{}@3", insert.display()));
        cmd.arg("-f").arg(format!("{}@1", message.display()));
        cmd.arg("postgres");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run pgbench");
        Load { child, _script_dir: dir }
    }

    /// Panics if pgbench died early (its stderr says why).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("the pgbench load stopped early ({status}): {err}");
        }
    }

    pub fn stop(mut self) {
        self.assert_running();
        // SAFETY: a signal to our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Archive vs server
// ---------------------------------------------------------------------------------------------------------

/// Compression of the archive under test (by file suffix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Zstd,
}

impl Comp {
    pub fn suffix(self) -> &'static str {
        match self {
            Comp::None => "",
            Comp::Zstd => ".zst",
        }
    }
}

/// One segment file found in the archive.
#[derive(Clone, Debug)]
pub struct ArchFile {
    pub segno: u64,
    pub timeline: u32,
    pub name: String,
    pub complete: bool,
}

pub fn segment_name(timeline: u32, segno: u64, seg_size: u64) -> String {
    let per = 0x1_0000_0000 / seg_size;
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

fn parse_segment(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((tli, hi * (0x1_0000_0000 / seg_size) + lo))
}

/// Segment files of `dir` (of compression `comp`), sorted by segment number then completeness. Panics on a
/// segment file of another compression, or on a stray temporary file next to a final name.
pub fn list_archive(dir: &Path, seg_size: u64, comp: Comp) -> Vec<ArchFile> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        // History files, temporary names (a segment being preallocated or streamed again) and the lock
        // file: not segments.
        if name.ends_with(".history") || name.ends_with(".tmp") || name == crate::support::LOCK_FILE {
            continue;
        }
        let (base, complete) = match name.strip_suffix(".partial") {
            Some(b) => (b, false),
            None => (name.as_str(), true),
        };
        let Some(seg) = base.strip_suffix(comp.suffix()).filter(|s| s.len() == 24) else {
            panic!("unexpected file {name:?} in the archive {}", dir.display());
        };
        let Some((timeline, segno)) = parse_segment(seg, seg_size) else {
            panic!("unexpected file {name:?} in the archive {}", dir.display());
        };
        files.push(ArchFile { segno, timeline, name, complete });
    }
    files.sort_by_key(|f| (f.segno, f.timeline, f.complete));
    files
}

/// Decoded content of an archive file; `None` if it vanished (renamed meanwhile). For a compressed
/// `.partial`, what decodes up to its last flush.
pub fn read_archive_file(dir: &Path, name: &str, comp: Comp) -> Option<Vec<u8>> {
    let path = dir.join(name);
    let raw = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    Some(match comp {
        Comp::None => raw,
        Comp::Zstd => {
            let mut out = Vec::new();
            let mut dec = zstd::stream::read::Decoder::new(&raw[..]).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match dec.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if name.ends_with(".partial") => {
                        // A stream still being written ends without its end mark: keep what decoded.
                        let _ = e;
                        break;
                    }
                    Err(e) => panic!("{}: not a valid zstd stream: {e}", path.display()),
                }
            }
            out
        }
    })
}

/// Length of the common prefix of two byte strings.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    // Compare in chunks for speed, then byte by byte in the first differing chunk.
    let mut i = 0;
    while i + 4096 <= n && a[i..i + 4096] == b[i..i + 4096] {
        i += 4096;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Totals of an archive check.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checked {
    pub complete: usize,
    pub partial: usize,
    pub bytes: u64,
    pub first: u64,
    pub last: u64,
}

/// Every complete segment in `dir` must be byte-identical to the server's file; every `.partial` must be a
/// prefix of the server's file (uncompressed: followed only by the zero padding). With `no_gap`, the
/// segments from the lowest to the highest must all be there, complete, except that the highest may be a
/// `.partial` (a run of `.partial` files at the top is allowed too: a restart resumes at its first), and
/// no `.partial` may sit below a complete segment.
pub fn check_archive(cluster: &Cluster, dir: &Path, comp: Comp, no_gap: bool) -> Result<Checked, String> {
    let seg_size = cluster.segment_size();
    let files = list_archive(dir, seg_size, comp);
    let mut c = Checked::default();
    for f in &files {
        let server_name = segment_name(f.timeline, f.segno, seg_size);
        let Some(ours) = read_archive_file(dir, &f.name, comp) else {
            continue; // a .partial renamed since the listing: its final name is in the listing of a later check
        };
        let server = cluster.read_wal_segment(&server_name);
        if f.complete {
            if ours.len() as u64 != seg_size {
                return Err(format!("{}: {} bytes, expected {seg_size}", f.name, ours.len()));
            }
            if ours != server {
                let at = common_prefix(&ours, &server);
                return Err(format!(
                    "{}: differs from the server's {server_name} at offset {at:#x} (LSN {})",
                    f.name,
                    format_lsn(f.segno * seg_size + at as u64)
                ));
            }
            c.complete += 1;
            c.bytes += ours.len() as u64;
        } else {
            let at = common_prefix(&ours, &server);
            let tail_ok = match comp {
                Comp::None => ours.len() as u64 == seg_size && ours[at..].iter().all(|&b| b == 0),
                Comp::Zstd => at == ours.len(),
            };
            if !tail_ok {
                return Err(format!(
                    "{}: not a prefix of the server's {server_name}: differs at offset {at:#x} (LSN {}) with \
                     data after it (file length {})",
                    f.name,
                    format_lsn(f.segno * seg_size + at as u64),
                    ours.len()
                ));
            }
            c.partial += 1;
            c.bytes += at as u64;
        }
    }
    if let (Some(first), Some(last)) = (files.first(), files.last()) {
        c.first = first.segno;
        c.last = last.segno;
    }
    if no_gap {
        let highest_complete = files.iter().filter(|f| f.complete).map(|f| f.segno).max();
        for segno in c.first..=c.last {
            let here: Vec<&ArchFile> = files.iter().filter(|f| f.segno == segno).collect();
            if here.is_empty() {
                return Err(format!("gap: no file for segment {}", segment_name(1, segno, seg_size)));
            }
            let complete = here.iter().any(|f| f.complete);
            if !complete && highest_complete.is_some_and(|h| h > segno) {
                return Err(format!(
                    "gap: segment {} is only .partial below the complete segment {}",
                    here[0].name,
                    segment_name(1, highest_complete.unwrap(), seg_size)
                ));
            }
        }
    }
    Ok(c)
}

/// The archive holds the server's WAL from `from` up to `to` (exclusive): all those bytes are in files
/// (complete segments, or the prefix of a `.partial`) equal to the server's.
pub fn check_covers(cluster: &Cluster, dir: &Path, comp: Comp, from: u64, to: u64) -> Result<(), String> {
    let seg_size = cluster.segment_size();
    let files = list_archive(dir, seg_size, comp);
    let mut pos = from;
    while pos < to {
        let segno = pos / seg_size;
        let name = segment_name(1, segno, seg_size);
        let seg_end = (segno + 1) * seg_size;
        let need = to.min(seg_end) - segno * seg_size;
        let server = cluster.read_wal_segment(&name);
        let candidates: Vec<&ArchFile> = files.iter().filter(|f| f.segno == segno).collect();
        let mut best = 0usize;
        for f in candidates.iter().rev() {
            // A `.partial` renamed since the listing is read under its final name.
            let ours = read_archive_file(dir, &f.name, comp).or_else(|| {
                f.name.strip_suffix(".partial").and_then(|complete| read_archive_file(dir, complete, comp))
            });
            if let Some(ours) = ours {
                best = best.max(common_prefix(&ours, &server[..need as usize]));
            }
        }
        if (best as u64) < need {
            return Err(format!(
                "the archive holds the server's segment {name} only up to offset {best:#x} (LSN {}), \
                 needed up to {} (files: {:?})",
                format_lsn(segno * seg_size + best as u64),
                format_lsn(segno * seg_size + need),
                candidates.iter().map(|f| &f.name).collect::<Vec<_>>()
            ));
        }
        pos = seg_end;
    }
    Ok(())
}

/// Ends the current segment and waits until walkeeper (running) has it complete in `dir`; returns it.
pub fn switch_and_wait(cluster: &Cluster, dir: &Path, comp: Comp, wk: &Walkeeper) -> String {
    let name = cluster.switch_wal();
    let target = dir.join(format!("{name}{}", comp.suffix()));
    let ok = wait_until(Duration::from_secs(60), || target.exists());
    assert!(ok, "walkeeper did not complete {name} within 60 s\n{}", wk.log_tail(40));
    name
}

/// Creates an empty archive directory under `parent`.
pub fn archive_dir(parent: &Path) -> PathBuf {
    let dir = parent.join("archive");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `f` repeatedly for up to `timeout`, returning the first `Some`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let mut out = None;
    wait_until(timeout, || {
        out = f();
        out.is_some()
    });
    out
}

pub fn elapsed(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}

pub fn file_len(path: &Path) -> u64 {
    File::open(path).and_then(|f| f.metadata()).map(|m| m.len()).unwrap_or(0)
}
