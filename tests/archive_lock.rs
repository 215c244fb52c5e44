//! One writer per archive (DESIGN.md invariant 6, issue 11 finding 6): while `walkeeper receive` runs on a
//! directory, a second `receive` (also under the name pg_receivewal) and `cleanup` are refused at once, before
//! contacting any server, with exit 1 and one line naming the holder's PID and command; readers (`status`,
//! `verify`, `restore`, `cleanup --dry-run`) work as usual; and a holder killed with SIGKILL leaves nothing
//! behind that stops the next `receive`.

mod durability;
mod support;

use durability::{switch_and_wait, wait_streaming, Comp, Walkeeper};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;
use support::{run_walkeeper, walkeeper, Cluster, Run};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A loopback port nobody listens on: a writer that tried to connect there would fail with "connection
/// refused", not with the lock's message.
fn dead_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port().to_string()
}

/// The one-line refusal naming the holder `pid`, prefixed `prog`.
fn assert_refused(run: &Run, prog: &str, dir: &Path, pid: i32) {
    assert_eq!(run.code, Some(1), "{run}");
    let expected = format!(
        "{prog}: error: archive \"{}\" is in use by another walkeeper (pid {pid}: walkeeper receive -D {} ",
        dir.display(),
        dir.display()
    );
    assert!(run.error_line().starts_with(&expected), "expected {expected:?}...\n{run}");
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

    let port = dead_port();
    let second = run_walkeeper(&["receive", "-D", d, "-h", "127.0.0.1", "-p", &port, "-n"]);
    assert_refused(&second, "walkeeper", &dir, wk.pid());
    let as_pg =
        Run::of(walkeeper().arg0("pg_receivewal").args(["-D", d, "-h", "127.0.0.1", "-p", &port, "-n"]));
    assert_refused(&as_pg, "pg_receivewal", &dir, wk.pid());
    let cleanup = run_walkeeper(&["cleanup", "-D", d, &done]);
    assert_refused(&cleanup, "walkeeper", &dir, wk.pid());

    // Readers do not lock.
    let dest = tmp.path().join("restored");
    for args in [
        vec!["status", "-D", d],
        vec!["verify", "-D", d],
        vec!["restore", "-D", d, &done, dest.to_str().unwrap()],
        vec!["cleanup", "-D", d, "-n", &done],
    ] {
        let r = run_walkeeper(&args);
        assert_eq!(r.code, Some(0), "{args:?} while receive runs:\n{r}");
    }
    assert_eq!(std::fs::read(&dest).unwrap(), cluster.read_wal_segment(&done));

    // Once the holder is gone, cleanup runs.
    let mut wk = wk;
    assert!(wk.is_running());
    assert!(wk.terminate().success());
    let cleanup = run_walkeeper(&["cleanup", "-D", d, &done]);
    assert_eq!(cleanup.code, Some(0), "{cleanup}");
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
