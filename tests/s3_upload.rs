//! `walkeeper receive --upload s3://…` against a real PostgreSQL and a real distributed SeaweedFS
//! (tests/support/s3.rs), and the read commands on the bucket: every complete segment uploaded and restored
//! byte-identical to the server's, in every compression; verify, status and cleanup with `-D s3://…`; a
//! flipped byte found; a foreign object under a segment's name left alone and reported; `--remove-uploaded`
//! resuming from the bucket.

#[path = "s3_common/mod.rs"]
mod s3_common;
mod support;

use s3_common::{complete_segments, run_s3, spool_names, wait_for, Bucket, Receiver, Rig};
use std::fs;
use support::s3::S3Cluster;
use support::Cluster;

/// A primary with 1 MB segments and a slot `keep` that holds all its WAL from now on (to compare with).
fn primary() -> Cluster {
    let primary = Cluster::builder().segment_size_mb(1).start();
    primary.psql("SELECT pg_create_physical_replication_slot('keep', true)");
    primary
}

fn create_slot(server: &Cluster, name: &str) {
    server.psql(&format!("SELECT pg_create_physical_replication_slot('{name}', true)"));
}

#[test]
fn every_compression_uploads_restores_byte_identical_and_reads_from_the_bucket() {
    let Some(s3) = S3Cluster::start() else { return };
    let bucket = Bucket::new(&s3);
    let primary = primary();
    let tmp = tempfile::tempdir().unwrap();
    let methods = ["none", "gzip", "lz4", "zstd"];
    let suffix = |m: &str| match m {
        "gzip" => ".gz",
        "lz4" => ".lz4",
        "zstd" => ".zst",
        _ => "",
    };
    let mut receivers: Vec<Receiver> = methods
        .iter()
        .map(|m| {
            create_slot(&primary, &format!("s_{m}"));
            let spool = tmp.path().join(m);
            fs::create_dir(&spool).unwrap();
            let url = s3.url(m);
            Receiver::start(&s3, &primary, &spool, &["-S", &format!("s_{m}"), "-Z", m, "--upload", &url])
        })
        .collect();
    primary.generate_wal(4);
    let last = primary.switch_wal();
    for (m, rx) in methods.iter().zip(&receivers) {
        let name = format!("{last}{}", suffix(m));
        wait_for(&format!("{name} in s3://…/{m}"), || bucket.names(m).contains(&name), || rx.log());
    }
    // A little WAL into the next segment: its .partial goes up at the clean stop at the latest.
    primary.psql("SELECT pg_logical_emit_message(false, 'walkeeper-test', 'after the switch')");
    for rx in &receivers {
        let has_partial = || spool_names(&rx.spool).iter().any(|n| n.ends_with(".partial"));
        wait_for("the next segment's .partial", has_partial, || rx.log());
    }
    for rx in &mut receivers {
        assert_eq!(rx.stop(), Some(0), "a clean stop with everything uploaded:\n{}", rx.log());
    }

    for (m, rx) in methods.iter().zip(&receivers) {
        let url = s3.url(m);
        let objects = bucket.names(m);
        let uploaded = complete_segments(&objects);
        assert_eq!(uploaded, complete_segments(&spool_names(&rx.spool)), "{m}: every complete segment, once");
        assert!(uploaded.len() >= 5, "{m}: {uploaded:?}");
        assert!(uploaded.iter().all(|n| n.ends_with(suffix(m)) || suffix(m).is_empty()), "{m}: {uploaded:?}");
        // Objects hold exactly the spool's bytes, and restore serves the server's own segments from them.
        for name in &uploaded {
            assert_eq!(bucket.get(m, name), fs::read(rx.spool.join(name)).unwrap(), "{m}: {name}");
            let segment = &name[..24];
            let out = tmp.path().join(format!("restored-{m}-{segment}"));
            let r = run_s3(&s3, &["restore", "--prefetch", "0", "-D", &url, segment, out.to_str().unwrap()]);
            assert_eq!(r.code, Some(0), "{m}: restore {segment}: {r}");
            assert_eq!(fs::read(&out).unwrap(), primary.read_wal_segment(segment), "{m}: {segment}");
        }
        // The last state of the open segment went up at the clean stop.
        let partial = spool_names(&rx.spool).into_iter().find(|n| n.ends_with(".partial")).unwrap();
        assert_eq!(bucket.get(m, &partial), fs::read(rx.spool.join(&partial)).unwrap(), "{m}: {partial}");

        let r = run_s3(&s3, &["verify", "-D", &url]);
        assert_eq!(r.code, Some(0), "{m}: verify on the bucket: {r}");
        let r = run_s3(&s3, &["status", "-D", &url, "--json"]);
        assert_eq!(r.code, Some(0), "{m}: {r}");
        let status: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(status["missing_segments"], 0, "{m}: {status}");
        assert_eq!(status["timelines"][0]["last"], last.as_str(), "{m}: {status}");

        // cleanup removes complete objects before the cut-off, and only those.
        let cutoff = &uploaded[2][..24];
        let r = run_s3(&s3, &["cleanup", "-D", &url, cutoff]);
        assert_eq!(r.code, Some(0), "{m}: {r}");
        // `status` saved its index of the base backups found in the WAL (`.walkeeper-backups`) next to the WAL.
        let after: Vec<String> =
            bucket.names(m).into_iter().filter(|n| n != support::BACKUP_INDEX_FILE).collect();
        let expected: Vec<String> =
            objects.iter().filter(|n| n.contains(".partial") || n[..24] >= *cutoff).cloned().collect();
        assert_eq!(after, expected, "{m}");
        let r = run_s3(&s3, &["verify", "-D", &url]);
        assert_eq!(r.code, Some(0), "{m}: verify after cleanup: {r}");

        // A flipped byte in an object is found — or changes nothing: a compressed frame has bits no decoder
        // reads (the padding after an FSE table, say), and such a flip decodes to the same WAL, which
        // verify rightly calls whole. So: every flip either fails verify naming the object or still restores
        // to the server's own bytes, and at least one of a few spread-out flips is found.
        let victim = &uploaded[3];
        let original = bucket.get(m, victim);
        let segment = &victim[..24];
        let mut found = false;
        for at in [original.len() / 2, original.len() / 3, original.len() * 2 / 3, 100] {
            let mut bytes = original.clone();
            bytes[at] ^= 0x20;
            bucket.put(m, victim, &bytes);
            let r = run_s3(&s3, &["verify", "-D", &url]);
            if r.code == Some(1) {
                assert!(r.stdout.contains(segment), "{m}: {r}");
                found = true;
                break;
            }
            assert_eq!(r.code, Some(0), "{m}: verify after a flip at byte {at} of {victim}: {r}");
            let out = tmp.path().join(format!("flipped-{m}-{at}"));
            let r = run_s3(&s3, &["restore", "--prefetch", "0", "-D", &url, segment, out.to_str().unwrap()]);
            assert_eq!(r.code, Some(0), "{m}: a flip verify passed must restore: {r}");
            let restored = fs::read(&out).unwrap();
            assert!(restored == primary.read_wal_segment(segment), "{m}: flip at {at} served other WAL");
        }
        assert!(found, "{m}: no flipped byte in {victim} was found by verify");
    }
}

