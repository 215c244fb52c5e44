//! What the archive's readers make of files that should not be trusted, on real WAL from a real server
//! (#11): a stray segment-named file never decides where `receive` starts; the fully received `.partial`
//! files at the end of a timeline are served by `restore --partial` (and status and verify agree on them);
//! `restore` checks every record before serving and exits by recovery mode; entries that are not regular
//! files and history files naming a later parent are refused; an archive with another cluster's WAL mixed in.

mod support;

use std::fs;
use std::path::Path;
use std::process::Output;
use support::{format_lsn, names, parse_lsn, walkeeper, Cluster};
use walkeeper::wal::encoder::WalEncoder;

const SEG: u64 = 1 << 20;

fn name(n: u64) -> String {
    format!("00000001{:08X}{:08X}", n / 4096, n % 4096)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
}

/// `walkeeper restore -D archive [extra] file dest`, run in `cwd` (a data directory, or not).
fn restore(archive: &Path, extra: &[&str], file: &str, dest: &Path, cwd: &Path) -> Output {
    walkeeper()
        .arg("restore")
        .arg("-D")
        .arg(archive)
        .args(["--prefetch", "0"])
        .args(extra)
        .arg(file)
        .arg(dest)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn json(cmd: &str, archive: &Path) -> (i32, serde_json::Value) {
    let out = walkeeper().arg(cmd).arg("-D").arg(archive).arg("--json").output().unwrap();
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{cmd} --json: {e}: {}\n{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().unwrap_or(-1), doc)
}

/// `walkeeper receive -n -D dir` from `c` with `extra` options.
fn receive(c: &Cluster, dir: &Path, extra: &[&str]) -> Output {
    walkeeper()
        .args(["receive", "-n", "-D"])
        .arg(dir)
        .args(["-h", c.host(), "-p", &c.port().to_string(), "-U", "postgres"])
        .args(extra)
        .output()
        .unwrap()
}

/// An end position for `receive -E` here, with WAL written after it so that streaming passes it.
fn end_here(c: &Cluster) -> String {
    let end = format_lsn(c.current_lsn());
    c.switch_wal();
    end
}

fn restart_lsn(c: &Cluster, slot: &str) -> String {
    c.psql(&format!("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"))
}

fn cluster() -> Cluster {
    Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '128MB'").start()
}

/// Real WAL around a record that crosses a segment boundary: filler rows, then a logical message starting
/// in segment `n` and ending in `n + 1` at `end`, then a switch. Returns (n, end).
fn crossing_record(c: &Cluster) -> (u64, u64) {
    c.generate_wal(2);
    let at = c.current_lsn();
    let size = SEG - at % SEG + SEG / 2;
    let end = parse_lsn(
        &c.psql(&format!("SELECT pg_logical_emit_message(false, 'walkeeper', repeat('x', {size}))")),
    );
    assert_eq!(end / SEG, at / SEG + 1, "the message should end in the next segment");
    c.switch_wal();
    (at / SEG, end)
}

fn archive_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("walkeeper-catalog-").tempdir().unwrap()
}

/// A data directory as PostgreSQL runs restore_command in: `global/pg_control` of `c` and `signal`.
fn data_dir_of(c: &Cluster, signal: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("global")).unwrap();
    fs::copy(c.data_dir().join("global/pg_control"), d.path().join("global/pg_control")).unwrap();
    fs::write(d.path().join(signal), b"").unwrap();
    d
}

