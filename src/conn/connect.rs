//! Opening a replication connection the way libpq does: each endpoint in order (each address a host name
//! resolves to), SSL negotiation per `sslmode` (including prefer/allow retries), the startup packet,
//! authentication, and the `target_session_attrs` check (with prefer-standby's second pass).

use crate::conn::auth::{authenticate, AuthError, PasswordSource};
use crate::conn::connection::{ConnError, Connection};
use crate::conn::params::{ConnParams, Endpoint, SslMode, TargetSessionAttrs};
use crate::conn::pgpass;
use crate::conn::stream::Socket;
use crate::conn::tcp::{self, TcpError};
use crate::conn::tls;
use crate::protocol::codec::DEFAULT_MAX_MESSAGE;
use crate::protocol::codec::{os_error, type_byte};
use crate::protocol::messages::{quoted, Backend};
use crate::protocol::replication::{parse_server_version, parse_show};
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::fmt;
use std::io::IsTerminal;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// When to ask for a password on the terminal: pg_receivewal's `-w` (never), default (if the server asks and
/// none is known), `-W` (always, before connecting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PasswordPrompt {
    Never,
    #[default]
    IfNeeded,
    Always,
}

#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub prompt: PasswordPrompt,
    pub max_message: usize,
    /// Physical replication connection (`replication=true`); false for a normal session.
    pub replication: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            prompt: PasswordPrompt::IfNeeded,
            max_message: DEFAULT_MAX_MESSAGE,
            replication: true,
        }
    }
}

/// One failed attempt: which server, and why.
#[derive(Debug, Clone)]
pub struct AttemptFailure {
    /// libpq's wording: `at "host", port 5432` or `on socket "/path/.s.PGSQL.5432"`.
    pub target: String,
    pub cause: String,
    /// SQLSTATE when the server itself refused us.
    pub sqlstate: Option<String>,
}

/// Every endpoint failed (or authentication failed on one, which ends the search as in libpq).
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub failures: Vec<AttemptFailure>,
}

