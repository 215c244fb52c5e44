//! Integration tests of the connection layer (src/conn) against real PostgreSQL servers: every auth method,
//! every sslmode (successes and failures), Unix sockets, multi-host ordering and target_session_attrs,
//! failure messages, hostile servers, and the replication commands on every available server major.
//!
//! Each test starts its own cluster(s), so the tests run in parallel. Nothing sleeps for a fixed time.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{format_lsn, parse_lsn, wait_until, Cluster, PasswordEncryption, PgInstall};
use walkeeper::conn::conninfo::{self, ConnInfoError, Sources};
use walkeeper::conn::{connect, ConnParams, ConnectError, ConnectOptions, Connection, PasswordPrompt};
use walkeeper::protocol::replication as repl;
use walkeeper::wal::Lsn;

/// Upper bound for one connection attempt in these tests (a hang is a failure, not a wait).
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// Resolves `conninfo` with an environment holding only `env` (plus a PGPASSFILE that does not exist, so the
/// developer's own ~/.pgpass never leaks in).
fn resolve_env(conninfo: &str, env: &[(&str, &str)]) -> Result<ConnParams, ConnInfoError> {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("PGPASSFILE".into(), "/nonexistent/walkeeper-tests/pgpass".into());
    vars.insert("HOME".into(), "/nonexistent/walkeeper-tests".into());
    for (k, v) in env {
        vars.insert(k.to_string(), v.to_string());
    }
    let sources = Sources {
        conninfo: Some(conninfo),
        fallback_application_name: Some("walkeeper_conn_tests"),
        ..Sources::default()
    };
    conninfo::resolve(&sources, &|name| vars.get(name).cloned())
}

fn params(conninfo: &str) -> ConnParams {
    resolve_env(conninfo, &[]).unwrap_or_else(|e| panic!("resolve {conninfo:?}: {e}"))
}

async fn try_connect_params(p: &ConnParams, replication: bool) -> Result<Connection, ConnectError> {
    let opts = ConnectOptions { prompt: PasswordPrompt::Never, replication, ..ConnectOptions::default() };
    tokio::time::timeout(DEADLINE, connect(p, &opts))
        .await
        .unwrap_or_else(|_| panic!("connect did not finish within {DEADLINE:?}: {p:?}"))
}

async fn try_connect(conninfo: &str) -> Result<Connection, ConnectError> {
    try_connect_params(&params(conninfo), true).await
}

async fn connect_ok(conninfo: &str) -> Connection {
    match try_connect(conninfo).await {
        Ok(c) => c,
        Err(e) => panic!("connecting with {conninfo:?} failed: {e}"),
    }
}

async fn connect_err(conninfo: &str) -> String {
    match try_connect(conninfo).await {
        Ok(c) => panic!("connecting with {conninfo:?} succeeded (to {}), expected a failure", c.server()),
        Err(e) => e.to_string(),
    }
}

/// The libpq wording for a TCP server in messages.
fn at(port: u16) -> String {
    format!("connection to server at \"127.0.0.1\", port {port} failed: ")
}

/// A loopback port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// IDENTIFY_SYSTEM proves the session is a working walsender connection.
async fn identify(conn: &mut Connection) -> repl::SystemIdentity {
    let rs = conn.simple_query(repl::identify_system()).await.expect("IDENTIFY_SYSTEM");
    repl::parse_identify_system(&rs).expect("parse IDENTIFY_SYSTEM")
}

fn sysid(c: &Cluster) -> u64 {
    c.psql("SELECT system_identifier FROM pg_control_system()").parse().unwrap()
}

/// Writes a password file with the given mode in a fresh temp dir.
fn pgpass_file(contents: &str, mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgpass");
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

/// Captures what the library logs with `tracing` on this thread (tests run on a current-thread runtime).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt().with_writer(captured.clone()).with_ansi(false).finish();
    (captured.clone(), tracing::subscriber::set_default(subscriber))
}

// ---------------------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------------------

