//! What the walsender sends from archives made for the purpose (WAL built by `wal::encoder`, served at
//! rest), read with walkeeper's own replication client: the bytes of every file form (plain, gzip, lz4,
//! zstd, `.partial`), XLogData of at most 128 kB cut at page boundaries, a damaged record never sent past
//! (the stream ends with an error naming it), a missing segment refused in PostgreSQL's words, a reply
//! request answered at once, and shutdown ending streaming sessions. No PostgreSQL server is needed: the
//! real standbys are in tests/dr_standby.rs.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use walkeeper::archive::compress::Compressor;
use walkeeper::archive::store::{LocalStore, Store};
use walkeeper::conn::{connect, ConnParams, ConnectOptions, Connection, Endpoint, PasswordPrompt};
use walkeeper::protocol::messages::Backend;
use walkeeper::protocol::replication::{self as repl, StreamMessage};
use walkeeper::protocol::scram_server::Verifier;
use walkeeper::protocol::ServerError;
use walkeeper::serve::{Downstreams, ServeConfig, WalSource, Walsender};
use walkeeper::wal::encoder::WalEncoder;
use walkeeper::wal::segment::{Compression, SegmentId};
use walkeeper::wal::Lsn;

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_100_000_000_000_000_042;
const DEADLINE: Duration = Duration::from_secs(30);

/// WAL of segments 1, 2 and part of 3 (PostgreSQL 16's format): records of many sizes, some spanning
/// pages and segments.
fn wal() -> WalEncoder {
    let mut e = WalEncoder::new(0xD113, SEG, SYSID, 1, u64::from(SEG));
    let mut i = 0u32;
    while e.pos() < 3 * u64::from(SEG) + 400_000 {
        e.main_data_record(
            10,
            0,
            i,
            &vec![(i % 200) as u8 + 1; [60usize, 700, 9000, 40_000][i as usize % 4]],
        );
        i += 1;
    }
    e
}

/// The bytes of segment `n` as its file holds them (zero padded).
fn segment(e: &WalEncoder, n: u64) -> Vec<u8> {
    let off = e.offset(n * u64::from(SEG));
    let mut s = e.bytes()[off..(off + SEG as usize).min(e.bytes().len())].to_vec();
    s.resize(SEG as usize, 0);
    s
}

fn name(n: u64) -> String {
    SegmentId { timeline: 1, number: n }.file_name(SEG)
}

/// Write segments 1 and 2 complete and 3 as a `.partial`, in `compression`.
fn write_archive(dir: &Path, e: &WalEncoder, compression: Compression) {
    for n in 1..=3u64 {
        let mut bytes = segment(e, n);
        if n == 3 {
            // A compressed .partial holds what was received; a plain one is preallocated (zeros after).
            if compression != Compression::None {
                bytes.truncate(e.offset(e.pos()) - e.offset(3 * u64::from(SEG)));
            }
        }
        let data = match Compressor::new(compression, None).unwrap() {
            None => bytes,
            Some(mut c) => {
                c.write(&bytes).unwrap();
                if n == 3 {
                    c.sync_flush().unwrap();
                    std::mem::take(c.output())
                } else {
                    c.finish().unwrap()
                }
            }
        };
        let partial = if n == 3 { ".partial" } else { "" };
        std::fs::write(dir.join(format!("{}{}{partial}", name(n), compression.suffix())), data).unwrap();
    }
}

struct Server {
    port: u16,
    downstreams: Downstreams,
    stop: tokio::sync::watch::Sender<bool>,
}

async fn serve(dir: &Path) -> Server {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir));
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".into(),
        users: [("standby".to_string(), Verifier::from_password("pw").unwrap())].into_iter().collect(),
        tls: None,
    };
    let downstreams = Downstreams::new();
    let ws = Walsender::bind(cfg, Arc::new(WalSource::new(store, None)), downstreams.clone()).await.unwrap();
    let port = ws.local_addr().unwrap().port();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(ws.run(stop_rx));
    Server { port, downstreams, stop }
}

