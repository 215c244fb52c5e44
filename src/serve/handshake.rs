//! From an accepted TCP connection to an authenticated replication session, as PostgreSQL's postmaster and
//! backend startup do it: SSLRequest (TLS when configured, else `N`) and GSSENCRequest (`N`), the startup
//! packet (physical replication connections only), protocol negotiation, SCRAM-SHA-256, then
//! ParameterStatus, BackendKeyData and ReadyForQuery.
//!
//! The words of every refusal are PostgreSQL's (`protocol::server::errors`): a wrong password and an
//! unknown user both end in `FATAL 28P01 password authentication failed for user "…"`.

use super::conn::{Conn, Socket};
use super::ServeConfig;
use crate::protocol::scram_server::{ScramServer, Step};
use crate::protocol::server::backend;
use crate::protocol::server::errors;
use crate::protocol::server::frontend::{self as fe, Frontend, FrontendError};
use crate::protocol::server::startup::{self, ReplicationMode, Startup, StartupError, StartupPacket};
use crate::protocol::ServerError;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// PostgreSQL's `authentication_timeout` default: the whole startup phase must be over by then.
pub const AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a connection did not become a session (for the log; the client was told what PostgreSQL tells).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Startup(#[from] StartupError),
    /// Refused with this FATAL error (sent to the client); `log_detail` says why, for the log only.
    #[error("{}{}", report.message, log_detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused { report: Box<ServerError>, log_detail: Option<String> },
    #[error("{0}")]
    Frontend(#[from] FrontendError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("could not send data to client: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Encode(#[from] backend::EncodeError),
    #[error("the client did not finish authenticating within {} seconds", AUTHENTICATION_TIMEOUT.as_secs())]
    Timeout,
    /// A cancel request (nothing to cancel) or a client that left before its startup packet.
    #[error("connection closed during startup")]
    Closed,
}

impl HandshakeError {
    fn refused(report: ServerError) -> HandshakeError {
        HandshakeError::Refused { report: Box::new(report), log_detail: None }
    }

    /// True for a failed password check (wrong password or unknown user).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, HandshakeError::Refused { report, .. } if report.is_auth_failure())
    }
}

/// An authenticated session, ready for replication commands.
pub(crate) struct Session {
    pub conn: Conn,
    pub startup: Startup,
}

/// What the session's ParameterStatus messages and BackendKeyData carry.
pub(crate) struct Greeting<'a> {
    /// `server_version` as the archive's major speaks it; `None` while the archive holds no WAL (the
    /// client is then refused as a starting PostgreSQL refuses it, and retries).
    pub server_version: Option<&'a str>,
    pub process_id: i32,
    /// As many clients as the walsender serves are connected: refuse this one after its startup packet.
    pub busy: bool,
}

/// Run the startup phase on `sock` within [`AUTHENTICATION_TIMEOUT`].
pub(crate) async fn accept(
    sock: TcpStream,
    peer: SocketAddr,
    cfg: &ServeConfig,
    id: &Greeting<'_>,
) -> Result<Session, HandshakeError> {
    tokio::time::timeout(AUTHENTICATION_TIMEOUT, startup_phase(sock, peer, cfg, id))
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

async fn startup_phase(
    sock: TcpStream,
    peer: SocketAddr,
    cfg: &ServeConfig,
    id: &Greeting<'_>,
) -> Result<Session, HandshakeError> {
    let mut sock = Socket::Plain(sock);
    let mut buf = BytesMut::new();
    let startup = loop {
        let packet = match read_startup(&mut sock, &mut buf).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(HandshakeError::Closed),
            Err(e) => {
                if let Some(report) = e.report() {
                    send_fatal(&mut sock, report).await;
                }
                return Err(e.into());
            }
        };
        match packet {
            StartupPacket::SslRequest => {
                let Socket::Plain(tcp) = sock else {
                    // A second SSLRequest inside TLS reads, to PostgreSQL, as protocol 1234.5679.
                    let code = startup::SSL_REQUEST_CODE;
                    let e = errors::unsupported_protocol(code >> 16, code & 0xffff);
                    return Err(refuse(&mut sock, e).await);
                };
                sock = negotiate_tls(tcp, &buf, cfg).await?;
            }
            StartupPacket::GssEncRequest => {
                sock.write_all(&[startup::ENCRYPTION_REFUSED]).await?;
            }
            StartupPacket::Cancel { .. } => return Err(HandshakeError::Closed),
            StartupPacket::Startup(s) => break s,
        }
    };
    let mut out = BytesMut::new();
    if startup.replication != ReplicationMode::Physical {
        return Err(refuse(&mut sock, errors::physical_replication_only(&startup.user)).await);
    }
    if id.busy {
        return Err(refuse(&mut sock, errors::too_many_connections()).await);
    }
    let Some(server_version) = id.server_version else {
        return Err(refuse(&mut sock, errors::no_wal_yet()).await);
    };
    if let Some((version, options)) = startup.negotiation() {
        backend::negotiate_protocol_version(version.0, options, &mut out)?;
    }
    backend::authentication_sasl(ScramServer::MECHANISMS, &mut out)?;
    sock.write_all(&out.split()).await?;

    let mut conn = Conn::new(sock, buf, peer);
    if let Err(e) = authenticate(&mut conn, cfg, &startup.user).await {
        match &e {
            HandshakeError::Refused { report, .. } => send_fatal(conn.socket(), report).await,
            HandshakeError::Frontend(f) => {
                if let Some(report) = f.report() {
                    send_fatal(conn.socket(), &report).await;
                }
            }
            _ => {}
        }
        return Err(e);
    }
    let application_name = startup.application_name.as_deref().unwrap_or("");
    for (name, value) in [
        ("application_name", application_name),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("IntervalStyle", "postgres"),
        ("is_superuser", "off"),
        ("server_encoding", "UTF8"),
        ("server_version", server_version),
        ("session_authorization", startup.user.as_str()),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        backend::parameter_status(name, value, &mut out)?;
    }
    let mut key = vec![0u8; startup.cancel_key_len()];
    fill_random(&mut key);
    backend::backend_key_data(id.process_id, &key, &mut out)?;
    backend::ready_for_query(&mut out);
    conn.send(&out).await?;
    Ok(Session { conn, startup })
}

