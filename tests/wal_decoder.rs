//! The WAL decoder against WAL written by real PostgreSQL servers: PostgreSQL 15 (Debian's packages), with
//! every record LSN compared to pg_waldump's over the same range; and PostgreSQL 17 (unpacked npm binaries,
//! when present), which pg_waldump 15 cannot read, for a clean decode.
//!
//! The server launcher here is deliberately minimal and private to this file.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use walkeeper::wal::decoder::{page_magic_for_major, DecoderConfig, RecordInfo, StreamEnd, WalDecoder};
use walkeeper::wal::segment::SegmentId;
use walkeeper::wal::Lsn;

const SEG: u32 = 1 << 20; // initdb --wal-segsize=1: many segment boundaries from little data
const PG15: &str = "/usr/lib/postgresql/15/bin";
const PG17: &str = "/tmp/pgx/package/native/bin";

/// uid/gid to run server binaries as: `postgres` when we are root (PostgreSQL refuses to run as root).
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "postgres").then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

struct Server {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    user: Option<(u32, u32)>,
}

impl Server {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
        let mut c = Command::new(self.bin.join(prog));
        c.args(args).current_dir(self.dir.path()).env("LC_ALL", "C").env_remove("PGDATA");
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        let out = c.output().unwrap_or_else(|e| panic!("{prog}: {e}"));
        assert!(out.status.success(), "{prog} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn start(bin: &str) -> Server {
        let user = server_user();
        let dir = tempfile::Builder::new().prefix("walkeeper-decoder-").tempdir_in("/tmp").unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = Server { bin: PathBuf::from(bin), dir, port, user };
        let data = s.data();
        let data = data.to_str().unwrap();
        s.run(
            "initdb",
            &["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "--wal-segsize=1", "-E", "UTF8"],
        );
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c wal_level=replica -c wal_keep_size=1GB \
             -c max_wal_size=1GB",
            s.port,
            s.dir.path().display()
        );
        let log = s.dir.path().join("log");
        s.run("pg_ctl", &["-D", data, "-l", log.to_str().unwrap(), "-w", "-t", "60", "-o", &opts, "start"]);
        s
    }

    /// Run SQL through Debian's psql 15 over TCP; returns the last line of output.
    fn sql(&self, sql: &str) -> String {
        let out = Command::new(Path::new(PG15).join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_string()
    }

    fn lsn(&self, sql: &str) -> Lsn {
        self.sql(sql).parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let data = self.data();
        let mut c = Command::new(self.bin.join("pg_ctl"));
        c.args(["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        let _ = c.output();
    }
}

fn major_of(bin: &str) -> u32 {
    let out = Command::new(Path::new(bin).join("postgres")).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    let num = v.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit())).unwrap();
    num.split('.').next().unwrap().parse().unwrap()
}

struct Generated {
    server: Server,
    sysid: u64,
    start: Lsn,
    end: Lsn,
}

/// Wide rows (records spanning pages), a 100 kB and a 2.5 MB record (spanning segments), XLOG_SWITCH, a
/// checkpoint (then full-page images), and a final switch so that the range ends on a segment boundary.
fn generate(bin: &str) -> Generated {
    let server = Server::start(bin);
    let sysid: u64 = server.sql("SELECT system_identifier FROM pg_control_system()").parse().unwrap();
    let start = server.lsn("SELECT pg_current_wal_insert_lsn()");
    let wide = "(SELECT string_agg(md5(g::text || x::text), '') FROM generate_series(1, 200) x)";
    server.sql("CREATE TABLE t (id int, payload text); ALTER TABLE t ALTER payload SET STORAGE PLAIN");
    server.sql(&format!("INSERT INTO t SELECT g, {wide} FROM generate_series(1, 300) g"));
    server.sql("SELECT pg_logical_emit_message(false, 'walkeeper', repeat('x', 100000))");
    server.sql("SELECT pg_switch_wal()");
    server.sql("CHECKPOINT");
    server.sql(&format!("INSERT INTO t SELECT g, {wide} FROM generate_series(301, 600) g"));
    server.sql("SELECT pg_logical_emit_message(true, 'walkeeper', repeat(md5('y'), 80000))");
    server.sql("UPDATE t SET id = -id WHERE id % 7 = 0");
    server.sql("CHECKPOINT");
    server.sql("DELETE FROM t WHERE id % 3 = 0");
    server.sql("VACUUM t");
    let switch_end = server.lsn("SELECT pg_switch_wal()");
    let end = Lsn(switch_end.0.div_ceil(u64::from(SEG)) * u64::from(SEG));
    let start = start.segment_start(SEG);
    Generated { server, sysid, start, end }
}

/// Feed the server's segment files over [start, end) in 64 KiB chunks.
fn decode(g: &Generated, magic: u16) -> (WalDecoder, Vec<RecordInfo>) {
    let cfg = DecoderConfig { segment_size: SEG, page_magic: magic, system_id: Some(g.sysid), timeline: 1 };
    let mut d = WalDecoder::new(cfg, g.start);
    let mut recs = Vec::new();
    let pg_wal = g.server.data().join("pg_wal");
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
    if !Path::new(PG15).join("pg_waldump").exists() {
        eprintln!("skipped: no PostgreSQL 15 at {PG15}");
        return;
    }
    let g = generate(PG15);
    let (d, recs) = decode(&g, page_magic_for_major(15).unwrap());
    check_common(&g, &d, &recs);

    // pg_waldump over the same range (it also starts at the segment start, skipping a continuation).
    let pg_wal = g.server.data().join("pg_wal");
    let out = Command::new(Path::new(PG15).join("pg_waldump"))
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
fn postgres_17_wal_decodes_cleanly() {
    if !Path::new(PG17).join("initdb").exists() || !Path::new(PG15).join("psql").exists() {
        eprintln!("skipped: no PostgreSQL 17 binaries at {PG17}");
        return;
    }
    let major = major_of(PG17);
    let magic = page_magic_for_major(major).unwrap();
    let g = generate(PG17);
    let (d, recs) = decode(&g, magic);
    check_common(&g, &d, &recs);
    assert!(recs.len() > 1000, "{} records", recs.len());
    // With PostgreSQL 15's magic, the very first page is rejected.
    let cfg = DecoderConfig { segment_size: SEG, page_magic: 0xD110, system_id: None, timeline: 1 };
    let pg_wal = g.server.data().join("pg_wal");
    let first = std::fs::read(pg_wal.join(SegmentId::containing(1, g.start, SEG).file_name(SEG))).unwrap();
    let err = WalDecoder::new(cfg, g.start).feed(&first).unwrap_err();
    assert!(err.to_string().contains(&format!("found {magic:04X}")), "{err}");
}
