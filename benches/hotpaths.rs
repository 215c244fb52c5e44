//! Criterion micro-benchmarks of the receive loop's other hot paths: the backend framing codec plus
//! XLogData parsing (bytes off the socket → WAL payloads), and the segment writer (payloads → a
//! `.partial` file), uncompressed and with each compression method.
//!
//! `cargo bench --bench hotpaths`. Throughput is reported in bytes of WAL per second.

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio_util::codec::Decoder;
use walkeeper::archive::fsutil::Preallocation;
use walkeeper::archive::local::{LocalWalDir, WalDirOptions};
use walkeeper::protocol::codec::BackendCodec;
use walkeeper::protocol::replication::{parse_stream_message, StreamMessage};
use walkeeper::wal::segment::{Compression, SegmentId};

const SEGMENT: u32 = 16 << 20;
/// The walsender sends at most 128 kB of WAL per XLogData message.
const MESSAGE: usize = 128 * 1024;

/// WAL-like payload: compressible but not trivially (repeating 8 kB pages with varying content).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i / 8192) as u8).wrapping_mul(31) ^ ((i % 251) as u8)).collect()
}

/// One segment's worth of CopyData('w') frames, as they arrive on the socket.
fn wire_segment() -> Vec<u8> {
    let data = payload(MESSAGE);
    let mut wire = BytesMut::new();
    for i in 0..(SEGMENT as usize / MESSAGE) {
        let body_len = 1 + 24 + MESSAGE;
        wire.put_u8(b'd');
        wire.put_i32((body_len + 4) as i32);
        wire.put_u8(b'w');
        wire.put_u64((i * MESSAGE) as u64);
        wire.put_u64(SEGMENT as u64);
        wire.put_i64(0);
        wire.put_slice(&data);
    }
    wire.to_vec()
}

fn bench_framing(c: &mut Criterion) {
    let wire = wire_segment();
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(u64::from(SEGMENT)));
    g.sample_size(20);
    // Socket reads of 256 kB feeding the codec, then XLogData parsing: no copy of the WAL bytes.
    g.bench_function("decode_xlogdata_16MB", |b| {
        b.iter(|| {
            let mut codec = BackendCodec::default();
            let mut buf = BytesMut::with_capacity(256 * 1024);
            let mut total = 0usize;
            for chunk in wire.chunks(256 * 1024) {
                buf.extend_from_slice(chunk);
                while let Some(frame) = codec.decode(&mut buf).expect("valid frames") {
                    if let StreamMessage::XLogData { data, .. } =
                        parse_stream_message(frame.body).expect("xlogdata")
                    {
                        total += data.len();
                    }
                }
            }
            assert_eq!(total, SEGMENT as usize);
        })
    });
    g.finish();
}

fn bench_writer(c: &mut Criterion) {
    let data = payload(MESSAGE);
    let mut g = c.benchmark_group("segment_writer");
    g.throughput(Throughput::Bytes(u64::from(SEGMENT)));
    g.sample_size(10);
    // Without fsync: the write path alone, through the page cache (what --no-sync does; writeback comes
    // later, outside the measurement).
    for (name, compression, preallocation) in [
        ("none_zero_fill", Compression::None, Preallocation::ZeroFill),
        ("none_reserve", Compression::None, Preallocation::Reserve),
        ("gzip", Compression::Gzip, Preallocation::ZeroFill),
        ("lz4", Compression::Lz4, Preallocation::ZeroFill),
        ("zstd", Compression::Zstd, Preallocation::ZeroFill),
    ] {
        let options = WalDirOptions {
            compression,
            sync: false,
            preallocation,
            direct_io: false,
            ..WalDirOptions::new(SEGMENT)
        };
        g.bench_function(BenchmarkId::new("write_16MB_segment_no_fsync", name), |b| {
            write_segments(b, &options, &data)
        });
    }
    // With fsync at the end of the segment (default durability): page cache against O_DIRECT, where
    // the device transfer is inside the measurement either way.
    for (name, preallocation, direct_io) in [
        ("page_cache_reserve", Preallocation::Reserve, false),
        ("direct_reserve", Preallocation::Reserve, true),
        ("page_cache_zero_fill", Preallocation::ZeroFill, false),
        ("direct_zero_fill", Preallocation::ZeroFill, true),
    ] {
        let options = WalDirOptions { sync: true, preallocation, direct_io, ..WalDirOptions::new(SEGMENT) };
        g.bench_function(BenchmarkId::new("write_16MB_segment_fsync", name), |b| {
            write_segments(b, &options, &data)
        });
    }
    g.finish();
}

/// Write fresh 16 MB segments in `MESSAGE`-sized pieces and close them; creation and preallocation are
/// part of the cost.
fn write_segments(b: &mut criterion::Bencher, options: &WalDirOptions, data: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = LocalWalDir::open(dir.path(), options.clone()).expect("open dir");
    let mut n = 0u64;
    b.iter(|| {
        let mut w = wal.open_segment(SegmentId { timeline: 1, number: n }).expect("segment");
        n += 1;
        for i in 0..(SEGMENT as usize / MESSAGE) {
            w.write_at((i * MESSAGE) as u64, data).expect("write");
        }
        let closed = w.close().expect("close");
        std::fs::remove_file(closed.path).expect("remove");
    })
}

criterion_group!(benches, bench_framing, bench_writer);
criterion_main!(benches);
