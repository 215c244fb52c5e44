//! The server side of the protocol (src/protocol/server, src/protocol/scram_server) against real clients
//! and real servers:
//!
//! - a tiny test-only server loop built from those pure parts (startup, SCRAM, a few commands with fixed
//!   answers) is driven by Debian's `psql` 15, by libpq 18 asking for protocol 3.2, and by walkeeper's own
//!   client (`conn::connect`, whose SCRAM client is conn/auth.rs);
//! - the same answers are compared, frame by frame, with what real PostgreSQL servers (every major found
//!   here) send for the same queries: the replication grammar, result shapes, error texts and SQLSTATEs,
//!   the end of a historic timeline, startup refusals, protocol negotiation, SCRAM failures, and the
//!   verifiers PostgreSQL builds from passwords (SASLprep).
//!
//! The server loop is scaffolding: the real walsender (sockets, archive, live WAL) is built on these parts
//! in src/serve later.

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{cannot_run, try_psql_at, Cluster, PasswordEncryption, PgInstall};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;
use walkeeper::conn::{connect, ConnParams, ConnectOptions, Endpoint, PasswordPrompt};
use walkeeper::protocol::codec::{BackendCodec, Frame};
use walkeeper::protocol::messages::{self, Backend};
use walkeeper::protocol::replication as repl;
use walkeeper::protocol::scram_server::{ScramServer, Step, Verifier};
use walkeeper::protocol::server::backend;
use walkeeper::protocol::server::command::{self, Command as ReplCommand, Statement};
use walkeeper::protocol::server::frontend::{self as fe, Frontend, FrontendCodec};
use walkeeper::protocol::server::startup::{self, ProtocolVersion, ReplicationMode, StartupPacket};
use walkeeper::protocol::server::{errors, results};
use walkeeper::protocol::ServerError;
use walkeeper::wal::Lsn;

/// A hang is a failure, not a wait.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------
// A test-only walsender: fixed facts, a few commands
// ---------------------------------------------------------------------------------------------------------

/// What the test walsender answers IDENTIFY_SYSTEM and SHOW with.
#[derive(Clone, Debug)]
struct Facts {
    /// The PostgreSQL major whose walsender to imitate.
    major: u32,
    system_id: u64,
    timeline: u32,
    flush: Lsn,
    wal_segment_size: String,
}

fn test_facts() -> Facts {
    Facts {
        major: 15,
        system_id: 7_312_345_678_901_234_567,
        timeline: 1,
        flush: Lsn(0x300_0148),
        wal_segment_size: "16MB".into(),
    }
}

/// The reply to one query, up to (not including) ReadyForQuery, as a walsender without history files,
/// without WAL to stream and with only temporary slots would send it.
fn answer(query: &[u8], facts: &Facts, slots: &mut Vec<String>) -> BytesMut {
    let mut b = BytesMut::new();
    if let Err(e) = reply(query, facts, slots, &mut b) {
        // PostgreSQL's walsender drops the session's temporary slots when a command fails.
        slots.clear();
        backend::error_response(&e, &mut b).unwrap();
    }
    b
}

