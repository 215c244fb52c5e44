//! A corrupted replication stream (DESIGN.md invariants 2 and 5): a TCP proxy between the server and
//! `walkeeper receive` parses the protocol's frames and, while armed, flips one byte inside a WAL record of an
//! XLogData message. walkeeper must never acknowledge the corrupted WAL (the flush position and the slot stay
//! before it), never give the bad segment its final name, log the LSN and the failed check; once the proxy is
//! disarmed it must reconnect, stream again from the last good position and end with an archive identical to
//! the server's segments. When the corruption persists it must give up with a non-zero exit and a clear message.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use support::{format_lsn, parse_lsn, wait_until, Cluster};

const SEG: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);
/// Written into a logical message record: the proxy flips a byte inside it, so the byte is record data that
/// only the CRC protects.
const MARKER: &[u8] = b"WALKEEPER-CORRUPT-ME-";

/// What the proxy does to the server's stream.
struct ProxyState {
    /// Flips still to do: 0 disarmed, negative without limit.
    budget: AtomicI64,
    /// LSN of every byte flipped, in order.
    flipped: Mutex<Vec<u64>>,
    /// XLogData messages forwarded (to see the stream flowing).
    xlogdata: AtomicU64,
}

struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
}

impl Proxy {
    /// Listen on a free loopback port; each connection is relayed to `upstream`.
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            budget: AtomicI64::new(0),
            flipped: Mutex::new(Vec::new()),
            xlogdata: AtomicU64::new(0),
        });
        let st = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let st = st.clone();
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || relay_plain(c2, s2));
                thread::spawn(move || relay_frames(server, client, &st));
            }
        });
        Proxy { port, state }
    }

    fn arm(&self, flips: i64) {
        self.state.budget.store(flips, Ordering::SeqCst);
    }

    fn flipped(&self) -> Vec<u64> {
        self.state.flipped.lock().unwrap().clone()
    }
}

