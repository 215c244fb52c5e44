//! The WAL decoder against WAL written by real PostgreSQL servers started by the harness: PostgreSQL 15, with
//! every record LSN and prev-link compared to pg_waldump's over the same range; and every other available
//! major (13, 14, 16, 17, 18 from `scripts/fetch-postgres.sh`), which pg_waldump 15 cannot all read, for a
//! clean decode with the right page magic.

mod support;

use std::path::PathBuf;
use std::process::Command;
use support::{pg_tool, Cluster, PgInstall};
use walkeeper::wal::decoder::{page_magic_for_major, DecoderConfig, RecordInfo, StreamEnd, WalDecoder};
use walkeeper::wal::segment::SegmentId;
use walkeeper::wal::Lsn;

const SEG: u32 = 1 << 20; // 1 MB segments: many segment boundaries from little data

struct Generated {
    server: Cluster,
    sysid: u64,
    start: Lsn,
    end: Lsn,
}

/// Wide rows (records spanning pages), a 100 kB and a 2.5 MB record (spanning segments), XLOG_SWITCH, a
/// checkpoint (then full-page images), and a final switch so that the range ends on a segment boundary.
fn generate(install: &PgInstall) -> Generated {
    let server = Cluster::builder().install(install).segment_size_mb(1).conf("wal_keep_size = '1GB'").start();
    let sysid: u64 = server.psql("SELECT system_identifier FROM pg_control_system()").trim().parse().unwrap();
    let start = lsn(&server, "SELECT pg_current_wal_insert_lsn()");
    let wide = "(SELECT string_agg(md5(g::text || x::text), '') FROM generate_series(1, 200) x)";
    server.psql("CREATE TABLE t (id int, payload text); ALTER TABLE t ALTER payload SET STORAGE PLAIN");
    server.psql(&format!("INSERT INTO t SELECT g, {wide} FROM generate_series(1, 300) g"));
    server.psql("SELECT pg_logical_emit_message(false, 'walkeeper', repeat('x', 100000))");
    server.psql("SELECT pg_switch_wal()");
    server.psql("CHECKPOINT");
    server.psql(&format!("INSERT INTO t SELECT g, {wide} FROM generate_series(301, 600) g"));
    server.psql("SELECT pg_logical_emit_message(true, 'walkeeper', repeat(md5('y'), 80000))");
    server.psql("UPDATE t SET id = -id WHERE id % 7 = 0");
    server.psql("CHECKPOINT");
    server.psql("DELETE FROM t WHERE id % 3 = 0");
    server.psql("VACUUM t");
    let switch_end = lsn(&server, "SELECT pg_switch_wal()");
    let end = Lsn(switch_end.0.div_ceil(u64::from(SEG)) * u64::from(SEG));
    let start = start.segment_start(SEG);
    Generated { server, sysid, start, end }
}

fn lsn(server: &Cluster, sql: &str) -> Lsn {
    server.psql(sql).trim().parse().unwrap()
}