/// trust, password (cleartext), md5 and scram-sha-256: the right password from the conninfo, from PGPASSWORD,
/// and from a 0600 password file; a 0644 file is ignored with a warning; a wrong password fails with the
/// server's message naming the host; no password with -w fails as libpq does.
#[tokio::test]
async fn auth_methods_with_each_password_source() {
    let c = Cluster::start();
    let port = c.port();
    c.create_role("u_trust", None, PasswordEncryption::Scram, true);
    c.create_role("u_pw", Some("pw-secret"), PasswordEncryption::Scram, true);
    c.create_role("u_md5", Some("md5-secret"), PasswordEncryption::Md5, true);
    c.create_role("u_scram", Some("scram secret'\\"), PasswordEncryption::Scram, true);
    c.set_hba(&[
        "host replication u_trust 127.0.0.1/32 trust",
        "host replication u_pw 127.0.0.1/32 password",
        "host replication u_md5 127.0.0.1/32 md5",
        "host replication u_scram 127.0.0.1/32 scram-sha-256",
    ]);
    let sys = sysid(&c);
    let base = |user: &str| format!("host=127.0.0.1 port={port} user={user}");

    let mut conn = connect_ok(&base("u_trust")).await;
    assert_eq!(identify(&mut conn).await.system_id, sys);
    assert!(!conn.is_tls());
    conn.close().await;

    for (user, password) in [("u_pw", "pw-secret"), ("u_md5", "md5-secret"), ("u_scram", "scram secret'\\")] {
        let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
        // In the connection string.
        let mut conn = connect_ok(&format!("{} password='{quoted}'", base(user))).await;
        assert_eq!(identify(&mut conn).await.system_id, sys, "{user}");
        conn.close().await;

        // From the environment (PGPASSWORD through resolve's env lookup).
        let p = resolve_env(&base(user), &[("PGPASSWORD", password)]).unwrap();
        assert_eq!(p.password.as_deref(), Some(password));
        let mut conn =
            try_connect_params(&p, true).await.unwrap_or_else(|e| panic!("{user} PGPASSWORD: {e}"));
        assert_eq!(identify(&mut conn).await.system_id, sys, "{user}");
        conn.close().await;

        // From a 0600 password file (named by PGPASSFILE and by passfile=); libpq escapes `\` and `:`.
        let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
        let line = format!("# comment\n127.0.0.1:{port}:replication:{user}:{escaped}\n");
        let (_dir, file) = pgpass_file(&format!("127.0.0.1:{port}:replication:{user}:wrong\n"), 0o600);
        let (_dir2, good) = pgpass_file(&line, 0o600);
        let p = resolve_env(&base(user), &[("PGPASSFILE", good.to_str().unwrap())]).unwrap();
        assert_eq!(p.password, None);
        let mut conn = try_connect_params(&p, true).await.unwrap_or_else(|e| panic!("{user} pgpass: {e}"));
        assert_eq!(identify(&mut conn).await.system_id, sys, "{user}");
        conn.close().await;
        let via_keyword = format!("{} passfile={}", base(user), good.display());
        connect_ok(&via_keyword).await.close().await;
        // A password given explicitly wins over the file's (wrong) one.
        let p =
            resolve_env(&format!("{} passfile={}", base(user), file.display()), &[("PGPASSWORD", password)])
                .unwrap();
        try_connect_params(&p, true).await.unwrap_or_else(|e| panic!("{user}: {e}")).close().await;
        // The file's wrong password is used when nothing else is given, and fails.
        let e = connect_err(&format!("{} passfile={}", base(user), file.display())).await;
        assert!(e.contains(&format!("password authentication failed for user \"{user}\"")), "{e}");

        // A password file readable by others is ignored, with a warning.
        let (_dir3, open) = pgpass_file(&line, 0o644);
        let (logs, guard) = capture_logs();
        let e = connect_err(&format!("{} passfile={}", base(user), open.display())).await;
        drop(guard);
        assert_eq!(e, format!("{}fe_sendauth: no password supplied", at(port)));
        let logs = logs.text();
        assert!(logs.contains("WARN"), "{logs}");
        assert!(
            logs.contains(&format!("password file \"{}\" has group or world access", open.display())),
            "{logs}"
        );

        // Wrong password: the server's message, naming the host.
        let e = connect_err(&format!("{} password=nope", base(user))).await;
        assert_eq!(e, format!("{}FATAL:  password authentication failed for user \"{user}\"", at(port)));

        // No password at all, and never prompt (-w).
        let e = connect_err(&base(user)).await;
        assert_eq!(e, format!("{}fe_sendauth: no password supplied", at(port)));
    }
    // The server saw each method: log_connections records them (14+ logs the method; 15 is the default).
    let log = c.server_log();
    if c.major() >= 14 {
        for method in ["method=password", "method=md5", "method=scram-sha-256"] {
            assert!(log.contains(method), "server log lacks {method}");
        }
    }
}

/// SCRAM-SHA-256-PLUS with channel_binding=require over TLS; channel_binding=require refused when the server
/// asks for md5, a cleartext password, or nothing (trust), or when there is no TLS; disable uses plain SCRAM.
#[tokio::test]
async fn scram_channel_binding() {
    let mut c = Cluster::start();
    let pki = c.enable_tls();
    let port = c.port();
    c.create_role("cb_scram", Some("s3cret"), PasswordEncryption::Scram, true);
    c.create_role("cb_md5", Some("m5"), PasswordEncryption::Md5, true);
    c.create_role("cb_pw", Some("pw"), PasswordEncryption::Scram, true);
    c.create_role("cb_trust", None, PasswordEncryption::Scram, true);
    c.set_hba(&[
        "host replication cb_scram 127.0.0.1/32 scram-sha-256",
        "host replication cb_md5 127.0.0.1/32 md5",
        "host replication cb_pw 127.0.0.1/32 password",
        "host replication cb_trust 127.0.0.1/32 trust",
    ]);
    let ca = pki.ca_cert();
    let base = |user: &str, extra: &str| {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={port} user={user} sslrootcert={} {extra}",
            ca.display()
        )
    };

    // SCRAM-SHA-256-PLUS: the only way channel_binding=require can succeed.
    for sslmode in ["require", "verify-ca", "verify-full"] {
        let mut conn = connect_ok(&base(
            "cb_scram",
            &format!("password=s3cret channel_binding=require sslmode={sslmode}"),
        ))
        .await;
        assert!(conn.is_tls());
        assert_eq!(identify(&mut conn).await.system_id, sysid(&c));
        conn.close().await;
    }
    // prefer (the default) and disable both work over TLS.
    for cb in ["prefer", "disable"] {
        let conn = connect_ok(&base("cb_scram", &format!("password=s3cret channel_binding={cb}"))).await;
        assert!(conn.is_tls());
        conn.close().await;
    }
    // Without TLS: plain SCRAM works unless binding is required.
    connect_ok(&base("cb_scram", "password=s3cret sslmode=disable channel_binding=prefer"))
        .await
        .close()
        .await;
    let e = connect_err(&base("cb_scram", "password=s3cret sslmode=disable channel_binding=require")).await;
    assert!(e.starts_with(&format!("connection to server at \"localhost\", port {port} failed: ")), "{e}");
    assert!(
        e.ends_with("channel binding is required, but server did not offer an authentication method that supports channel binding"),
        "{e}"
    );
    // Wrong password with binding required: the server's message. sslmode=prefer then retries without TLS
    // (as libpq does), which cannot bind: both attempts are reported, in order.
    let e = connect_err(&base("cb_scram", "password=bad channel_binding=require sslmode=require")).await;
    assert_eq!(
        e,
        format!(
            "connection to server at \"localhost\", port {port} failed: FATAL:  password authentication failed for user \"cb_scram\""
        )
    );
    let e = connect_err(&base("cb_scram", "password=bad channel_binding=require")).await;
    let parts: Vec<&str> = e.split("; ").collect();
    assert_eq!(parts.len(), 2, "{e}");
    assert!(parts[0].ends_with("FATAL:  password authentication failed for user \"cb_scram\""), "{e}");
    assert!(parts[1].ends_with("channel binding is required, but server did not offer an authentication method that supports channel binding"), "{e}");

    // md5 / cleartext password cannot bind.
    for user in ["cb_md5", "cb_pw"] {
        let e = connect_err(&base(user, "password=x channel_binding=require")).await;
        assert!(
            e.ends_with("channel binding required but not supported by server's authentication request"),
            "{user}: {e}"
        );
        // ... and work without requiring it.
        let pw = if user == "cb_md5" { "m5" } else { "pw" };
        connect_ok(&base(user, &format!("password={pw} channel_binding=prefer"))).await.close().await;
    }
    // trust authenticates without any exchange.
    let e = connect_err(&base("cb_trust", "channel_binding=require")).await;
    assert!(
        e.ends_with("channel binding required, but server authenticated client without channel binding"),
        "{e}"
    );
    connect_ok(&base("cb_trust", "channel_binding=disable")).await.close().await;
}

