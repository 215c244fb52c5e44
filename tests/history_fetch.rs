//! TIMELINE_HISTORY content is checked before it is stored (issue 11, finding 7): a server on timeline 2 (a
//! promoted standby) whose history file reaches walkeeper as garbage, or naming a timeline that cannot be an
//! ancestor, through a proxy that rewrites it. `receive` must refuse it with one line naming the server, the
//! timeline and the fault, and store nothing.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::proxy::{self, Frame, Then};
use support::{wait_until, Cluster};

/// Replace the content column of a TIMELINE_HISTORY result row (file name, content) with `content`.
fn rewrite_history(frame: &mut Frame, content: &[u8]) {
    let body = &frame.body;
    if frame.tag != b'D' || body.len() < 6 || body[..2] != 2u16.to_be_bytes() {
        return;
    }
    let name_len = i32::from_be_bytes(body[2..6].try_into().unwrap());
    let Ok(name_len) = usize::try_from(name_len) else { return };
    let Some(name) = body.get(6..6 + name_len) else { return };
    if !name.ends_with(b".history") {
        return;
    }
    let mut new = body[..6 + name_len].to_vec();
    new.extend_from_slice(&i32::try_from(content.len()).unwrap().to_be_bytes());
    new.extend_from_slice(content);
    frame.body = new;
}

#[test]
fn invalid_timeline_history_is_refused_and_not_stored() {
    let mut primary = Cluster::builder().segment_size_mb(1).start();
    let standby = primary.standby();
    standby.promote();
    assert_eq!(standby.psql("SELECT timeline_id FROM pg_control_checkpoint()"), "2");
    for (content, fault) in [
        (&b"this is not a history file\n"[..], "line 1: timeline is not a decimal number"),
        (
            &b"1\t0/3000000\tno recovery target specified\n3\t0/4000000\tbogus\n"[..],
            "line 2: timeline 3 cannot be an ancestor of timeline 2",
        ),
        (&b"# nothing\n"[..], "no parent timeline: the history of timeline 2 is empty"),
    ] {
        let port = proxy::start(standby.port(), move || {
            move |frame: &mut Frame| {
                rewrite_history(frame, content);
                Then::Continue
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let conninfo = format!("host=127.0.0.1 port={port} user=postgres sslmode=disable");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_walkeeper"));
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("PG") || k == "RUST_LOG") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["receive", "-n", "-d", &conninfo, "-D"]).arg(dir.path());
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut status = None;
        wait_until(Duration::from_secs(30), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let stored = support::names(dir.path());
        assert!(status.is_some(), "receive took the history ({stored:?}) and streamed on:\n{stderr}");
        assert_eq!(status.unwrap().code(), Some(1), "{stderr}");
        let expected = format!(
            "walkeeper: error: 127.0.0.1:{port}: TIMELINE_HISTORY 2 returned an invalid history file 00000002.history: {fault}"
        );
        assert_eq!(stderr.lines().collect::<Vec<_>>(), [expected.as_str()], "{stderr}");
        assert!(stored.is_empty(), "nothing stored: {stored:?}");
    }
}