async fn try_client(port: u16) -> Result<Connection, walkeeper::conn::ConnectError> {
    let params = ConnParams {
        endpoints: vec![Endpoint::Tcp { host: "127.0.0.1".into(), hostaddr: None, port }],
        user: "standby".into(),
        password: Some("pw".into()),
        passfile: Some("/nonexistent/walkeeper-tests/pgpass".into()),
        application_name: Some("archive_test".into()),
        ..ConnParams::default()
    };
    let opts = ConnectOptions { prompt: PasswordPrompt::Never, ..ConnectOptions::default() };
    tokio::time::timeout(DEADLINE, connect(&params, &opts)).await.expect("connecting hung")
}

async fn client(port: u16) -> Connection {
    try_client(port).await.unwrap_or_else(|e| panic!("{e}"))
}

/// What a stream delivered: the WAL from its start, each XLogData's (start, length), and the error that
/// ended it, if one did.
#[derive(Default)]
struct Received {
    wal: Vec<u8>,
    messages: Vec<(Lsn, usize)>,
    error: Option<ServerError>,
}

/// START_REPLICATION at `start`, then read until `until` is reached or the stream ends with an error.
async fn stream(conn: &mut Connection, start: Lsn, until: Lsn) -> Received {
    conn.start_copy_both(&format!(
        "START_REPLICATION {} TIMELINE 1",
        walkeeper::protocol::server::lsn_text(start)
    ))
    .await
    .unwrap();
    let mut r = Received::default();
    let mut at = start;
    while at < until {
        match tokio::time::timeout(DEADLINE, conn.recv()).await.expect("the stream stalled").unwrap() {
            Backend::CopyData(d) => {
                if let StreamMessage::XLogData { start, data, .. } = repl::parse_stream_message(d).unwrap() {
                    assert_eq!(start, at, "XLogData out of order");
                    r.messages.push((start, data.len()));
                    r.wal.extend_from_slice(&data);
                    at = Lsn(at.0 + data.len() as u64);
                }
            }
            Backend::Error(e) => {
                r.error = Some(e);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    r
}

/// The end of the valid WAL: the end of the last record, MAXALIGNed.
fn valid_end(e: &WalEncoder) -> Lsn {
    Lsn((e.pos() + 7) & !7)
}

#[tokio::test]
async fn every_file_form_is_served_byte_for_byte() {
    let e = wal();
    for compression in [Compression::None, Compression::Gzip, Compression::Lz4, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        write_archive(dir.path(), &e, compression);
        let server = serve(dir.path()).await;
        let mut conn = client(server.port).await;
        let id = repl::parse_identify_system(&conn.simple_query("IDENTIFY_SYSTEM").await.unwrap()).unwrap();
        assert_eq!((id.system_id, id.timeline, id.xlogpos), (SYSID, 1, valid_end(&e)), "{compression}");
        // From the middle of segment 1 to the end of the .partial's valid WAL.
        let start = Lsn(u64::from(SEG) + 12_345);
        let r = stream(&mut conn, start, id.xlogpos).await;
        assert!(r.error.is_none(), "{compression}: {:?}", r.error);
        let from = e.offset(start.0);
        assert!(r.wal == e.bytes()[from..from + r.wal.len()], "{compression}: the bytes differ");
        assert_eq!(start.0 + r.wal.len() as u64, id.xlogpos.0, "{compression}");
        for (i, &(at, len)) in r.messages.iter().enumerate() {
            assert!(len <= 128 * 1024, "{compression}: {len} bytes in one XLogData");
            let end = at.0 + len as u64;
            // A record is never split across messages except at a page boundary (walreceivers rely on it).
            assert!(
                end % 8192 == 0 || e.records.contains(&end) || i + 1 == r.messages.len(),
                "{compression}: message at {at} ends at {end:X}, inside a page and a record"
            );
        }
        let _ = server.stop.send(true);
    }
}

#[tokio::test]
async fn a_damaged_record_is_never_sent() {
    let e = wal();
    let dir = tempfile::tempdir().unwrap();
    write_archive(dir.path(), &e, Compression::None);
    // Flip a byte inside a record in the middle of complete segment 2.
    let victim = *e.records.iter().find(|&&r| r > 2 * u64::from(SEG) + 300_000).unwrap();
    let path = dir.path().join(name(2));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(victim - 2 * u64::from(SEG)) as usize + 40] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();

    let server = serve(dir.path()).await;
    let mut conn = client(server.port).await;
    let r = stream(&mut conn, Lsn(u64::from(SEG)), valid_end(&e)).await;
    let error = r.error.expect("the stream ends with an error");
    assert_eq!(error.code, "XX001");
    assert!(error.message.contains(&Lsn(victim).to_string()), "{}", error.message);
    // Everything before the damaged record is sent, nothing of it.
    assert_eq!(u64::from(SEG) + r.wal.len() as u64, victim);
}

#[tokio::test]
async fn missing_segments_and_reply_requests() {
    let e = wal();
    let dir = tempfile::tempdir().unwrap();
    write_archive(dir.path(), &e, Compression::None);
    std::fs::remove_file(dir.path().join(name(1))).unwrap();
    let server = serve(dir.path()).await;
    let mut conn = client(server.port).await;
    let r = stream(&mut conn, Lsn(u64::from(SEG)), Lsn(2 * u64::from(SEG))).await;
    let error = r.error.expect("segment 1 is not in the archive");
    assert_eq!(error.message, format!("requested WAL segment {} has already been removed", name(1)));

    // Caught up at the end of the archive: a reply request gets a keepalive at once; the standby is listed
    // as streaming; shutdown ends its session with PostgreSQL's words.
    let mut conn = client(server.port).await;
    let end = valid_end(&e);
    let r = stream(&mut conn, Lsn(3 * u64::from(SEG)), end).await;
    assert!(r.error.is_none());
    conn.send_copy_data(repl::standby_status_update(end, end, Lsn(0), repl::now_unix_us(), true))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(DEADLINE, conn.recv()).await.expect("no keepalive came").unwrap();
        if let Backend::CopyData(d) = msg {
            if let StreamMessage::Keepalive { wal_end, .. } = repl::parse_stream_message(d).unwrap() {
                assert_eq!(wal_end, end);
                break;
            }
        }
    }
    let listed = server.downstreams.list();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].application_name.as_str(), listed[0].flush), ("archive_test", Some(end)));
    assert_eq!(listed[0].state, walkeeper::serve::DownstreamState::Streaming);
    server.stop.send(true).unwrap();
    let bye = loop {
        match tokio::time::timeout(DEADLINE, conn.recv()).await.expect("shutdown did not end the session") {
            Ok(Backend::Error(e)) => break e,
            Ok(_) => {}
            Err(e) => panic!("closed without a word: {e}"),
        }
    };
    assert_eq!((bye.severity.as_str(), bye.code.as_str()), ("FATAL", "57P01"));
}

#[tokio::test]
async fn too_many_clients_are_refused_in_postgresql_s_words() {
    let e = wal();
    let dir = tempfile::tempdir().unwrap();
    write_archive(dir.path(), &e, Compression::None);
    let server = serve(dir.path()).await;
    let mut held = Vec::new();
    for _ in 0..walkeeper::serve::listener::MAX_CLIENTS {
        held.push(client(server.port).await);
    }
    let refused = try_client(server.port).await.err().expect("one client too many");
    assert_eq!(refused.sqlstate(), Some("53300"), "{refused}");
    assert!(refused.to_string().contains("sorry, too many clients already"), "{refused}");
    // One leaves: the next gets in.
    drop(held.pop());
    let mut again = None;
    for _ in 0..100 {
        match try_client(server.port).await {
            Ok(c) => {
                again = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(again.is_some(), "a freed place was not given to the next client");
}