/// Client to server: bytes as they come.
fn relay_plain(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// Server to client, frame by frame (type byte, length, payload; the client uses sslmode=disable so every
/// server message is framed). In a CopyData ('d') whose payload is XLogData ('w': start LSN, end LSN, send
/// time, then WAL), the first MARKER found in the WAL data gets one byte flipped while the proxy is armed.
fn relay_frames(mut from: TcpStream, mut to: TcpStream, st: &ProxyState) {
    loop {
        let mut header = [0u8; 5];
        if from.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len.saturating_sub(4)];
        if from.read_exact(&mut payload).is_err() {
            break;
        }
        if header[0] == b'd' && payload.first() == Some(&b'w') && payload.len() > 25 {
            st.xlogdata.fetch_add(1, Ordering::SeqCst);
            let start = u64::from_be_bytes(payload[1..9].try_into().unwrap());
            let wal = &mut payload[25..];
            if st.budget.load(Ordering::SeqCst) != 0 {
                if let Some(i) = wal.windows(MARKER.len()).position(|w| w == MARKER) {
                    let at = i + 7; // inside the marker: record data, deep past the record header
                    wal[at] ^= 0x20;
                    st.flipped.lock().unwrap().push(start + at as u64);
                    if st.budget.load(Ordering::SeqCst) > 0 {
                        st.budget.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
        }
        if to.write_all(&header).and_then(|()| to.write_all(&payload)).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn wal_name(tli: u32, lsn: u64) -> String {
    let segno = lsn / SEG;
    let per_id = 0x1_0000_0000 / SEG;
    format!("{tli:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// `walkeeper receive` through the proxy with a slot, status every second; stderr to `log`.
fn receive(proxy: &Proxy, dir: &Path, log: &Path, slot: &str) -> Child {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable application_name=wk_{slot}",
        proxy.port
    );
    support::walkeeper()
        .args(["receive", "-D", dir.to_str().unwrap(), "-d", &conninfo, "-S", slot, "-s", "1", "-v"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    // SAFETY: a signal to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if !wait_until(TIMEOUT, || child.try_wait().unwrap().is_some()) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn slot_restart(c: &Cluster, slot: &str) -> u64 {
    let text = c.psql(&format!("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"));
    if text.is_empty() {
        0
    } else {
        parse_lsn(&text)
    }
}

/// pg_stat_replication's flush_lsn for our connection, if connected and reported.
fn flush_lsn(c: &Cluster, slot: &str) -> Option<u64> {
    let text = c.psql(&format!(
        "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'wk_{slot}' AND flush_lsn IS NOT NULL"
    ));
    text.lines().next().map(parse_lsn)
}

/// The record LSN named in walkeeper's "invalid WAL" log line, and that line.
fn logged_invalid_wal(log: &Path) -> Option<(u64, String)> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let line = text.lines().find(|l| l.contains("invalid WAL"))?;
    let lsn = line.split("record ").nth(1)?.split(':').next()?;
    Some((parse_lsn(lsn), line.to_string()))
}

/// Every complete segment in `dir` is byte-identical to the server's; returns their names.
fn complete_segments_match(c: &Cluster, dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    for n in &names {
        assert!(
            fs::read(dir.join(n)).unwrap() == c.read_wal_segment(n),
            "complete segment {n} differs from the server's"
        );
    }
    names
}

fn setup(slot: &str) -> (Cluster, Proxy, tempfile::TempDir) {
    let c = Cluster::builder().segment_size_mb(1).conf("wal_keep_size = '64MB'").start();
    c.psql(&format!("SELECT pg_create_physical_replication_slot('{slot}', true)"));
    let proxy = Proxy::start(c.port());
    let dir = tempfile::Builder::new().prefix("walkeeper-corrupt-").tempdir().unwrap();
    (c, proxy, dir)
}

/// One logical message record full of markers, then a segment switch: the server has the whole segment.
fn write_marked_record(c: &Cluster) -> u64 {
    let body = String::from_utf8(MARKER.repeat(150)).unwrap();
    let end =
        parse_lsn(&c.psql(&format!("SELECT pg_logical_emit_message(true, 'walkeeper-test', '{body}')")));
    c.psql("SELECT pg_switch_wal()");
    end
}

#[test]
fn corrupted_stream_is_never_acknowledged_and_recovers() {
    let slot = "recover";
    let (c, proxy, dir) = setup(slot);
    let log =
        dir.path().join("..").join(format!("{}.log", dir.path().file_name().unwrap().to_string_lossy()));
    let child = receive(&proxy, dir.path(), &log, slot);
    // Streaming and acknowledging normally first.
    c.generate_wal(1);
    let before = c.current_lsn();
    assert!(
        wait_until(TIMEOUT, || flush_lsn(&c, slot).is_some_and(|f| f >= before)),
        "walkeeper never acknowledged {}: {}",
        format_lsn(before),
        fs::read_to_string(&log).unwrap_or_default()
    );

    // Corrupt the next two passes of the marked record.
    proxy.arm(2);
    // A sampler records every flush position and slot position the server sees while the proxy is armed.
    let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let done = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (seen, done) = (seen.clone(), done.clone());
        let port = c.port();
        let sock = c.socket_dir();
        thread::spawn(move || {
            let conninfo = format!("host={} port={port} user=postgres dbname=postgres", sock.display());
            while done.load(Ordering::SeqCst) == 0 {
                let sql = format!(
                    "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'wk_{slot}' AND flush_lsn IS NOT NULL \
                     UNION ALL SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
                );
                if let Ok(out) = support::try_psql_at(&conninfo, None, &sql) {
                    seen.lock().unwrap().extend(out.lines().map(parse_lsn));
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let marked_end = write_marked_record(&c);
    let bad_segment = wal_name(1, marked_end - 1);
    assert!(
        wait_until(TIMEOUT, || proxy.flipped().len() >= 2 && logged_invalid_wal(&log).is_some()),
        "the proxy flipped {:?}; log: {}",
        proxy.flipped(),
        fs::read_to_string(&log).unwrap_or_default()
    );
    let flipped = proxy.flipped();
    assert_eq!(flipped[0], flipped[1], "the same byte both times");
    let (record, line) = logged_invalid_wal(&log).unwrap();
    // The log names the record holding the flipped byte, the file and the failed check.
    assert!(
        record <= flipped[0] && flipped[0] < marked_end,
        "record {} flip {}",
        format_lsn(record),
        format_lsn(flipped[0])
    );
    assert!(
        line.contains(&format_lsn(record)) && line.contains("CRC") && line.contains(&bad_segment),
        "{line}"
    );
    // The second failure: walkeeper reconnected and streamed the segment again from its start.
    assert!(
        wait_until(TIMEOUT, || fs::read_to_string(&log).unwrap_or_default().matches("invalid WAL").count()
            >= 2),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    // Both passes over: the next attempt is clean. Nothing the server saw while the corrupted record was on
    // the wire (walkeeper's flush position, the slot) went past the record.
    done.store(1, Ordering::SeqCst);
    sampler.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|&l| l <= record),
        "acknowledged past the bad record {}: {:?}",
        format_lsn(record),
        seen.iter().map(|&l| format_lsn(l)).collect::<Vec<_>>()
    );
    // Not acknowledged, not complete, nothing complete differs from the server.
    let slot_pos = slot_restart(&c, slot);
    assert!(
        slot_pos <= record,
        "slot at {} past the bad record {}",
        format_lsn(slot_pos),
        format_lsn(record)
    );
    assert!(!dir.path().join(&bad_segment).exists(), "the corrupted segment got its final name");
    assert!(dir.path().join(format!("{bad_segment}.partial")).exists());
    complete_segments_match(&c, dir.path());

    // The proxy is out of flips: walkeeper recovers.
    c.generate_wal(1);
    let target = c.current_lsn();
    assert!(
        wait_until(TIMEOUT, || flush_lsn(&c, slot).is_some_and(|f| f >= target)),
        "walkeeper did not recover to {}: {}",
        format_lsn(target),
        fs::read_to_string(&log).unwrap_or_default()
    );
    stop(child);
    assert_eq!(proxy.flipped().len(), 2);
    let complete = complete_segments_match(&c, dir.path());
    assert!(complete.contains(&bad_segment), "{complete:?}");
    // The open segment holds the server's bytes up to what was acknowledged.
    let (open, upto) = (wal_name(1, target), (target % SEG) as usize);
    if upto > 0 {
        let partial = fs::read(dir.path().join(format!("{open}.partial"))).unwrap();
        assert!(
            partial[..upto] == c.read_wal_segment(&open)[..upto],
            "{open}.partial differs from the server's"
        );
    }
    // The archive verifies.
    let out = support::walkeeper().args(["verify", "-D", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let _ = fs::remove_file(&log);
}

#[test]
fn persistent_corruption_stops_with_a_clear_error() {
    let slot = "persistent";
    let (c, proxy, dir) = setup(slot);
    let log =
        dir.path().join("..").join(format!("{}.log", dir.path().file_name().unwrap().to_string_lossy()));
    proxy.arm(-1);
    let mut child = receive(&proxy, dir.path(), &log, slot);
    let marked_end = write_marked_record(&c);
    let bad_segment = wal_name(1, marked_end - 1);
    assert!(
        wait_until(TIMEOUT, || child.try_wait().unwrap().is_some()),
        "walkeeper kept going: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let status = child.wait().unwrap();
    let text = fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    let (record, _) = logged_invalid_wal(&log).expect("invalid WAL logged");
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.contains(&format!("invalid WAL at {} 3 times in a row", format_lsn(record)))
            && last.contains("CRC"),
        "last line: {last}\n{text}"
    );
    assert_eq!(proxy.flipped().len(), 3, "three attempts");
    assert!(slot_restart(&c, slot) <= record);
    assert!(!dir.path().join(&bad_segment).exists());
    complete_segments_match(&c, dir.path());
    let _ = fs::remove_file(&log);
}