// ---------------------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------------------

/// Every sslmode against a server with TLS on (successes and verification failures), then hostssl-only and
/// hostnossl-only pg_hba (prefer/allow fallbacks), then the same server with ssl=off.
#[tokio::test]
async fn sslmodes_and_fallbacks() {
    let mut c = Cluster::start();
    let pki = c.enable_tls();
    let port = c.port();
    let ca = pki.ca_cert().display().to_string();
    let other = pki.other_ca_cert().display().to_string();
    let tcp = |extra: &str| format!("host=127.0.0.1 port={port} user=postgres {extra}");
    let named =
        |host: &str, extra: &str| format!("host={host} hostaddr=127.0.0.1 port={port} user=postgres {extra}");
    // Which sessions the server sees as encrypted (pg_stat_ssl of the walsenders).
    let server_saw_tls = |c: &Cluster| {
        c.psql("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_replication USING (pid) WHERE ssl")
    };

    // Modes that never verify.
    for (mode, tls) in [("disable", false), ("allow", false), ("prefer", true), ("require", true)] {
        let mut conn = connect_ok(&tcp(&format!("sslmode={mode}"))).await;
        assert_eq!(conn.is_tls(), tls, "sslmode={mode}");
        identify(&mut conn).await;
        conn.close().await;
    }
    // The server agrees: a streaming session opened with sslmode=require is encrypted.
    {
        let mut conn = connect_ok(&tcp("sslmode=require")).await;
        let id = identify(&mut conn).await;
        conn.start_copy_both(&repl::start_replication(None, id.xlogpos, id.timeline).unwrap()).await.unwrap();
        assert!(wait_until(DEADLINE, || server_saw_tls(&c) == "1"), "server does not see a TLS walsender");
        drop(conn);
    }
    // verify-ca: the right CA, then a CA that signed nothing here.
    let conn = connect_ok(&tcp(&format!("sslmode=verify-ca sslrootcert={ca}"))).await;
    assert!(conn.is_tls());
    conn.close().await;
    let e = connect_err(&tcp(&format!("sslmode=verify-ca sslrootcert={other}"))).await;
    assert!(e.starts_with(&at(port)), "{e}");
    assert!(e.contains("certificate does not verify"), "{e}");
    assert!(e.contains(&other), "names the root certificate file: {e}");
    assert!(!e.contains('\n'), "{e}");
    // verify-ca / verify-full without a root certificate file.
    let e = connect_err(&tcp("sslmode=verify-ca sslrootcert=/nonexistent/root.crt")).await;
    assert!(e.contains("root certificate file \"/nonexistent/root.crt\" does not exist"), "{e}");

    // verify-full: the certificate is for DNS:localhost and IP:127.0.0.1.
    for host in ["localhost", "127.0.0.1"] {
        let conn = connect_ok(&named(host, &format!("sslmode=verify-full sslrootcert={ca}"))).await;
        assert!(conn.is_tls(), "{host}");
        conn.close().await;
    }
    let conn =
        connect_ok(&format!("host=localhost port={port} user=postgres sslmode=verify-full sslrootcert={ca}"))
            .await;
    assert!(conn.is_tls());
    conn.close().await;
    let e = connect_err(&named("wrong.example", &format!("sslmode=verify-full sslrootcert={ca}"))).await;
    assert!(
        e.starts_with(&format!("connection to server at \"wrong.example\", port {port} failed: ")),
        "{e}"
    );
    assert!(e.contains("does not match host name \"wrong.example\""), "{e}");
    // verify-ca does not check the name.
    connect_ok(&named("wrong.example", &format!("sslmode=verify-ca sslrootcert={ca}"))).await.close().await;
    let e = connect_err(&named("localhost", &format!("sslmode=verify-full sslrootcert={other}"))).await;
    assert!(e.contains("does not verify"), "{e}");
    // As in libpq, an existing root certificate file is used by every sslmode: require then fails to verify,
    // and prefer falls back to an unencrypted session.
    let e = connect_err(&tcp(&format!("sslmode=require sslrootcert={other}"))).await;
    assert!(e.contains("certificate does not verify"), "{e}");
    assert!(!connect_ok(&tcp(&format!("sslmode=prefer sslrootcert={other}"))).await.is_tls());
    assert!(connect_ok(&tcp(&format!("sslmode=prefer sslrootcert={ca}"))).await.is_tls());

    // hostssl only: allow tries plain first, is refused, retries with TLS; disable fails with pg_hba's message.
    c.set_hba(&["hostssl replication postgres 127.0.0.1/32 trust"]);
    for mode in ["allow", "prefer", "require"] {
        let conn = connect_ok(&tcp(&format!("sslmode={mode}"))).await;
        assert!(conn.is_tls(), "hostssl, sslmode={mode}");
        conn.close().await;
    }
    let e = connect_err(&tcp("sslmode=disable")).await;
    assert!(e.starts_with(&at(port)), "{e}");
    assert!(
        e.contains("FATAL:  no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"postgres\""),
        "{e}"
    );

    // hostnossl only: prefer is refused over TLS and retries in the clear; require fails.
    c.set_hba(&["hostnossl replication postgres 127.0.0.1/32 trust"]);
    for mode in ["disable", "allow", "prefer"] {
        let conn = connect_ok(&tcp(&format!("sslmode={mode}"))).await;
        assert!(!conn.is_tls(), "hostnossl, sslmode={mode}");
        conn.close().await;
    }
    for mode in ["require".to_string(), format!("verify-full sslrootcert={ca}")] {
        let e = connect_err(&named("localhost", &format!("sslmode={mode}"))).await;
        assert!(e.contains("no pg_hba.conf entry for replication connection"), "{mode}: {e}");
    }

    // Client certificates (pg_hba `cert`): the CN must be the user.
    c.create_role("certuser", None, PasswordEncryption::Scram, true);
    c.set_hba(&["hostssl replication certuser 127.0.0.1/32 cert"]);
    let (cert, key) = pki.client_cert("certuser");
    let (other_cert, other_key) = pki.client_cert("someone_else");
    let cert_conn = |cert: &Path, key: &Path| {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={port} user=certuser sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
            cert.display(),
            key.display()
        )
    };
    let mut conn = connect_ok(&cert_conn(&cert, &key)).await;
    assert!(conn.is_tls());
    assert_eq!(identify(&mut conn).await.system_id, sysid(&c));
    conn.close().await;
    let e = connect_err(&cert_conn(&other_cert, &other_key)).await;
    assert!(e.contains("certificate authentication failed for user \"certuser\""), "{e}");
    let e = connect_err(&format!("host=127.0.0.1 port={port} user=certuser sslmode=require")).await;
    assert!(e.starts_with(&at(port)), "{e}");
    assert!(e.contains("connection requires a valid client certificate"), "{e}");
    // A client certificate from a CA the server does not trust: the server aborts the handshake.
    let (rogue_cert, rogue_key) = rogue_client_cert(&pki.other_ca_cert(), "certuser");
    let e = connect_err(&cert_conn(&rogue_cert, &rogue_key)).await;
    // (TLS 1.3: the alert arrives after the client's side of the handshake, while reading the startup reply.)
    assert_eq!(
        e,
        format!("connection to server at \"localhost\", port {port} failed: received fatal alert: UnknownCA")
    );
    // A key that does not belong to the certificate is refused before connecting.
    let e = connect_err(&cert_conn(&cert, &other_key)).await;
    assert!(e.contains("certificate does not match private key file"), "{e}");
    // A key file readable by others is refused, as libpq does.
    let dir = tempfile::tempdir().unwrap();
    let open_key = dir.path().join("open.key");
    std::fs::copy(&key, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = connect_err(&cert_conn(&cert, &open_key)).await;
    assert!(e.contains("has group or world access"), "{e}");

    // The same server with ssl=off: prefer/allow go plain, require and verify-* fail with libpq's message.
    c.set_hba(&["host replication postgres 127.0.0.1/32 trust"]);
    // No cipher in common (the server offers only TLS 1.2 CBC suites, which rustls does not implement): the
    // handshake fails with one "SSL error:" prefix; prefer falls back to an unencrypted session.
    c.psql("ALTER SYSTEM SET ssl_max_protocol_version = 'TLSv1.2'");
    c.psql("ALTER SYSTEM SET ssl_ciphers = 'ECDHE-ECDSA-AES128-SHA'");
    c.reload();
    let e = connect_err(&format!("host=127.0.0.1 port={port} user=postgres sslmode=require")).await;
    assert_eq!(e, format!("{}SSL error: received fatal alert: HandshakeFailure", at(port)));
    assert!(!connect_ok(&format!("host=127.0.0.1 port={port} user=postgres sslmode=prefer")).await.is_tls());

    c.psql("ALTER SYSTEM SET ssl = off");
    c.reload();
    assert_eq!(c.psql("SHOW ssl"), "off");
    for mode in ["disable", "allow", "prefer"] {
        let mut conn = connect_ok(&tcp(&format!("sslmode={mode}"))).await;
        assert!(!conn.is_tls(), "ssl=off, sslmode={mode}");
        identify(&mut conn).await;
        conn.close().await;
    }
    for mode in [
        "require".to_string(),
        format!("verify-ca sslrootcert={ca}"),
        format!("verify-full sslrootcert={ca}"),
    ] {
        let e = connect_err(&named("localhost", &format!("sslmode={mode}"))).await;
        assert_eq!(
            e,
            format!(
                "connection to server at \"localhost\", port {port} failed: server does not support SSL, but SSL was required"
            ),
            "{mode}"
        );
    }
}