/// Feed the server's segment files over [start, end) in 64 KiB chunks.
fn decode(g: &Generated, magic: u16) -> (WalDecoder, Vec<RecordInfo>) {
    let cfg = DecoderConfig { segment_size: SEG, page_magic: magic, system_id: Some(g.sysid), timeline: 1 };
    let mut d = WalDecoder::new(cfg, g.start);
    let mut recs = Vec::new();
    let pg_wal = g.server.data_dir().join("pg_wal");
    let keep = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_TMPDIR").map(PathBuf::from))
        .map(|t| t.join("wal-samples").join(format!("{magic:04X}")));
    if let Some(k) = &keep {
        let _ = std::fs::remove_dir_all(k);
        std::fs::create_dir_all(k).unwrap();
    }
    let mut seg = g.start;
    while seg < g.end {
        let name = SegmentId::containing(1, seg, SEG).file_name(SEG);
        let bytes = std::fs::read(pg_wal.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bytes.len(), SEG as usize);
        for chunk in bytes.chunks(64 * 1024) {
            d.feed_with(chunk, |r| recs.push(*r)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        if let Some(k) = &keep {
            std::fs::write(k.join(&name), &bytes).unwrap();
        }
        seg = Lsn(seg.0 + u64::from(SEG));
    }
    (d, recs)
}

fn check_common(g: &Generated, d: &WalDecoder, recs: &[RecordInfo]) {
    let st = d.status().unwrap();
    assert_eq!(st.end, StreamEnd::Boundary);
    assert_eq!(st.validated_up_to, g.end, "validated through the final switch padding");
    let switches = recs.iter().filter(|r| r.is_switch()).count();
    assert!(switches >= 2, "{switches} XLOG_SWITCH records");
    let spanning = recs.iter().filter(|r| r.lsn.0 / 8192 != (r.end.0 - 1) / 8192).count();
    let crossing = recs.iter().filter(|r| r.lsn.0 / u64::from(SEG) != (r.end.0 - 1) / u64::from(SEG)).count();
    let largest = recs.iter().map(|r| r.tot_len).max().unwrap();
    assert!(spanning > 100 && crossing >= 2 && largest > 2_000_000, "{spanning} {crossing} {largest}");
    eprintln!(
        "decoded {} .. {} ({} segments): {} records, {} spanning pages, {} crossing segments, {} XLOG_SWITCH, \
         largest {} bytes",
        g.start,
        g.end,
        (g.end.0 - g.start.0) / u64::from(SEG),
        recs.len(),
        spanning,
        crossing,
        switches,
        largest
    );
}

#[test]
fn postgres_15_wal_matches_pg_waldump() {
    let g = generate(&PgInstall::for_major(15).expect("PostgreSQL 15 (Debian) is required"));
    let (d, recs) = decode(&g, page_magic_for_major(15).unwrap());
    check_common(&g, &d, &recs);

    // pg_waldump over the same range (it also starts at the segment start, skipping a continuation).
    let pg_wal = g.server.data_dir().join("pg_wal");
    let out = Command::new(pg_tool("pg_waldump"))
        .args(["-p", pg_wal.to_str().unwrap(), "-s", &g.start.to_string(), "-e", &g.end.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pg_waldump: {}", String::from_utf8_lossy(&out.stderr));
    let dumped: Vec<Lsn> = text
        .lines()
        .filter_map(|l| l.split_once("lsn: "))
        .map(|(_, rest)| rest.split(',').next().unwrap().trim().parse().unwrap())
        .collect();
    let ours: Vec<Lsn> = recs.iter().map(|r| r.lsn).collect();
    eprintln!("pg_waldump: {} records; decoder: {} records", dumped.len(), ours.len());
    assert_eq!(ours.len(), dumped.len());
    assert_eq!(ours, dumped);

    // The first record's prev-link is unknown to us, then each is chained; pg_waldump agrees on prev too.
    let prevs: Vec<Lsn> = text
        .lines()
        .filter_map(|l| l.split_once("prev "))
        .map(|(_, rest)| rest.split(',').next().unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(recs.iter().map(|r| r.prev).collect::<Vec<_>>(), prevs);

    // A wrong system identifier is caught at the first long header.
    let cfg = DecoderConfig {
        segment_size: SEG,
        page_magic: page_magic_for_major(15).unwrap(),
        system_id: Some(g.sysid ^ 1),
        timeline: 1,
    };
    let first = std::fs::read(pg_wal.join(SegmentId::containing(1, g.start, SEG).file_name(SEG))).unwrap();
    let err = WalDecoder::new(cfg, g.start).feed(&first).unwrap_err();
    assert_eq!(err.lsn(), g.start);
    assert!(err.to_string().contains("system identifier"), "{err}");
}

#[test]
fn other_majors_wal_decodes_cleanly() {
    for install in support::require_majors([13, 14, 16, 17, 18]) {
        let magic = page_magic_for_major(install.major).unwrap();
        let g = generate(&install);
        let (d, recs) = decode(&g, magic);
        check_common(&g, &d, &recs);
        assert!(recs.len() > 1000, "PostgreSQL {}: {} records", install.major, recs.len());
        // With another major's magic, the very first page is rejected.
        let wrong = if install.major == 15 { 0xD106 } else { 0xD110 };
        let cfg = DecoderConfig { segment_size: SEG, page_magic: wrong, system_id: None, timeline: 1 };
        let pg_wal = g.server.data_dir().join("pg_wal");
        let first =
            std::fs::read(pg_wal.join(SegmentId::containing(1, g.start, SEG).file_name(SEG))).unwrap();
        let err = WalDecoder::new(cfg, g.start).feed(&first).unwrap_err();
        assert!(
            err.to_string().contains(&format!("found {magic:04X}")),
            "PostgreSQL {}: {err}",
            install.major
        );
    }
}
