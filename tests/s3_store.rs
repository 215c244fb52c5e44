//! The archive's `Store` over S3 (`S3Store`), against a real distributed SeaweedFS started by the harness
//! (tests/support/s3.rs): listing, stat, streaming and ranged reads, create-only and replacing writes, deletes,
//! outages (never "not found" for a store that cannot answer), and use from plain threads and from
//! `spawn_blocking` inside a tokio runtime.

mod support;

use object_store::path::Path as ObjectPath;
use object_store::{Attribute, GetOptions, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::time::Duration;
use support::s3::S3Cluster;
use walkeeper::archive::store::s3::Timeouts;
use walkeeper::archive::store::{self, Put, S3Options, S3Store, Store, StoreError};

fn store(s3: &S3Cluster, prefix: &str) -> S3Store {
    S3Store::open(&s3.url(prefix), &s3.options()).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn raw_put(s3: &S3Cluster, key: &str, data: &[u8]) {
    let client = s3.raw_client();
    block_on(client.put(&ObjectPath::parse(key).unwrap(), PutPayload::from(data.to_vec()))).unwrap();
}

/// Bytes per ranged GET of the S3 store's reader (`store/s3/reader.rs`).
const CHUNK: usize = 8 << 20;

/// Deterministic bytes that differ at every offset from a shifted copy.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed).collect()
}

fn read_all_small_buffers(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 7000];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn assert_io_naming(err: StoreError, key: &str, endpoint: &str) {
    assert!(matches!(err, StoreError::Io { .. }), "expected an I/O error, got: {err}");
    let text = err.to_string();
    eprintln!("as expected: {text}");
    assert!(text.contains(key), "the error does not name {key}: {text}");
    assert!(text.contains(endpoint), "the error does not name the endpoint {endpoint}: {text}");
    assert!(!text.contains('\n'), "not one line: {text}");
}

#[test]
fn lists_stats_and_reads_direct_children_only() {
    let Some(s3) = S3Cluster::start() else { return };
    let wal = store(&s3, "wal");
    wal.put_replace("000000010000000000000001", b"first segment").unwrap();
    wal.put_replace("00000002.history", b"1\t0/3000000\tno recovery target specified\n").unwrap();
    // Neighbours that are not direct children of "wal": another prefix starting with the same letters, a
    // deeper key, and the bucket's root.
    raw_put(&s3, "wal2/000000010000000000000009", b"other archive");
    raw_put(&s3, "wal/sub/000000010000000000000008", b"nested");
    raw_put(&s3, "000000010000000000000007", b"root");

    let mut entries = wal.list().unwrap();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let seen: Vec<(&str, u64, bool)> = entries.iter().map(|e| (e.name.as_str(), e.len, e.regular)).collect();
    assert_eq!(seen, [("000000010000000000000001", 13, true), ("00000002.history", 41, true)]);
    assert!(entries.iter().all(|e| e.modified.is_some()));
    assert!(store(&s3, "nothing-here").list().unwrap().is_empty());
    let root: Vec<String> = store(&s3, "").list().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(root, ["000000010000000000000007"]);
    // What follows a name: the store skips what sorts before it (start-after), still direct children only.
    let after = |store: &S3Store, name: &str| {
        let mut names: Vec<String> = store.list_after(name).unwrap().into_iter().map(|e| e.name).collect();
        names.sort();
        names
    };
    assert_eq!(after(&wal, "000000010000000000000000"), ["000000010000000000000001", "00000002.history"]);
    assert_eq!(after(&wal, "000000010000000000000001"), ["00000002.history"]);
    assert!(after(&wal, "00000002.history").is_empty(), "neither itself nor the deeper key");
    assert_eq!(after(&store(&s3, ""), "000000010000000000000006"), ["000000010000000000000007"]);

    let stat = wal.stat("000000010000000000000001").unwrap().unwrap();
    assert_eq!((stat.name.as_str(), stat.len), ("000000010000000000000001", 13));
    assert!(wal.stat("000000010000000000000002").unwrap().is_none());
    let missing = wal.open("000000010000000000000002").err().unwrap();
    assert!(missing.is_not_found(), "{missing}");
    assert_eq!(missing.to_string(), format!("\"{}/000000010000000000000002\" does not exist", s3.url("wal")));
    assert!(wal.read_range("000000010000000000000002", 0, 10).unwrap_err().is_not_found());
    assert!(wal.read_range("000000010000000000000002", 0, 0).unwrap_err().is_not_found());

    assert_eq!(wal.read_all("000000010000000000000001").unwrap(), b"first segment");
    assert_eq!(wal.read_range("000000010000000000000001", 6, 3).unwrap(), b"seg");
    assert_eq!(wal.read_range("000000010000000000000001", 10, 100).unwrap(), b"ent", "shorter at the end");
    assert_eq!(wal.read_range("000000010000000000000001", 13, 5).unwrap(), b"", "at the end");
    assert_eq!(wal.read_range("000000010000000000000001", 50, 5).unwrap(), b"", "past the end");
    assert_eq!(wal.read_range("000000010000000000000001", 2, 0).unwrap(), b"");

    // An empty object reads as empty (a ranged GET of it is refused; the HEAD then tells its size).
    wal.put_replace("empty", b"").unwrap();
    assert_eq!(wal.read_all("empty").unwrap(), b"");
    // Opening tells what is read, as a HEAD would (the prefetch worker stamps its entries with it).
    for name in ["000000010000000000000001", "empty"] {
        let (entry, reader) = wal.open_entry(name).unwrap();
        assert_eq!(Some(entry), wal.stat(name).unwrap(), "{name}");
        assert_eq!(read_all_small_buffers(reader).unwrap(), wal.read_all(name).unwrap());
    }
    assert!(wal.open_entry("000000010000000000000002").err().unwrap().is_not_found());
    // The first of several names that exists, all asked at once (restore's lookup of a segment's forms).
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let forms = names(&["000000010000000000000002", "000000010000000000000001", "00000002.history"]);
    let (i, found) = wal.stat_first(&forms).unwrap().unwrap();
    assert_eq!((i, found.name.as_str(), found.len), (1, "000000010000000000000001", 13));
    assert!(wal
        .stat_first(&names(&["000000010000000000000002", "000000010000000000000003"]))
        .unwrap()
        .is_none());

    // Names that are not one plain object name are refused, never looked up elsewhere.
    for bad in ["sub/000000010000000000000008", "..", ""] {
        let err = wal.stat(bad).unwrap_err();
        assert!(
            matches!(err, StoreError::Io { .. }) && err.to_string().contains("not a valid object name"),
            "{err}"
        );
    }
}

#[test]
fn put_new_creates_once_and_never_overwrites() {
    let Some(s3) = S3Cluster::start() else { return };
    let wal = store(&s3, "wal");
    let name = "000000010000000000000003";
    assert_eq!(wal.put_new(name, b"segment three").unwrap(), Put::Created);
    // A re-upload after a crash: the same bytes are already there.
    assert_eq!(wal.put_new(name, b"segment three").unwrap(), Put::AlreadyThere);

    // SeaweedFS returns the checksum the store wrote as user metadata on HEAD: that is what put_new compares.
    let client = s3.raw_client();
    let head = block_on(client.get_opts(
        &ObjectPath::parse(format!("wal/{name}")).unwrap(),
        GetOptions { head: true, ..GetOptions::default() },
    ))
    .unwrap();
    let sha = head.attributes.get(&Attribute::Metadata("walkeeper-sha256".into())).map(|v| v.to_string());
    let expected: String = Sha256::digest(b"segment three").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sha, Some(expected));

    // Different contents of the same size (checksums differ) and of another size: conflicts, object untouched.
    for other in [&b"segment THREE"[..], b"segment three, longer"] {
        let err = wal.put_new(name, other).unwrap_err();
        let StoreError::Conflict { location, detail } = &err else {
            panic!("expected a conflict, got: {err}")
        };
        assert_eq!(location, &format!("{}/{name}", s3.url("wal")));
        assert!(!detail.is_empty() && !err.to_string().contains('\n'), "{err}");
    }
    assert_eq!(wal.read_all(name).unwrap(), b"segment three");

    // An object another tool wrote (no checksum metadata) is compared byte by byte.
    raw_put(&s3, "wal/000000010000000000000004", b"foreign bytes");
    assert_eq!(wal.put_new("000000010000000000000004", b"foreign bytes").unwrap(), Put::AlreadyThere);
    let err = wal.put_new("000000010000000000000004", b"foreign BYTES").unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("differ from byte 8"), "{err}");
    assert_eq!(wal.read_all("000000010000000000000004").unwrap(), b"foreign bytes");
}

