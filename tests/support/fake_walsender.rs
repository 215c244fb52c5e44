//! A fake walsender, for the failures only a fake can produce on purpose: a server that goes silent after
//! START_REPLICATION, a TIMELINE_HISTORY reply naming another file, an impossible end of timeline, WAL out of
//! order. It speaks just enough of the protocol for `walkeeper receive` (trust authentication, no TLS: use
//! [`FakeWalsender::conninfo`], which says `sslmode=disable`), and each test scripts what happens after
//! START_REPLICATION. Everything real (streaming, reconnects, timelines) is tested against real servers.
//!
//! ```ignore
//! let server = FakeWalsender::start(|mut w| {
//!     if w.serve_until_streaming(&Identity::default()).is_some() {
//!         w.send_copy_done();
//!     }
//! });
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What the fake server says about itself.
#[derive(Clone, Debug)]
pub struct Identity {
    pub system_id: u64,
    pub timeline: u32,
    /// IDENTIFY_SYSTEM's xlogpos: where streaming starts in an empty directory (at its segment's start).
    pub xlogpos: u64,
    /// `SHOW wal_segment_size`.
    pub segment_size: &'static str,
    /// TIMELINE_HISTORY replies by timeline: (file name, content).
    pub history: HashMap<u32, (String, Vec<u8>)>,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            system_id: 7_000_000_000_000_000_001,
            timeline: 1,
            xlogpos: 0x300_0148,
            segment_size: "1MB",
            history: HashMap::new(),
        }
    }
}