impl ConnectError {
    pub fn sqlstate(&self) -> Option<&str> {
        self.failures.iter().rev().find_map(|f| f.sqlstate.as_deref())
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "connection to server {} failed: {}", a.target, a.cause)?;
        }
        if self.failures.is_empty() {
            f.write_str("no host to connect to")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {}

/// Why one attempt failed, and whether libpq would go on to the next host.
struct Failure {
    cause: String,
    sqlstate: Option<String>,
    /// Authentication (or authorization) failed: libpq does not try the remaining hosts.
    fatal: bool,
    /// The server refused us after the startup packet: with sslmode prefer/allow, retry the other way.
    server_refused: bool,
    /// The failed session was encrypted (sslmode prefer retries in the clear only then, as libpq does).
    over_tls: bool,
    /// The first attempt, when this failure is that of sslmode prefer/allow's retry (libpq reports both).
    first_attempt: Option<Box<Failure>>,
}

impl Failure {
    fn plain(cause: impl Into<String>) -> Failure {
        Failure {
            cause: cause.into(),
            sqlstate: None,
            fatal: false,
            server_refused: false,
            over_tls: false,
            first_attempt: None,
        }
    }

    /// This failure of a retry, remembering the failed first attempt so that both are reported.
    fn after(mut self, first: Failure) -> Failure {
        self.first_attempt = Some(Box::new(first));
        self
    }

    fn fatal(cause: impl Into<String>) -> Failure {
        Failure {
            cause: cause.into(),
            sqlstate: None,
            fatal: true,
            server_refused: false,
            over_tls: false,
            first_attempt: None,
        }
    }
}

impl From<ConnError> for Failure {
    fn from(e: ConnError) -> Failure {
        match e.server_error() {
            Some(se) => Failure {
                cause: se.to_string(),
                sqlstate: Some(se.code.clone()),
                fatal: se.is_auth_failure(),
                server_refused: true,
                over_tls: false,
                first_attempt: None,
            },
            None => Failure::plain(strip_server_prefix(&e)),
        }
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Failure {
        match e {
            AuthError::Conn(c) => (*c).into(),
            other => Failure::fatal(other.to_string()),
        }
    }
}

/// ConnError's Display starts with the server name, which the attempt's target already says.
fn strip_server_prefix(e: &ConnError) -> String {
    let s = e.to_string();
    match s.split_once(": ") {
        Some((_, rest)) => rest.to_string(),
        None => s,
    }
}

/// Connect to the first suitable server among `params.endpoints`.
pub async fn connect(params: &ConnParams, opts: &ConnectOptions) -> Result<Connection, ConnectError> {
    let mut prompted: Option<String> = None;
    if opts.prompt == PasswordPrompt::Always && params.password.is_none() {
        prompted = prompt_password();
    }
    let mut failures = Vec::new();
    for wanted in passes(params.target_session_attrs) {
        for endpoint in &params.endpoints {
            match connect_endpoint(params, opts, endpoint, wanted, &mut prompted, &mut failures).await {
                Outcome::Connected(conn) => return Ok(*conn),
                Outcome::GiveUp => return Err(ConnectError { failures }),
                Outcome::TryNext => {}
            }
        }
    }
    Err(ConnectError { failures })
}

/// The passes over the hosts libpq makes for `target_session_attrs`: prefer-standby tries every host as a
/// standby first, then every host again taking any; the other values make one pass.
pub fn passes(attrs: TargetSessionAttrs) -> Vec<TargetSessionAttrs> {
    match attrs {
        TargetSessionAttrs::PreferStandby => vec![TargetSessionAttrs::Standby, TargetSessionAttrs::Any],
        other => vec![other],
    }
}

enum Outcome {
    Connected(Box<Connection>),
    /// Authentication failed: libpq does not try the remaining hosts.
    GiveUp,
    TryNext,
}

/// Try every address of one endpoint; failures are appended.
async fn connect_endpoint(
    params: &ConnParams,
    opts: &ConnectOptions,
    endpoint: &Endpoint,
    wanted: TargetSessionAttrs,
    prompted: &mut Option<String>,
    failures: &mut Vec<AttemptFailure>,
) -> Outcome {
    let targets = match resolve(endpoint).await {
        Ok(t) => t,
        Err(cause) => {
            let target = format!("at \"{}\", port {}", endpoint.host_for_display(), endpoint.port());
            failures.push(AttemptFailure { target, cause, sqlstate: None });
            return Outcome::TryNext;
        }
    };
    for target in targets {
        let attempt = async {
            let mut conn = establish(params, opts, endpoint, &target, prompted).await?;
            check_session_attrs(&mut conn, wanted).await?;
            Ok::<_, Failure>(conn)
        };
        let result = match params.connect_timeout {
            Some(t) => tokio::time::timeout(t, attempt)
                .await
                .unwrap_or_else(|_| Err(Failure::plain("timeout expired"))),
            None => attempt.await,
        };
        match result {
            Ok(mut conn) => {
                conn.set_endpoint(endpoint.clone());
                return Outcome::Connected(Box::new(conn));
            }
            Err(mut f) => {
                if let Some(first) = f.first_attempt.take() {
                    failures.push(AttemptFailure {
                        target: target.label(),
                        cause: first.cause,
                        sqlstate: first.sqlstate,
                    });
                }
                failures.push(AttemptFailure {
                    target: target.label(),
                    cause: f.cause,
                    sqlstate: f.sqlstate,
                });
                if f.fatal {
                    return Outcome::GiveUp;
                }
            }
        }
    }
    Outcome::TryNext
}

/// A concrete place to open a socket to.
enum Target {
    Tcp { host: String, addr: SocketAddr, numeric: bool },
    Unix { path: std::path::PathBuf },
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Tcp { host, addr, numeric: true } if host.is_empty() => {
                format!("at \"{}\", port {}", addr.ip(), addr.port())
            }
            Target::Tcp { host, addr, numeric: true } => format!("at \"{host}\", port {}", addr.port()),
            Target::Tcp { host, addr, numeric: false } => {
                format!("at \"{host}\" ({}), port {}", addr.ip(), addr.port())
            }
            Target::Unix { path } => format!("on socket \"{}\"", path.display()),
        }
    }

    fn server_name(&self) -> String {
        match self {
            Target::Tcp { host, addr, .. } if host.is_empty() => addr.to_string(),
            Target::Tcp { host, addr, .. } => format!("{host}:{}", addr.port()),
            Target::Unix { path } => path.display().to_string(),
        }
    }
}