#[test]
fn a_stray_segment_never_decides_where_receive_starts() {
    let c = cluster();
    c.psql("SELECT pg_create_physical_replication_slot('k', true)");
    let dir = archive_dir();
    c.generate_wal(2);
    let out = receive(&c, dir.path(), &["-S", "k", "-E", &end_here(&c)]);
    assert_code(&out, 0);
    let slot_before = restart_lsn(&c, "k");
    // The server goes on: segments the archive does not have yet.
    c.generate_wal(4);
    c.switch_wal();
    let last = names(dir.path())
        .iter()
        .filter(|f| f.len() == 24)
        .map(|f| u64::from_str_radix(&f[8..], 16).unwrap())
        .max()
        .unwrap();
    assert!(c.current_lsn() / SEG > last + 4, "the server should be ahead of the archive");
    // A zero-filled file with a segment name beyond the archive's end, within the server's WAL.
    let stray = name(last + 3);
    fs::write(dir.path().join(&stray), vec![0u8; SEG as usize]).unwrap();
    let files = names(dir.path());
    let out = receive(&c, dir.path(), &["-S", "k", "-E", &end_here(&c)]);
    assert_code(&out, 1);
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("walkeeper: error: segment file \"")
            && err.contains(&format!("/{stray}\" does not belong in this archive: "))
            && err.trim_end().ends_with("; move it out of the archive directory"),
        "{err}"
    );
    assert_eq!(restart_lsn(&c, "k"), slot_before, "the slot must not move past WAL never archived");
    assert_eq!(names(dir.path()), files, "nothing written");
    // A directory by that name: the same clear refusal.
    fs::remove_file(dir.path().join(&stray)).unwrap();
    fs::create_dir(dir.path().join(&stray)).unwrap();
    let out = receive(&c, dir.path(), &["-S", "k", "-E", &end_here(&c)]);
    assert_code(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.trim_end()
            .ends_with(&format!("/{stray}\" is not a regular file: move it out of the archive directory")),
        "{err}"
    );
    fs::remove_dir(dir.path().join(&stray)).unwrap();
    assert_eq!(restart_lsn(&c, "k"), slot_before);
    // Moved away: receive fills the archive up to the server's position.
    let out = receive(&c, dir.path(), &["-S", "k", "-E", &end_here(&c)]);
    assert_code(&out, 0);
    assert!(names(dir.path()).contains(&stray), "{:?}", names(dir.path()));
}

#[test]
fn receive_refuses_an_archive_of_another_cluster() {
    let a = cluster();
    let b = cluster();
    let dir = archive_dir();
    a.psql("CREATE TABLE x (i int)");
    let out = receive(&a, dir.path(), &["-E", &end_here(&a)]);
    assert_code(&out, 0);
    let files = names(dir.path());
    let sysid = |c: &Cluster| c.psql("SELECT system_identifier FROM pg_control_system()");
    let out = receive(&b, dir.path(), &[]);
    assert_code(&out, 1);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("holds WAL of database system {}", sysid(&a)))
            && err.contains(&format!("but the server's system identifier is {}", sysid(&b))),
        "{err}"
    );
    assert_eq!(names(dir.path()), files);
}

#[test]
fn restore_serves_the_trailing_run_of_partials() {
    let c = cluster();
    let (n, end) = crossing_record(&c);
    let dir = archive_dir();
    // What walkeeper leaves when the primary dies while the record crossing into n+1 is incomplete: n is
    // fully received but not renamed (its last record is not validated), n+1 holds part of that record.
    let before = c.read_wal_segment(&name(n - 1));
    let whole = c.read_wal_segment(&name(n));
    let mut cut = c.read_wal_segment(&name(n + 1));
    cut[((end % SEG) / 2) as usize..].fill(0);
    fs::write(dir.path().join(name(n - 1)), &before).unwrap();
    fs::write(dir.path().join(format!("{}.partial", name(n))), &whole).unwrap();
    fs::write(dir.path().join(format!("{}.partial", name(n + 1))), &cut).unwrap();
    let pg_wal = tempfile::tempdir().unwrap();
    let dest = pg_wal.path().join("RECOVERYXLOG");
    for seg in [n, n + 1] {
        let out = restore(dir.path(), &[], &name(seg), &dest, pg_wal.path());
        assert_code(&out, 1);
    }
    let out = restore(dir.path(), &["--partial"], &name(n), &dest, pg_wal.path());
    assert_code(&out, 0);
    assert!(fs::read(&dest).unwrap() == whole, "segment {n} as received");
    let out = restore(dir.path(), &["--partial"], &name(n + 1), &dest, pg_wal.path());
    assert_code(&out, 0);
    assert!(fs::read(&dest).unwrap() == cut);
    // status and verify agree: no gap, the run is the received end of the timeline.
    let (code, st) = json("status", dir.path());
    assert_eq!(code, 0);
    let t = &st["timelines"][0];
    assert_eq!(
        t["trailing_partials"],
        serde_json::json!([format!("{}.partial", name(n)), format!("{}.partial", name(n + 1))])
    );
    assert_eq!(t["partial"]["file"], format!("{}.partial", name(n + 1)));
    assert_eq!(st["missing_segments"], 0, "{st}");
    let (code, v) = json("verify", dir.path());
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["summary"]["timelines"][0]["partial"]["ends"], "inside_record");
}

