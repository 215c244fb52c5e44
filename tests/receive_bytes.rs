//! Byte for byte: pg_receivewal 15 and walkeeper stream the same range of the same server (empty
//! directories, each from its own slot created at the same LSN, the same `--endpos`). Every complete
//! segment must be identical between the two tools and to the server's own pg_wal file; the `.partial`
//! files identical up to the end position. Compressed runs are compared on their decompressed content.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{format_lsn, names, parse_lsn, pg_tool, wal_bytes, Cluster};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a receiver to completion (stdout/stderr to files), failing the test on timeout or non-zero exit.
fn run_ok(mut cmd: Command, what: &str) {
    let logs = tempfile::tempdir().unwrap();
    let (out, err) = (logs.path().join("out"), logs.path().join("err"));
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null()).stdout(fs::File::create(&out).unwrap()).stderr(fs::File::create(&err).unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {RUN_TIMEOUT:?}: {}", fs::read_to_string(&err).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{what}: {status}\n{}", fs::read_to_string(&err).unwrap());
}

fn receiver(real: bool, c: &Cluster, dir: &Path, slot: &str, endpos: u64, compress: Option<&str>) -> Command {
    let mut cmd = if real {
        Command::new(pg_tool("pg_receivewal"))
    } else {
        let mut cmd = support::walkeeper();
        cmd.arg("receive");
        cmd
    };
    cmd.arg("-D").arg(dir);
    cmd.args(["-S", slot, "-E", &format_lsn(endpos), "-n", "--no-sync"]);
    cmd.args(["-h", c.host(), "-p", &c.port().to_string(), "-U", "postgres", "-w"]);
    if let Some(method) = compress {
        cmd.args(["-Z", method]);
    }
    cmd
}

fn segno_of(name: &str, seg: u64) -> u64 {
    let per_id = 0x1_0000_0000 / seg;
    u64::from_str_radix(&name[8..16], 16).unwrap() * per_id + u64::from_str_radix(&name[16..24], 16).unwrap()
}

/// The comparison: `compress` is `None` or a `-Z` method both tools know.
fn compare(c: &Cluster, wal_mb: u64, compress: Option<&str>) {
    let seg = c.segment_size();
    let tag = compress.unwrap_or("none").replace(':', "_");
    let (slot_pg, slot_wk) = (format!("pg_{tag}"), format!("wk_{tag}"));
    c.psql(&format!(
        "SELECT pg_create_physical_replication_slot('{slot_pg}', true), \
                pg_create_physical_replication_slot('{slot_wk}', true)"
    ));
    let restart = c.psql(&format!(
        "SELECT string_agg(DISTINCT restart_lsn::text, ',') FROM pg_replication_slots \
         WHERE slot_name IN ('{slot_pg}', '{slot_wk}')"
    ));
    assert!(!restart.contains(','), "the slots reserve from one LSN: {restart}");
    let start = parse_lsn(&restart);
    c.generate_wal(wal_mb);
    c.switch_wal();
    c.psql("INSERT INTO walkeeper_filler SELECT g, 'tail' FROM generate_series(1, 50) g");
    let endpos = c.current_lsn();
    assert_ne!(endpos % seg, 0);
    // Something past the end position, so both stop promptly.
    c.psql("SELECT pg_logical_emit_message(false, 'past', 'endpos')");

    let (pg, wk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_ok(receiver(true, c, pg.path(), &slot_pg, endpos, compress), "pg_receivewal");
    run_ok(receiver(false, c, wk.path(), &slot_wk, endpos, compress), "walkeeper");

    let files = names(wk.path());
    assert_eq!(files, names(pg.path()), "-Z {tag}: the same files");
    let suffix = match compress {
        None => "",
        Some(m) if m.starts_with("gzip") => ".gz",
        Some(_) => ".lz4",
    };
    let (partial, complete): (Vec<&String>, Vec<&String>) =
        files.iter().partition(|f| f.ends_with(".partial"));
    assert_eq!(partial.len(), 1, "-Z {tag}: one partial: {files:?}");
    let expected_complete = (endpos / seg - start / seg) as usize;
    assert!(
        expected_complete >= wal_mb as usize * 1024 * 1024 / seg as usize,
        "test generated too little WAL"
    );
    assert_eq!(
        complete.len(),
        expected_complete,
        "-Z {tag}: complete segments from the slot's to endpos: {files:?}"
    );
    for (i, file) in complete.iter().enumerate() {
        assert_eq!(file.len(), 24 + suffix.len(), "{file}");
        assert!(file.ends_with(suffix), "{file}");
        assert_eq!(segno_of(file, seg), start / seg + i as u64, "-Z {tag}: consecutive segments");
        let (a, b) = (wal_bytes(&wk.path().join(file)), wal_bytes(&pg.path().join(file)));
        let server = c.read_wal_segment(&file[..24]);
        assert_eq!(a.len() as u64, seg, "{file}: walkeeper's length");
        assert!(a == b, "-Z {tag}: {file} differs between walkeeper and pg_receivewal");
        assert!(a == server, "-Z {tag}: {file} differs from the server's segment");
    }
    // The partial: the segment of endpos, identical up to endpos.
    let file = partial[0];
    assert_eq!(segno_of(file, seg), endpos / seg, "{file}");
    let len = (endpos % seg) as usize;
    let (a, b) = (wal_bytes(&wk.path().join(file)), wal_bytes(&pg.path().join(file)));
    assert!(
        a.len() >= len && b.len() >= len,
        "{file}: {} and {} bytes, endpos offset {len}",
        a.len(),
        b.len()
    );
    assert!(a[..len] == b[..len], "-Z {tag}: {file} differs before endpos");
    assert!(a[..len] == c.read_wal_segment(&file[..24])[..len], "-Z {tag}: {file} differs from the server's");
    if compress.is_none() {
        // Uncompressed partials are padded to the segment size, with zeros past what was received.
        assert_eq!(a.len() as u64, seg);
        assert_eq!(b.len() as u64, seg);
    }
}

/// 1 MB segments: uncompressed, gzip and lz4 runs over several segments.
#[test]
fn identical_to_pg_receivewal_and_server_small_segments() {
    let c = Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '256MB'").start();
    for compress in [None, Some("gzip"), Some("lz4")] {
        compare(&c, 5, compress);
    }
}

/// The default 16 MB segments, uncompressed.
#[test]
fn identical_to_pg_receivewal_and_server_default_segments() {
    let c = Cluster::builder().conf("wal_keep_size = '256MB'").start();
    compare(&c, 33, None);
}
