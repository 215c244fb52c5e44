//! `walkeeper receive` against a fake walsender, for the failures a real server does not produce on demand:
//! a server that goes silent after START_REPLICATION (`--receive-timeout`: a status update asking for a reply
//! at half the timeout, the connection dropped at all of it, then a reconnect — or exit 1 with `-n`), a server
//! silent from the first byte (`connect_timeout`), a server ending the stream with CommandComplete, a
//! TIMELINE_HISTORY reply naming another file or holding an invalid history, an impossible end of timeline,
//! and WAL out of order. Each
//! failure is one line, never a hang, and nothing it concerns is acknowledged or named complete.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::fake_walsender::{status_update, FakeWalsender, Identity, Walsender};
use support::{names, wait_until, walkeeper, Run};

/// Far more than any of these runs needs: reaching it means walkeeper hung.
const HANG: Duration = Duration::from_secs(60);

/// `walkeeper receive -D dir -d CONNINFO ARGS...`.
fn receive(dir: &Path, conninfo: &str, args: &[&str]) -> Command {
    let mut cmd = walkeeper();
    cmd.arg("receive").arg("-D").arg(dir).args(["-d", conninfo]).args(args);
    cmd
}

/// `-n` run to its end: exit 1 with this one error line.
fn assert_fails_with(dir: &Path, conninfo: &str, args: &[&str], error: &str) {
    let mut all = vec!["-n"];
    all.extend_from_slice(args);
    let r = Run::within(&mut receive(dir, conninfo, &all), HANG);
    assert_eq!(r.code, Some(1), "{r}");
    assert_eq!(r.error_line(), format!("walkeeper: error: {error}"), "{r}");
}

/// A background receiver logging to `log`; stopped with SIGTERM by [`stop`].
fn spawn(mut cmd: Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::null()).stderr(out).spawn().unwrap()
}

fn stop(mut child: Child, log: &Path) -> String {
    // SAFETY: a signal to our own child, not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let exited = wait_until(HANG, || child.try_wait().unwrap().is_some());
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("walkeeper did not stop on SIGTERM:\n{text}");
    }
    assert_eq!(child.wait().unwrap().code(), Some(0), "{text}");
    text
}

/// Segment files with a final name (no `.partial`).
fn complete_segments(dir: &Path) -> Vec<String> {
    names(dir).into_iter().filter(|n| n.len() == 24).collect()
}

/// Streams nothing after START_REPLICATION and answers nothing; records each status update's reply flag.
fn silent_server() -> (FakeWalsender, Arc<Mutex<Vec<bool>>>) {
    let replies = Arc::new(Mutex::new(Vec::new()));
    let seen = replies.clone();
    let server = FakeWalsender::start(move |mut w: Walsender| {
        if w.serve_until_streaming(&Identity::default()).is_none() {
            return;
        }
        while let Some((tag, body)) = w.read_message() {
            if let Some((_, _, _, reply)) = (tag == b'd').then(|| status_update(&body)).flatten() {
                seen.lock().unwrap().push(reply);
            }
        }
    });
    (server, replies)
}

#[test]
fn a_server_silent_after_start_replication_is_asked_then_dropped() {
    let (server, replies) = silent_server();
    let dir = tempfile::tempdir().unwrap();
    assert_fails_with(
        dir.path(),
        &server.conninfo(),
        &["--receive-timeout", "2"],
        &format!(
            "{}: nothing received from the server for 2 seconds, not even a keepalive (--receive-timeout)",
            server.server()
        ),
    );
    // At half the timeout walkeeper asked for a reply, as the walreceiver does.
    assert!(replies.lock().unwrap().contains(&true), "no status update asked for a reply: {replies:?}");

    // Without -n: the next connection follows, and the next (the backoff starts at 1 s).
    let log = dir.path().join("log");
    let child = spawn(receive(dir.path(), &server.conninfo(), &["--receive-timeout", "2", "-v"]), &log);
    let reconnected = wait_until(HANG, || server.connections() >= 3);
    let text = stop(child, &log);
    assert!(reconnected, "walkeeper did not reconnect after the timeout:\n{text}");
    assert!(text.contains("(--receive-timeout)") && text.contains("disconnected; waiting"), "{text}");
}