/// Flip bits in the middle of a page of a segment full of records: at least one lands inside a record
/// (only alignment padding, at most 7 bytes, is not covered by a CRC).
fn damage(segment: &mut [u8]) {
    for off in [4000, 4100, 4200] {
        segment[5 * 8192 + off] ^= 0x08;
    }
}

#[test]
fn restore_refuses_a_damaged_segment_by_recovery_mode() {
    let c = cluster();
    let (n, _) = crossing_record(&c);
    let victim = name(n - 1);
    let mut bytes = c.read_wal_segment(&victim);
    damage(&mut bytes);
    let plain = archive_dir();
    fs::write(plain.path().join(&victim), &bytes).unwrap();
    // A zstd file holding the same damage decompresses fine: only the decoder sees it.
    let zst = archive_dir();
    fs::write(zst.path().join(format!("{victim}.zst")), zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
    let pg_wal = tempfile::tempdir().unwrap();
    let dest = pg_wal.path().join("RECOVERYXLOG");
    let archive_recovery = data_dir_of(&c, "recovery.signal");
    let standby = data_dir_of(&c, "standby.signal");
    for (archive, file) in [(plain.path(), victim.clone()), (zst.path(), format!("{victim}.zst"))] {
        for (cwd, code) in [(pg_wal.path(), 2), (archive_recovery.path(), 126), (standby.path(), 1)] {
            let out = restore(archive, &[], &victim, &dest, cwd);
            assert_code(&out, code);
            let err = text(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with("walkeeper: error: WAL file \"")
                    && err.contains(&format!("/{file}\" is damaged: "))
                    && err.contains(" 0/"),
                "{err}"
            );
            assert!(!dest.exists(), "nothing served");
        }
    }
    // --fatal-errors makes every error fatal, also in standby mode; "not found" stays 1.
    let out = restore(plain.path(), &["--fatal-errors"], &victim, &dest, standby.path());
    assert_code(&out, 126);
    let out = restore(plain.path(), &[], &name(n + 50), &dest, archive_recovery.path());
    assert_code(&out, 1);
    assert!(out.stderr.is_empty());
}

#[test]
fn another_cluster_mixed_in() {
    let a = cluster();
    let b = cluster();
    let (n, _) = crossing_record(&a);
    let dir = archive_dir();
    for seg in [n - 1, n, n + 1] {
        fs::write(dir.path().join(name(seg)), a.read_wal_segment(&name(seg))).unwrap();
    }
    // The next segment comes from another cluster.
    let foreign = name(n + 2);
    while b.current_lsn() / SEG <= n + 2 {
        b.generate_wal(1);
    }
    b.switch_wal();
    fs::write(dir.path().join(&foreign), b.read_wal_segment(&foreign)).unwrap();
    let sysid = |c: &Cluster| c.psql("SELECT system_identifier FROM pg_control_system()");
    // verify names the file.
    let (code, v) = json("verify", dir.path());
    assert_eq!(code, 1, "{v}");
    let p = &v["problems"][0];
    assert_eq!(
        (p["kind"].as_str(), p["file"].as_str()),
        (Some("invalid_wal"), Some(foreign.as_str())),
        "{v}"
    );
    assert!(p["message"].as_str().unwrap().contains("different database system"), "{v}");
    // status warns.
    let (code, st) = json("status", dir.path());
    assert_eq!(code, 0);
    let warnings = st["warnings"].to_string();
    assert!(warnings.contains(&sysid(&a)) && warnings.contains(&sysid(&b)), "{st}");
    // restore, run by PostgreSQL in the data directory of cluster a, refuses it.
    let pg_wal = tempfile::tempdir().unwrap();
    let dest = pg_wal.path().join("RECOVERYXLOG");
    let data = data_dir_of(&a, "recovery.signal");
    let out = restore(dir.path(), &[], &foreign, &dest, data.path());
    assert_code(&out, 126);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "is from database system {}, but the server being recovered is database system {}",
            sysid(&b),
            sysid(&a)
        )),
        "{err}"
    );
    assert!(!dest.exists());
    let out = restore(dir.path(), &[], &name(n + 1), &dest, data.path());
    assert_code(&out, 0);
}