fn reply(query: &[u8], facts: &Facts, slots: &mut Vec<String>, b: &mut BytesMut) -> Result<(), ServerError> {
    let parsed = command::parse(query)?;
    for n in &parsed.notices {
        backend::notice_response(n, b).unwrap();
    }
    let Statement::Command(cmd) = parsed.statement else { return Err(errors::sql_not_supported()) };
    if let Some(e) = cmd.refusal() {
        return Err(e);
    }
    match cmd {
        ReplCommand::IdentifySystem => {
            results::identify_system(facts.major, facts.system_id, facts.timeline, facts.flush, None, b)
                .unwrap()
        }
        // Setting names are case-insensitive; the column takes the canonical spelling.
        ReplCommand::Show { name } if name.eq_ignore_ascii_case("wal_segment_size") => {
            results::show("wal_segment_size", &facts.wal_segment_size, b).unwrap()
        }
        ReplCommand::Show { name } => return Err(errors::unrecognized_configuration_parameter(&name)),
        ReplCommand::TimelineHistory { timeline } => return Err(errors::timeline_history_missing(timeline)),
        ReplCommand::StartReplication { slot: Some(slot), .. } if !slots.contains(&slot) => {
            return Err(errors::slot_does_not_exist(&slot))
        }
        ReplCommand::StartReplication { timeline: Some(t), .. } if t != facts.timeline => {
            return Err(errors::timeline_not_in_history(t))
        }
        ReplCommand::StartReplication { start, .. } if start > facts.flush => {
            // PostgreSQL enters COPY mode first, then refuses.
            backend::copy_both_response(b);
            return Err(errors::start_ahead_of_flush(start, facts.flush));
        }
        ReplCommand::ReadReplicationSlot { .. } => results::read_replication_slot(None, b).unwrap(),
        ReplCommand::CreatePhysicalSlot { slot, .. } if slots.contains(&slot) => {
            return Err(errors::slot_already_exists(&slot))
        }
        ReplCommand::CreatePhysicalSlot { slot, .. } => {
            results::create_physical_slot(&slot, b).unwrap();
            slots.push(slot);
        }
        ReplCommand::DropReplicationSlot { slot, .. } if slots.contains(&slot) => {
            slots.retain(|s| *s != slot);
            results::drop_replication_slot(b).unwrap();
        }
        ReplCommand::DropReplicationSlot { slot, .. } => return Err(errors::slot_does_not_exist(&slot)),
        other => return Err(errors::not_served(other.tag())),
    }
    Ok(())
}

/// Reads from `sock` until `decode` yields a value.
async fn read_with<T, E: std::fmt::Display>(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
) -> Result<T, String> {
    loop {
        if let Some(v) = decode(buf).map_err(|e| e.to_string())? {
            return Ok(v);
        }
        if sock.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("client closed the connection".into());
        }
    }
}

/// The next frontend message; a broken connection ends the session (as FATAL for the caller to send).
async fn next_message(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    codec: &mut FrontendCodec,
) -> Result<Frontend, ServerError> {
    read_with(sock, buf, |b| codec.decode(b)).await.map_err(|e| errors::fatal(errors::CONNECTION_FAILURE, e))
}

/// What the test server saw, for the tests to check.
#[derive(Default)]
struct Seen {
    versions: Vec<ProtocolVersion>,
    application_names: Vec<Option<String>>,
}

