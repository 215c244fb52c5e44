//! One writer per archive (DESIGN.md invariant 6, issue 11 finding 6): while `walkeeper receive` runs on a
//! directory, a second `receive` (also under the name pg_receivewal) and `cleanup` are refused at once, before
//! contacting any server, with exit 1 and one line naming the holder's PID and command; readers (`status`,
//! `verify`, `restore`, `cleanup --dry-run`) work as usual; and a holder killed with SIGKILL leaves nothing
//! behind that stops the next `receive`.

mod durability;
mod support;

use durability::{switch_and_wait, wait_streaming, Comp, Walkeeper, WALKEEPER};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::Cluster;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stderr: String,
}

/// Runs `program ARGS` (walkeeper, or a link to it) with a clean libpq environment.
fn run(program: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG") || k == "RUST_LOG") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().expect("run walkeeper");
    Run { code: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// A loopback port nobody listens on: a writer that tried to connect there would fail with "connection
/// refused", not with the lock's message.
fn dead_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port().to_string()
}

/// The one-line refusal naming the holder `pid`, prefixed `prog`.
fn assert_refused(run: &Run, prog: &str, dir: &Path, pid: i32) {
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{}", run.stderr);
    let expected = format!(
        "{prog}: error: archive \"{}\" is in use by another walkeeper (pid {pid}: walkeeper receive -D {} ",
        dir.display(),
        dir.display()
    );
    assert!(lines[0].starts_with(&expected), "expected {expected:?}...\ngot {:?}", lines[0]);
}

#[test]
fn a_second_writer_is_refused_and_readers_are_not() {
    let cluster = Cluster::builder().segment_size_mb(1).start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = durability::archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");
    let d = dir.to_str().unwrap();
    let wk = Walkeeper::start(&cluster, &dir, &["-s", "1"], &log);
    wait_streaming(&cluster, &wk, TIMEOUT);
    let done = switch_and_wait(&cluster, &dir, Comp::None, &wk);
    let walkeeper = Path::new(WALKEEPER);

    let port = dead_port();
    let second = run(walkeeper, &["receive", "-D", d, "-h", "127.0.0.1", "-p", &port, "-n"]);
    assert_refused(&second, "walkeeper", &dir, wk.pid());
    let link = tmp.path().join("pg_receivewal");
    std::os::unix::fs::symlink(walkeeper, &link).unwrap();
    let as_pg = run(&link, &["-D", d, "-h", "127.0.0.1", "-p", &port, "-n"]);
    assert_refused(&as_pg, "pg_receivewal", &dir, wk.pid());
    let cleanup = run(walkeeper, &["cleanup", "-D", d, &done]);
    assert_refused(&cleanup, "walkeeper", &dir, wk.pid());

    // Readers do not lock.
    let dest = tmp.path().join("restored");
    for args in [
        vec!["status", "-D", d],
        vec!["verify", "-D", d],
        vec!["restore", "-D", d, &done, dest.to_str().unwrap()],
        vec!["cleanup", "-D", d, "-n", &done],
    ] {
        let r = run(walkeeper, &args);
        assert_eq!(r.code, Some(0), "{args:?} while receive runs:\n{}", r.stderr);
    }
    assert_eq!(std::fs::read(&dest).unwrap(), cluster.read_wal_segment(&done));

    // Once the holder is gone, cleanup runs.
    let mut wk = wk;
    assert!(wk.is_running());
    assert!(wk.terminate().success());
    let cleanup = run(walkeeper, &["cleanup", "-D", d, &done]);
    assert_eq!(cleanup.code, Some(0), "{}", cleanup.stderr);
}

#[test]
fn a_killed_holder_leaves_no_lock_behind() {
    let cluster = Cluster::builder().segment_size_mb(1).start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = durability::archive_dir(tmp.path());
    let log = tmp.path().join("walkeeper.log");
    let wk = Walkeeper::start(&cluster, &dir, &["-s", "1"], &log);
    wait_streaming(&cluster, &wk, TIMEOUT);
    assert!(dir.join(".walkeeper.lock").exists());
    let _ = wk.kill9();
    let wk = Walkeeper::start(&cluster, &dir, &["-s", "1"], &log);
    wait_streaming(&cluster, &wk, TIMEOUT);
    switch_and_wait(&cluster, &dir, Comp::None, &wk);
    assert!(!wk.log_text().contains("in use by another walkeeper"), "{}", wk.log_tail(20));
}
