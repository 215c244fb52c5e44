//! The server side of the protocol (src/protocol/server, src/protocol/scram_server) and the walsender built
//! on it (src/serve) against real clients and real servers:
//!
//! - the walsender, serving a one-page archive, is driven by Debian's `psql` 15, by libpq 18 asking for
//!   protocol 3.2, and by walkeeper's own client (`conn::connect`, whose SCRAM client is conn/auth.rs);
//! - its answers to replication commands (`serve::commands`) are compared, frame by frame, with what real
//!   PostgreSQL servers (every major found here) send for the same queries: the replication grammar, result
//!   shapes, error texts and SQLSTATEs, the end of a historic timeline, startup refusals, protocol
//!   negotiation, SCRAM failures, and the verifiers PostgreSQL builds from passwords (SASLprep).

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::{cannot_run, try_psql_at, Cluster, PasswordEncryption, PgInstall};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;
use walkeeper::archive::store::{LocalStore, Store};
use walkeeper::conn::{connect, ConnParams, ConnectOptions, Endpoint, PasswordPrompt};
use walkeeper::protocol::codec::{BackendCodec, Frame};
use walkeeper::protocol::messages::{self, Backend};
use walkeeper::protocol::replication as repl;
use walkeeper::protocol::scram_server::{ScramServer, Verifier};
use walkeeper::protocol::server::backend;
use walkeeper::protocol::server::startup::{self, ProtocolVersion, StartupPacket};
use walkeeper::protocol::server::{errors, results};
use walkeeper::protocol::ServerError;
use walkeeper::serve::commands::{self, Facts, Slots};
use walkeeper::serve::{Downstreams, ServeConfig, WalSource};
use walkeeper::wal::encoder::WalEncoder;
use walkeeper::wal::Lsn;

/// A hang is a failure, not a wait.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------
// The walsender, serving a one-page archive
// ---------------------------------------------------------------------------------------------------------

const SYSTEM_ID: u64 = 7_312_345_678_901_234_567;
/// Where the archive's WAL ends: one record after the long page header of segment 0/3000000.
const END: Lsn = Lsn(0x300_0148);

/// The archive's first page: PostgreSQL 15 WAL (16 MB segments) of one record ending at [`END`].
fn archive_page() -> Vec<u8> {
    let start = 0x300_0000;
    (200..400)
        .map(|len| {
            let mut e = WalEncoder::new(0xD110, 16 << 20, SYSTEM_ID, 1, start);
            e.main_data_record(0, 0, 1, &vec![7; len]);
            e
        })
        .find(|e| (e.pos() + 7) & !7 == END.0)
        .map(|e| {
            let mut page = e.into_bytes();
            page.resize(8192, 0);
            page
        })
        .expect("some record length ends at 0/3000148")
}

/// What the walsender serves from that archive: the facts the comparisons with PostgreSQL also use.
fn test_facts(major: u32) -> Facts {
    Facts {
        major,
        system_id: SYSTEM_ID,
        segment_size: 16 << 20,
        timeline: 1,
        flush: END,
        history: Some(Vec::new()),
        histories: BTreeMap::new(),
    }
}

/// The walsender's reply to one query, up to (not including) ReadyForQuery.
fn answer(query: &[u8], facts: &Facts, slots: &mut Slots) -> BytesMut {
    let mut b = BytesMut::new();
    commands::answer(query, facts, slots, &mut b);
    b
}

struct TestServer {
    port: u16,
    downstreams: Downstreams,
    page: Vec<u8>,
    _archive: tempfile::TempDir,
}

/// Starts the walsender on 127.0.0.1 with these users, serving the one-page archive; it lives as long as
/// the test's runtime.
async fn start_test_server(users: &[(&str, Verifier)]) -> TestServer {
    let archive = tempfile::tempdir().unwrap();
    let page = archive_page();
    std::fs::write(archive.path().join("000000010000000000000003.partial"), &page).unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(archive.path()));
    let source = Arc::new(WalSource::new(store, None));
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".into(),
        users: users.iter().map(|(u, v)| (u.to_string(), v.clone())).collect::<HashMap<_, _>>(),
        tls: None,
    };
    let downstreams = Downstreams::new();
    let ws = walkeeper::serve::Walsender::bind(cfg, source, downstreams.clone()).await.unwrap();
    let port = ws.local_addr().unwrap().port();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        ws.run(stop_rx).await;
        drop(stop);
    });
    TestServer { port, downstreams, page, _archive: archive }
}

