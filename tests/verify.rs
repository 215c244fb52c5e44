//! `walkeeper verify` on archives streamed from a real server by `walkeeper receive` (1 MB segments), across a
//! promotion (timeline 1 → 2), plain, zstd and gzip: a clean archive verifies with exit 0 and a summary that
//! matches the server and pg_waldump; then each corruption is reported with the right kind, file and LSN.

mod support;

use serde_json::Value;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{format_lsn, names, parse_lsn, pg_tool, Cluster};

const SEG: u64 = 1 << 20;
const BLCKSZ: u64 = 8192;
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn bin() -> &'static str {
    support::WALKEEPER
}

fn wal_name(tli: u32, lsn: u64) -> String {
    let segno = lsn / SEG;
    let per_id = 0x1_0000_0000 / SEG;
    format!("{tli:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

fn wait_child(mut child: Child, what: &str) -> std::process::Output {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{what} did not finish in time: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `walkeeper verify -D dir --json`: (exit code, the JSON document).
fn verify_json(dir: &Path) -> (i32, Value) {
    let out = Command::new(bin()).args(["verify", "-D", dir.to_str().unwrap(), "--json"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "verify --json printed no JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

fn problems(doc: &Value) -> Vec<(String, String, String)> {
    doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
            (s("kind"), s("file"), s("lsn"))
        })
        .collect()
}

fn messages(doc: &Value) -> String {
    serde_json::to_string_pretty(&doc["problems"]).unwrap()
}

/// A copy of `src` to corrupt.
fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::Builder::new().prefix("walkeeper-verify-").tempdir().unwrap();
    for name in names(src) {
        fs::copy(src.join(&name), dst.path().join(&name)).unwrap();
    }
    dst
}

fn switchpoint(history: &str) -> u64 {
    let line = history.lines().rfind(|l| !l.trim().is_empty() && !l.starts_with('#')).unwrap();
    parse_lsn(line.split('\t').nth(1).unwrap())
}

/// Records pg_waldump finds on timeline `tli` of `dir` from `start` to `end`: (lsn, total length).
/// pg_waldump does not read `.partial` files: the timeline's segments are copied under their bare names.
fn waldump(dir: &Path, tli: u32, start: u64, end: u64) -> Vec<(u64, u64)> {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = format!("{tli:08X}");
    for name in names(dir).into_iter().filter(|n| n.starts_with(&prefix) && n.len() >= 24) {
        fs::copy(dir.join(&name), tmp.path().join(&name[..24])).unwrap();
    }
    let out = Command::new(pg_tool("pg_waldump"))
        .args(["-p", tmp.path().to_str().unwrap(), "-t", &tli.to_string()])
        .args(["-s", &format_lsn(start), "-e", &format_lsn(end)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let records: Vec<(u64, u64)> = text
        .lines()
        .filter(|l| l.starts_with("rmgr:"))
        .map(|l| {
            let lsn = l.split("lsn: ").nth(1).unwrap().split(',').next().unwrap();
            let tot = l.split("len (rec/tot):").nth(1).unwrap().split(',').next().unwrap();
            let tot = tot.split('/').nth(1).unwrap().trim();
            (parse_lsn(lsn), tot.parse().unwrap())
        })
        .collect();
    assert!(
        !records.is_empty(),
        "pg_waldump found no records: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    records
}

/// The archive, three times (plain, zstd, gzip), streamed across a promotion, and what the server says about it.
struct Archives {
    plain: tempfile::TempDir,
    zstd: tempfile::TempDir,
    gzip: tempfile::TempDir,
    system_id: String,
    /// Where timeline 2 began.
    switch: u64,
    /// The end position given to `receive -E`.
    endpos: u64,
    /// The standby's WAL end when streaming stopped.
    server_end: u64,
    /// First segment streamed.
    start: u64,
}

fn stream_archives() -> (Archives, Cluster, Cluster) {
    let mut primary = Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '128MB'").start();
    primary.psql("CREATE TABLE t(x int PRIMARY KEY, pad text)");
    let standby = primary.standby();
    standby.psql(
        "SELECT pg_create_physical_replication_slot('plain', true), \
         pg_create_physical_replication_slot('zstd', true), pg_create_physical_replication_slot('gzip', true)",
    );
    // The three archives start at the same segment.
    let segs = standby.psql(&format!(
        "SELECT count(DISTINCT pg_wal_lsn_diff(restart_lsn, '0/0')::bigint / {SEG}) FROM pg_replication_slots"
    ));
    assert_eq!(segs, "1");
    let restart = parse_lsn(&standby.psql("SELECT min(restart_lsn) FROM pg_replication_slots"));
    // Timeline 1: a few segments (records spanning pages and segments), ending inside a segment.
    primary.generate_wal(3);
    primary.psql("INSERT INTO t SELECT g, repeat('x', 5000) FROM generate_series(1, 200) g");
    standby.wait_for_replay(primary.current_lsn());
    standby.promote();
    // Timeline 2.
    standby.generate_wal(2);
    standby.psql("INSERT INTO t VALUES (100000, 'after')");
    let endpos = standby.current_lsn();
    standby.psql("INSERT INTO t VALUES (100001, 'beyond the end position')");
    let history = fs::read_to_string(standby.wal_segment_path("00000002.history")).unwrap();
    let switch = switchpoint(&history);
    assert_ne!(switch % SEG, 0, "timeline 1 should end inside a segment");

    let dirs: Vec<tempfile::TempDir> =
        (0..3).map(|_| tempfile::Builder::new().prefix("walkeeper-verify-").tempdir().unwrap()).collect();
    let children: Vec<(Child, &str)> = ["plain", "zstd", "gzip"]
        .iter()
        .zip(&dirs)
        .map(|(method, dir)| {
            let mut cmd = Command::new(bin());
            cmd.args(["receive", "-D", dir.path().to_str().unwrap(), "-h", "127.0.0.1"])
                .args(["-p", &standby.port().to_string(), "-U", "postgres", "-S", method, "-n", "--no-sync"])
                .args(["-E", &format_lsn(endpos)]);
            if *method != "plain" {
                cmd.args(["-Z", method]);
            }
            (cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(), *method)
        })
        .collect();
    for (child, method) in children {
        let out = wait_child(child, method);
        assert!(out.status.success(), "receive {method}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let server_end = standby.current_lsn();
    let system_id = standby.psql("SELECT system_identifier FROM pg_control_system()");
    let mut dirs = dirs.into_iter();
    let archives = Archives {
        plain: dirs.next().unwrap(),
        zstd: dirs.next().unwrap(),
        gzip: dirs.next().unwrap(),
        system_id,
        switch,
        endpos,
        server_end,
        start: restart / SEG * SEG,
    };
    (archives, primary, standby)
}

#[test]
fn verify_real_archives() {
    let (a, _primary, _standby) = stream_archives();
    let plain = a.plain.path();
    let seg_s = a.switch / SEG; // segment holding the switch point
    let files = names(plain);
    let tl1: Vec<&String> = files.iter().filter(|f| f.starts_with("00000001") && f.len() >= 24).collect();
    assert!(tl1.len() >= 4, "timeline 1 should span several segments: {files:?}");
    assert!(files.contains(&format!("{}.partial", wal_name(1, a.switch))), "{files:?}");
    assert!(files.contains(&"00000002.history".to_string()), "{files:?}");

    // ---- clean archive: whole, and the summary says what the server and pg_waldump say ----
    let (code, doc) = verify_json(plain);
    assert_eq!(code, 0, "{}", messages(&doc));
    assert_eq!(doc["whole"], true);
    let s = &doc["summary"];
    assert_eq!(s["system_identifier"], a.system_id.as_str());
    assert_eq!(s["major"], 15);
    assert_eq!(s["segment_size"], SEG);
    assert_eq!(s["history_files"], 1);
    let seg_files = files.iter().filter(|f| f.len() >= 24).count();
    assert_eq!(s["segments"], seg_files);
    assert_eq!(s["partial_segments"], 2);
    let t = s["timelines"].as_array().unwrap();
    assert_eq!(t.len(), 2, "{s}");
    assert_eq!(t[0]["timeline"], 1);
    assert_eq!(t[0]["first_segment"], wal_name(1, a.start).as_str());
    assert_eq!(t[0]["last_segment"], wal_name(1, a.switch).as_str());
    assert_eq!(t[0]["start_lsn"], format_lsn(a.start).as_str());
    assert_eq!(t[0]["end_lsn"], format_lsn(a.switch).as_str(), "timeline 1 ends where timeline 2 forked");
    assert_eq!(t[0]["partial"]["received_lsn"], format_lsn(a.switch).as_str());
    assert_eq!(t[1]["parent"], 1);
    assert_eq!(t[1]["forked_at"], format_lsn(a.switch).as_str());
    assert_eq!(t[1]["first_segment"], wal_name(2, a.switch).as_str());
    let received = parse_lsn(t[1]["partial"]["received_lsn"].as_str().unwrap());
    assert!(received > a.endpos && received <= a.server_end, "received {}", format_lsn(received));
    assert_eq!(t[1]["end_lsn"], t[1]["partial"]["received_lsn"]);
    // Record for record what pg_waldump reads.
    let dump1 = waldump(plain, 1, a.start, a.switch);
    let dump2 = waldump(plain, 2, seg_s * SEG, received);
    assert_eq!(t[0]["records"], dump1.len(), "timeline 1 records");
    assert_eq!(t[1]["records"], dump2.len(), "timeline 2 records");
    assert_eq!(s["records"], dump1.len() + dump2.len());
    let wal_bytes: u64 = t.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(s["bytes"], wal_bytes);
    assert_eq!(wal_bytes, seg_files as u64 * SEG, "every segment read whole");
    // The text form.
    let out = Command::new(bin()).args(["verify", "-D", plain.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("archive is whole"), "{text}");
    assert!(
        text.contains(&format!("timeline 2 (forked from timeline 1 at {})", format_lsn(a.switch))),
        "{text}"
    );

    // ---- compressed archives: whole, with the same records ----
    for dir in [a.zstd.path(), a.gzip.path()] {
        let (code, doc) = verify_json(dir);
        assert_eq!(code, 0, "{}: {}", dir.display(), messages(&doc));
        let tz = doc["summary"]["timelines"].as_array().unwrap();
        assert_eq!(tz[0]["records"], t[0]["records"]);
        assert_eq!(tz[0]["end_lsn"], t[0]["end_lsn"]);
        // Streams stop at slightly different points past -E: timeline 2 holds at least pg_waldump's records
        // up to the end position.
        let upto_endpos = dump2.iter().filter(|(l, len)| l + len <= a.endpos).count() as u64;
        assert!(tz[1]["records"].as_u64().unwrap() >= upto_endpos);
        assert!(
            doc["summary"]["file_bytes"].as_u64().unwrap() < doc["summary"]["bytes"].as_u64().unwrap() / 2
        );
    }

    // ---- a flipped bit inside a record (a record from pg_waldump, in a complete segment, within one page) ----
    let complete_tl1: Vec<u64> =
        tl1.iter().filter(|f| f.len() == 24).map(|f| u64::from_str_radix(&f[16..], 16).unwrap()).collect();
    let victim_seg = complete_tl1[complete_tl1.len() / 2];
    let (rec, _) = *dump1
        .iter()
        .find(|(l, len)| l / SEG == victim_seg && *len >= 64 && l % BLCKSZ + len < BLCKSZ && l % BLCKSZ > 40)
        .expect("a record inside one page");
    let victim = wal_name(1, rec);
    let flip = |bytes: &mut Vec<u8>| bytes[(rec % SEG) as usize + 40] ^= 0x04;
    let dir = copy_dir(plain);
    let mut bytes = fs::read(dir.path().join(&victim)).unwrap();
    flip(&mut bytes);
    fs::write(dir.path().join(&victim), &bytes).unwrap();
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    assert_eq!(doc["whole"], false);
    assert_eq!(
        problems(&doc),
        [("invalid_wal".into(), victim.clone(), format_lsn(rec))],
        "{}",
        messages(&doc)
    );
    assert!(doc["problems"][0]["message"].as_str().unwrap().contains("CRC"), "{}", messages(&doc));
    // The same flip inside the zstd archive's segment.
    let dir = copy_dir(a.zstd.path());
    let zfile = dir.path().join(format!("{victim}.zst"));
    let mut bytes = zstd::decode_all(&fs::read(&zfile).unwrap()[..]).unwrap();
    flip(&mut bytes);
    fs::write(&zfile, zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        problems(&doc),
        [("invalid_wal".into(), format!("{victim}.zst"), format_lsn(rec))],
        "{}",
        messages(&doc)
    );

    // ---- a missing segment ----
    let missing_seg = complete_tl1[1];
    let missing = wal_name(1, missing_seg * SEG);
    let dir = copy_dir(plain);
    fs::remove_file(dir.path().join(&missing)).unwrap();
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        problems(&doc),
        [("missing_segment".into(), missing.clone(), format_lsn(missing_seg * SEG))],
        "{}",
        messages(&doc)
    );

    // ---- a truncated segment (the first complete one of timeline 2) ----
    let truncated = wal_name(2, (seg_s + 1) * SEG);
    assert!(files.contains(&truncated), "{files:?}");
    let dir = copy_dir(plain);
    let f = fs::OpenOptions::new().write(true).open(dir.path().join(&truncated)).unwrap();
    f.set_len(300_000).unwrap();
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        problems(&doc),
        [("truncated_segment".into(), truncated.clone(), format_lsn((seg_s + 1) * SEG + 300_000))],
        "{}",
        messages(&doc)
    );

    // ---- a segment of another cluster, same name ----
    let other = Cluster::builder().segment_size_mb(1).start();
    let foreign_seg = complete_tl1[complete_tl1.len() - 1];
    while other.current_lsn() / SEG <= foreign_seg {
        other.generate_wal(1);
    }
    let foreign = wal_name(1, foreign_seg * SEG);
    let dir = copy_dir(plain);
    fs::write(dir.path().join(&foreign), other.read_wal_segment(&foreign)).unwrap();
    drop(other);
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        problems(&doc),
        [("invalid_wal".into(), foreign.clone(), format_lsn(foreign_seg * SEG))],
        "{}",
        messages(&doc)
    );
    assert!(doc["problems"][0]["message"].as_str().unwrap().contains("different database system"));

    // ---- wrong history files ----
    let first_tl2 = wal_name(2, a.switch);
    // Switch point moved later: timeline 2's pages between the real and the claimed fork carry timeline 2.
    let later = a.switch + 2 * BLCKSZ;
    let expect_page = if later / SEG == seg_s { (a.switch / BLCKSZ + 1) * BLCKSZ } else { seg_s * SEG };
    let dir = copy_dir(plain);
    fs::write(
        dir.path().join("00000002.history"),
        format!("1\t{}\tno recovery target specified\n", format_lsn(later)),
    )
    .unwrap();
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    let found = problems(&doc);
    assert!(
        found.contains(&("history_mismatch".into(), first_tl2.clone(), format_lsn(expect_page))),
        "{}",
        messages(&doc)
    );
    // ...and timeline 1 does not reach the claimed fork point.
    assert!(
        found.contains(&(
            "missing_segment".into(),
            format!("{}.partial", wal_name(1, a.switch)),
            format_lsn(a.switch)
        )),
        "{}",
        messages(&doc)
    );
    // Switch point moved earlier, to a record of timeline 1: the records from there on read as a diverged
    // tail of timeline 1 (information: a later timeline does not contain them), and the pages of timeline 2
    // between the claimed and the real switch point, if any, carry the wrong timeline.
    let (earlier, _) = dump1[dump1.len() - 3];
    let dir = copy_dir(plain);
    fs::write(dir.path().join("00000002.history"), format!("1\t{}\tx\n", format_lsn(earlier))).unwrap();
    let (code, doc) = verify_json(dir.path());
    let holder = if earlier / SEG == seg_s {
        format!("{}.partial", wal_name(1, earlier))
    } else {
        wal_name(1, earlier)
    };
    let tails = doc["summary"]["diverged_tails"].as_array().unwrap();
    assert_eq!(tails.len(), 1, "{doc}");
    assert_eq!(tails[0]["from"], format_lsn(earlier));
    assert_eq!(tails[0]["records"], 3, "{doc}");
    assert_eq!(tails[0]["files"][0], holder.as_str());
    let same_page = earlier / BLCKSZ == a.switch / BLCKSZ;
    let found = problems(&doc);
    assert_eq!(code, if same_page { 0 } else { 1 }, "{}", messages(&doc));
    assert!(found.iter().all(|p| p.0 == "history_mismatch" && p.1 == first_tl2), "{}", messages(&doc));
    // Parent timeline wrong.
    let dir = copy_dir(plain);
    fs::write(dir.path().join("00000002.history"), format!("3\t{}\tx\n", format_lsn(a.switch))).unwrap();
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        problems(&doc),
        [("invalid_history".into(), "00000002.history".into(), format_lsn(a.switch))],
        "{}",
        messages(&doc)
    );
    // No history file.
    let dir = copy_dir(plain);
    fs::remove_file(dir.path().join("00000002.history")).unwrap();
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        problems(&doc),
        [("missing_history".into(), "00000002.history".into(), format_lsn(seg_s * SEG))],
        "{}",
        messages(&doc)
    );

    // ---- a gzip segment cut short: corrupt compressed data ----
    let dir = copy_dir(a.gzip.path());
    let gz = format!("{missing}.gz");
    let raw = fs::read(dir.path().join(&gz)).unwrap();
    fs::write(dir.path().join(&gz), &raw[..raw.len() / 2]).unwrap();
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    let found = problems(&doc);
    assert_eq!(found.len(), 1, "{}", messages(&doc));
    assert_eq!((found[0].0.as_str(), found[0].1.as_str()), ("corrupt_file", gz.as_str()));
    let mut whole = Vec::new();
    flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut whole).unwrap();
    assert_eq!(whole.len() as u64, SEG);
}

#[test]
fn exit_codes_for_usage_and_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("nope");
    let out = Command::new(bin()).args(["verify", "-D", missing.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not open directory") && err.contains("nope"), "{err}");
    let (code, doc) = verify_json(&missing);
    assert_eq!(code, 2);
    assert!(doc["error"].as_str().unwrap().contains("nope"));
    let out = Command::new(bin()).args(["verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(bin()).args(["verify", "-D", "x", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // An empty directory is not a whole archive.
    let (code, doc) = verify_json(dir.path());
    assert_eq!(code, 1);
    assert_eq!(doc["problems"][0]["kind"], "no_segments");
}