/// A listener on a free loopback port; each connection runs the script on its own thread.
pub struct FakeWalsender {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl FakeWalsender {
    pub fn start(script: impl Fn(Walsender) + Send + Sync + 'static) -> FakeWalsender {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let (count, script) = (connections.clone(), Arc::new(script));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                std::thread::spawn(move || script(Walsender { stream }));
            }
        });
        FakeWalsender { port, connections }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host=127.0.0.1 port=N user=postgres sslmode=disable`.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres sslmode=disable", self.port)
    }

    /// How `walkeeper` names this server in messages: `127.0.0.1:N`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// One client connection, from the server's side.
pub struct Walsender {
    stream: TcpStream,
}

impl Walsender {
    /// Startup (SSLRequest refused, trust authentication, PostgreSQL 16.4), then IDENTIFY_SYSTEM, SHOW and
    /// TIMELINE_HISTORY answered from `id` until START_REPLICATION, which gets CopyBothResponse. Returns
    /// START_REPLICATION's text, or None when the client went away first.
    pub fn serve_until_streaming(&mut self, id: &Identity) -> Option<String> {
        self.startup()?;
        loop {
            let (tag, body) = self.read_message()?;
            if tag == b'X' {
                return None;
            }
            assert_eq!(tag, b'Q', "the fake walsender expects simple queries, got {:?}", char::from(tag));
            let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
            if sql.starts_with("START_REPLICATION") {
                self.send(b'W', &[0, 0, 0]); // CopyBothResponse: text format, no columns
                return Some(sql);
            }
            if sql == "IDENTIFY_SYSTEM" {
                let (sysid, tli) = (id.system_id.to_string(), id.timeline.to_string());
                let pos = format!("{:X}/{:X}", id.xlogpos >> 32, id.xlogpos as u32);
                self.send_result(&["systemid", "timeline", "xlogpos", "dbname"], &[&sysid, &tli, &pos, ""]);
            } else if sql == "SHOW wal_segment_size" {
                self.send_result(&["wal_segment_size"], &[id.segment_size]);
            } else if sql == "SHOW data_directory_mode" {
                self.send_result(&["data_directory_mode"], &["0700"]);
            } else if let Some(tli) = sql.strip_prefix("TIMELINE_HISTORY ") {
                let tli: u32 = tli.trim().parse().expect("TIMELINE_HISTORY's timeline");
                let (name, content) = id.history.get(&tli).expect("a history for the timeline asked for");
                self.send_result(&["filename", "content"], &[name, &String::from_utf8_lossy(content)]);
            } else {
                panic!("the fake walsender does not know {sql:?}");
            }
            self.send_ready();
        }
    }

    fn startup(&mut self) -> Option<()> {
        loop {
            let packet = self.read_packet()?;
            // SSLRequest (80877103): refuse, the client goes on in the clear (or gives up).
            if packet.len() == 4 && packet == 80_877_103u32.to_be_bytes() {
                self.stream.write_all(b"N").ok()?;
                continue;
            }
            break;
        }
        self.send(b'R', &0i32.to_be_bytes()); // AuthenticationOk
        self.send(b'S', b"server_version\x0016.4\x00");
        // As PostgreSQL 14+ reports them: a primary.
        self.send(b'S', b"in_hot_standby\x00off\x00");
        self.send(b'S', b"default_transaction_read_only\x00off\x00");
        self.send(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]);
        self.send_ready();
        Some(())
    }

    /// An untagged packet (startup, SSLRequest): its body after the length.
    fn read_packet(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let len = (u32::from_be_bytes(len) as usize).checked_sub(4)?.min(1 << 16);
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).ok()?;
        Some(body)
    }

    /// The next frontend message (type, body), None when the client closed the connection.
    pub fn read_message(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut tag = [0u8; 1];
        self.stream.read_exact(&mut tag).ok()?;
        Some((tag[0], self.read_packet()?))
    }

    /// Reads until the client sends a message of type `tag` (e.g. `b'c'`, CopyDone); false if it went away.
    pub fn wait_for(&mut self, tag: u8) -> bool {
        while let Some((t, _)) = self.read_message() {
            if t == tag {
                return true;
            }
        }
        false
    }

    /// Reads (and drops) everything until the client goes away.
    pub fn drain(&mut self) {
        while self.read_message().is_some() {}
    }

    /// One backend message; false once the client is gone.
    pub fn send(&mut self, tag: u8, body: &[u8]) -> bool {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        self.stream.write_all(&m).is_ok()
    }

    /// A one-row text result set with its CommandComplete (no ReadyForQuery).
    pub fn send_result(&mut self, columns: &[&str], row: &[&str]) {
        let mut desc = (columns.len() as u16).to_be_bytes().to_vec();
        for c in columns {
            desc.extend_from_slice(c.as_bytes());
            desc.push(0);
            desc.extend_from_slice(&[0; 18]); // table, attnum, type, typlen, typmod, format
        }
        self.send(b'T', &desc);
        let mut data = (row.len() as u16).to_be_bytes().to_vec();
        for v in row {
            data.extend_from_slice(&(v.len() as u32).to_be_bytes());
            data.extend_from_slice(v.as_bytes());
        }
        self.send(b'D', &data);
        self.send_command_complete("SELECT 1");
    }

    pub fn send_command_complete(&mut self, tag: &str) {
        self.send(b'C', format!("{tag}\0").as_bytes());
    }

    pub fn send_ready(&mut self) {
        self.send(b'Z', b"I");
    }

    /// XLogData: `wal` at `start`, the server's end of WAL right after it. False once the client is gone.
    pub fn send_xlogdata(&mut self, start: u64, wal: &[u8]) -> bool {
        let mut body = vec![b'w'];
        body.extend_from_slice(&start.to_be_bytes());
        body.extend_from_slice(&(start + wal.len() as u64).to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend_from_slice(wal);
        self.send(b'd', &body)
    }

    /// A primary keepalive: the server's end of WAL, and whether it wants a status update at once.
    pub fn send_keepalive(&mut self, wal_end: u64, reply_requested: bool) -> bool {
        let mut body = vec![b'k'];
        body.extend_from_slice(&wal_end.to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.push(u8::from(reply_requested));
        self.send(b'd', &body)
    }

    pub fn send_copy_done(&mut self) {
        self.send(b'c', &[]);
    }

    /// After CopyDone both ways: the next timeline and where it starts, as a walsender ends a timeline.
    pub fn send_end_of_timeline(&mut self, next_tli: u32, start: u64) {
        let pos = format!("{:X}/{:X}", start >> 32, start as u32);
        self.send_result(&["next_tli", "next_tli_startpos"], &[&next_tli.to_string(), &pos]);
        self.send_command_complete("START_STREAMING");
        self.send_ready();
    }
}

/// A standby status update ('r' in CopyData): (write, flush, apply, reply requested).
pub fn status_update(body: &[u8]) -> Option<(u64, u64, u64, bool)> {
    if body.len() != 34 || body[0] != b'r' {
        return None;
    }
    let u = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().unwrap());
    Some((u(1), u(9), u(17), body[33] != 0))
}