/// Segments 1 and 2 of synthetic WAL (no server needed): in each, a record then an XLOG_SWITCH.
fn synthetic(dir: &Path) {
    let mut e = WalEncoder::new(0xD110, SEG as u32, 7_000_000_000_000_000_001, 1, SEG);
    for _ in 1..=2 {
        e.main_data_record(10, 0, 1, b"synthetic");
        e.switch();
    }
    let bytes = e.into_bytes();
    fs::write(dir.join(name(1)), &bytes[..SEG as usize]).unwrap();
    fs::write(dir.join(name(2)), &bytes[SEG as usize..]).unwrap();
}

#[test]
fn entries_that_are_not_regular_files_and_impossible_histories() {
    let dir = archive_dir();
    let archive = dir.path();
    synthetic(archive);
    // A symlink to a valid segment and a directory, both named like segments.
    std::os::unix::fs::symlink(archive.join(name(2)), archive.join(name(3))).unwrap();
    fs::create_dir(archive.join(name(4))).unwrap();
    let pg_wal = tempfile::tempdir().unwrap();
    let dest = pg_wal.path().join("RECOVERYXLOG");
    for seg in [3, 4] {
        let out = restore(archive, &[], &name(seg), &dest, pg_wal.path());
        assert_code(&out, 2);
        let err = text(&out.stderr);
        assert_eq!(
            err.trim_end(),
            format!("walkeeper: error: \"{}\" is not a regular file", archive.join(name(seg)).display())
        );
        assert!(!dest.exists());
    }
    let (code, v) = json("verify", archive);
    assert_eq!(code, 1);
    let kinds: Vec<(&str, &str)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap(), p["file"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("not_regular_file", name(3).as_str()), ("not_regular_file", name(4).as_str())],
        "{v}"
    );
    let (_, st) = json("status", archive);
    assert!(
        st["warnings"][0].as_str().unwrap().ends_with(&format!("{}\" is not a regular file", name(3))),
        "{st}"
    );
    // A history file naming a later timeline as the parent of timeline 2.
    fs::remove_file(archive.join(name(3))).unwrap();
    fs::remove_dir(archive.join(name(4))).unwrap();
    fs::write(archive.join("00000002.history"), "3\t0/5000000\tno recovery target specified\n").unwrap();
    let out = restore(archive, &[], "00000002.history", &dest, pg_wal.path());
    assert_code(&out, 2);
    assert!(text(&out.stderr).contains("00000002.history\" is damaged: timeline 3 (switch point 0/05000000) cannot be an ancestor of timeline 2"), "{}", text(&out.stderr));
    let (code, v) = json("verify", archive);
    assert_eq!(code, 1);
    assert_eq!(v["problems"][0]["kind"], "invalid_history", "{v}");
}

#[test]
fn cleanup_warns_before_removing_the_live_partial() {
    let dir = archive_dir();
    let archive = dir.path();
    synthetic(archive);
    fs::write(archive.join(format!("{}.partial", name(3))), vec![0u8; SEG as usize]).unwrap();
    let cleanup =
        |args: &[&str]| walkeeper().arg("cleanup").arg("-D").arg(archive).args(args).output().unwrap();
    // Up to the live .partial: nothing to say.
    let out = cleanup(&[&name(3)]);
    assert_code(&out, 0);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    // Past it: a warning first (also in a dry run), then it is removed as pg_archivecleanup would.
    for args in [vec!["-n", name(4).as_str()], vec![name(4).as_str()]] {
        let out = cleanup(&args);
        assert_code(&out, 0);
        let err = text(&out.stderr);
        assert_eq!(
            err.trim_end(),
            format!(
                "walkeeper: warning: removing \"{}\", the newest segment file of the newest timeline: a running walkeeper receive may still be writing it",
                archive.join(format!("{}.partial", name(3))).display()
            )
        );
    }
    assert!(names(archive).is_empty(), "{:?}", names(archive));
}