/// Read one startup packet; `None` when the client closed the connection before sending one.
async fn read_startup(sock: &mut Socket, buf: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
    loop {
        if let Some(p) = startup::decode(buf)? {
            return Ok(Some(p));
        }
        if sock.read_buf(buf).await? == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(StartupError::Incomplete) };
        }
    }
}

/// Answer an SSLRequest: `S` and the TLS handshake when TLS is configured, else `N` (the client then goes
/// on in plaintext or gives up, as its sslmode says).
async fn negotiate_tls(
    mut tcp: TcpStream,
    buf: &BytesMut,
    cfg: &ServeConfig,
) -> Result<Socket, HandshakeError> {
    let Some(tls) = &cfg.tls else {
        tcp.write_all(&[startup::ENCRYPTION_REFUSED]).await?;
        return Ok(Socket::Plain(tcp));
    };
    if !buf.is_empty() {
        // Bytes after an SSLRequest that were sent before our answer cannot be trusted as part of TLS.
        let e = errors::fatal(errors::PROTOCOL_VIOLATION, "received unencrypted data after SSL request");
        return Err(refuse(&mut Socket::Plain(tcp), e).await);
    }
    tcp.write_all(&[startup::TLS_ACCEPTED]).await?;
    let stream =
        tokio_rustls::TlsAcceptor::from(tls.clone()).accept(tcp).await.map_err(HandshakeError::Tls)?;
    Ok(Socket::Tls(Box::new(stream)))
}

/// The SCRAM-SHA-256 exchange. An unknown user goes through the same exchange and fails the same way.
async fn authenticate(conn: &mut Conn, cfg: &ServeConfig, user: &str) -> Result<(), HandshakeError> {
    let scram_failed = |e: crate::protocol::scram_server::ScramError| HandshakeError::Refused {
        report: e.error,
        log_detail: e.log_detail,
    };
    let body = sasl_message(conn).await?;
    let init = fe::sasl_initial_response(&body).map_err(HandshakeError::refused)?;
    let mut scram = ScramServer::begin(user, cfg.users.get(user), &init.mechanism).map_err(scram_failed)?;
    let mut step = scram.exchange(init.data.as_deref()).map_err(scram_failed)?;
    loop {
        let mut out = BytesMut::new();
        match step {
            Step::Continue(data) => {
                backend::authentication_sasl_continue(&data, &mut out)?;
                conn.send(&out).await?;
                let body = sasl_message(conn).await?;
                step = scram.exchange(Some(&body)).map_err(scram_failed)?;
            }
            Step::Success(data) => {
                backend::authentication_sasl_final(&data, &mut out)?;
                backend::authentication_ok(&mut out);
                conn.send(&out).await?;
                return Ok(());
            }
        }
    }
}

/// The next SASL message ('p'); anything else is PostgreSQL's protocol violation.
async fn sasl_message(conn: &mut Conn) -> Result<bytes::Bytes, HandshakeError> {
    match conn.next().await? {
        Some(Frontend::Password(body)) => Ok(body),
        Some(other) => Err(HandshakeError::refused(errors::expected_sasl_response(tag_of(&other)))),
        None => Err(HandshakeError::Closed),
    }
}

/// The type byte a frontend message arrived with.
fn tag_of(m: &Frontend) -> u8 {
    match m {
        Frontend::Query(_) => b'Q',
        Frontend::Password(_) => b'p',
        Frontend::CopyData(_) => b'd',
        Frontend::CopyDone => b'c',
        Frontend::CopyFail(_) => b'f',
        Frontend::Sync => b'S',
        Frontend::Flush => b'H',
        Frontend::Terminate => b'X',
        Frontend::ExtendedQuery(t) => *t,
        Frontend::FunctionCall => b'F',
    }
}

/// Send `report` and give up on the connection.
async fn refuse(sock: &mut Socket, report: ServerError) -> HandshakeError {
    send_fatal(sock, &report).await;
    HandshakeError::refused(report)
}

/// Send a FATAL error before closing; the client may be gone already, which changes nothing.
async fn send_fatal(sock: &mut Socket, e: &ServerError) {
    let mut b = BytesMut::new();
    if backend::error_response(e, &mut b).is_ok() {
        let _ = sock.write_all(&b).await;
        let _ = sock.flush().await;
    }
}

/// A cancel key nobody can guess (it is never used: a walsender has no query to cancel).
fn fill_random(key: &mut [u8]) {
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(key).is_err() {
        key.fill(0x5a);
    }
}