/// Runs Debian's psql 15 (blocking, off the runtime that serves it).
async fn psql(conninfo: String, sql: &'static str) -> Result<String, String> {
    tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(move || try_psql_at(&conninfo, None, sql)))
        .await
        .expect("psql did not finish in time")
        .unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// Clients against the test server
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn psql_speaks_to_the_test_server() {
    let server = start_test_server(&[("standby", Verifier::from_password("s3cret pw").unwrap())]).await;
    let base = format!("host=127.0.0.1 port={} replication=true", server.port);

    let row = psql(format!("{base} user=standby password='s3cret pw'"), "IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(row, "7312345678901234567|1|0/3000148|", "systemid|timeline|xlogpos|dbname (NULL)");
    let show =
        psql(format!("{base} user=standby password='s3cret pw'"), "SHOW wal_segment_size").await.unwrap();
    assert_eq!(show, "16MB");

    let sql = psql(format!("{base} user=standby password='s3cret pw'"), "SELECT 1").await.unwrap_err();
    assert!(
        sql.contains("ERROR:  cannot execute SQL commands in WAL sender for physical replication"),
        "{sql}"
    );

    // A wrong password and an unknown user get the very same words as from PostgreSQL.
    let wrong = psql(format!("{base} user=standby password=guess"), "IDENTIFY_SYSTEM").await.unwrap_err();
    let want = format!(
        "connection to server at \"127.0.0.1\", port {} failed: FATAL:  password authentication failed for user \"standby\"",
        server.port
    );
    assert!(wrong.contains(&want), "{wrong}");
    let unknown = psql(format!("{base} user=nobody password=guess"), "IDENTIFY_SYSTEM").await.unwrap_err();
    assert!(unknown.contains("FATAL:  password authentication failed for user \"nobody\""), "{unknown}");

    // Not a replication connection.
    let plain = format!("host=127.0.0.1 port={} user=standby password='s3cret pw'", server.port);
    let refused = psql(plain, "SELECT 1").await.unwrap_err();
    assert!(refused.contains("FATAL:  walkeeper accepts only physical replication connections"), "{refused}");
    assert!(refused.contains("HINT:  Connect with replication=true"), "{refused}");
}

#[tokio::test]
async fn psql_with_a_verifier_made_by_postgresql() {
    // The verifier PostgreSQL stores for a role is accepted as a configured secret.
    let cluster = Cluster::start();
    cluster.create_role("standby", Some("pässwörd"), PasswordEncryption::Scram, true);
    let stored = cluster.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'standby'");
    let server = start_test_server(&[("standby", Verifier::from_secret(&stored).unwrap())]).await;
    let conninfo =
        format!("host=127.0.0.1 port={} replication=true user=standby password=pässwörd", server.port);
    assert_eq!(psql(conninfo, "IDENTIFY_SYSTEM").await.unwrap(), "7312345678901234567|1|0/3000148|");
}

fn client_params(port: u16, user: &str, password: &str) -> ConnParams {
    ConnParams {
        endpoints: vec![Endpoint::Tcp { host: "127.0.0.1".into(), hostaddr: None, port }],
        user: user.into(),
        password: Some(password.into()),
        passfile: Some("/nonexistent/walkeeper-tests/pgpass".into()),
        application_name: Some("walkeeper_client_test".into()),
        ..ConnParams::default()
    }
}

#[tokio::test]
async fn our_client_speaks_to_the_test_server() {
    let server = start_test_server(&[("standby", Verifier::from_password("pw").unwrap())]).await;
    let opts = ConnectOptions { prompt: PasswordPrompt::Never, ..ConnectOptions::default() };

    let mut conn =
        tokio::time::timeout(DEADLINE, connect(&client_params(server.port, "standby", "pw"), &opts))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conn.major(), 15);
    let id = repl::parse_identify_system(&conn.simple_query("IDENTIFY_SYSTEM").await.unwrap()).unwrap();
    assert_eq!(
        id,
        repl::SystemIdentity { system_id: 7_312_345_678_901_234_567, timeline: 1, xlogpos: Lsn(0x300_0148) }
    );
    let size = repl::parse_show(&conn.simple_query("SHOW wal_segment_size").await.unwrap()).unwrap();
    assert_eq!(repl::parse_segment_size(&size).unwrap(), 16 << 20);
    let err = conn.simple_query("TIMELINE_HISTORY 2").await.unwrap_err();
    let se = err.server_error().expect("a server error");
    assert_eq!(se.code, "58P01");
    assert_eq!(se.message, "could not open file \"pg_wal/00000002.history\": No such file or directory");
    // The session goes on after an error.
    let created = conn
        .simple_query("CREATE_REPLICATION_SLOT \"pg_walreceiver_1\" TEMPORARY PHYSICAL (RESERVE_WAL)")
        .await
        .unwrap();
    assert_eq!(created.rows[0][1].as_deref(), Some(&b"0/0"[..]));

    // Streaming through the slot: the archive's WAL, listed as a downstream with what it reports; CopyDone
    // from the client ends streaming and the session takes commands again.
    conn.start_copy_both("START_REPLICATION SLOT \"pg_walreceiver_1\" 0/3000000 TIMELINE 1").await.unwrap();
    let Backend::CopyData(msg) = conn.recv().await.unwrap() else { panic!("expected CopyData") };
    let repl::StreamMessage::XLogData { start, wal_end, data, .. } = repl::parse_stream_message(msg).unwrap()
    else {
        panic!("expected XLogData")
    };
    assert_eq!((start, wal_end), (Lsn(0x300_0000), END));
    assert_eq!(data[..], server.page[..0x148]);
    conn.send_copy_data(repl::standby_status_update(END, END, END, repl::now_unix_us(), false))
        .await
        .unwrap();
    // Waiting on this runtime's thread, which also runs the walsender.
    let reported = async {
        while !server.downstreams.list().iter().any(|d| d.flush == Some(END)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, reported).await.expect("the status update was not seen");
    let d = server.downstreams.list().remove(0);
    assert_eq!((d.application_name.as_str(), d.user.as_str()), ("walkeeper_client_test", "standby"));
    conn.send_copy_done().await.unwrap();
    // The walsender answers CopyDone with its own (keepalives may come first), then the end of the command.
    while !matches!(conn.recv().await.unwrap(), Backend::CopyDone) {}
    assert!(conn.finish_copy().await.unwrap().rows.is_empty(), "no next timeline");
    let read = conn.simple_query("READ_REPLICATION_SLOT pg_walreceiver_1").await.unwrap();
    assert_eq!(read.rows[0][1].as_deref(), Some(walkeeper::protocol::server::lsn_text(END).as_bytes()));
    assert!(server.downstreams.list().is_empty(), "no longer streaming");

    let failed =
        tokio::time::timeout(DEADLINE, connect(&client_params(server.port, "standby", "nope"), &opts))
            .await
            .unwrap()
            .err()
            .expect("a wrong password is refused");
    assert_eq!(failed.sqlstate(), Some("28P01"));
    assert!(
        failed.to_string().contains("FATAL:  password authentication failed for user \"standby\""),
        "{failed}"
    );
}

/// libpq 18 asks for protocol 3.2 when `max_protocol_version` says so, and then expects a long cancel key.
#[tokio::test]
async fn libpq_18_gets_protocol_3_2() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".pg/18/package/native/lib");
    if !lib.join("libpq.so.5").is_file() {
        cannot_run(&format!("no libpq 18 in {} (scripts/fetch-postgres.sh 18)", lib.display()));
        return;
    }
    let server = start_test_server(&[("standby", Verifier::from_password("pw").unwrap())]).await;
    let conninfo = format!(
        "host=127.0.0.1 port={} replication=true user=standby password=pw min_protocol_version=3.2 max_protocol_version=3.2",
        server.port
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(support::pg_tool("psql"))
            .env("LD_LIBRARY_PATH", &lib)
            .env_remove("PGPASSWORD")
            .args(["-X", "-A", "-t", "-d", &conninfo, "-c", "IDENTIFY_SYSTEM"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // min_protocol_version=3.2: libpq gives up unless the server granted 3.2 (with its 32-byte cancel key).
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7312345678901234567|1|0/3000148|");
}

// ---------------------------------------------------------------------------------------------------------
// A raw client, to see every frame a server sends
// ---------------------------------------------------------------------------------------------------------

struct Raw {
    sock: TcpStream,
    buf: BytesMut,
    codec: BackendCodec,
}

impl Raw {
    async fn open(port: u16) -> Raw {
        let sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Raw { sock, buf: BytesMut::new(), codec: BackendCodec::default() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// The next frame, or None when the server closed the connection.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let n =
                tokio::time::timeout(DEADLINE, self.sock.read_buf(&mut self.buf)).await.unwrap().unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Frames up to ReadyForQuery (excluded), or to the end of the connection.
    async fn until_ready(&mut self) -> Vec<Frame> {
        let mut v = Vec::new();
        while let Some(f) = self.frame().await {
            if f.tag == b'Z' {
                break;
            }
            v.push(f);
        }
        v
    }

    async fn startup(port: u16, params: &[(&str, &str)]) -> (Raw, Vec<Frame>) {
        let mut raw = Raw::open(port).await;
        let mut b = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut b).unwrap();
        raw.send(&b).await;
        let frames = raw.until_ready().await;
        (raw, frames)
    }

    async fn query(&mut self, q: &str) -> Vec<Frame> {
        let mut b = BytesMut::new();
        frontend::query(q, &mut b).unwrap();
        self.send(&b).await;
        self.until_ready().await
    }
}

fn frames(mut b: BytesMut) -> Vec<Frame> {
    let mut codec = BackendCodec::default();
    let mut v = Vec::new();
    while let Some(f) = codec.decode(&mut b).unwrap() {
        v.push(f);
    }
    assert!(b.is_empty());
    v
}

fn report(f: &Frame) -> ServerError {
    match messages::decode(f.clone()).unwrap() {
        Backend::Error(e) | Backend::Notice(e) => e,
        other => panic!("not an error or notice: {other:?}"),
    }
}

fn show_frames(v: &[Frame]) -> String {
    v.iter()
        .map(|f| match f.tag {
            b'E' | b'N' => format!("{}{:?}", char::from(f.tag), report(f)),
            _ => format!("{}{:?}", char::from(f.tag), String::from_utf8_lossy(&f.body)),
        })
        .collect::<Vec<_>>()
        .join("\n   ")
}

/// Same frames? Errors and notices are compared by the fields walkeeper sends (severity, SQLSTATE, message,
/// detail, hint — PostgreSQL adds file, line and routine). A difference is described in `differences`.
fn compare(differences: &mut Vec<String>, context: &str, pg: &[Frame], ours: &[Frame]) {
    let same = pg.len() == ours.len()
        && pg.iter().zip(ours).all(|(a, b)| match (a.tag, b.tag) {
            (b'E', b'E') | (b'N', b'N') => report(a) == report(b),
            _ => a == b,
        });
    if !same {
        differences.push(format!(
            "{context}\n PostgreSQL:\n   {}\n walkeeper:\n   {}",
            show_frames(pg),
            show_frames(ours)
        ));
    }
}

fn assert_no_differences(differences: Vec<String>) {
    assert!(differences.is_empty(), "{} difference(s):\n{}", differences.len(), differences.join("\n"));
}

fn assert_same(context: &str, pg: &[Frame], ours: &[Frame]) {
    let mut d = Vec::new();
    compare(&mut d, context, pg, ours);
    assert_no_differences(d);
}

fn text(f: &Frame, column: usize) -> Option<String> {
    match messages::decode(f.clone()).unwrap() {
        Backend::DataRow { values } => {
            values[column].as_ref().map(|v| String::from_utf8(v.to_vec()).unwrap())
        }
        other => panic!("not a DataRow: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Replies compared with PostgreSQL's
// ---------------------------------------------------------------------------------------------------------

/// Queries whose replies must match PostgreSQL's, from the major that knows them on.
const CORPUS: &[(&str, u32)] = &[
    ("IDENTIFY_SYSTEM;", 13),
    ("  IDENTIFY_SYSTEM  ;  ", 13),
    ("identify_system", 13),
    ("Identify_System", 13),
    ("SELECT 1", 13),
    ("SELECT pg_catalog.set_config('search_path', '', false);", 13),
    (";", 13),
    ("IDENTIFY_SYSTEM x", 13),
    ("IDENTIFY_SYSTEM;;", 13),
    ("IDENTIFY_SYSTEM \"a\"\"b\"", 13),
    ("SHOW wal_segment_size", 13),
    ("SHOW WAL_SEGMENT_SIZE", 13),
    ("SHOW \"wal_segment_size\"", 13),
    ("SHOW \"WAL_SEGMENT_SIZE\"", 13),
    ("SHOW no_such_setting", 13),
    ("SHOW TIMELINE", 13),
    ("SHOW", 13),
    ("TIMELINE_HISTORY 0", 13),
    ("TIMELINE_HISTORY 4294967296", 13),
    ("TIMELINE_HISTORY x", 13),
    ("START_REPLICATION 0/1000000 TIMELINE 9", 13),
    ("START_REPLICATION PHYSICAL 0/1000000 TIMELINE 0", 13),
    ("START_REPLICATION SLOT nosuch 0/1000000", 13),
    ("START_REPLICATION SLOT \"sub\" LOGICAL 0/0 (proto_version '1', publication_names '\"p\"')", 13),
    ("START_REPLICATION LOGICAL 0/0", 13),
    ("START_REPLICATION", 13),
    ("CREATE_REPLICATION_SLOT sub LOGICAL pgoutput", 13),
    ("CREATE_REPLICATION_SLOT \"Bad\" PHYSICAL", 13),
    ("CREATE_REPLICATION_SLOT s PHYSICAL EXPORT_SNAPSHOT", 13),
    ("CREATE_REPLICATION_SLOT s", 13),
    ("CREATE_REPLICATION_SLOT tmp1 TEMPORARY PHYSICAL RESERVE_WAL", 13),
    ("CREATE_REPLICATION_SLOT tmp1 TEMPORARY PHYSICAL", 13),
    ("DROP_REPLICATION_SLOT tmp1", 13),
    ("DROP_REPLICATION_SLOT nosuch", 13),
    ("DROP_REPLICATION_SLOT nosuch WAIT", 13),
    ("DROP_REPLICATION_SLOT aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 13),
    ("DROP_REPLICATION_SLOT", 13),
    ("'abc", 13),
    ("\"abc", 13),
    ("CREATE_REPLICATION_SLOT tmp2 TEMPORARY PHYSICAL (RESERVE_WAL)", 15),
    ("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL, RESERVE_WAL)", 15),
    ("CREATE_REPLICATION_SLOT s PHYSICAL (FOO)", 15),
    ("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 2)", 15),
    ("CREATE_REPLICATION_SLOT s PHYSICAL (SNAPSHOT 'use')", 15),
    ("CREATE_REPLICATION_SLOT s PHYSICAL ()", 15),
    ("READ_REPLICATION_SLOT nosuch", 15),
    ("READ_REPLICATION_SLOT", 15),
    ("ALTER_REPLICATION_SLOT nosuch (FAILOVER)", 17),
];

/// PostgreSQL sends TIMELINE_HISTORY's RowDescription before it opens the file, so a missing file
/// comes after it; a walsender that checks first sends the error alone, which clients read the same way.
fn without_description_before_error(mut pg: Vec<Frame>) -> Vec<Frame> {
    if pg.len() == 2 && pg[0].tag == b'T' && pg[1].tag == b'E' {
        pg.remove(0);
    }
    pg
}

#[tokio::test]
async fn replies_match_postgresql() {
    let installs = PgInstall::all_available();
    for major in [13, 18] {
        if !installs.iter().any(|i| i.major == major) {
            cannot_run(&format!(
                "PostgreSQL {major} is not installed here (scripts/fetch-postgres.sh {major})"
            ));
        }
    }
    let mut differences = Vec::new();
    for install in installs {
        let major = install.major;
        // wal_level=logical: then PostgreSQL refuses logical decoding on a physical connection for the reason
        // walkeeper gives (no database), not for the WAL level.
        let cluster = Cluster::builder().install(&install).conf("wal_level = logical").start();
        let (mut pg, _) = Raw::startup(
            cluster.port(),
            &[("user", "postgres"), ("replication", "true"), ("database", "replication")],
        )
        .await;

        // IDENTIFY_SYSTEM: byte for byte what results::identify_system writes for PostgreSQL's own values.
        let reply = pg.query("IDENTIFY_SYSTEM").await;
        let (sysid, tli, pos) =
            (text(&reply[1], 0).unwrap(), text(&reply[1], 1).unwrap(), text(&reply[1], 2).unwrap());
        assert_eq!(text(&reply[1], 3), None);
        let size = text(&pg.query("SHOW wal_segment_size").await[1], 0).unwrap();
        let facts = Facts {
            system_id: sysid.parse().unwrap(),
            timeline: tli.parse().unwrap(),
            flush: pos.parse().unwrap(),
            segment_size: repl::parse_segment_size(&size).unwrap(),
            ..test_facts(major)
        };
        let mut b = BytesMut::new();
        results::identify_system(major, facts.system_id, facts.timeline, facts.flush, None, &mut b).unwrap();
        compare(&mut differences, &format!("PostgreSQL {major}: IDENTIFY_SYSTEM"), &reply, &frames(b));

        let mut slots = Slots::default();
        for (query, since) in CORPUS {
            if major < *since {
                continue;
            }
            let reply = without_description_before_error(pg.query(query).await);
            let ours = frames(answer(query.as_bytes(), &facts, &mut slots));
            compare(&mut differences, &format!("PostgreSQL {major}: {query:?}"), &reply, &ours);
        }

        // Starting past the end of WAL: CopyBothResponse, then the error naming both positions. The flush
        // position is read from PostgreSQL's message (the server may have written WAL since IDENTIFY_SYSTEM).
        let reply = pg.query("START_REPLICATION PHYSICAL FFFFFFF/0 TIMELINE 1").await;
        assert_eq!(reply.len(), 2, "{}", show_frames(&reply));
        let flush: Lsn = report(&reply[1]).message.rsplit(' ').next().unwrap().parse().unwrap();
        let mut b = BytesMut::new();
        backend::copy_both_response(&mut b);
        backend::error_response(&errors::start_ahead_of_flush(Lsn(0xFFF_FFFF_0000_0000), flush), &mut b)
            .unwrap();
        compare(&mut differences, &format!("PostgreSQL {major}: start ahead"), &reply, &frames(b));

        // An existing slot as READ_REPLICATION_SLOT shows it (15+), and DROP of it.
        if major >= 15 {
            let created = pg.query("CREATE_REPLICATION_SLOT kept TEMPORARY PHYSICAL (RESERVE_WAL)").await;
            let mut b = BytesMut::new();
            results::create_physical_slot("kept", &mut b).unwrap();
            compare(&mut differences, &format!("PostgreSQL {major}: create"), &created, &frames(b));
            let read = pg.query("READ_REPLICATION_SLOT kept").await;
            let restart: Lsn = text(&read[1], 1).unwrap().parse().unwrap();
            let mut b = BytesMut::new();
            let position = results::SlotPosition { restart_lsn: Some(restart), restart_tli: facts.timeline };
            results::read_replication_slot(Some(position), &mut b).unwrap();
            compare(
                &mut differences,
                &format!("PostgreSQL {major}: READ_REPLICATION_SLOT"),
                &read,
                &frames(b),
            );
        }
    }
    assert_no_differences(differences);
}

/// A promoted standby's history: TIMELINE_HISTORY, the end of a historic timeline without COPY, and a
/// start past the switch point.
#[tokio::test]
async fn timeline_replies_match_postgresql() {
    let mut differences = Vec::new();
    for install in PgInstall::all_available() {
        let major = install.major;
        let mut primary = Cluster::builder().install(&install).start();
        primary.generate_wal(1);
        let standby = primary.standby();
        standby.promote();
        drop(primary);
        let (mut pg, _) = Raw::startup(
            standby.port(),
            &[("user", "postgres"), ("replication", "true"), ("database", "replication")],
        )
        .await;

        let reply = pg.query("TIMELINE_HISTORY 2").await;
        let content = match messages::decode(reply[1].clone()).unwrap() {
            Backend::DataRow { values } => values[1].clone().unwrap(),
            other => panic!("{other:?}"),
        };
        let mut b = BytesMut::new();
        results::timeline_history(major, 2, &content, &mut b).unwrap();
        compare(&mut differences, &format!("PostgreSQL {major}: TIMELINE_HISTORY 2"), &reply, &frames(b));

        let history =
            walkeeper::wal::timeline::parse_history(std::str::from_utf8(&content).unwrap()).unwrap();
        let switch = history[0].end;
        let at_switch =
            format!("START_REPLICATION {} TIMELINE 1", walkeeper::protocol::server::lsn_text(switch));
        let reply = pg.query(&at_switch).await;
        let mut b = BytesMut::new();
        results::end_of_streaming(Some((2, switch)), &mut b).unwrap();
        compare(&mut differences, &format!("PostgreSQL {major}: {at_switch}"), &reply, &frames(b));

        let past = Lsn(switch.0 + 0x100);
        let reply = pg.query(&format!("START_REPLICATION {past} TIMELINE 1")).await;
        let mut b = BytesMut::new();
        backend::error_response(&errors::start_not_in_history(past, 1, switch), &mut b).unwrap();
        compare(
            &mut differences,
            &format!("PostgreSQL {major}: start past the switch point"),
            &reply,
            &frames(b),
        );
    }
    assert_no_differences(differences);
}

fn startup_packet(version: u32, params: &[(&str, &str)]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u32(version);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut b = BytesMut::new();
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(&body);
    b
}

/// What walkeeper's startup code answers a packet with (before authentication), as frames.
fn our_startup_answer(packet: &BytesMut) -> Vec<Frame> {
    let mut b = BytesMut::new();
    match startup::decode(&mut packet.clone()) {
        Ok(Some(StartupPacket::Startup(s))) => {
            if let Some((v, options)) = s.negotiation() {
                backend::negotiate_protocol_version(v.0, options, &mut b).unwrap();
            }
        }
        Err(e) => backend::error_response(e.report().expect("a report"), &mut b).unwrap(),
        other => panic!("{other:?}"),
    }
    frames(b)
}

#[tokio::test]
async fn startup_and_authentication_match_postgresql() {
    let installs = PgInstall::all_available();
    let mut differences = Vec::new();
    for install in installs {
        let major = install.major;
        let cluster = Cluster::builder().install(&install).start();
        cluster.create_role("standby", Some("right"), PasswordEncryption::Scram, true);
        cluster.set_hba(&[
            "host replication postgres 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 scram-sha-256",
        ]);
        let port = cluster.port();

        // Startup refusals.
        for packet in [
            startup_packet(ProtocolVersion::V3_0.0, &[("user", "postgres"), ("replication", "maybe")]),
            startup_packet(ProtocolVersion::V3_0.0, &[("database", "replication")]),
        ] {
            let mut raw = Raw::open(port).await;
            raw.send(&packet).await;
            let reply = raw.until_ready().await;
            assert_same(
                &format!("PostgreSQL {major}: startup refusal"),
                &reply,
                &our_startup_answer(&packet),
            );
        }
        // Negotiation: a newer minor and a protocol option. PostgreSQL 13–17 speak only 3.0, so they answer
        // with 3.0 where walkeeper (like 18) offers 3.2; the unrecognised options are listed alike.
        let packet = startup_packet(
            3 << 16 | 5,
            &[("user", "postgres"), ("replication", "true"), ("_pq_.walkeeper_test", "1")],
        );
        let mut raw = Raw::open(port).await;
        raw.send(&packet).await;
        let first = raw.frame().await.unwrap();
        let ours = our_startup_answer(&packet);
        if major >= 18 {
            compare(&mut differences, &format!("PostgreSQL {major}: negotiation"), &[first], &ours);
        } else {
            assert_eq!(first.tag, b'v');
            assert_eq!(first.body[4..], ours[0].body[4..], "PostgreSQL {major}: unrecognised options");
        }
        let rest = raw.until_ready().await;
        if major >= 18 {
            // Granted 3.2: a 32-byte cancel key, as walkeeper sends for 3.2.
            let key = rest.iter().find(|f| f.tag == b'K').unwrap();
            assert_eq!(key.body.len(), 4 + 32);
        }

        // SCRAM: wrong password, unknown user, malformed messages.
        let scram_reply = async |user: &str, first: Option<&[u8]>, password: &str| -> Vec<Frame> {
            let mut raw = Raw::open(port).await;
            raw.send(&startup_packet(ProtocolVersion::V3_0.0, &[("user", user), ("replication", "true")]))
                .await;
            let sasl = raw.frame().await.unwrap();
            assert_eq!(
                messages::decode(sasl).unwrap(),
                Backend::Authentication(messages::AuthRequest::Sasl {
                    mechanisms: vec!["SCRAM-SHA-256".into()]
                })
            );
            let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
            let mut b = BytesMut::new();
            frontend::sasl_initial_response("SCRAM-SHA-256", first.unwrap_or(client.message()), &mut b)
                .unwrap();
            raw.send(&b).await;
            let reply = raw.frame().await.unwrap();
            let Ok(Backend::Authentication(messages::AuthRequest::SaslContinue(server_first))) =
                messages::decode(reply.clone())
            else {
                return vec![reply];
            };
            client.update(&server_first).unwrap();
            let mut b = BytesMut::new();
            frontend::sasl_response(client.message(), &mut b).unwrap();
            raw.send(&b).await;
            raw.until_ready().await
        };
        let ours = |e: ServerError| {
            let mut b = BytesMut::new();
            backend::error_response(&e, &mut b).unwrap();
            frames(b)
        };
        let ours_scram = |user: &str, first: &[u8]| {
            let verifier = Verifier::from_password("right").unwrap();
            let mut s = ScramServer::begin(user, Some(&verifier), "SCRAM-SHA-256").unwrap();
            ours(*s.exchange(Some(first)).unwrap_err().error)
        };
        let pg = scram_reply("standby", None, "wrong").await;
        assert_same(
            &format!("PostgreSQL {major}: wrong password"),
            &pg,
            &ours(errors::password_authentication_failed("standby")),
        );
        let pg = scram_reply("nobody", None, "right").await;
        assert_same(
            &format!("PostgreSQL {major}: unknown user"),
            &pg,
            &ours(errors::password_authentication_failed("nobody")),
        );
        for bad in [
            &b"x,,n=,r=abc"[..],
            b"n,a=someone,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,,n=,r=a b",
            b"n,,r=abc",
        ] {
            let pg = scram_reply("standby", Some(bad), "right").await;
            assert_same(
                &format!("PostgreSQL {major}: client-first {:?}", String::from_utf8_lossy(bad)),
                &pg,
                &ours_scram("standby", bad),
            );
        }
    }
    assert_no_differences(differences);
}

/// The verifier walkeeper builds from a password is the one PostgreSQL builds, for the same salt and
/// iteration count, including passwords that SASLprep changes or leaves alone.
#[tokio::test]
async fn verifiers_match_postgresql() {
    let cluster = Cluster::start();
    let passwords = [
        "plain ascii",
        "pässwörd",
        "I\u{ad}X",    // soft hyphen: mapped to nothing
        "\u{2168}",    // ROMAN NUMERAL NINE: NFKC → "IX"
        "a\u{a0}b",    // non-ASCII space → " "
        "a\u{200b}b",  // zero width space: mapped to nothing
        "\u{ad}",      // maps to nothing at all: used as it is
        "\u{627}1",    // bidi rule broken (ends with a digit): used as it is
        "tab\there é", // prohibited control character: used as it is
    ];
    for (i, pw) in passwords.iter().enumerate() {
        let role = format!("r{i}");
        cluster.create_role(&role, Some(pw), PasswordEncryption::Scram, false);
        let stored: Verifier = cluster
            .psql(&format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"))
            .parse()
            .unwrap();
        let text = stored.to_string();
        let (params, _) = text.trim_start_matches("SCRAM-SHA-256$").split_once('$').unwrap();
        let (iterations, salt) = params.split_once(':').unwrap();
        use base64::Engine;
        let salt = base64::engine::general_purpose::STANDARD.decode(salt).unwrap();
        let iterations = NonZeroU32::new(iterations.parse().unwrap()).unwrap();
        assert_eq!(Verifier::with_salt(pw.as_bytes(), &salt, iterations), stored, "password {pw:?}");
        assert_eq!(Bytes::from(text.clone()), Bytes::from(stored.to_string()));
    }
}