async fn resolve(endpoint: &Endpoint) -> Result<Vec<Target>, String> {
    match endpoint {
        Endpoint::Unix { dir, port } => Ok(vec![Target::Unix { path: dir.join(format!(".s.PGSQL.{port}")) }]),
        Endpoint::Tcp { host, hostaddr: Some(addr), port } => {
            let ip: std::net::IpAddr =
                addr.parse().map_err(|_| format!("could not parse network address \"{addr}\""))?;
            Ok(vec![Target::Tcp { host: host.clone(), addr: SocketAddr::new(ip, *port), numeric: true }])
        }
        Endpoint::Tcp { host, hostaddr: None, port } => {
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                return Ok(vec![Target::Tcp {
                    host: host.clone(),
                    addr: SocketAddr::new(ip, *port),
                    numeric: true,
                }]);
            }
            let addrs = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| format!("could not translate host name \"{host}\" to address: {e}"))?;
            let targets: Vec<Target> =
                addrs.map(|addr| Target::Tcp { host: host.clone(), addr, numeric: false }).collect();
            if targets.is_empty() {
                return Err(format!("could not translate host name \"{host}\" to address"));
            }
            Ok(targets)
        }
    }
}

async fn open_socket(target: &Target, params: &ConnParams) -> Result<Socket, Failure> {
    match target {
        Target::Unix { path } => UnixStream::connect(path).await.map(Socket::Unix).map_err(|e| {
            Failure::plain(format!(
                "{} (is the server running locally and accepting connections on that socket?)",
                os_error(&e)
            ))
        }),
        Target::Tcp { addr, .. } => tcp::connect(*addr, params).await.map(Socket::Tcp).map_err(|e| match e {
            TcpError::Connect(e) => Failure::plain(format!(
                "{} (is the server running on that host and accepting TCP/IP connections?)",
                os_error(&e)
            )),
            other => Failure::plain(other.to_string()),
        }),
    }
}

/// A failed TLS handshake as libpq words it: `SSL error: …` (sslmode prefer's retry keys on the prefix), without
/// doubling the prefix of texts that already carry it (`SSL error: …`, `SSL SYSCALL error: …`).
fn ssl_error_text(e: &tls::TlsError) -> String {
    let text = e.to_string();
    if text.starts_with("SSL") {
        text
    } else {
        format!("SSL error: {text}")
    }
}

/// Open one connection to one address, honouring sslmode's fallbacks.
async fn establish(
    params: &ConnParams,
    opts: &ConnectOptions,
    endpoint: &Endpoint,
    target: &Target,
    prompted: &mut Option<String>,
) -> Result<Connection, Failure> {
    let tls_host = match endpoint {
        Endpoint::Tcp { host, hostaddr, .. } => {
            Some(if host.is_empty() { hostaddr.clone().unwrap_or_default() } else { host.clone() })
        }
        Endpoint::Unix { .. } => None, // libpq never uses SSL over Unix-domain sockets
    };
    let setup = match &tls_host {
        Some(h) => tls::setup(params, h).map_err(|e| Failure::fatal(e.to_string()))?,
        None => None,
    };
    let first_try_tls = setup.is_some() && params.sslmode != SslMode::Allow;
    let result = handshake_and_startup(
        params,
        opts,
        endpoint,
        target,
        setup.as_ref().filter(|_| first_try_tls),
        prompted,
    )
    .await;
    match (result, params.sslmode) {
        // prefer: the server refused the encrypted session (e.g. hostnossl) or TLS failed: retry in the clear.
        (Err(f), SslMode::Prefer) if setup.is_some() && (f.over_tls || f.cause.starts_with("SSL")) => {
            handshake_and_startup(params, opts, endpoint, target, None, prompted)
                .await
                .map_err(|e| e.after(f))
        }
        // allow: the server refused the plain session (e.g. hostssl only): retry with TLS.
        (Err(f), SslMode::Allow) if setup.is_some() && f.server_refused => {
            handshake_and_startup(params, opts, endpoint, target, setup.as_ref(), prompted)
                .await
                .map_err(|e| e.after(f))
        }
        (r, _) => r,
    }
}

async fn handshake_and_startup(
    params: &ConnParams,
    opts: &ConnectOptions,
    endpoint: &Endpoint,
    target: &Target,
    tls_setup: Option<&tls::TlsSetup>,
    prompted: &mut Option<String>,
) -> Result<Connection, Failure> {
    let mut socket = open_socket(target, params).await?;
    if let (Some(setup), Socket::Tcp(_)) = (tls_setup, &socket) {
        let Socket::Tcp(mut tcp) = socket else { unreachable!("matched Tcp above") };
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        tcp.write_all(&req).await.map_err(|e| {
            Failure::plain(format!("could not send SSL negotiation packet: {}", os_error(&e)))
        })?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| Failure::plain(format!("could not receive data from server: {}", os_error(&e))))?;
        socket = match answer[0] {
            b'S' => Socket::Tls(Box::new(
                tls::handshake(setup, tcp).await.map_err(|e| Failure::fatal(ssl_error_text(&e)))?,
            )),
            b'N' if params.sslmode == SslMode::Prefer || params.sslmode == SslMode::Allow => Socket::Tcp(tcp),
            b'N' => return Err(Failure::fatal("server does not support SSL, but SSL was required")),
            other => {
                return Err(Failure::plain(format!(
                    "received invalid response to SSL negotiation: {}",
                    type_byte(other)
                )))
            }
        };
    }
    let over_tls = socket.is_tls();
    let mut conn = Connection::new(socket, target.server_name(), opts.max_message);
    startup(&mut conn, params, opts, endpoint, prompted).await.map_err(|f| Failure { over_tls, ..f })?;
    Ok(conn)
}

