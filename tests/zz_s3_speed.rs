mod support;
use std::time::Instant;
use support::s3::S3Cluster;
use walkeeper::archive::store::{S3Store, Store};

#[test]
fn speed() {
    let Some(s3) = S3Cluster::start() else { return };
    let store = S3Store::open(&s3.url("speed"), &s3.options()).unwrap();
    store.put_replace("x", b"abc").unwrap();
    let bin = support::WALKEEPER;
    let tmp = tempfile::tempdir().unwrap();
    for (what, args) in [
        (
            "restore missing segment",
            vec!["restore", "--prefetch", "0", "-D", &s3.url("speed"), "000000010000000000000003", "out"],
        ),
        (
            "restore missing history",
            vec!["restore", "--prefetch", "0", "-D", &s3.url("speed"), "00000002.history", "out"],
        ),
        (
            "restore local missing",
            vec!["restore", "--prefetch", "0", "-D", "/tmp", "000000010000000000000003", "out"],
        ),
    ] {
        let t = Instant::now();
        for _ in 0..10 {
            let out = std::process::Command::new(bin)
                .args(&args)
                .envs(s3.env())
                .current_dir(tmp.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        }
        eprintln!("{what}: {:.1} ms", t.elapsed().as_secs_f64() * 100.0);
    }
    let t = Instant::now();
    for _ in 0..10 {
        let _ = S3Store::open(&s3.url("speed"), &s3.options()).unwrap();
    }
    eprintln!("S3Store::open: {:.1} ms", t.elapsed().as_secs_f64() * 100.0);
    let t = Instant::now();
    for _ in 0..10 {
        let s = S3Store::open(&s3.url("speed"), &s3.options()).unwrap();
        s.stat("x").unwrap();
    }
    eprintln!("S3Store::open + HEAD: {:.1} ms", t.elapsed().as_secs_f64() * 100.0);
}