/// One connection of the test server: startup, SCRAM-SHA-256, then queries until Terminate.
async fn serve_connection(
    mut sock: TcpStream,
    users: Arc<HashMap<String, Verifier>>,
    seen: Arc<Mutex<Seen>>,
) -> Result<(), String> {
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let startup = loop {
        match read_with(&mut sock, &mut buf, startup::decode).await {
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                sock.write_all(&[startup::ENCRYPTION_REFUSED]).await.map_err(|e| e.to_string())?;
            }
            Ok(StartupPacket::Cancel { .. }) => return Ok(()),
            Ok(StartupPacket::Startup(s)) => break s,
            Err(e) => return Err(e),
        }
    };
    {
        let mut seen = seen.lock().unwrap();
        seen.versions.push(startup.version());
        seen.application_names.push(startup.application_name.clone());
    }
    let fatal = |e: &ServerError, out: &mut BytesMut| backend::error_response(e, out).unwrap();
    if startup.replication != ReplicationMode::Physical {
        fatal(&errors::physical_replication_only(&startup.user), &mut out);
        sock.write_all(&out).await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    if let Some((version, options)) = startup.negotiation() {
        backend::negotiate_protocol_version(version.0, options, &mut out).unwrap();
    }
    backend::authentication_sasl(ScramServer::MECHANISMS, &mut out).unwrap();
    sock.write_all(&out.split()).await.map_err(|e| e.to_string())?;

    let mut codec = FrontendCodec::default();
    let outcome = async {
        let Frontend::Password(body) = next_message(&mut sock, &mut buf, &mut codec).await? else {
            return Err(errors::expected_sasl_response(b'?'));
        };
        let init = fe::sasl_initial_response(&body)?;
        let mut scram = ScramServer::begin(&startup.user, users.get(&startup.user), &init.mechanism)
            .map_err(|e| *e.error)?;
        let mut step = scram.exchange(init.data.as_deref()).map_err(|e| *e.error)?;
        loop {
            match step {
                Step::Continue(data) => {
                    let mut b = BytesMut::new();
                    backend::authentication_sasl_continue(&data, &mut b).unwrap();
                    sock.write_all(&b)
                        .await
                        .map_err(|e| errors::fatal(errors::CONNECTION_FAILURE, e.to_string()))?;
                    let Frontend::Password(body) = next_message(&mut sock, &mut buf, &mut codec).await?
                    else {
                        return Err(errors::expected_sasl_response(b'?'));
                    };
                    step = scram.exchange(Some(&body)).map_err(|e| *e.error)?;
                }
                Step::Success(data) => {
                    let mut b = BytesMut::new();
                    backend::authentication_sasl_final(&data, &mut b).unwrap();
                    backend::authentication_ok(&mut b);
                    sock.write_all(&b)
                        .await
                        .map_err(|e| errors::fatal(errors::CONNECTION_FAILURE, e.to_string()))?;
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        fatal(&e, &mut out);
        // The client may already be gone; nothing more to do either way.
        let _ = sock.write_all(&out).await;
        return Ok(());
    }
    for (name, value) in [
        ("server_version", "15.0 (walkeeper test server)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("DateStyle", "ISO, MDY"),
    ] {
        backend::parameter_status(name, value, &mut out).unwrap();
    }
    backend::backend_key_data(4242, &vec![7; startup.cancel_key_len()], &mut out).unwrap();
    backend::ready_for_query(&mut out);
    sock.write_all(&out.split()).await.map_err(|e| e.to_string())?;

    let facts = test_facts();
    let mut slots = Vec::new();
    let mut skip_to_sync = false;
    loop {
        let msg = match next_message(&mut sock, &mut buf, &mut codec).await {
            Ok(m) => m,
            Err(_) => return Ok(()), // client gone
        };
        match msg {
            Frontend::Query(q) if !skip_to_sync => {
                out.extend_from_slice(&answer(&q, &facts, &mut slots));
                backend::ready_for_query(&mut out);
            }
            Frontend::ExtendedQuery(_) | Frontend::FunctionCall if !skip_to_sync => {
                fatal(&errors::extended_query_not_supported(), &mut out);
                skip_to_sync = true;
            }
            Frontend::Sync => {
                skip_to_sync = false;
                backend::ready_for_query(&mut out);
            }
            Frontend::Terminate => return Ok(()),
            _ if skip_to_sync => {}
            other => return Err(format!("unexpected {other:?}")),
        }
        sock.write_all(&out.split()).await.map_err(|e| e.to_string())?;
    }
}

struct TestServer {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

/// Starts the test server on 127.0.0.1 with these users; it lives as long as the test's runtime.
async fn start_test_server(users: &[(&str, Verifier)]) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let users: Arc<HashMap<String, Verifier>> =
        Arc::new(users.iter().map(|(u, v)| (u.to_string(), v.clone())).collect());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let (users, seen) = (users.clone(), seen2.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_connection(sock, users, seen).await {
                    eprintln!("test server: {e}");
                }
            });
        }
    });
    TestServer { port, seen }
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
    assert_eq!(server.seen.lock().unwrap().application_names, [Some("walkeeper_client_test".to_string())]);

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
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7312345678901234567|1|0/3000148|");
    assert_eq!(server.seen.lock().unwrap().versions, [ProtocolVersion::V3_2]);
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
        let facts = Facts {
            major,
            system_id: sysid.parse().unwrap(),
            timeline: tli.parse().unwrap(),
            flush: pos.parse().unwrap(),
            wal_segment_size: text(&pg.query("SHOW wal_segment_size").await[1], 0).unwrap(),
        };
        let mut b = BytesMut::new();
        results::identify_system(major, facts.system_id, facts.timeline, facts.flush, None, &mut b).unwrap();
        compare(&mut differences, &format!("PostgreSQL {major}: IDENTIFY_SYSTEM"), &reply, &frames(b));

        let mut slots = Vec::new();
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