async fn startup(
    conn: &mut Connection,
    params: &ConnParams,
    opts: &ConnectOptions,
    endpoint: &Endpoint,
    prompted: &mut Option<String>,
) -> Result<(), Failure> {
    let mut kv: Vec<(&str, &str)> = vec![("user", params.user.as_str())];
    if let Some(db) = &params.dbname {
        kv.push(("database", db));
    }
    if opts.replication {
        kv.push(("replication", "true"));
    }
    if let Some(app) = params.application_name.as_ref().or(params.fallback_application_name.as_ref()) {
        kv.push(("application_name", app));
    }
    if let Some(o) = &params.options {
        kv.push(("options", o));
    }
    let mut buf = BytesMut::new();
    frontend::startup_message(kv.iter().copied(), &mut buf)
        .map_err(|e| Failure::fatal(format!("invalid startup parameter: {e}")))?;
    conn.send(buf).await?;

    let dbname = if opts.replication {
        "replication".to_string()
    } else {
        params.dbname.clone().unwrap_or_else(|| params.user.clone())
    };
    let mut source = || -> Option<String> {
        if let Some(p) = &params.password {
            return Some(p.clone());
        }
        if let Some(p) = prompted.as_ref() {
            return Some(p.clone());
        }
        if let Some(path) =
            params.passfile.clone().or_else(|| pgpass::default_path(&crate::conn::conninfo::process_env))
        {
            match pgpass::lookup(&path, &pgpass_host(endpoint), endpoint.port(), &dbname, &params.user) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if opts.prompt != PasswordPrompt::Never {
            *prompted = prompt_password();
            return prompted.clone();
        }
        None
    };
    authenticate(conn, &params.user, params.channel_binding, &mut source as &mut dyn PasswordSource).await?;

    loop {
        match conn.recv().await? {
            Backend::BackendKeyData { .. } => {}
            Backend::ReadyForQuery { .. } => break,
            Backend::NegotiateProtocolVersion { .. } => {}
            other => return Err(conn.unexpected(&other, "after authentication").into()),
        }
    }
    let version = conn.parameter("server_version").and_then(parse_server_version).ok_or_else(|| {
        Failure::fatal(format!(
            "server reported an unusable server_version {}",
            quoted(conn.parameter("server_version").unwrap_or(""))
        ))
    })?;
    conn.set_version_num(version);
    Ok(())
}

/// The host name .pgpass entries are matched against (libpq: `localhost` for the default socket directory).
fn pgpass_host(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Unix { dir, .. } if *dir == crate::conn::conninfo::default_socket_dir() => {
            "localhost".to_string()
        }
        other => other.host_for_display(),
    }
}

/// Prompt "Password: " on the terminal, as libpq's PQconnectdb callers do; None without a terminal.
fn prompt_password() -> Option<String> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    rpassword::prompt_password("Password: ").ok()
}

/// What a server is, as far as a replication session can tell: in recovery (a standby) or not, and whether
/// its sessions are read-only. `target_session_attrs`, `receive --failover` and `check` all read it here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerRole {
    /// None when PostgreSQL 13 cannot tell (default_transaction_read_only is on: see [`server_role`]).
    pub in_recovery: Option<bool>,
    pub read_only: bool,
}

impl ServerRole {
    /// `primary`, `standby`, or `read-only` when PostgreSQL 13 cannot tell which.
    pub fn name(self) -> &'static str {
        match self.in_recovery {
            Some(false) => "primary",
            Some(true) => "standby",
            None => "read-only",
        }
    }

    /// Why this server does not satisfy `wanted` (libpq's words), or None when it does.
    pub fn refusal(self, wanted: TargetSessionAttrs) -> Option<&'static str> {
        let needs_recovery_state = matches!(
            wanted,
            TargetSessionAttrs::Primary | TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby
        );
        let Some(in_recovery) = self.in_recovery.or((!needs_recovery_state).then_some(false)) else {
            return Some(
                "cannot tell whether the server is in hot standby mode: before PostgreSQL 14 a replication \
                 connection sees only that sessions are read-only, and default_transaction_read_only is on",
            );
        };
        let (ok, reason) = match wanted {
            TargetSessionAttrs::ReadWrite => (!self.read_only, "session is read-only"),
            TargetSessionAttrs::ReadOnly => (self.read_only, "session is not read-only"),
            TargetSessionAttrs::Primary => (!in_recovery, "server is in hot standby mode"),
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => {
                (in_recovery, "server is not in hot standby mode")
            }
            TargetSessionAttrs::Any => (true, ""),
        };
        (!ok).then_some(reason)
    }
}