/// A client certificate for `user` signed by the CA next to `ca_cert` (its key is `<stem>.key` beside it).
fn rogue_client_cert(ca_cert: &Path, user: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = ca_cert.parent().unwrap();
    let ca_key = ca_cert.with_extension("key");
    let (key, csr, cert) = (dir.join("rogue.key"), dir.join("rogue.csr"), dir.join("rogue.crt"));
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();
    #[rustfmt::skip]
    openssl(&[
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", &s(&key), "-out", &s(&csr), "-subj", &format!("/CN={user}"),
    ]);
    #[rustfmt::skip]
    openssl(&[
        "x509", "-req", "-in", &s(&csr), "-CA", &s(ca_cert), "-CAkey", &s(&ca_key),
        "-set_serial", "4242", "-days", "30", "-extfile", &s(&dir.join("openssl.cnf")),
        "-extensions", "client", "-out", &s(&cert),
    ]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
}

// ---------------------------------------------------------------------------------------------------------
// Unix sockets
// ---------------------------------------------------------------------------------------------------------

/// host = the socket directory: trust and scram over the socket, never TLS (even with sslmode=require), and
/// failures name the socket file.
#[tokio::test]
async fn unix_socket_connections() {
    let mut c = Cluster::start();
    let _pki = c.enable_tls();
    let port = c.port();
    c.create_role("sock_pw", Some("sockpw"), PasswordEncryption::Scram, true);
    c.set_hba(&["local replication postgres trust", "local replication sock_pw scram-sha-256"]);
    let dir = c.socket_dir();
    let socket = dir.join(format!(".s.PGSQL.{port}"));

    let mut conn = connect_ok(&format!("host={} port={port} user=postgres", dir.display())).await;
    assert_eq!(conn.server(), socket.display().to_string());
    assert!(!conn.is_tls());
    assert_eq!(identify(&mut conn).await.system_id, sysid(&c));
    conn.close().await;
    // libpq never uses TLS on a Unix socket, whatever sslmode says.
    let conn = connect_ok(&format!("host={} port={port} user=postgres sslmode=require", dir.display())).await;
    assert!(!conn.is_tls());
    conn.close().await;
    // URI form with a percent-encoded socket directory.
    let uri =
        format!("postgresql://postgres@{}:{port}/replication", dir.display().to_string().replace('/', "%2F"));
    connect_ok(&uri).await.close().await;
    let uri = format!("postgresql:///x?host={}&port={port}&user=sock_pw&password=sockpw", dir.display());
    connect_ok(&uri).await.close().await;

    let e = connect_err(&format!("host={} port={port} user=sock_pw password=bad", dir.display())).await;
    assert_eq!(
        e,
        format!(
            "connection to server on socket \"{}\" failed: FATAL:  password authentication failed for user \"sock_pw\"",
            socket.display()
        )
    );
    // A .pgpass entry for a socket directory is matched by the directory name.
    let (_d, file) = pgpass_file(&format!("{}:{port}:replication:sock_pw:sockpw\n", dir.display()), 0o600);
    connect_ok(&format!("host={} port={port} user=sock_pw passfile={}", dir.display(), file.display()))
        .await
        .close()
        .await;
    // TCP is not in pg_hba at all now.
    let e = connect_err(&format!("host=127.0.0.1 port={port} user=postgres sslmode=disable")).await;
    assert!(e.contains("no pg_hba.conf entry"), "{e}");
    // No server on that socket.
    let missing = tempfile::tempdir().unwrap();
    let e = connect_err(&format!("host={} port={port} user=postgres", missing.path().display())).await;
    assert_eq!(
        e,
        format!(
            "connection to server on socket \"{}/.s.PGSQL.{port}\" failed: No such file or directory (is the server running locally and accepting connections on that socket?)",
            missing.path().display()
        )
    );
}

// ---------------------------------------------------------------------------------------------------------
// Multi-host
// ---------------------------------------------------------------------------------------------------------

/// Hosts are tried in order; dead ones are skipped; the first live one wins; all dead lists every attempt.
#[tokio::test]
async fn multi_host_order_and_failures() {
    let a = Cluster::start();
    let b = Cluster::start();
    let (pa, pb) = (a.port(), b.port());
    let (d1, d2) = (dead_port(), dead_port());
    let server = |port: u16| format!("127.0.0.1:{port}");
    let hosts = |ports: &[u16]| {
        let h = vec!["127.0.0.1"; ports.len()].join(",");
        let p: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        format!("host={h} port={} user=postgres", p.join(","))
    };

    for (ports, expected) in [
        (vec![d1, pa], pa),
        (vec![pa, d1], pa),
        (vec![d1, d2, pb], pb),
        (vec![pa, pb], pa),
        (vec![pb, pa], pb),
        (vec![d1, pb, pa], pb),
    ] {
        let mut conn = connect_ok(&hosts(&ports)).await;
        assert_eq!(conn.server(), server(expected), "{ports:?}");
        let want = if expected == pa { sysid(&a) } else { sysid(&b) };
        assert_eq!(identify(&mut conn).await.system_id, want, "{ports:?}");
        conn.close().await;
    }
    // URI form: postgresql://host:port,host:port/
    let uri = format!("postgresql://postgres@127.0.0.1:{d1},127.0.0.1:{pb}/replication");
    assert_eq!(connect_ok(&uri).await.server(), server(pb));
    // A name that does not resolve and a socket directory without a server are skipped too.
    let empty = tempfile::tempdir().unwrap();
    let conninfo = format!(
        "host=nonexistent.invalid,{},127.0.0.1 port={d1},{d2},{pa} user=postgres",
        empty.path().display()
    );
    assert_eq!(connect_ok(&conninfo).await.server(), server(pa));

    // All dead: one failure per host, in order, each naming its host and cause.
    let e = connect_err(&format!(
        "host=127.0.0.1,nonexistent.invalid,{} port={d1},{d2},{d2} user=postgres",
        empty.path().display()
    ))
    .await;
    let parts: Vec<&str> = e.split("; ").collect();
    assert_eq!(parts.len(), 3, "{e}");
    assert!(parts[0].starts_with(&format!("{}Connection refused", at(d1))), "{e}");
    assert!(
        parts[1].starts_with(&format!(
            "connection to server at \"nonexistent.invalid\", port {d2} failed: could not translate host name \"nonexistent.invalid\" to address"
        )),
        "{e}"
    );
    assert!(
        parts[2].starts_with(&format!(
            "connection to server on socket \"{}/.s.PGSQL.{d2}\" failed: No such file or directory",
            empty.path().display()
        )),
        "{e}"
    );

    // An authentication failure ends the search (libpq does not try the remaining hosts).
    a.create_role("only_a", Some("pw_a"), PasswordEncryption::Scram, true);
    a.set_hba(&[
        "host replication only_a 127.0.0.1/32 scram-sha-256",
        "host replication postgres 127.0.0.1/32 trust",
    ]);
    b.create_role("only_a", Some("other"), PasswordEncryption::Scram, true);
    b.set_hba(&["host replication only_a 127.0.0.1/32 scram-sha-256"]);
    let e = connect_err(&format!("host=127.0.0.1,127.0.0.1 port={pb},{pa} user=only_a password=pw_a")).await;
    assert_eq!(e, format!("{}FATAL:  password authentication failed for user \"only_a\"", at(pb)));
}

// ---------------------------------------------------------------------------------------------------------
// target_session_attrs
// ---------------------------------------------------------------------------------------------------------

/// Every target_session_attrs value with a primary + standby pair listed in both orders.
async fn session_attrs_with(install: &PgInstall) {
    let mut primary = Cluster::builder().install(install).start();
    let standby = primary.standby();
    let (p, s) = (primary.port(), standby.port());
    let dead = dead_port();
    let server = |port: u16| format!("127.0.0.1:{port}");
    let ci = |ports: &[u16], attrs: &str| {
        let h = vec!["127.0.0.1"; ports.len()].join(",");
        let p: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        format!("host={h} port={} user=postgres target_session_attrs={attrs}", p.join(","))
    };
    let expect = [
        ("any", [p, s], p),
        ("any", [s, p], s),
        ("read-write", [s, p], p),
        ("read-write", [p, s], p),
        ("primary", [s, p], p),
        ("primary", [p, s], p),
        ("read-only", [p, s], s),
        ("read-only", [s, p], s),
        ("standby", [p, s], s),
        ("standby", [s, p], s),
        ("prefer-standby", [p, s], s),
        ("prefer-standby", [s, p], s),
    ];
    for (attrs, ports, want) in expect {
        let mut conn = connect_ok(&ci(&ports, attrs)).await;
        assert_eq!(conn.server(), server(want), "PG{}: {attrs} {ports:?}", install.major);
        // Both servers share a system identifier; the timeline and recovery state tell them apart.
        identify(&mut conn).await;
        conn.close().await;
    }
    // prefer-standby falls back to any server when no standby is up (the second pass).
    for ports in [[p, dead], [dead, p]] {
        let conn = connect_ok(&ci(&ports, "prefer-standby")).await;
        assert_eq!(conn.server(), server(p), "{ports:?}");
        conn.close().await;
    }
    // No suitable server: each refusal says why.
    let cases = [
        ("standby", p, "server is not in hot standby mode"),
        ("read-only", p, "session is not read-only"),
        ("primary", s, "server is in hot standby mode"),
        ("read-write", s, "session is read-only"),
    ];
    for (attrs, port, why) in cases {
        let e = connect_err(&ci(&[port], attrs)).await;
        assert_eq!(e, format!("{}{why}", at(port)), "PG{}", install.major);
    }
    let e = connect_err(&ci(&[p, dead, p], "standby")).await;
    let parts: Vec<&str> = e.split("; ").collect();
    assert_eq!(parts.len(), 3, "{e}");
    assert_eq!(parts[0], format!("{}server is not in hot standby mode", at(p)));
    assert!(parts[1].starts_with(&format!("{}Connection refused", at(dead))), "{e}");

    // A primary whose sessions default to read-only: a primary, but not read-write.
    primary.psql("ALTER SYSTEM SET default_transaction_read_only = on");
    primary.reload();
    let e = connect_err(&ci(&[p], "read-write")).await;
    assert_eq!(e, format!("{}session is read-only", at(p)));
    assert_eq!(connect_ok(&ci(&[p, s], "read-only")).await.server(), server(p));
    if install.major >= 14 {
        assert_eq!(connect_ok(&ci(&[s, p], "primary")).await.server(), server(p));
        assert_eq!(connect_ok(&ci(&[p, s], "standby")).await.server(), server(s));
    } else {
        // Before 14 a replication connection cannot tell such a primary from a standby: say so.
        let e = connect_err(&ci(&[p], "primary")).await;
        assert!(
            e.starts_with(&format!("{}cannot tell whether the server is in hot standby mode", at(p))),
            "{e}"
        );
        // The standby still is one (its default is off).
        assert_eq!(connect_ok(&ci(&[p, s], "standby")).await.server(), server(s));
    }
}

#[tokio::test]
async fn target_session_attrs_primary_and_standby() {
    session_attrs_with(&PgInstall::default()).await;
}

/// PostgreSQL 13 reports neither in_hot_standby nor default_transaction_read_only: the check asks with SHOW.
#[tokio::test]
async fn target_session_attrs_on_13() {
    if let Some(install) = support::require_major(13) {
        session_attrs_with(&install).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Failure messages
// ---------------------------------------------------------------------------------------------------------

/// A listener that accepts connections and never says a word.
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            // Hold the connection open, swallowing whatever the client sends, until it gives up.
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// Refused, unresolvable, role without REPLICATION, unknown role, no pg_hba entry, bad conninfo, timeout.
#[tokio::test]
async fn connection_failures_name_host_and_cause() {
    let c = Cluster::start();
    let port = c.port();
    let dead = dead_port();

    let e = connect_err(&format!("host=127.0.0.1 port={dead} user=postgres")).await;
    // One line, libpq's cause and hint together.
    assert_eq!(
        e,
        format!(
            "{}Connection refused (is the server running on that host and accepting TCP/IP connections?)",
            at(dead)
        )
    );

    let e = connect_err(&format!("host=nonexistent.invalid port={port} user=postgres")).await;
    assert!(
        e.starts_with(&format!(
            "connection to server at \"nonexistent.invalid\", port {port} failed: could not translate host name \"nonexistent.invalid\" to address: "
        )),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    // A role without REPLICATION is refused by the server for a replication connection...
    c.create_role("norepl", None, PasswordEncryption::Scram, false);
    let e = connect_err(&format!("host=127.0.0.1 port={port} user=norepl")).await;
    let why = if c.major() >= 16 {
        "FATAL:  permission denied to start WAL sender DETAIL:  Only roles with the REPLICATION attribute may start a WAL sender process."
    } else {
        "FATAL:  must be superuser or replication role to start walsender"
    };
    assert_eq!(e, format!("{}{why}", at(port)));
    // ... but may open a normal session.
    let p = params(&format!("host=127.0.0.1 port={port} user=norepl dbname=postgres"));
    let mut conn = try_connect_params(&p, false).await.unwrap();
    let rs = conn.simple_query("SELECT current_user, pg_is_in_recovery()").await.unwrap();
    assert_eq!(rs.rows.len(), 1);
    assert_eq!(rs.rows[0][0].as_deref(), Some(&b"norepl"[..]));
    let err = conn.simple_query("SELECT no_such_column").await.unwrap_err().to_string();
    assert!(err.contains("column \"no_such_column\" does not exist"), "{err}");
    // The connection survives a failed command.
    assert_eq!(conn.simple_query("SELECT 42").await.unwrap().rows[0][0].as_deref(), Some(&b"42"[..]));
    conn.close().await;

    let e = connect_err(&format!("host=127.0.0.1 port={port} user=ghost")).await;
    assert_eq!(e, format!("{}FATAL:  role \"ghost\" does not exist", at(port)));

    c.set_hba(&["host replication postgres 127.0.0.1/32 trust"]);
    let e = connect_err(&format!("host=127.0.0.1 port={port} user=norepl sslmode=disable")).await;
    assert!(e.starts_with(&at(port)), "{e}");
    assert!(
        e.contains("FATAL:  no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"norepl\""),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    // Bad connection strings never reach the network.
    let bad = [
        ("host=127.0.0.1 nosuchkeyword=1", "invalid connection option \"nosuchkeyword\""),
        ("host=127.0.0.1 port", "missing \"=\" after \"port\" in connection info string"),
        ("host='127.0.0.1", "unterminated quoted string in connection info string"),
        (
            "postgresql://[::1/replication",
            "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"postgresql://[::1/replication\"",
        ),
        ("postgresql://localhost/db?sslmode", "missing key/value separator \"=\" in URI query parameter: \"sslmode\""),
        ("postgresql://localhost/db?nosuch=1", "invalid URI query parameter: \"nosuch\""),
        ("postgresql://localhost/d%zzb", "invalid percent-encoded token: \"d%zzb\""),
        ("host=a,b port=1,2,3", "could not match 3 port numbers to 2 hosts"),
        ("host=127.0.0.1 port=99999", "invalid port number: \"99999\""),
        ("host=127.0.0.1 sslmode=sometimes", "invalid sslmode value: \"sometimes\""),
        ("host=127.0.0.1 target_session_attrs=whatever", "invalid target_session_attrs value: \"whatever\""),
        ("host=127.0.0.1 channel_binding=maybe", "invalid channel_binding value: \"maybe\""),
    ];
    for (conninfo, want) in bad {
        match resolve_env(conninfo, &[]) {
            Ok(p) => panic!("{conninfo:?} resolved to {p:?}"),
            Err(e) => assert_eq!(e.to_string(), want, "{conninfo:?}"),
        }
    }

    // connect_timeout against a server that accepts and stays silent; the next host is tried afterwards.
    let silent = silent_server();
    let e = connect_err(&format!("host=127.0.0.1 port={silent} user=postgres connect_timeout=2")).await;
    assert_eq!(e, format!("{}timeout expired", at(silent)));
    let e =
        connect_err(&format!("host=127.0.0.1 port={silent} user=postgres connect_timeout=1 sslmode=disable"))
            .await;
    assert_eq!(e, format!("{}timeout expired", at(silent)));
    let p = resolve_env(
        &format!("host=127.0.0.1,127.0.0.1 port={silent},{port} user=postgres"),
        &[("PGCONNECT_TIMEOUT", "2")],
    )
    .unwrap();
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(2)));
    let conn = try_connect_params(&p, true).await.unwrap();
    assert_eq!(conn.server(), format!("127.0.0.1:{port}"));
}

// ---------------------------------------------------------------------------------------------------------
// Hostile servers
// ---------------------------------------------------------------------------------------------------------

/// A fake server: reads one length-prefixed packet (the startup packet or SSLRequest), answers `reply`, then
/// either closes or keeps reading until the client goes away.
fn fake_server(reply: Vec<u8>, close_after: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut rest = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4).min(1 << 20)];
        if s.read_exact(&mut rest).is_err() {
            return;
        }
        let _ = s.write_all(&reply);
        let _ = s.flush();
        if !close_after {
            let mut buf = [0u8; 1024];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        drop::<TcpStream>(s);
    });
    port
}