#[test]
fn receive_timeout_zero_waits_for_the_server_forever() {
    let (server, replies) = silent_server();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let child =
        spawn(receive(dir.path(), &server.conninfo(), &["--receive-timeout", "0", "-n", "-s", "1"]), &log);
    // Status updates keep going out (one a second) and none asks for a reply; the connection stays.
    assert!(wait_until(HANG, || replies.lock().unwrap().len() >= 4), "{replies:?}");
    assert!(!replies.lock().unwrap().contains(&true), "{replies:?}");
    let text = stop(child, &log);
    assert_eq!(server.connections(), 1, "{text}");
}

/// `-v` progress lines: none claims a lag before the server said where its WAL ends, and they keep coming
/// while messages arrive without pause and every one of them is answered (status updates do not reset
/// the progress clock).
#[test]
fn progress_lines_never_guess_the_lag_and_keep_coming_under_load() {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let server = FakeWalsender::start(move |mut w| {
        if w.serve_until_streaming(&Identity::default()).is_none() {
            return;
        }
        // Silent until the test has seen walkeeper's first progress lines.
        if wait.lock().unwrap().recv().is_err() {
            return;
        }
        // Then WAL and keepalives asking for a reply, without end (2 ms apart to bound the disk used).
        let mut pos = 0x300_0000u64;
        while w.send_xlogdata(pos, &[0u8; 8192]) && w.send_keepalive(pos + 8192, true) {
            pos += 8192;
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let args = ["-v", "-s", "1", "--no-validate", "--receive-timeout", "0"];
    let child = spawn(receive(dir.path(), &server.conninfo(), &args), &log);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let progress = |t: &str| t.lines().filter(|l| l.starts_with("walkeeper: received ")).count();
    let before = wait_until(HANG, || progress(&text()) >= 2);
    let early = text();
    go.send(()).unwrap();
    let loaded = wait_until(HANG, || progress(&text()) >= progress(&early) + 3);
    let all = stop(child, &log);
    assert!(before, "{all}");
    for line in early.lines().filter(|l| l.starts_with("walkeeper: received ")) {
        assert!(line.ends_with("(server position not reported yet, timeline 1)"), "{line}\n{all}");
    }
    assert!(loaded, "progress lines stopped under load:\n{all}");
    assert!(
        all.lines().any(|l| l.starts_with("walkeeper: received ") && l.contains(" bytes, timeline 1)")),
        "{all}"
    );
}

/// The keepalive timer of walkeeper's connection to `port`, in seconds, as `ss` shows it (None: no
/// keepalive timer right now, e.g. while a status update waits for its ACK).
fn keepalive_timer(port: u16) -> Option<u64> {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output();
    let text = String::from_utf8_lossy(&out.ok()?.stdout).into_owned();
    // timer:(keepalive,1min16sec,0)
    let t = text.split("timer:(keepalive,").nth(1)?.split(',').next()?.to_string();
    let (min, rest) = t.split_once("min").unwrap_or(("0", &t));
    let sec = rest.split("sec").next().filter(|s| !s.is_empty()).unwrap_or("0");
    let sec = sec.split('.').next()?;
    Some(min.parse::<u64>().ok()? * 60 + sec.parse::<u64>().ok()?)
}

/// The connection of the real binary carries libpq's keepalive settings (read back from the kernel with
/// `ss`): by default SO_KEEPALIVE with the system's idle time, with keepalives_idle that idle time.
#[test]
fn keepalive_settings_reach_the_connection() {
    if Command::new("ss").arg("-V").output().is_err() {
        support::cannot_run("`ss` (iproute2) is not installed");
        return;
    }
    let (server, replies) = silent_server();
    let dir = tempfile::tempdir().unwrap();
    let system: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(7200);
    for (extra, bound) in [("", system), ("keepalives_idle=77 keepalives_interval=5 keepalives_count=3", 77)]
    {
        let log = dir.path().join("log");
        let conninfo = format!("{} {extra}", server.conninfo());
        let child = spawn(receive(dir.path(), &conninfo, &["--receive-timeout", "0"]), &log);
        // Streaming (the first status update came): the connection is set up, and so is SIGTERM's handling.
        let updates = replies.lock().unwrap().len();
        assert!(wait_until(HANG, || replies.lock().unwrap().len() > updates), "never streamed");
        let mut seen = None;
        let ok = wait_until(HANG, || {
            seen = keepalive_timer(server.port());
            seen.is_some()
        });
        let text = stop(child, &log);
        assert!(ok, "no keepalive timer on the connection ({extra}):\n{text}");
        let left = seen.unwrap();
        assert!(
            left <= bound && left + 60 >= bound,
            "{extra}: keepalive timer at {left} s, idle time {bound} s"
        );
    }
}

/// A server that accepts the connection and never says a word: connect_timeout (libpq's) ends the attempt.
#[test]
fn a_server_silent_from_the_start_hits_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || std::io::copy(&mut stream, &mut std::io::sink()));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    for sslmode in ["prefer", "disable"] {
        let conninfo =
            format!("host=127.0.0.1 port={port} user=postgres connect_timeout=2 sslmode={sslmode}");
        assert_fails_with(
            dir.path(),
            &conninfo,
            &[],
            &format!("connection to server at \"127.0.0.1\", port {port} failed: timeout expired"),
        );
    }
}

/// A walsender that is shut down (or switched over) ends the command with CommandComplete and no CopyDone.
#[test]
fn a_server_ending_the_stream_is_information_not_an_error() {
    // The first session ends that way; the next ones stay open (so that SIGTERM finds a live server).
    let sessions = std::sync::atomic::AtomicUsize::new(0);
    let server = FakeWalsender::start(move |mut w| {
        if w.serve_until_streaming(&Identity::default()).is_some() {
            if sessions.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                w.send_command_complete("COPY 0");
            } else {
                w.drain();
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let child = spawn(receive(dir.path(), &server.conninfo(), &["-v"]), &log);
    let reconnected = wait_until(HANG, || server.connections() >= 2);
    let text = stop(child, &log);
    assert!(reconnected, "{text}");
    let ended = format!("walkeeper: {}: server ended streaming; reconnecting", server.server());
    assert!(text.lines().any(|l| l == ended), "{text}");
    assert!(!text.contains("error:"), "{text}");
    // -n exits 1 on a lost connection, as pg_receivewal does.
    let server = FakeWalsender::start(|mut w| {
        if w.serve_until_streaming(&Identity::default()).is_some() {
            w.send_command_complete("COPY 0");
        }
    });
    assert_fails_with(
        dir.path(),
        &server.conninfo(),
        &[],
        &format!("{}: server ended streaming (shutdown or switchover)", server.server()),
    );
}

/// A TIMELINE_HISTORY reply is checked before anything is stored: its file name, and content that can be
/// that timeline's history (issue 11, finding 7: garbage, a timeline that cannot be an ancestor, no parent at
/// all were stored, and streaming went on).
#[test]
fn a_bad_history_file_is_refused_and_not_stored() {
    const GOOD: &str = "1\t0/3000000\tno recovery target specified\n";
    let invalid = "TIMELINE_HISTORY 2 returned an invalid history file 00000002.history";
    for (name, content, error) in [
        (
            "00000003.history",
            GOOD,
            "TIMELINE_HISTORY 2 returned a file named \"00000003.history\"".to_string(),
        ),
        (
            "00000002.history",
            "this is not a history file\n",
            format!("{invalid}: line 1: timeline is not a decimal number"),
        ),
        (
            "00000002.history",
            "1\t0/3000000\tx\n3\t0/4000000\tbogus\n",
            format!(
                "{invalid}: timeline 3 (switch point 0/04000000) cannot be an ancestor of timeline 2: \
                 expected a timeline from 1 to 1"
            ),
        ),
        (
            "00000002.history",
            "# nothing\n",
            format!("{invalid}: the history of timeline 2 lists no parent timeline"),
        ),
    ] {
        let mut id = Identity { timeline: 2, ..Identity::default() };
        id.history.insert(2, (name.into(), content.as_bytes().to_vec()));
        let server = FakeWalsender::start(move |mut w| {
            w.serve_until_streaming(&id);
        });
        let dir = tempfile::tempdir().unwrap();
        assert_fails_with(dir.path(), &server.conninfo(), &[], &format!("{}: {error}", server.server()));
        assert!(names(dir.path()).is_empty(), "nothing stored: {:?}", names(dir.path()));
    }
}

/// End of timeline 1 (CopyDone both ways), then the result row `reply` (next timeline, its start).
fn end_timeline_with(next_tli: u32, next_start: u64) -> FakeWalsender {
    FakeWalsender::start(move |mut w| {
        if w.serve_until_streaming(&Identity::default()).is_some() {
            w.send_copy_done();
            if w.wait_for(b'c') {
                w.send_end_of_timeline(next_tli, next_start);
                w.drain();
            }
        }
    })
}

#[test]
fn an_impossible_end_of_timeline_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Streaming started at 0/03000000 (the start of IDENTIFY_SYSTEM's segment) and stopped there.
    let server = end_timeline_with(1, 0x300_0000);
    assert_fails_with(
        dir.path(),
        &server.conninfo(),
        &[],
        &format!("{}: server reported unexpected next timeline 1, following timeline 1", server.server()),
    );
    let server = end_timeline_with(2, 0x300_0100);
    assert_fails_with(
        dir.path(),
        &server.conninfo(),
        &[],
        &format!(
            "{}: server stopped streaming timeline 1 at 0/03000000, but reported next timeline 2 to begin at 0/03000100",
            server.server()
        ),
    );
}

#[test]
fn wal_out_of_order_is_refused_and_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // The first message skips the start of the segment.
    let server = FakeWalsender::start(|mut w| {
        if w.serve_until_streaming(&Identity::default()).is_some() {
            w.send_xlogdata(0x300_0100, &[0u8; 64]);
            w.drain();
        }
    });
    assert_fails_with(
        dir.path(),
        &server.conninfo(),
        &[],
        &format!("{}: received WAL at 0/03000100, expected 0/03000000 (timeline 1)", server.server()),
    );

    // A gap after good bytes (not validated: the fake's WAL is no real WAL): what came before the gap may be
    // written, the gap never; flush positions never pass the gap.
    let flushes = Arc::new(Mutex::new(Vec::new()));
    let seen = flushes.clone();
    let server = FakeWalsender::start(move |mut w| {
        if w.serve_until_streaming(&Identity::default()).is_some() {
            w.send_xlogdata(0x300_0000, &[7u8; 256]);
            w.send_xlogdata(0x300_0200, &[7u8; 256]);
            while let Some((tag, body)) = w.read_message() {
                if let Some((_, flush, _, _)) = (tag == b'd').then(|| status_update(&body)).flatten() {
                    seen.lock().unwrap().push(flush);
                }
            }
        }
    });
    assert_fails_with(
        dir.path(),
        &server.conninfo(),
        &["--no-validate", "--synchronous"],
        &format!("{}: received WAL at 0/03000200, expected 0/03000100 (timeline 1)", server.server()),
    );
    assert!(flushes.lock().unwrap().iter().all(|&f| f <= 0x300_0100), "{:?}", flushes.lock().unwrap());
    assert!(complete_segments(dir.path()).is_empty(), "{:?}", names(dir.path()));
}
