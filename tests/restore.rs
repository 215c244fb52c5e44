//! `walkeeper restore`, `status` and `cleanup` as PostgreSQL and operators call them, on archives of small
//! synthetic segments (valid WAL: a record holding a marker, then an XLOG_SWITCH): exit codes, what is
//! written and what is not, compressed and partial segments, the prefetch spool, concurrent invocations.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use walkeeper::archive::compress::Compressor;
use walkeeper::wal::encoder::WalEncoder;
use walkeeper::wal::segment::Compression;

const SEG: usize = 1 << 20;

fn walkeeper() -> Command {
    support::walkeeper()
}

/// A segment of timeline `tli`, number `n`: a record holding `marker`, then an XLOG_SWITCH and its padding.
fn segment(tli: u32, n: u64, marker: &[u8]) -> Vec<u8> {
    let mut e = WalEncoder::new(0xD110, SEG as u32, 7_000_000_000_000_000_001, tli, n * SEG as u64);
    e.main_data_record(10, 0, 1, marker);
    e.switch();
    e.into_bytes()
}

fn name(tli: u32, n: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", n / 4096, n % 4096)
}

fn compress(method: Compression, data: &[u8], finish: bool) -> Vec<u8> {
    let mut c = Compressor::new(method, None).unwrap().unwrap();
    c.write(data).unwrap();
    if finish {
        c.finish().unwrap()
    } else {
        c.sync_flush().unwrap();
        std::mem::take(c.output())
    }
}

/// Put segment `tli`/`n` into `dir` as `compression` (complete), returning its contents.
fn put(dir: &Path, tli: u32, n: u64, compression: Compression) -> Vec<u8> {
    let data = segment(tli, n, format!("seg {tli}/{n}").as_bytes());
    let file = dir.join(format!("{}{}", name(tli, n), compression.suffix()));
    if compression == Compression::None {
        fs::write(file, &data).unwrap();
    } else {
        fs::write(file, compress(compression, &data, true)).unwrap();
    }
    data
}