/// The server's role the way libpq reads it for `target_session_attrs`: from the `in_hot_standby` and
/// `default_transaction_read_only` parameters (14+), else `SHOW transaction_read_only` and
/// `SHOW default_transaction_read_only`.
pub async fn server_role(conn: &mut Connection) -> Result<ServerRole, ConnError> {
    let on = |v: Option<&str>| v == Some("on");
    if conn.parameter("in_hot_standby").is_some() {
        let hs = on(conn.parameter("in_hot_standby"));
        return Ok(ServerRole {
            in_recovery: Some(hs),
            read_only: hs || on(conn.parameter("default_transaction_read_only")),
        });
    }
    // PostgreSQL 13: the walsender answers SHOW (not pg_is_in_recovery()). Its transactions are read-only in
    // recovery or when default_transaction_read_only is on; only in the first case does read-only mean hot
    // standby. With the default on, a primary and a standby look alike.
    let mut show = async |name: &'static str| -> Result<bool, ConnError> {
        let rs = conn.simple_query(&format!("SHOW {name}")).await?;
        let value = parse_show(&rs).map_err(|e| ConnError::Unexpected {
            server: conn.server().to_string(),
            got: format!("reply ({e})"),
            context: "to SHOW",
        })?;
        Ok(value == "on")
    };
    let read_only = show("transaction_read_only").await?;
    let default_read_only = show("default_transaction_read_only").await?;
    let in_recovery = if !read_only {
        Some(false)
    } else if !default_read_only {
        Some(true)
    } else {
        None
    };
    Ok(ServerRole { in_recovery, read_only })
}

/// Check `target_session_attrs` the way libpq does ([`server_role`], [`ServerRole::refusal`]).
async fn check_session_attrs(conn: &mut Connection, wanted: TargetSessionAttrs) -> Result<(), Failure> {
    if wanted == TargetSessionAttrs::Any {
        return Ok(());
    }
    let role = server_role(conn).await?;
    match role.refusal(wanted) {
        None => Ok(()),
        Some(reason) => Err(Failure::plain(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetSessionAttrs::*;

    #[test]
    fn roles_against_target_session_attrs() {
        let primary = ServerRole { in_recovery: Some(false), read_only: false };
        let standby = ServerRole { in_recovery: Some(true), read_only: true };
        let read_only_primary = ServerRole { in_recovery: Some(false), read_only: true };
        // PostgreSQL 13 with default_transaction_read_only on: a primary and a standby look alike.
        let unknown = ServerRole { in_recovery: None, read_only: true };
        let table = [
            (Any, [None, None, None, None]),
            (
                ReadWrite,
                [
                    None,
                    Some("session is read-only"),
                    Some("session is read-only"),
                    Some("session is read-only"),
                ],
            ),
            (ReadOnly, [Some("session is not read-only"), None, None, None]),
            (Primary, [None, Some("server is in hot standby mode"), None, Some("cannot tell")]),
            (
                Standby,
                [
                    Some("server is not in hot standby mode"),
                    None,
                    Some("server is not in hot standby mode"),
                    Some("cannot tell"),
                ],
            ),
        ];
        for (attrs, expected) in table {
            for (role, want) in [primary, standby, read_only_primary, unknown].into_iter().zip(expected) {
                let got = role.refusal(attrs);
                match want {
                    None => assert_eq!(got, None, "{attrs:?} {role:?}"),
                    Some(w) => assert!(got.is_some_and(|g| g.starts_with(w)), "{attrs:?} {role:?}: {got:?}"),
                }
            }
        }
        assert_eq!([primary.name(), standby.name(), unknown.name()], ["primary", "standby", "read-only"]);
        assert_eq!(passes(PreferStandby), [Standby, Any]);
        assert_eq!(passes(ReadWrite), [ReadWrite]);
        assert_eq!(ReadWrite.name(), "read-write");
        assert_eq!(PreferStandby.name(), "prefer-standby");
    }
}