#[test]
fn a_foreign_object_under_a_segment_name_is_untouched_reported_and_fails_verify() {
    let Some(Rig { s3, bucket, primary, spool, url, dir: _dir }) = Rig::start("arch") else { return };
    let segment = primary.segment_size();
    let next = primary.current_lsn() / segment + 2;
    let foreign_name = format!("00000001{:08X}{:08X}", next / 4096, next % 4096);
    let foreign = b"an object another tool put here".to_vec();
    bucket.put("wal", &foreign_name, &foreign);
    let mut rx = Receiver::start(&s3, &primary, &spool, &["-S", "arch", "--upload", &url]);
    primary.generate_wal(4);
    let last = primary.switch_wal();
    wait_for("the uploads after the conflict", || bucket.names("wal").contains(&last), || rx.log());
    let code = rx.stop();
    let log = rx.log();
    assert_eq!(code, Some(3), "a conflict ends a clean stop with exit 3:\n{log}");
    let key = format!("{url}/{foreign_name}");
    assert!(
        log.contains(&format!("upload conflict: \"{key}\" already exists with different contents")),
        "{log}"
    );
    let last_line = log.lines().last().unwrap();
    assert!(last_line.starts_with("walkeeper: error: not uploaded: ") && last_line.contains(&key), "{log}");
    assert_eq!(bucket.get("wal", &foreign_name), foreign, "the foreign object is untouched");
    assert!(spool.join(&foreign_name).is_file(), "the spool keeps the file");
    let r = run_s3(&s3, &["verify", "-D", &url]);
    assert_eq!(r.code, Some(1), "{r}");
    assert!(r.stdout.contains(&foreign_name), "{r}");
}

/// With `--remove-uploaded` the spool keeps only its newest segment file; a spool emptied by hand resumes
/// after the bucket's newest segment instead of the server's current position, so no gap opens.
#[test]
fn remove_uploaded_frees_the_spool_and_an_empty_spool_resumes_from_the_bucket() {
    // The slot only keeps the server's WAL: the receiver uses none, so without the bucket it would resume at
    // the server's current position.
    let Some(Rig { s3, bucket, primary, spool, url, dir: _dir }) = Rig::start("keep") else { return };
    let args = ["--upload", url.as_str(), "--remove-uploaded", "--upload-partial-interval", "1"];
    let mut rx = Receiver::start(&s3, &primary, &spool, &args);
    primary.generate_wal(3);
    let last = primary.switch_wal();
    wait_for("the uploads", || bucket.names("wal").contains(&last), || rx.log());
    wait_for(
        "the spool to give uploaded segments up",
        || complete_segments(&spool_names(&spool)).iter().all(|n| *n >= last),
        || format!("{:?}\n{}", spool_names(&spool), rx.log()),
    );
    assert_eq!(rx.stop(), Some(0), "{}", rx.log());
    for name in spool_names(&spool) {
        fs::remove_file(spool.join(name)).unwrap();
    }
    // WAL the server writes meanwhile must not be skipped.
    primary.generate_wal(2);
    primary.switch_wal();
    let mut rx = Receiver::start(&s3, &primary, &spool, &args);
    primary.generate_wal(1);
    let last = primary.switch_wal();
    wait_for("the uploads after the restart", || bucket.names("wal").contains(&last), || rx.log());
    assert_eq!(rx.stop(), Some(0), "{}", rx.log());
    let r = run_s3(&s3, &["verify", "-D", &url]);
    assert_eq!(r.code, Some(0), "no gap in the bucket: {r}");
    assert!(rx.log().contains("the newest complete segment in"), "{}", rx.log());
}