struct Env {
    _tmp: tempfile::TempDir,
    archive: PathBuf,
    pg_wal: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("archive");
        let pg_wal = tmp.path().join("pg_wal");
        fs::create_dir(&archive).unwrap();
        fs::create_dir(&pg_wal).unwrap();
        Env { _tmp: tmp, archive, pg_wal }
    }

    fn dest(&self) -> PathBuf {
        self.pg_wal.join("RECOVERYXLOG")
    }

    fn spool(&self) -> PathBuf {
        self.pg_wal.join(".walkeeper-prefetch")
    }

    /// `walkeeper restore -D archive [extra] file dest`
    fn restore(&self, extra: &[&str], file: &str, dest: &Path) -> Output {
        walkeeper()
            .arg("restore")
            .arg("-D")
            .arg(&self.archive)
            .args(extra)
            .arg(file)
            .arg(dest)
            .output()
            .unwrap()
    }

    /// No temporary file left next to the destination.
    fn assert_no_temp(&self) {
        let leftovers: Vec<String> = fs::read_dir(&self.pg_wal)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

impl Drop for Env {
    /// A prefetch worker may still be writing into the spool while the directory is removed (then removal
    /// fails with "directory not empty"); it exits once the spool is gone, so retry for a while.
    fn drop(&mut self) {
        let root = self._tmp.path().to_path_buf();
        let _ = wait_until(Duration::from_secs(10), || {
            let _ = fs::remove_dir_all(&root);
            !root.exists()
        });
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const NO_PREFETCH: &[&str] = &["--prefetch", "0"];

#[test]
fn missing_file_is_exit_1_with_no_output() {
    let env = Env::new();
    put(&env.archive, 1, 1, Compression::None);
    for file in
        [name(1, 2), name(2, 1), "00000002.history".to_string(), format!("{}.00000028.backup", name(1, 1))]
    {
        let out = env.restore(&[], &file, &env.dest());
        assert_code(&out, 1);
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{file}: {}", text(&out.stderr));
        assert!(!env.dest().exists());
    }
    env.assert_no_temp();
}

#[test]
fn serves_plain_and_compressed_segments_identically() {
    let env = Env::new();
    for (n, method) in
        [(1, Compression::None), (2, Compression::Gzip), (3, Compression::Lz4), (4, Compression::Zstd)]
    {
        let data = put(&env.archive, 1, n, method);
        let out = env.restore(NO_PREFETCH, &name(1, n), &env.dest());
        assert_code(&out, 0);
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{}", text(&out.stderr));
        assert!(fs::read(env.dest()).unwrap() == data, "{method}");
        fs::remove_file(env.dest()).unwrap();
    }
    env.assert_no_temp();
    assert!(!env.spool().exists(), "--prefetch 0 makes no spool");
}

#[test]
fn history_and_backup_history_files() {
    let env = Env::new();
    let history = "1\t0/3000158\tno recovery target specified\n";
    fs::write(env.archive.join("00000002.history"), history).unwrap();
    let backup = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n";
    fs::write(env.archive.join("000000010000000000000002.00000028.backup"), backup).unwrap();
    let dest = env.pg_wal.join("RECOVERYHISTORY");
    assert_code(&env.restore(&[], "00000002.history", &dest), 0);
    assert_eq!(fs::read_to_string(&dest).unwrap(), history);
    assert_code(&env.restore(&[], "000000010000000000000002.00000028.backup", &dest), 0);
    assert_eq!(fs::read_to_string(&dest).unwrap(), backup);
    // A damaged history file is an error, not the end of the archive.
    fs::write(env.archive.join("00000003.history"), "garbage\n").unwrap();
    let out = env.restore(&[], "00000003.history", &dest);
    assert_code(&out, 2);
    assert!(text(&out.stderr).contains("00000003.history\" is damaged"), "{}", text(&out.stderr));
}

#[test]
fn unknown_archive_and_missing_destination_directory_are_errors() {
    let env = Env::new();
    put(&env.archive, 1, 1, Compression::None);
    let out = walkeeper()
        .args(["restore", "-D", "/nonexistent/archive"])
        .arg(name(1, 1))
        .arg(env.dest())
        .output()
        .unwrap();
    assert_code(&out, 2);
    assert!(text(&out.stderr).contains("archive directory \"/nonexistent/archive\" does not exist"));
    let out = env.restore(&[], &name(1, 1), &env.pg_wal.join("missing/RECOVERYXLOG"));
    assert_code(&out, 2);
    assert!(
        text(&out.stderr).contains("missing\" of the destination file does not exist"),
        "{}",
        text(&out.stderr)
    );
    // Usage errors are not "not found" either.
    let out = walkeeper().args(["restore", "--no-such-option"]).output().unwrap();
    assert_code(&out, 3);
    let out = walkeeper().arg("restore").arg("-D").arg(&env.archive).arg(name(1, 1)).output().unwrap();
    assert_code(&out, 3);
}

#[test]
fn refuses_paths_and_names_that_are_not_wal() {
    let env = Env::new();
    put(&env.archive, 1, 1, Compression::None);
    fs::write(env.archive.join("postgresql.conf"), "x").unwrap();
    fs::write(env.pg_wal.join("secret"), "x").unwrap();
    for bad in [
        "../pg_wal/secret",
        "archive/000000010000000000000001",
        "/etc/passwd",
        "..",
        "000000010000000000000001/..",
        "postgresql.conf",
        "RECOVERYXLOG",
        "000000010000000000000001.zst",
        "000000010000000000000001.partial",
        "00000001000000000000000a",
        "0000000a.history",
        "",
    ] {
        let out = env.restore(&[], bad, &env.dest());
        assert_code(&out, 3);
        assert!(text(&out.stderr).contains("refusing to restore"), "{bad}: {}", text(&out.stderr));
        assert!(!env.dest().exists(), "{bad}");
    }
}

#[test]
fn corrupt_and_truncated_files_are_distinct_errors() {
    let env = Env::new();
    let data = segment(1, 1, b"x");
    // Not a compressed stream at all.
    fs::write(env.archive.join(format!("{}.zst", name(1, 1))), b"this is not zstd").unwrap();
    fs::write(env.archive.join(format!("{}.gz", name(1, 2))), b"nor gzip").unwrap();
    // A gzip stream cut short, and an lz4 frame cut at a block boundary (decodes without error, shorter).
    let gz = compress(Compression::Gzip, &segment(1, 3, b"x"), true);
    fs::write(env.archive.join(format!("{}.gz", name(1, 3))), &gz[..gz.len() / 2]).unwrap();
    let lz4 = compress(Compression::Lz4, &segment(1, 4, b"x")[..SEG / 2], false);
    fs::write(env.archive.join(format!("{}.lz4", name(1, 4))), lz4).unwrap();
    // Uncompressed but short; and a segment under the wrong name (page address mismatch).
    fs::write(env.archive.join(name(1, 5)), &segment(1, 5, b"x")[..SEG - 8192]).unwrap();
    fs::write(env.archive.join(name(1, 6)), &data).unwrap();
    // Not WAL at all (no page header).
    fs::write(env.archive.join(name(1, 7)), vec![0u8; SEG]).unwrap();
    for (n, expect) in [
        (1, "could not decompress"),
        (2, "could not decompress"),
        (3, "could not decompress"),
        (4, "holds 524288 bytes of WAL, but its page header says the segment size is 1048576 bytes"),
        (5, "holds 1040384 bytes of WAL"),
        (6, "which is not the start of segment 000000010000000000000006"),
        (7, "no long page header"),
    ] {
        let out = env.restore(NO_PREFETCH, &name(1, n), &env.dest());
        assert_code(&out, 2);
        assert!(text(&out.stderr).contains(expect), "{n}: {}", text(&out.stderr));
        assert!(!env.dest().exists(), "{n}: nothing is left where PostgreSQL reads");
    }
    // --fatal-errors: an error exits above 125 (fatal to PostgreSQL); "not found" stays 1.
    let out = env.restore(&["--prefetch", "0", "--fatal-errors"], &name(1, 1), &env.dest());
    assert_code(&out, 126);
    assert!(text(&out.stderr).contains("could not decompress"), "{}", text(&out.stderr));
    let out = env.restore(&["--fatal-errors"], &name(1, 99), &env.dest());
    assert_code(&out, 1);
    assert!(out.stderr.is_empty());
    env.assert_no_temp();
}

#[test]
fn partial_segments_only_with_partial() {
    let env = Env::new();
    put(&env.archive, 1, 1, Compression::None);
    // An uncompressed .partial is preallocated: a whole segment, received up to some point.
    let mut plain = segment(1, 2, b"received");
    plain[SEG / 2..].fill(0);
    fs::write(env.archive.join(format!("{}.partial", name(1, 2))), &plain).unwrap();
    // A zstd .partial is an open, sync-flushed stream of what was received.
    let zdata = segment(2, 7, b"zstd partial");
    fs::write(
        env.archive.join(format!("{}.zst.partial", name(2, 7))),
        compress(Compression::Zstd, &zdata[..5000], false),
    )
    .unwrap();

    for file in [name(1, 2), name(2, 7)] {
        let out = env.restore(&[], &file, &env.dest());
        assert_code(&out, 1);
        assert!(out.stderr.is_empty());
    }
    assert_code(&env.restore(&["--partial"], &name(1, 2), &env.dest()), 0);
    assert!(fs::read(env.dest()).unwrap() == plain);
    assert_code(&env.restore(&["--partial"], &name(2, 7), &env.dest()), 0);
    let got = fs::read(env.dest()).unwrap();
    assert_eq!(got.len(), SEG, "padded to the segment size");
    assert!(got[..5000] == zdata[..5000] && got[5000..].iter().all(|&b| b == 0));
    // A .partial that is not the newest file of its timeline is a leftover: not served.
    put(&env.archive, 1, 3, Compression::None);
    assert_code(&env.restore(&["--partial"], &name(1, 2), &env.dest()), 1);
    // A complete segment wins over its .partial.
    put(&env.archive, 1, 2, Compression::Zstd);
    assert_code(&env.restore(&["--partial"], &name(1, 2), &env.dest()), 0);
    assert!(fs::read(env.dest()).unwrap() == segment(1, 2, b"seg 1/2"));
}

fn spool_entries(spool: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(spool)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 24)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn prefetch_spool_is_used_and_bounded() {
    let env = Env::new();
    let mut data = Vec::new();
    for n in 1..=12 {
        data.push(put(&env.archive, 1, n, if n % 2 == 0 { Compression::Zstd } else { Compression::Lz4 }));
    }
    let args = ["--prefetch", "3", "-v", "--prefetch-idle-ms", "5000"];
    let out = env.restore(&args, &name(1, 1), &env.dest());
    assert_code(&out, 0);
    assert!(text(&out.stderr).contains("from \""), "first one from the archive: {}", text(&out.stderr));
    let want = vec![name(1, 2), name(1, 3), name(1, 4)];
    assert!(
        wait_until(Duration::from_secs(20), || spool_entries(&env.spool()) == want),
        "{:?}",
        spool_entries(&env.spool())
    );
    for n in 2..=12u64 {
        // Let the worker catch up, as replay would.
        let next = name(1, n);
        assert!(wait_until(Duration::from_secs(20), || spool_entries(&env.spool()).contains(&next)), "{n}");
        let out = env.restore(&args, &next, &env.dest());
        assert_code(&out, 0);
        assert!(text(&out.stderr).contains("from the prefetch spool"), "{n}: {}", text(&out.stderr));
        assert!(fs::read(env.dest()).unwrap() == data[n as usize - 1], "{n}");
        // Never more than the depth, never an entry at or before the served segment.
        let entries = spool_entries(&env.spool());
        assert!(entries.len() <= 3, "{entries:?}");
        assert!(entries.iter().all(|e| e[8..] > next[8..]), "{entries:?}");
    }
    // Past the end of the archive: not found, and the spool stays empty.
    assert_code(&env.restore(&args, &name(1, 13), &env.dest()), 1);
    assert!(spool_entries(&env.spool()).is_empty());
}

#[test]
fn stale_spool_entries_are_never_served() {
    let env = Env::new();
    for n in 1..=4 {
        put(&env.archive, 1, n, Compression::None);
    }
    let args = ["--prefetch", "3", "-v", "--prefetch-idle-ms", "5000"];
    assert_code(&env.restore(&args, &name(1, 1), &env.dest()), 0);
    assert!(wait_until(Duration::from_secs(20), || spool_entries(&env.spool()).len() == 3));
    // The archive's segment 2 is replaced (another history of the same name): the spool's copy is stale.
    std::thread::sleep(Duration::from_millis(20));
    let newer = segment(1, 2, b"replaced");
    fs::write(env.archive.join(name(1, 2)), &newer).unwrap();
    let out = env.restore(&args, &name(1, 2), &env.dest());
    assert_code(&out, 0);
    assert!(!text(&out.stderr).contains("spool"), "{}", text(&out.stderr));
    assert!(fs::read(env.dest()).unwrap() == newer);
    // A damaged spool entry (wrong size) is not served either.
    assert!(wait_until(Duration::from_secs(20), || spool_entries(&env.spool()).contains(&name(1, 3))));
    let entry = env.spool().join(name(1, 3));
    let f = fs::OpenOptions::new().write(true).open(&entry).unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    f.set_len(4096).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let out = env.restore(&args, &name(1, 3), &env.dest());
    assert_code(&out, 0);
    assert!(!text(&out.stderr).contains("spool"), "{}", text(&out.stderr));
    assert!(fs::read(env.dest()).unwrap() == segment(1, 3, b"seg 1/3"));
    // A spool written for another archive is not served from.
    let other = Env::new();
    put(&other.archive, 1, 4, Compression::None);
    fs::write(other.archive.join(name(1, 4)), segment(1, 4, b"other archive")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || spool_entries(&env.spool()).contains(&name(1, 4))));
    let out = walkeeper()
        .arg("restore")
        .arg("-D")
        .arg(&other.archive)
        .args(["--spool"])
        .arg(env.spool())
        .args(args)
        .arg(name(1, 4))
        .arg(env.dest())
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert!(!text(&out.stderr).contains("spool"), "{}", text(&out.stderr));
    assert!(fs::read(env.dest()).unwrap() == segment(1, 4, b"other archive"));
}

#[test]
fn a_spool_entry_is_served_only_while_the_file_it_was_read_from_is_there() {
    let env = Env::new();
    for n in 1..=4 {
        put(&env.archive, 1, n, Compression::Zstd);
    }
    let args = ["--prefetch", "2", "-v", "--prefetch-idle-ms", "5000"];
    assert_code(&env.restore(&args, &name(1, 1), &env.dest()), 0);
    assert!(wait_until(Duration::from_secs(20), || spool_entries(&env.spool()).len() == 2));
    // The spooled segment 2 came from the `.zst`. That file goes, and a plain file of other contents takes the
    // segment's name with the very same modification time: the entry is not what the archive holds now.
    let zst = env.archive.join(format!("{}.zst", name(1, 2)));
    let stamp = fs::metadata(&zst).unwrap().modified().unwrap();
    let other = segment(1, 2, b"another file, same time");
    fs::write(env.archive.join(name(1, 2)), &other).unwrap();
    fs::File::options().write(true).open(env.archive.join(name(1, 2))).unwrap().set_modified(stamp).unwrap();
    fs::remove_file(&zst).unwrap();
    let out = env.restore(&args, &name(1, 2), &env.dest());
    assert_code(&out, 0);
    assert!(!text(&out.stderr).contains("spool"), "{}", text(&out.stderr));
    assert!(fs::read(env.dest()).unwrap() == other);
    // While the source is unchanged, the entry is served.
    assert!(wait_until(Duration::from_secs(20), || spool_entries(&env.spool()).contains(&name(1, 3))));
    let out = env.restore(&args, &name(1, 3), &env.dest());
    assert_code(&out, 0);
    assert!(text(&out.stderr).contains("from the prefetch spool"), "{}", text(&out.stderr));
    assert!(fs::read(env.dest()).unwrap() == segment(1, 3, b"seg 1/3"));
    // An entry that names no source (a file system without user attributes): served after a lookup.
    assert!(wait_until(Duration::from_secs(20), || spool_entries(&env.spool()).contains(&name(1, 4))));
    let entry =
        std::ffi::CString::new(env.spool().join(name(1, 4)).into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated path and attribute name.
    let removed = unsafe { libc::removexattr(entry.as_ptr(), c"user.walkeeper.source".as_ptr()) };
    assert_eq!(removed, 0, "{}", std::io::Error::last_os_error());
    let out = env.restore(&args, &name(1, 4), &env.dest());
    assert_code(&out, 0);
    assert!(text(&out.stderr).contains("from the prefetch spool"), "{}", text(&out.stderr));
    assert!(fs::read(env.dest()).unwrap() == segment(1, 4, b"seg 1/4"));
}

#[test]
fn prefetch_follows_timelines_and_never_mixes_them() {
    let env = Env::new();
    // Timeline 1: segments 1..=6; timeline 2 branches off in segment 4 and goes on to 7.
    for n in 1..=6 {
        put(&env.archive, 1, n, Compression::None);
    }
    for n in 4..=7 {
        put(&env.archive, 2, n, Compression::Zstd);
    }
    fs::write(env.archive.join("00000002.history"), "1\t0/400100\tpromoted\n").unwrap();
    let args = ["--prefetch", "4", "-v", "--prefetch-idle-ms", "5000"];
    assert_code(&env.restore(&args, &name(1, 2), &env.dest()), 0);
    let want = vec![name(1, 3), name(2, 4), name(2, 5), name(2, 6)];
    assert!(
        wait_until(Duration::from_secs(20), || spool_entries(&env.spool()) == want),
        "{:?}",
        spool_entries(&env.spool())
    );
    // Recovery staying on timeline 1 (recovery_target_timeline = 'current') gets timeline 1's segment 4,
    // from the archive: the spool has no such entry.
    let out = env.restore(&args, &name(1, 4), &env.dest());
    assert_code(&out, 0);
    assert!(!text(&out.stderr).contains("spool"), "{}", text(&out.stderr));
    assert!(fs::read(env.dest()).unwrap() == segment(1, 4, b"seg 1/4"));
    // ... after which the worker follows timeline 1 alone.
    let want = vec![name(1, 5), name(1, 6)];
    assert!(
        wait_until(Duration::from_secs(20), || spool_entries(&env.spool()) == want),
        "{:?}",
        spool_entries(&env.spool())
    );
    assert!(fs::read(env.dest()).unwrap() == segment(1, 4, b"seg 1/4"));
}

#[test]
fn worker_exits_on_its_own_and_clears_the_spool() {
    let env = Env::new();
    for n in 1..=3 {
        put(&env.archive, 1, n, Compression::None);
    }
    let args = ["--prefetch", "2", "--prefetch-idle-ms", "300"];
    assert_code(&env.restore(&args, &name(1, 1), &env.dest()), 0);
    // Entries appear, then the idle worker removes them and releases its lock.
    let lock_free = || {
        let Ok(f) = fs::OpenOptions::new().read(true).open(env.spool().join("lock")) else { return false };
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when `f` closes.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    };
    assert!(wait_until(Duration::from_secs(20), || spool_entries(&env.spool()).is_empty() && lock_free()));
}

#[test]
fn concurrent_invocations_all_get_their_file() {
    let env = Env::new();
    let mut data = Vec::new();
    for n in 1..=8 {
        data.push(put(&env.archive, 1, n, Compression::Zstd));
    }
    let started = SystemTime::now();
    // Each segment twice at once, into distinct destinations, all sharing one spool.
    let children: Vec<(u64, PathBuf, std::process::Child)> = (0..16u64)
        .map(|i| {
            let n = i % 8 + 1;
            let dest = env.pg_wal.join(format!("RECOVERYXLOG{i}"));
            let child = walkeeper()
                .arg("restore")
                .arg("-D")
                .arg(&env.archive)
                .args(["--prefetch", "4", "--prefetch-idle-ms", "2000"])
                .arg("--spool")
                .arg(env.spool())
                .arg(name(1, n))
                .arg(&dest)
                .spawn()
                .unwrap();
            (n, dest, child)
        })
        .collect();
    for (n, dest, mut child) in children {
        assert!(child.wait().unwrap().success(), "{n}");
        assert!(fs::read(&dest).unwrap() == data[n as usize - 1], "{n}");
    }
    assert!(started.elapsed().unwrap() < Duration::from_secs(60));
    env.assert_no_temp();
}

// ----- status and cleanup -----

#[test]
fn status_reports_timelines_partial_gaps_and_age() {
    let env = Env::new();
    for n in [1, 2, 3, 5, 6] {
        put(&env.archive, 1, n, Compression::Zstd);
    }
    for n in [6, 7] {
        put(&env.archive, 2, n, Compression::None);
    }
    fs::write(env.archive.join("00000002.history"), "1\t0/600100\tpromoted\n").unwrap();
    let mut partial = segment(2, 8, b"");
    partial[10_000] = 1; // last byte received at offset 10000
    fs::write(env.archive.join(format!("{}.partial", name(2, 8))), &partial).unwrap();
    let f =
        fs::File::options().write(true).open(env.archive.join(format!("{}.partial", name(2, 8)))).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(1)).unwrap();
    drop(f);
    let out = walkeeper().arg("status").arg("-D").arg(&env.archive).arg("--json").output().unwrap();
    assert_code(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["segment_size"], 1 << 20);
    assert_eq!(v["segment_size_known"], true);
    let t1 = &v["timelines"][0];
    assert_eq!(t1["timeline"], 1);
    assert_eq!(t1["first"], name(1, 1));
    assert_eq!(t1["last"], name(1, 6));
    assert_eq!(t1["complete_segments"], 5);
    assert_eq!(t1["gaps"][0]["first_missing"], name(1, 4));
    assert_eq!(t1["gaps"][0]["count"], 1);
    let t2 = &v["timelines"][1];
    assert_eq!(t2["first"], name(2, 6));
    assert_eq!(t2["last"], name(2, 7));
    assert_eq!(t2["partial"]["file"], format!("{}.partial", name(2, 8)));
    // 8 MiB + 10001 bytes rounded up to 8.
    assert_eq!(t2["partial"]["received_lsn"], "0/00802718");
    assert_eq!(t2["partial"]["approximate"], true);
    assert_eq!(v["history_files"][0], "00000002.history");
    assert_eq!(v["missing_segments"], 1);
    assert_eq!(v["wal_files"], 9);
    assert!(v["newest"]["age_seconds"].as_u64().unwrap() < 60);
    assert_eq!(v["newest"]["file"], format!("{}.partial", name(2, 8)));
    // The text form says the same things.
    let out = walkeeper().arg("status").arg("-D").arg(&env.archive).output().unwrap();
    assert_code(&out, 0);
    let t = text(&out.stdout);
    assert!(
        t.contains("gap:          000000010000000000000004 .. 000000010000000000000004 (1 missing)"),
        "{t}"
    );
    assert!(t.contains("received up to about 0/00802718"), "{t}");
    // A compressed partial's position is exact.
    let z = segment(3, 9, b"z");
    fs::write(
        env.archive.join(format!("{}.zst.partial", name(3, 9))),
        compress(Compression::Zstd, &z[..777], false),
    )
    .unwrap();
    let out = walkeeper().arg("status").arg("-D").arg(&env.archive).arg("--json").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["timelines"][2]["partial"]["received_lsn"], "0/00900309");
    assert_eq!(v["timelines"][2]["partial"]["approximate"], false);
    // A missing directory is an error.
    let out = walkeeper().args(["status", "-D", "/nonexistent"]).output().unwrap();
    assert_code(&out, 1);
}

#[test]
fn cleanup_like_pg_archivecleanup() {
    let env = Env::new();
    let files = [
        "000000010000000000000001",
        "000000010000000000000002.zst",
        "000000010000000000000003.gz",
        "000000020000000000000003.lz4",
        "000000020000000000000004",
        "000000020000000000000005.partial",
        "00000002.history",
        "000000010000000000000002.00000028.backup",
        "000000020000000000000004.00000060.backup",
        "notes.txt",
    ];
    for f in files {
        fs::write(env.archive.join(f), b"x").unwrap();
    }
    let cleanup =
        |args: &[&str]| walkeeper().arg("cleanup").arg("-D").arg(&env.archive).args(args).output().unwrap();
    // Dry run lists and removes nothing.
    let out = cleanup(&["-n", "000000020000000000000004.00000060.backup"]);
    assert_code(&out, 0);
    let listed: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| Path::new(l).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed,
        [
            "000000010000000000000001",
            "000000010000000000000002.zst",
            "000000010000000000000003.gz",
            "000000020000000000000003.lz4"
        ]
    );
    assert!(files.iter().all(|f| env.archive.join(f).exists()));
    // Compare with pg_archivecleanup itself when installed (same names, uncompressed forms).
    let pg = Path::new("/usr/lib/postgresql/15/bin/pg_archivecleanup");
    if pg.exists() {
        let out = Command::new(pg)
            .arg("-n")
            .arg(&env.archive)
            .arg("000000020000000000000004.00000060.backup")
            .output()
            .unwrap();
        let mut theirs: Vec<String> = text(&out.stdout)
            .lines()
            .map(|l| Path::new(l).file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        theirs.sort();
        // pg_archivecleanup does not know compressed names: it lists only the plain one.
        assert_eq!(theirs, ["000000010000000000000001"]);
    }
    // The real thing, with -b: backup history files before the cutoff go too; history files never.
    assert_code(&cleanup(&["-b", "000000020000000000000004.zst"]), 0);
    // (cleanup locked the archive: its lock file is not an archive file.)
    let mut left: Vec<String> = fs::read_dir(&env.archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != walkeeper::archive::lock::LOCK_FILE)
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "00000002.history",
            "000000020000000000000004",
            "000000020000000000000004.00000060.backup",
            "000000020000000000000005.partial",
            "notes.txt"
        ]
    );
    // Refusals.
    for bad in ["00000002.history", "notes.txt", "000000020000000000000004.bz2", "00000002000000000000000a"] {
        let out = cleanup(&[bad]);
        assert_code(&out, 2);
        assert!(text(&out.stderr).contains("invalid file name argument"), "{bad}: {}", text(&out.stderr));
    }
    let out =
        walkeeper().args(["cleanup", "-D", "/nonexistent", "000000010000000000000001"]).output().unwrap();
    assert_code(&out, 2);
}