/// Two writers racing for the same names (HEAD absent for both; If-None-Match decides): exactly one creates
/// each object, the other gets "already there" (same bytes) or a conflict (other bytes), and the object holds
/// the winner's bytes.
#[test]
fn racing_writers_never_overwrite_each_other() {
    let Some(s3) = S3Cluster::start() else { return };
    let wal = std::sync::Arc::new(store(&s3, "wal"));
    for round in 0..16u8 {
        let name = format!("0000000100000000000000{round:02X}");
        let same = round % 2 == 0;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let writers: Vec<_> = (0..2u8)
            .map(|writer| {
                let (wal, name, barrier) = (wal.clone(), name.clone(), barrier.clone());
                let data = if same { vec![round; 1000] } else { vec![writer; 1000] };
                std::thread::spawn(move || {
                    barrier.wait();
                    (data.clone(), wal.put_new(&name, &data))
                })
            })
            .collect();
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let winners: Vec<&Vec<u8>> =
            results.iter().filter(|(_, r)| matches!(r, Ok(Put::Created))).map(|(d, _)| d).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {:?}",
            results.iter().map(|(_, r)| r).collect::<Vec<_>>()
        );
        for (_, result) in &results {
            match result {
                Ok(Put::Created) => {}
                Ok(Put::AlreadyThere) => {
                    assert!(same, "round {round}: other bytes reported as already there")
                }
                Err(StoreError::Conflict { .. }) => {
                    assert!(!same, "round {round}: same bytes reported as a conflict")
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(&wal.read_all(&name).unwrap(), winners[0], "round {round}");
    }
}

#[test]
fn put_replace_and_delete() {
    let Some(s3) = S3Cluster::start() else { return };
    let wal = store(&s3, "wal");
    let partial = "000000010000000000000005.partial";
    wal.put_replace(partial, b"grow").unwrap();
    wal.put_replace(partial, b"growing").unwrap();
    assert_eq!(wal.read_all(partial).unwrap(), b"growing");
    assert_eq!(wal.stat(partial).unwrap().unwrap().len, 7);
    wal.delete(partial).unwrap();
    wal.delete(partial).unwrap(); // already gone: not an error
    assert!(wal.stat(partial).unwrap().is_none());
    let left = wal.list().unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn streams_large_objects_in_chunks() {
    let Some(s3) = S3Cluster::start() else { return };
    let wal = store(&s3, "wal");
    // One chunk, and several (reads are ranged GETs of CHUNK; 16 MiB is the default segment size).
    let small = pattern(1 << 20, 1);
    for len in [CHUNK - 1, CHUNK, CHUNK + 1] {
        let data = pattern(len, 3);
        wal.put_replace("edge", &data).unwrap();
        assert_eq!(read_all_small_buffers(wal.open("edge").unwrap()).unwrap(), data, "{len} bytes");
    }
    let segment = pattern(16 << 20, 2);
    wal.put_new("small", &small).unwrap();
    assert_eq!(wal.put_new("000000010000000000000010", &segment).unwrap(), Put::Created);
    assert_eq!(read_all_small_buffers(wal.open("small").unwrap()).unwrap(), small);
    assert_eq!(wal.read_all("000000010000000000000010").unwrap(), segment);
    assert_eq!(read_all_small_buffers(wal.open("000000010000000000000010").unwrap()).unwrap(), segment);
    let (entry, reader) = wal.open_entry("000000010000000000000010").unwrap();
    assert_eq!(Some(entry), wal.stat("000000010000000000000010").unwrap());
    assert_eq!(read_all_small_buffers(reader).unwrap(), segment);
    let off = CHUNK - 100;
    assert_eq!(
        wal.read_range("000000010000000000000010", off as u64, 300).unwrap(),
        &segment[off..off + 300]
    );
    // The big object compares by checksum: equal is already there, one flipped byte is a conflict.
    assert_eq!(wal.put_new("000000010000000000000010", &segment).unwrap(), Put::AlreadyThere);
    let mut flipped = segment.clone();
    flipped[9_999_999] ^= 1;
    assert!(matches!(wal.put_new("000000010000000000000010", &flipped), Err(StoreError::Conflict { .. })));

    // An object replaced while it is being read fails the read (If-Match on each chunk) instead of mixing
    // two versions: after the first bytes, two chunks were requested, the others come after.
    let big = pattern(4 * CHUNK, 4);
    wal.put_replace("big", &big).unwrap();
    // A reader dropped halfway cancels its GETs; the object reads whole again after.
    let mut reader = wal.open("big").unwrap();
    let mut some = vec![0u8; CHUNK + 5];
    reader.read_exact(&mut some).unwrap();
    assert!(some == big[..CHUNK + 5]);
    drop(reader);
    assert!(read_all_small_buffers(wal.open("big").unwrap()).unwrap() == big);
    let mut reader = wal.open("big").unwrap();
    let mut first = [0u8; 1];
    reader.read_exact(&mut first).unwrap();
    wal.put_replace("big", &segment).unwrap();
    let err = read_all_small_buffers(reader).unwrap_err();
    assert!(err.to_string().contains("replaced while it was being read"), "{err}");
}

#[test]
fn a_read_whose_store_goes_away_midway_fails_and_never_ends_short() {
    let Some(mut s3) = S3Cluster::start() else { return };
    let wal = store(&s3, "wal");
    let big = pattern(4 * CHUNK, 5);
    wal.put_new("000000010000000000000020", &big).unwrap();
    let mut reader = wal.open("000000010000000000000020").unwrap();
    let mut first = vec![0u8; 1000];
    reader.read_exact(&mut first).unwrap();
    assert!(first == big[..1000]);
    // The gateway dies with the first two chunks requested: what was read is right, and the read fails
    // naming the range it could not get instead of ending early (a short segment would look complete).
    s3.kill_gateway();
    let mut rest = Vec::new();
    let err = reader.read_to_end(&mut rest).unwrap_err().to_string();
    assert!(
        rest.len() < big.len() - 1000 && rest[..] == big[1000..1000 + rest.len()],
        "{} bytes",
        rest.len()
    );
    assert!(err.contains("bytes ") && err.contains(&s3.endpoint()), "{err}");
    s3.restart_gateway();
    assert!(read_all_small_buffers(wal.open("000000010000000000000020").unwrap()).unwrap() == big);
}

#[test]
fn a_store_that_cannot_answer_is_an_error_never_not_found() {
    let Some(mut s3) = S3Cluster::start() else { return };
    let wal = store(&s3, "wal");
    let endpoint = s3.endpoint();
    wal.put_new("000000010000000000000001", b"kept").unwrap();
    let missing = "000000010000000000000002";

    // A bucket that does not exist: S3 gives a HEAD there the same 404 as a missing key.
    let nobucket = S3Store::open("s3://no-such-bucket/wal", &s3.options()).unwrap();
    assert_io_naming(
        nobucket.stat(missing).unwrap_err(),
        "s3://no-such-bucket/wal/000000010000000000000002",
        &endpoint,
    );
    assert_io_naming(nobucket.open(missing).err().unwrap(), missing, &endpoint);
    assert_io_naming(nobucket.stat_first(&[missing.to_string()]).unwrap_err(), missing, &endpoint);
    assert_io_naming(nobucket.read_range(missing, 0, 1).unwrap_err(), missing, &endpoint);
    assert_io_naming(nobucket.list().unwrap_err(), "s3://no-such-bucket/wal", &endpoint);
    // A create-only upload into a bucket that never answered confirms its HEAD's 404 (SeaweedFS would accept
    // the PUT and hide a mistyped name).
    assert_io_naming(nobucket.put_new(missing, b"new").unwrap_err(), missing, &endpoint);

    // Wrong credentials.
    let options = S3Options { secret_access_key: Some("wrong".into()), ..s3.options() };
    let forged = S3Store::open(&s3.url("wal"), &options).unwrap();
    assert_io_naming(forged.stat(missing).unwrap_err(), missing, &endpoint);
    assert_io_naming(
        forged.open("000000010000000000000001").err().unwrap(),
        "000000010000000000000001",
        &endpoint,
    );

    // One volume server dead: every object has a copy on the other one.
    s3.kill_volume(0);
    assert_eq!(wal.read_all("000000010000000000000001").unwrap(), b"kept");

    // The gateway down: connection refused, for every operation.
    s3.kill_gateway();
    assert_io_naming(wal.stat(missing).unwrap_err(), missing, &endpoint);
    assert_io_naming(wal.open(missing).err().unwrap(), missing, &endpoint);
    let forms = [missing.to_string(), "000000010000000000000001".to_string()];
    assert_io_naming(wal.stat_first(&forms).unwrap_err(), missing, &endpoint);
    assert_io_naming(wal.read_range(missing, 0, 8).unwrap_err(), missing, &endpoint);
    assert_io_naming(
        wal.read_all("000000010000000000000001").unwrap_err(),
        "000000010000000000000001",
        &endpoint,
    );
    assert_io_naming(wal.list().unwrap_err(), &s3.url("wal"), &endpoint);
    assert_io_naming(wal.put_new(missing, b"new").unwrap_err(), missing, &endpoint);
    assert_io_naming(wal.put_replace(missing, b"new").unwrap_err(), missing, &endpoint);
    assert_io_naming(
        wal.delete("000000010000000000000001").unwrap_err(),
        "000000010000000000000001",
        &endpoint,
    );

    // Back: nothing was lost, nothing was written while it was down.
    s3.restart_gateway();
    assert_eq!(wal.read_all("000000010000000000000001").unwrap(), b"kept");
    assert!(wal.stat(missing).unwrap().is_none());
}

/// A gateway that accepts connections and never answers (SIGSTOP) makes requests time out: an error naming
/// the object, after the configured timeouts and retries, never a hang and never "not found".
#[test]
fn a_hanging_store_times_out() {
    let Some(mut s3) = S3Cluster::start() else { return };
    let timeouts = Timeouts {
        read: Duration::from_secs(1),
        write: Duration::from_secs(1),
        max_retries: 1,
        retry_for: Duration::from_secs(2),
        ..Timeouts::default()
    };
    let wal = S3Store::open(&s3.url("wal"), &S3Options { timeouts, ..s3.options() }).unwrap();
    wal.put_new("000000010000000000000001", b"kept").unwrap();
    s3.freeze_gateway();
    let err = wal.stat("000000010000000000000002").unwrap_err();
    s3.thaw_gateway();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_io_naming(err, "000000010000000000000002", &s3.endpoint());
    assert_eq!(wal.read_all("000000010000000000000001").unwrap(), b"kept");
}

#[test]
fn works_from_plain_threads_and_from_spawn_blocking() {
    let Some(s3) = S3Cluster::start() else { return };
    let wal = std::sync::Arc::new(store(&s3, "wal"));

    let from_thread = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.put_new("from-thread", b"plain thread")).join().unwrap()
    };
    assert_eq!(from_thread.unwrap(), Put::Created);

    for flavor in ["current_thread", "multi_thread"] {
        let runtime = match flavor {
            "current_thread" => tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            _ => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
        };
        let name = format!("from-{flavor}");
        let read = runtime.block_on({
            let wal = wal.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    assert_eq!(wal.put_new(&name, name.as_bytes()).unwrap(), Put::Created);
                    wal.read_all(&name)
                })
                .await
                .unwrap()
            }
        });
        assert_eq!(read.unwrap(), format!("from-{flavor}").as_bytes());
        // A store opened and dropped inside async code: dropping never blocks a runtime.
        runtime.block_on(async {
            let inner = store(&s3, "wal");
            drop(inner);
        });
    }
    let mut names: Vec<String> = wal.list().unwrap().into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(names, ["from-current_thread", "from-multi_thread", "from-thread"]);
}

/// `store::open` takes endpoint and credentials from the standard AWS variables: checked in a child process
/// (this test binary again, running only [`child_uses_the_environment`]) so no test changes this process's
/// environment.
#[test]
fn store_open_reads_the_standard_environment() {
    let Some(s3) = S3Cluster::start() else { return };
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args(["--exact", "child_uses_the_environment", "--ignored", "--nocapture", "--test-threads=1"]);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("AWS_")) {
            child.env_remove(key);
        }
    }
    child.envs(s3.env()).env("WALKEEPER_TEST_S3_URL", s3.url("env"));
    let out = child.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "the child test failed:\n{text}");
    assert_eq!(store(&s3, "env").read_all("00000002.history").unwrap(), b"from the environment");
}

#[test]
#[ignore = "run by store_open_reads_the_standard_environment, with the environment it sets"]
fn child_uses_the_environment() {
    let url =
        std::env::var("WALKEEPER_TEST_S3_URL").expect("run by store_open_reads_the_standard_environment");
    let bucket = store::open(&url).unwrap();
    assert_eq!(bucket.put_new("00000002.history", b"from the environment").unwrap(), Put::Created);
    assert_eq!(bucket.list().unwrap().len(), 1);
}