fn message(tag: u8, len: i32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Oversized, negative, truncated and unknown messages end the attempt with a clear error, never a panic
/// or an allocation of the announced size.
#[tokio::test]
async fn hostile_server_messages() {
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "sslmode=disable",
            message(b'R', 0x7fff_ffff, &[]),
            false,
            "server sent a message of 2147483647 bytes (type 'R'), more than the limit of 67108864 bytes",
        ),
        (
            "sslmode=disable",
            message(b'R', -1, &[]),
            false,
            "server sent a message with an invalid length -1 (type 'R')",
        ),
        (
            "sslmode=disable",
            message(b'E', 3, &[]),
            false,
            "server sent a message with an invalid length 3 (type 'E')",
        ),
        (
            "sslmode=disable",
            message(0x01, 4, &[]),
            false,
            "malformed backend message (type 0x01) from server: unexpected message type",
        ),
        (
            "sslmode=disable",
            message(b'R', 8, &5i32.to_be_bytes()),
            false,
            "malformed authentication message (type 'R') from server: truncated",
        ),
        (
            "sslmode=disable",
            message(b'R', 100, &[0; 10]),
            true,
            "connection closed by the server in the middle of a message",
        ),
        ("sslmode=disable", Vec::new(), true, "server closed the connection unexpectedly"),
        ("sslmode=require", b"X".to_vec(), false, "received invalid response to SSL negotiation: 'X'"),
        // AuthenticationOk, then ReadyForQuery without a server_version.
        (
            "sslmode=disable",
            [message(b'R', 8, &0i32.to_be_bytes()), message(b'Z', 5, b"I")].concat(),
            false,
            "server reported an unusable server_version \"\"",
        ),
    ];
    for (extra, reply, close_after, want) in cases {
        let port = fake_server(reply, close_after);
        let e = connect_err(&format!("host=127.0.0.1 port={port} user=postgres {extra}")).await;
        assert_eq!(e, format!("{}{want}", at(port)));
    }
    // A smaller bound from ConnectOptions applies to every message.
    let port = fake_server(message(b'S', 4 + 2000, &[b'x'; 2000]), false);
    let p = params(&format!("host=127.0.0.1 port={port} user=postgres sslmode=disable"));
    let opts =
        ConnectOptions { prompt: PasswordPrompt::Never, max_message: 1024, ..ConnectOptions::default() };
    let e = tokio::time::timeout(DEADLINE, connect(&p, &opts)).await.expect("hung").err().expect("must fail");
    let e = e.to_string();
    assert_eq!(
        e,
        format!(
            "{}server sent a message of 2004 bytes (type 'S'), more than the limit of 1024 bytes",
            at(port)
        )
    );
}

