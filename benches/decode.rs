//! Throughput of `WalDecoder::feed_with` in 64 KiB chunks, as a receiver calls it.
//!
//! Real WAL: the PostgreSQL segments saved by `cargo test --test wal_decoder` under
//! `$CARGO_TARGET_TMPDIR/wal-samples/<magic>/` (run that test first); a synthetic stream of small records
//! (the per-record worst case) is always measured.

use std::path::PathBuf;

use criterion::{black_box, criterion_group, Criterion, Throughput};
use walkeeper::wal::decoder::{DecoderConfig, WalDecoder};
use walkeeper::wal::encoder::WalEncoder;
use walkeeper::wal::Lsn;

const CHUNK: usize = 64 * 1024;

struct Sample {
    name: String,
    cfg: DecoderConfig,
    start: Lsn,
    bytes: Vec<u8>,
}

fn real_samples() -> Vec<Sample> {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wal-samples");
    let Ok(dirs) = std::fs::read_dir(&root) else { return Vec::new() };
    let mut out = Vec::new();
    for dir in dirs.flatten() {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        let mut bytes = Vec::new();
        for f in &files {
            bytes.extend_from_slice(&std::fs::read(f).unwrap());
        }
        if bytes.len() < 40 {
            continue;
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        let cfg = DecoderConfig {
            segment_size: u32_at(32),
            page_magic: u16::from_le_bytes([bytes[0], bytes[1]]),
            system_id: Some(u64_at(24)),
            timeline: u32_at(4),
        };
        out.push(Sample {
            name: format!("real_wal_{}", dir.file_name().to_string_lossy()),
            cfg,
            start: Lsn(u64_at(8)),
            bytes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn synthetic_small_records() -> Sample {
    let seg = 16 << 20;
    let mut e = WalEncoder::new(0xD110, seg, 42, 1, u64::from(seg));
    let body: Vec<u8> = (0..400u32).map(|i| (i * 7) as u8).collect();
    let mut i = 0usize;
    while e.pos() < 2 * u64::from(seg) - 1024 {
        // 60..460-byte records, like heap inserts and commits.
        e.record(10, 0, i as u32, &body[..36 + (i * 37) % 360]);
        i += 1;
    }
    let cfg = DecoderConfig { segment_size: seg, page_magic: 0xD110, system_id: Some(42), timeline: 1 };
    Sample { name: "synthetic_small_records".into(), cfg, start: Lsn(u64::from(seg)), bytes: e.into_bytes() }
}

/// An OLTP-like stream: a commit record after every two small heap records, so the per-record cost of
/// capturing commit times shows.
fn synthetic_commits() -> Sample {
    let seg = 16 << 20;
    let mut e = WalEncoder::new(0xD110, seg, 42, 1, u64::from(seg));
    let body: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
    let mut commit = 0x0002_9A1B_C3D4_E5F6u64.to_le_bytes().to_vec(); // xact_time
    commit.extend_from_slice(&[0; 8]);
    let mut i = 0u32;
    while e.pos() < 2 * u64::from(seg) - 1024 {
        e.record(10, 0, i, &body[..36 + (i as usize * 37) % 160]);
        e.record(10, 0, i, &body[..60]);
        e.main_data_record(1, 0, i, &commit); // RM_XACT_ID, XLOG_XACT_COMMIT
        i += 1;
    }
    let cfg = DecoderConfig { segment_size: seg, page_magic: 0xD110, system_id: Some(42), timeline: 1 };
    Sample { name: "synthetic_commits".into(), cfg, start: Lsn(u64::from(seg)), bytes: e.into_bytes() }
}

fn samples() -> Vec<Sample> {
    let mut samples = real_samples();
    if samples.is_empty() {
        eprintln!("no real WAL samples: run `cargo test --test wal_decoder` first");
    }
    samples.push(synthetic_small_records());
    samples.push(synthetic_commits());
    samples
}

/// One pass over a sample, as a receiver feeds it.
fn decode(s: &Sample) -> Lsn {
    let mut d = WalDecoder::new(s.cfg, s.start);
    for chunk in s.bytes.chunks(CHUNK) {
        // The callback looks at every record, as the receive loop's does.
        d.feed_with(black_box(chunk), |r| {
            black_box(r);
        })
        .unwrap();
    }
    black_box(d.validated_up_to())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for s in &samples() {
        // Sanity: the sample decodes cleanly.
        let mut d = WalDecoder::new(s.cfg, s.start);
        d.feed(&s.bytes).unwrap();
        g.throughput(Throughput::Bytes(s.bytes.len() as u64));
        g.bench_function(&s.name, |b| b.iter(|| decode(s)));
    }
    g.finish();
}

criterion_group!(benches, bench);

/// `DECODE_PASSES=N DECODE_SAMPLE=name`: decode that sample N times and exit, without criterion — a fixed
/// amount of work whose instruction count (`valgrind --tool=cachegrind`, N and 0 passes) compares two
/// builds on a machine too busy for timings to mean much.
fn main() {
    if let (Ok(n), Ok(name)) = (std::env::var("DECODE_PASSES"), std::env::var("DECODE_SAMPLE")) {
        let n: u32 = n.parse().expect("DECODE_PASSES: a number");
        let all = samples();
        let s = all.iter().find(|s| s.name == name).expect("DECODE_SAMPLE: a sample name");
        for _ in 0..n {
            decode(s);
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
