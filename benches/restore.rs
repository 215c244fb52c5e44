//! Replaying an archive through restore_command: `cp` of plain segments, `walkeeper restore` without
//! prefetch (a cold read and decompression per segment) and with prefetch, over zstd segments.
//!
//! PostgreSQL calls restore_command once per segment and replays the segment before asking for the next one.
//! This harness does the same with a fixed "replay" pause per segment (0 ms: restore alone; 30 ms: roughly
//! what replaying 16 MiB of WAL costs), and reports the total time and the time spent blocked in the command
//! per segment. It reports, it does not assert.
//!
//! `cargo bench --bench restore` (release build): 24 segments of 16 MiB (384 MiB). Environment:
//! `WALKEEPER_BENCH_SEGMENTS`, `WALKEEPER_BENCH_REPLAY_MS` (comma-separated). Under `cargo test` it runs once
//! on a tiny archive as a smoke test.
//!
//! Measured on the 2-core development machine (24 × 16 MiB, zstd 129 MiB; blocked = time PostgreSQL would wait
//! in restore_command, p50 per segment): with a 30 ms replay per segment, `cp` 7.6 ms, walkeeper zstd without
//! prefetch 28 ms, with prefetch 9.4 ms (total 1.55 s → 1.23 s). With no replay time the worker has nothing to
//! overlap with and prefetch only shaves the per-call work (21 → 18 ms). walkeeper pays for durability that
//! `cp` skips: every file is fsynced before it is renamed into `%p` (about 12 ms per 16 MiB here).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use walkeeper::archive::compress::Compressor;
use walkeeper::wal::encoder::WalEncoder;
use walkeeper::wal::segment::Compression;

/// Segment `n`: valid WAL (restore checks every record), records of 8 KiB of mixed text and noise that
/// compress about 3:1 with zstd, the last one cut at the segment's end.
fn segment(n: u64, size: usize) -> Vec<u8> {
    let mut e = WalEncoder::new(0xD110, size as u32, 7_000_000_000_000_000_001, 1, n * size as u64);
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ n;
    let mut data = vec![0u8; 8192];
    while e.bytes().len() < size {
        for (i, byte) in data.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = if (i / 512) % 3 == 0 { x as u8 } else { b"INSERT INTO t VALUES "[i % 21] };
        }
        e.main_data_record(10, 0, 1, &data);
    }
    let mut b = e.into_bytes();
    b.truncate(size);
    b
}

fn name(n: u64, size: usize) -> String {
    let per = (1u64 << 32) / size as u64;
    format!("00000001{:08X}{:08X}", n / per, n % per)
}

struct Run {
    label: String,
    total: Duration,
    blocked: Vec<Duration>,
}

fn replay(
    label: &str,
    segments: u64,
    size: usize,
    pause: Duration,
    mut cmd: impl FnMut(&str, &Path) -> Command,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let pg_wal = dir.path().join("pg_wal");
    fs::create_dir(&pg_wal).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    let start = Instant::now();
    let mut blocked = Vec::new();
    for n in 1..=segments {
        let t = Instant::now();
        let status = cmd(&name(n, size), &dest).status().unwrap();
        blocked.push(t.elapsed());
        assert!(status.success(), "{label}: segment {n}");
        assert_eq!(fs::metadata(&dest).unwrap().len(), size as u64);
        fs::remove_file(&dest).unwrap();
        std::thread::sleep(pause);
    }
    Run { label: label.to_string(), total: start.elapsed(), blocked }
}

fn report(runs: &[Run], segments: u64, size: usize) {
    let mb = (segments as f64 * size as f64) / (1 << 20) as f64;
    println!("{:<44} {:>9} {:>10} {:>12} {:>12}", "run", "total s", "MiB/s", "blocked ms", "p50 ms");
    for r in runs {
        let blocked: Duration = r.blocked.iter().sum();
        let mut sorted = r.blocked.clone();
        sorted.sort();
        let p50 = sorted[sorted.len() / 2];
        println!(
            "{:<44} {:>9.2} {:>10.1} {:>12.1} {:>12.2}",
            r.label,
            r.total.as_secs_f64(),
            mb / r.total.as_secs_f64(),
            blocked.as_secs_f64() * 1000.0,
            p50.as_secs_f64() * 1000.0
        );
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (segments, size, pauses): (u64, usize, Vec<u64>) = if bench {
        let pauses = std::env::var("WALKEEPER_BENCH_REPLAY_MS").unwrap_or_else(|_| "0,30".into());
        (
            env_or("WALKEEPER_BENCH_SEGMENTS", 24),
            16 << 20,
            pauses.split(',').filter_map(|p| p.parse().ok()).collect(),
        )
    } else {
        (3, 1 << 20, vec![0])
    };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_walkeeper"));
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    let zstd = tmp.path().join("zstd");
    fs::create_dir(&plain).unwrap();
    fs::create_dir(&zstd).unwrap();
    let mut compressed = 0u64;
    for n in 1..=segments {
        let data = segment(n, size);
        fs::write(plain.join(name(n, size)), &data).unwrap();
        let mut c = Compressor::new(Compression::Zstd, None).unwrap().unwrap();
        c.write(&data).unwrap();
        let z = c.finish().unwrap();
        compressed += z.len() as u64;
        fs::write(zstd.join(format!("{}.zst", name(n, size))), z).unwrap();
    }
    println!(
        "archive: {segments} segments of {} MiB ({} MiB), zstd {:.1} MiB",
        size >> 20,
        (segments * size as u64) >> 20,
        compressed as f64 / (1 << 20) as f64
    );
    let mut runs = Vec::new();
    for pause_ms in pauses {
        let pause = Duration::from_millis(pause_ms);
        runs.push(replay(&format!("cp plain, replay {pause_ms} ms"), segments, size, pause, |f, p| {
            let mut c = Command::new("cp");
            c.arg(plain.join(f)).arg(p);
            c
        }));
        runs.push(replay(
            &format!("walkeeper plain, no prefetch, replay {pause_ms} ms"),
            segments,
            size,
            pause,
            |f, p| {
                let mut c = Command::new(&exe);
                c.arg("restore").arg("-D").arg(&plain).args(["--prefetch", "0", f]).arg(p);
                c
            },
        ));
        runs.push(replay(
            &format!("walkeeper zstd, no prefetch, replay {pause_ms} ms"),
            segments,
            size,
            pause,
            |f, p| {
                let mut c = Command::new(&exe);
                c.arg("restore").arg("-D").arg(&zstd).args(["--prefetch", "0", f]).arg(p);
                c
            },
        ));
        runs.push(replay(
            &format!("walkeeper zstd, prefetch 8, replay {pause_ms} ms"),
            segments,
            size,
            pause,
            |f, p| {
                let mut c = Command::new(&exe);
                c.arg("restore")
                    .arg("-D")
                    .arg(&zstd)
                    .args(["--prefetch", "8", "--prefetch-idle-ms", "2000", f])
                    .arg(p);
                c
            },
        ));
    }
    report(&runs, segments, size);
}