// ---------------------------------------------------------------------------------------------------------
// Replication commands, per server major
// ---------------------------------------------------------------------------------------------------------

fn text(rs: &repl::ResultSet, row: usize, col: usize) -> String {
    let v = rs.rows[row][col].as_ref().unwrap_or_else(|| panic!("row {row} column {col} is NULL"));
    String::from_utf8(v.to_vec()).unwrap()
}

async fn replication_commands(major: u32) {
    let Some(install) = support::require_major(major) else { return };
    let mut primary = Cluster::builder().install(&install).segment_size_mb(32).start();
    let port = primary.port();
    let ci = format!("host=127.0.0.1 port={port} user=postgres");
    let mut conn = connect_ok(&ci).await;
    assert_eq!(conn.major(), major);
    let sys = sysid(&primary);

    // IDENTIFY_SYSTEM
    let id = identify(&mut conn).await;
    assert_eq!(id.system_id, sys);
    assert_eq!(id.timeline, 1);
    assert!(id.xlogpos.0 > 0 && id.xlogpos.0 <= primary.current_lsn(), "{}", id.xlogpos);

    // SHOW wal_segment_size: the non-default 32 MB, read from the server.
    let rs = conn.simple_query(&repl::show("wal_segment_size")).await.unwrap();
    assert_eq!(repl::parse_show(&rs).unwrap(), "32MB");
    let size = repl::parse_segment_size(&repl::parse_show(&rs).unwrap()).unwrap();
    assert_eq!(u64::from(size), primary.segment_size());
    assert_eq!(size, 32 << 20);
    let info = walkeeper::stream::session::identify(&mut conn).await.unwrap();
    assert_eq!((info.major, info.segment_size, info.file_mode), (major, 32 << 20, 0o600));
    assert_eq!(info.identity, id);

    // CREATE_REPLICATION_SLOT (permanent), READ_REPLICATION_SLOT (15+), DROP_REPLICATION_SLOT. An ERROR
    // in a walsender drops its temporary slots, so the failing commands come before the temporary slot.
    let slots = |c: &Cluster| {
        c.psql("SELECT slot_name, slot_type, temporary, restart_lsn IS NOT NULL FROM pg_replication_slots ORDER BY 1")
    };
    let rs = conn.simple_query(&repl::create_physical_slot(major, "wk_perm", false).unwrap()).await.unwrap();
    assert_eq!(rs.columns[0], "slot_name");
    assert_eq!(text(&rs, 0, 0), "wk_perm");
    assert_eq!(slots(&primary), "wk_perm|physical|f|t");
    let e =
        conn.simple_query(&repl::create_physical_slot(major, "wk_perm", false).unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("replication slot \"wk_perm\" already exists"), "{e}");
    assert!(e.to_string().starts_with(&format!("127.0.0.1:{port}: ERROR:  ")), "{e}");

    match repl::read_slot(major, "wk_perm").unwrap() {
        Some(cmd) => {
            assert!(major >= 15);
            let found =
                repl::parse_read_slot(&conn.simple_query(&cmd).await.unwrap()).unwrap().expect("slot");
            assert_eq!(found.slot_type, "physical");
            let restart =
                primary.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'wk_perm'");
            assert_eq!(found.restart_lsn, Some(Lsn(parse_lsn(&restart))));
            assert_eq!(found.restart_tli, Some(1));
            let cmd = repl::read_slot(major, "wk_absent").unwrap().unwrap();
            assert_eq!(repl::parse_read_slot(&conn.simple_query(&cmd).await.unwrap()).unwrap(), None);
        }
        None => assert!(major < 15, "READ_REPLICATION_SLOT exists from 15 on"),
    }

    conn.simple_query(&repl::drop_slot("wk_perm", false).unwrap()).await.unwrap();
    assert_eq!(slots(&primary), "");
    let e = conn.simple_query(&repl::drop_slot("wk_perm", true).unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("replication slot \"wk_perm\" does not exist"), "{e}");

    // CREATE_REPLICATION_SLOT ... TEMPORARY: lives as long as the session.
    let rs = conn.simple_query(&repl::create_physical_slot(major, "wk_temp", true).unwrap()).await.unwrap();
    assert_eq!(text(&rs, 0, 0), "wk_temp");
    assert_eq!(slots(&primary), "wk_temp|physical|t|t");

    // START_REPLICATION on the temporary slot reaches CopyBoth and streams WAL from the requested start.
    let start = Lsn(id.xlogpos.0 - id.xlogpos.0 % u64::from(size));
    conn.start_copy_both(&repl::start_replication(Some("wk_temp"), start, 1).unwrap()).await.unwrap();
    let mut first_wal = None;
    for _ in 0..100 {
        match conn.recv().await.unwrap() {
            walkeeper::protocol::messages::Backend::CopyData(data) => {
                if let repl::StreamMessage::XLogData { start, data, .. } =
                    repl::parse_stream_message(data).unwrap()
                {
                    first_wal = Some((start, data.len()));
                    break;
                }
            }
            other => panic!("unexpected {other:?} while streaming"),
        }
    }
    let (got, len) = first_wal.expect("no XLogData within 100 messages");
    assert_eq!(got, start);
    assert!(len > 0);
    assert_eq!(
        primary
            .psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' OR state = 'catchup'"),
        "1"
    );
    drop(conn);
    // The temporary slot goes away with its session.
    assert!(wait_until(DEADLINE, || slots(&primary).is_empty()), "temporary slot outlived its session");

    // TIMELINE_HISTORY after a promotion.
    let switch_before = primary.current_lsn();
    let standby = primary.standby();
    standby.promote();
    let mut conn = connect_ok(&format!("host=127.0.0.1 port={} user=postgres", standby.port())).await;
    let id2 = identify(&mut conn).await;
    assert_eq!(id2.system_id, sys);
    assert_eq!(id2.timeline, 2);
    let (name, content) =
        repl::parse_timeline_history(&conn.simple_query(&repl::timeline_history(2)).await.unwrap()).unwrap();
    assert_eq!(name, "00000002.history");
    let on_disk = std::fs::read(standby.wal_segment_path("00000002.history")).unwrap();
    assert_eq!(&content[..], &on_disk[..]);
    let text = String::from_utf8(content.to_vec()).unwrap();
    let first = text.lines().next().unwrap();
    let fields: Vec<&str> = first.split('\t').collect();
    assert_eq!(fields[0], "1", "{text:?}");
    assert!(
        parse_lsn(fields[1]) >= switch_before,
        "switch point {} before {}",
        fields[1],
        format_lsn(switch_before)
    );
    let e = conn.simple_query(&repl::timeline_history(7)).await.unwrap_err();
    assert!(e.to_string().contains("00000007.history"), "{e}");
    // Streaming timeline 1 from the promoted server ends at the switch point.
    conn.start_copy_both(&repl::start_replication(None, start, 1).unwrap()).await.unwrap();
    conn.close().await;
}

#[test]
fn at_least_two_server_majors_available() {
    let majors: Vec<u32> = PgInstall::all_available().iter().map(|i| i.major).collect();
    assert!(majors.contains(&15), "{majors:?}");
    assert!(majors.len() >= 2, "only {majors:?}: run scripts/fetch-postgres.sh");
}

#[tokio::test]
async fn replication_commands_pg13() {
    replication_commands(13).await;
}

#[tokio::test]
async fn replication_commands_pg14() {
    replication_commands(14).await;
}

#[tokio::test]
async fn replication_commands_pg15() {
    replication_commands(15).await;
}

#[tokio::test]
async fn replication_commands_pg16() {
    replication_commands(16).await;
}

#[tokio::test]
async fn replication_commands_pg17() {
    replication_commands(17).await;
}

#[tokio::test]
async fn replication_commands_pg18() {
    replication_commands(18).await;
}
