//! Tests with certificates made at test time by the `openssl` CLI, and real handshakes against an in-process
//! rustls server on 127.0.0.1.

use super::*;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use proptest::prelude::*;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A temp dir of certificates: `ca` (trusted), `other-ca` (untrusted), `server` (SAN localhost, 127.0.0.1;
/// signed by ca), `server-other` (same key, signed by other-ca), `client` (signed by ca), `ss` (self-signed,
/// CN=localhost, as PostgreSQL's docs make one), `expired` (signed by ca, already expired).
struct Pki {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().expect("run sh/openssl");
    assert!(out.status.success(), "script failed: {script}\n{}", String::from_utf8_lossy(&out.stderr));
}

fn openssl_stdout(dir: &Path, script: &str) -> Vec<u8> {
    let out = Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        sh(
            dir.path(),
            &format!(
                r#"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' > san.ext
printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
openssl req -x509 {EC} -keyout ca.key -out ca.crt -days 30 -subj /CN=walkeeper-test-ca 2>/dev/null
openssl req -x509 {EC} -keyout other-ca.key -out other-ca.crt -days 30 -subj /CN=untrusted-ca 2>/dev/null
openssl req {EC} -keyout server.key -out server.csr -subj /CN=server.example 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 30 -extfile san.ext 2>/dev/null
openssl x509 -req -in server.csr -CA other-ca.crt -CAkey other-ca.key -CAcreateserial -out server-other.crt -days 30 -extfile san.ext 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out expired.crt -days -1 -extfile san.ext 2>/dev/null
openssl req {EC} -keyout client.key -out client.csr -subj /CN=replicator 2>/dev/null
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 30 -extfile client.ext 2>/dev/null
openssl req -new -x509 -days 30 {EC} -subj /CN=localhost -keyout ss.key -out ss.crt 2>/dev/null
chmod 600 *.key
"#
            ),
        );
        Pki { dir, home }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Put a file into the fake home's ~/.postgresql.
    fn install(&self, from: &str, to: &str, mode: u32) {
        let pg = self.home.path().join(".postgresql");
        std::fs::create_dir_all(&pg).unwrap();
        std::fs::copy(self.path(from), pg.join(to)).unwrap();
        std::fs::set_permissions(pg.join(to), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn setup(&self, params: &ConnParams, host: &str) -> Result<Option<TlsSetup>, TlsError> {
        let home = self.home.path().to_path_buf();
        setup_with_home(params, host, move || Some(home))
    }

    fn der(&self, name: &str) -> Vec<u8> {
        pem_certs(FileKind::Cert, &self.path(name)).unwrap().remove(0).to_vec()
    }
}

fn params(mode: SslMode) -> ConnParams {
    ConnParams {
        endpoints: vec![Endpoint::Tcp { host: "localhost".into(), hostaddr: None, port: 5432 }],
        user: "replicator".into(),
        sslmode: mode,
        ..ConnParams::default()
    }
}

fn with_root(mode: SslMode, root: PathBuf) -> ConnParams {
    ConnParams { sslrootcert: Some(root), ..params(mode) }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One-connection TLS server: handshakes, reports the client's certificate chain length, writes "hello".
async fn serve(
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
) -> (SocketAddr, tokio::task::JoinHandle<Result<usize, String>>) {
    let chain = pem_certs(FileKind::Cert, &cert).unwrap();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(key).unwrap()[..]).unwrap().unwrap();
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots(ca).unwrap().store;
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots, provider()).build().unwrap(),
            )
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let n = tls.get_ref().1.peer_certificates().map_or(0, |c| c.len());
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(n)
    });
    (addr, task)
}

/// Handshake against a server presenting `cert`; on success read the server's greeting.
async fn try_connect(setup: &TlsSetup, cert: PathBuf, key: PathBuf) -> Result<Vec<u8>, TlsError> {
    let (addr, server) = serve(cert, key, None).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let result =
        tokio::time::timeout(Duration::from_secs(20), handshake(setup, tcp)).await.expect("handshake hangs");
    let out = match result {
        Ok(mut tls) => {
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"hello");
            Ok(peer_tls_server_end_point(&tls).unwrap())
        }
        Err(e) => Err(e),
    };
    let _ = server.await;
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

// ----- setup: modes and files ---------------------------------------------------------------------------

#[test]
fn disable_and_unix_sockets_give_no_tls() {
    let pki = Pki::new();
    assert!(pki.setup(&params(SslMode::Disable), "localhost").unwrap().is_none());
    let unix = Endpoint::Unix { dir: "/tmp".into(), port: 5432 };
    assert!(setup_for_endpoint(&params(SslMode::VerifyFull), &unix).unwrap().is_none());
}

#[test]
fn verify_modes_need_the_root_file_with_libpq_message() {
    let pki = Pki::new();
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let err = pki.setup(&params(mode), "localhost").unwrap_err();
        let expected = pki.home.path().join(".postgresql/root.crt");
        assert!(matches!(&err, TlsError::RootCertMissing(p) if *p == expected), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("root certificate file \"{}\" does not exist", expected.display())),
            "{msg}"
        );
        assert!(!msg.contains('\n'));

        let missing = pki.path("nope.crt");
        let err = pki.setup(&with_root(mode, missing.clone()), "localhost").unwrap_err();
        assert!(matches!(&err, TlsError::RootCertMissing(p) if *p == missing), "{err}");

        let err = setup_with_home(&params(mode), "localhost", || None).unwrap_err();
        assert!(matches!(err, TlsError::NoHomeDirectory), "{err}");
        assert!(err.to_string().starts_with("could not get home directory to locate root certificate file"));
    }
    // Without a root file, the non-verifying modes encrypt without verification.
    for mode in [SslMode::Allow, SslMode::Prefer, SslMode::Require] {
        let setup = pki.setup(&params(mode), "localhost").unwrap().unwrap();
        assert_eq!(setup.root_cert, None);
        assert!(!setup.verify_host_name);
    }
}

#[test]
fn sslrootcert_system_is_a_clear_error() {
    let pki = Pki::new();
    let err = pki.setup(&with_root(SslMode::VerifyFull, "system".into()), "localhost").unwrap_err();
    assert!(matches!(err, TlsError::SystemRootsUnsupported));
    assert!(err.to_string().contains("sslrootcert=system is not supported"), "{err}");
}

#[test]
fn unreadable_or_garbage_root_file_names_the_path() {
    let pki = Pki::new();
    let garbage = pki.path("garbage.crt");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let err = pki.setup(&with_root(SslMode::VerifyCa, garbage.clone()), "localhost").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("could not load root certificate file \"{}\": no PEM certificate found", garbage.display())
    );
    // A directory exists (stat succeeds) but cannot be read as a file.
    let err = pki.setup(&with_root(SslMode::Require, pki.path("")), "localhost").unwrap_err();
    assert!(matches!(err, TlsError::ReadFile { kind: FileKind::RootCert, .. }), "{err}");
    assert!(err.to_string().starts_with("could not read root certificate file"), "{err}");
}

#[test]
fn verify_full_needs_a_host_name() {
    let pki = Pki::new();
    let err = pki.setup(&with_root(SslMode::VerifyFull, pki.path("ca.crt")), "").unwrap_err();
    assert_eq!(err.to_string(), "host name must be specified for a verified SSL connection");
    // verify-ca does not check names, so hostaddr-only is fine there.
    assert!(pki.setup(&with_root(SslMode::VerifyCa, pki.path("ca.crt")), "").unwrap().is_some());
}

#[test]
fn sni_and_server_name_follow_libpq() {
    assert!(sends_sni("db.example.com"));
    assert!(!sends_sni("127.0.0.1"));
    assert!(!sends_sni("::1"));
    assert!(!sends_sni(""));
    assert!(!sends_sni("1.2.3"));
    assert!(matches!(server_name_for("127.0.0.1"), ServerName::IpAddress(_)));
    assert!(matches!(server_name_for("localhost"), ServerName::DnsName(_)));
    let pki = Pki::new();
    let s = pki.setup(&params(SslMode::Require), "127.0.0.1").unwrap().unwrap();
    assert!(!s.config.enable_sni);
    assert_eq!(s.config.alpn_protocols, vec![b"postgresql".to_vec()]);
}

// ----- client certificate and key file rules ----------------------------------------------------------------

#[test]
fn key_permissions_follow_libpq() {
    assert!(!key_mode_too_open(1000, 0o100600));
    assert!(!key_mode_too_open(1000, 0o100400));
    assert!(key_mode_too_open(1000, 0o100640));
    assert!(key_mode_too_open(1000, 0o100604));
    assert!(!key_mode_too_open(0, 0o100640));
    assert!(key_mode_too_open(0, 0o100660));
    assert!(key_mode_too_open(0, 0o100650));
    assert!(key_mode_too_open(0, 0o100644));

    let pki = Pki::new();
    let key = pki.path("client.key");
    let p = ConnParams {
        sslcert: Some(pki.path("client.crt")),
        sslkey: Some(key.clone()),
        ..params(SslMode::Require)
    };
    for (mode, ok) in [(0o600, true), (0o400, true), (0o644, false), (0o604, false), (0o660, false)] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let r = pki.setup(&p, "localhost");
        if ok {
            assert!(r.is_ok(), "mode {mode:o}: {:?}", r.err());
        } else {
            let err = r.unwrap_err();
            assert!(matches!(&err, TlsError::KeyPermissions(k) if *k == key), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
                    key.display()
                )
            );
        }
    }
    // 0640 is allowed only for root-owned files.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let owned_by_root = std::fs::metadata(&key).unwrap().uid() == 0;
    assert_eq!(pki.setup(&p, "localhost").is_ok(), owned_by_root);
}

#[test]
fn key_file_must_exist_be_regular_and_match() {
    let pki = Pki::new();
    let cert = Some(pki.path("client.crt"));
    let missing = pki.path("missing.key");
    let err = pki
        .setup(
            &ConnParams { sslcert: cert.clone(), sslkey: Some(missing.clone()), ..params(SslMode::Require) },
            "h",
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("certificate present, but not private key file \"{}\"", missing.display())
    );

    let err = pki
        .setup(
            &ConnParams { sslcert: cert.clone(), sslkey: Some(pki.path("")), ..params(SslMode::Require) },
            "h",
        )
        .unwrap_err();
    assert!(matches!(err, TlsError::KeyNotRegular(_)), "{err}");

    let err = pki
        .setup(
            &ConnParams {
                sslcert: cert.clone(),
                sslkey: Some(pki.path("server.key")),
                ..params(SslMode::Require)
            },
            "h",
        )
        .unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch(_)), "{err}");

    sh(
        pki.dir.path(),
        "openssl pkey -in client.key -aes256 -passout pass:pw -out enc.key; chmod 600 enc.key",
    );
    let err = pki
        .setup(
            &ConnParams {
                sslcert: cert.clone(),
                sslkey: Some(pki.path("enc.key")),
                ..params(SslMode::Require)
            },
            "h",
        )
        .unwrap_err();
    assert!(err.to_string().contains("encrypted"), "{err}");

    // DER keys load too (libpq falls back to DER).
    sh(pki.dir.path(), "openssl pkey -in client.key -outform der -out client.der; chmod 600 client.der");
    pki.setup(
        &ConnParams { sslcert: cert, sslkey: Some(pki.path("client.der")), ..params(SslMode::Require) },
        "h",
    )
    .unwrap();

    // A missing client certificate is not an error: no client certificate is sent.
    let p =
        ConnParams { sslcert: Some(pki.path("none.crt")), sslkey: Some(missing), ..params(SslMode::Require) };
    pki.setup(&p, "h").unwrap();
}

#[test]
fn default_client_files_are_used_and_key_checked() {
    let pki = Pki::new();
    pki.install("client.crt", "postgresql.crt", 0o644);
    pki.install("client.key", "postgresql.key", 0o644);
    let err = pki.setup(&params(SslMode::Require), "localhost").unwrap_err();
    assert!(
        matches!(&err, TlsError::KeyPermissions(k) if k.ends_with(".postgresql/postgresql.key")),
        "{err}"
    );
    pki.install("client.key", "postgresql.key", 0o600);
    pki.install("ca.crt", "root.crt", 0o644);

    rt().block_on(async {
        let setup = pki.setup(&params(SslMode::VerifyFull), "localhost").unwrap().unwrap();
        let (addr, server) =
            serve(pki.path("server.crt"), pki.path("server.key"), Some(pki.path("ca.crt"))).await;
        let mut tls = handshake(&setup, TcpStream::connect(addr).await.unwrap()).await.unwrap();
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.unwrap();
        assert_eq!(server.await.unwrap(), Ok(1), "the server saw the client certificate");
    });
}

// ----- real handshakes ----------------------------------------------------------------------------------

#[test]
fn handshakes_follow_the_sslmode_rules() {
    let pki = Pki::new();
    let (server, key, other, expired) = (
        pki.path("server.crt"),
        pki.path("server.key"),
        pki.path("server-other.crt"),
        pki.path("expired.crt"),
    );
    let ca = pki.path("ca.crt");
    let untrusted = pki.path("other-ca.crt");
    rt().block_on(async {
        let setup = |p: &ConnParams, host: &str| pki.setup(p, host).unwrap().unwrap();

        // verify-full with the right CA, by DNS name and by IP SAN.
        for host in ["localhost", "127.0.0.1", "LOCALHOST"] {
            let s = setup(&with_root(SslMode::VerifyFull, ca.clone()), host);
            try_connect(&s, server.clone(), key.clone()).await.unwrap_or_else(|e| panic!("{host}: {e}"));
        }

        // verify-full with a CA that did not sign the server certificate.
        let s = setup(&with_root(SslMode::VerifyFull, untrusted.clone()), "localhost");
        let err = try_connect(&s, server.clone(), key.clone()).await.unwrap_err();
        assert!(matches!(err, TlsError::CertificateVerify(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("server certificate does not verify: unknown issuer"), "{msg}");
        assert!(msg.contains(&untrusted.display().to_string()), "{msg}");

        // Name mismatch: verify-ca accepts, verify-full refuses with libpq's text.
        let s = setup(&with_root(SslMode::VerifyCa, ca.clone()), "db.example.com");
        try_connect(&s, server.clone(), key.clone()).await.unwrap();
        let s = setup(&with_root(SslMode::VerifyFull, ca.clone()), "db.example.com");
        let err = try_connect(&s, server.clone(), key.clone()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "server certificate does not verify: server certificate for \"localhost\" (and 1 other name) does not match host name \"db.example.com\""
        );

        // require without a root file does not verify anything.
        let s = setup(&params(SslMode::Require), "db.example.com");
        try_connect(&s, other.clone(), key.clone()).await.unwrap();
        try_connect(&s, expired.clone(), key.clone()).await.unwrap();

        // libpq: with a root file present, require (and prefer) verify the chain like verify-ca.
        for mode in [SslMode::Require, SslMode::Prefer] {
            let s = setup(&with_root(mode, untrusted.clone()), "localhost");
            let err = try_connect(&s, server.clone(), key.clone()).await.unwrap_err();
            assert!(err.to_string().contains("does not verify"), "{err}");
            let s = setup(&with_root(mode, ca.clone()), "db.example.com");
            try_connect(&s, server.clone(), key.clone()).await.unwrap();
        }
        pki.install("other-ca.crt", "root.crt", 0o644);
        let s = setup(&params(SslMode::Require), "localhost");
        assert!(s.root_cert.is_some());
        let err = try_connect(&s, server.clone(), key.clone()).await.unwrap_err();
        assert!(err.to_string().contains("unknown issuer"), "{err}");

        // Expired certificate.
        let s = setup(&with_root(SslMode::VerifyCa, ca.clone()), "localhost");
        let err = try_connect(&s, expired.clone(), key.clone()).await.unwrap_err();
        assert!(err.to_string().starts_with("server certificate does not verify: certificate has expired"), "{err}");

        // A self-signed server certificate used as its own root (PostgreSQL's docs).
        let ss = pki.path("ss.crt");
        let s = setup(&with_root(SslMode::VerifyFull, ss.clone()), "localhost");
        try_connect(&s, ss.clone(), pki.path("ss.key")).await.unwrap();
        let s = setup(&with_root(SslMode::VerifyFull, ca.clone()), "localhost");
        let err = try_connect(&s, ss.clone(), pki.path("ss.key")).await.unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
    });
}

#[test]
fn handshake_reports_server_hangup() {
    let pki = Pki::new();
    rt().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { drop(listener.accept().await.unwrap()) });
        let s = pki.setup(&params(SslMode::Require), "localhost").unwrap().unwrap();
        let err = handshake(&s, TcpStream::connect(addr).await.unwrap()).await.unwrap_err();
        server.await.unwrap();
        assert!(err.to_string().starts_with("SSL SYSCALL error"), "{err}");
    });
}

#[test]
fn channel_binding_of_a_live_connection_matches_the_certificate() {
    let pki = Pki::new();
    rt().block_on(async {
        let s = pki.setup(&with_root(SslMode::VerifyFull, pki.path("ca.crt")), "localhost").unwrap().unwrap();
        let binding = try_connect(&s, pki.path("server.crt"), pki.path("server.key")).await.unwrap();
        let expected = openssl_stdout(
            pki.dir.path(),
            "openssl x509 -in server.crt -outform der | openssl dgst -sha256 -binary",
        );
        assert_eq!(binding, expected);
    });
}

// ----- channel binding hash ---------------------------------------------------------------------------

#[test]
fn tls_server_end_point_matches_openssl() {
    let pki = Pki::new();
    sh(
        pki.dir.path(),
        &format!(
            r#"
openssl req -x509 -newkey rsa:2048 -nodes -keyout rsa.key -out rsa-sha256.crt -days 30 -subj /CN=rsa -sha256 2>/dev/null
openssl req -x509 -key rsa.key -out rsa-sha1.crt -days 30 -subj /CN=rsa -sha1 2>/dev/null
openssl req -x509 -key rsa.key -out rsa-sha512.crt -days 30 -subj /CN=rsa -sha512 2>/dev/null
openssl req -x509 {EC} -keyout ec.key -out ec-sha384.crt -days 30 -subj /CN=ec -sha384 2>/dev/null
openssl req -x509 -key ec.key -out ec-sha256.crt -days 30 -subj /CN=ec -sha256 2>/dev/null
openssl req -x509 -key ec.key -out ec-sha1.crt -days 30 -subj /CN=ec -sha1 2>/dev/null
openssl req -x509 -key ec.key -out ec-sha224.crt -days 30 -subj /CN=ec -sha224 2>/dev/null
openssl genpkey -algorithm ed25519 -out ed.key
openssl req -x509 -key ed.key -out ed25519.crt -days 30 -subj /CN=ed 2>/dev/null
"#
        ),
    );
    for (file, dgst, len) in [
        ("rsa-sha256.crt", "sha256", 32),
        ("rsa-sha1.crt", "sha256", 32),
        ("rsa-sha512.crt", "sha512", 64),
        ("ec-sha384.crt", "sha384", 48),
        ("ec-sha256.crt", "sha256", 32),
        ("ec-sha1.crt", "sha256", 32),
        ("ec-sha224.crt", "sha224", 28),
    ] {
        let expected = openssl_stdout(
            pki.dir.path(),
            &format!("openssl x509 -in {file} -outform der | openssl dgst -{dgst} -binary"),
        );
        assert_eq!(expected.len(), len);
        assert_eq!(tls_server_end_point(&pki.der(file)).unwrap(), expected, "{file}");
    }
    const PKCS1: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    let pkcs1 = |last: u8| [&PKCS1[..], &[last]].concat();
    assert_eq!(binding_hash_for(&pkcs1(0x04)), Some(BindingHash::Sha256), "md5 -> sha256");
    assert_eq!(binding_hash_for(&pkcs1(0x0a)), None, "RSASSA-PSS: hash only in parameters (libpq fails too)");
    assert_eq!(binding_hash_for(&pkcs1(0x02)), None, "md2: not md5/sha1, no usable hash");
    let err = tls_server_end_point(&pki.der("ed25519.crt")).unwrap_err();
    assert!(err.to_string().contains("OID 1.3.101.112"), "{err}");
}

// ----- host name matching (libpq rules) -------------------------------------------------------------------

/// A self-signed certificate with the given subject and extension config lines.
fn cert_with(pki: &Pki, name: &str, subj: &str, ext: &str) -> Vec<u8> {
    let addext: String = ext.lines().map(|l| format!(" -addext '{l}'")).collect();
    sh(
        pki.dir.path(),
        &format!("openssl req -x509 -key ca.key -out {name}.crt -days 30 -subj '{subj}'{addext} 2>/dev/null"),
    );
    pki.der(&format!("{name}.crt"))
}

#[test]
fn peer_name_rules() {
    let pki = Pki::new();
    let cn_only = cert_with(&pki, "cn", "/CN=db.example.com", "");
    assert_eq!(verify_peer_name(&cn_only, "DB.example.com"), Ok(()));
    assert_eq!(
        verify_peer_name(&cn_only, "other.example.com"),
        Err("server certificate for \"db.example.com\" does not match host name \"other.example.com\"".into())
    );

    // A dNSName SAN hides the CN for DNS hosts...
    let san = cert_with(&pki, "san", "/CN=cn.example.com", "subjectAltName=DNS:*.example.com,DNS:exact.test");
    assert_eq!(verify_peer_name(&san, "db.example.com"), Ok(()));
    assert_eq!(verify_peer_name(&san, "EXACT.test"), Ok(()));
    assert!(verify_peer_name(&san, "cn.example.com").is_ok(), "wildcard covers it");
    assert_eq!(
        verify_peer_name(&san, "a.b.example.com"),
        Err("server certificate for \"*.example.com\" (and 1 other name) does not match host name \"a.b.example.com\"".into())
    );
    assert!(verify_peer_name(&san, "example.com").is_err());
    let san2 =
        cert_with(&pki, "san2", "/CN=cn.test", "subjectAltName=DNS:one.test,DNS:two.test,DNS:three.test");
    assert_eq!(
        verify_peer_name(&san2, "cn.test"),
        Err("server certificate for \"one.test\" (and 2 other names) does not match host name \"cn.test\""
            .into())
    );
    // ...but not for IP hosts, unless there is an iPAddress SAN.
    let ip_cn = cert_with(&pki, "ipcn", "/CN=10.0.0.1", "subjectAltName=DNS:db.test");
    assert_eq!(verify_peer_name(&ip_cn, "10.0.0.1"), Ok(()));
    assert!(verify_peer_name(&ip_cn, "10.1").is_err(), "the CN is compared as text");
    let ip_san = cert_with(&pki, "ipsan", "/CN=10.0.0.1", "subjectAltName=IP:10.0.0.2,IP:::1");
    assert!(verify_peer_name(&ip_san, "10.0.0.1").is_err());
    assert_eq!(verify_peer_name(&ip_san, "10.0.0.2"), Ok(()));
    assert_eq!(verify_peer_name(&ip_san, "10.2"), Ok(()), "inet_aton shorthand");
    assert_eq!(verify_peer_name(&ip_san, "::1"), Ok(()));
    assert_eq!(verify_peer_name(&ip_san, "0:0::1"), Ok(()));
    // A DNS host checks the CN when the SANs are only IP addresses.
    let ip_only = cert_with(&pki, "iponly", "/CN=db.test", "subjectAltName=IP:10.0.0.2");
    assert_eq!(verify_peer_name(&ip_only, "db.test"), Ok(()));

    let no_names = cert_with(&pki, "none", "/O=nobody", "");
    assert_eq!(
        verify_peer_name(&no_names, "db.test"),
        Err("could not get server's host name from server certificate".into())
    );
}

#[test]
fn self_trusted_certificate_dates_are_checked() {
    let pki = Pki::new();
    let ss = pki.der("ss.crt");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Why the fallback exists: webpki alone refuses a CA certificate as the end entity.
    let roots = load_roots(pki.path("ss.crt")).unwrap();
    let leaf = CertificateDer::from(ss.clone());
    let parsed = ParsedCertificate::try_from(&leaf).unwrap();
    let algs = provider().signature_verification_algorithms.all;
    assert!(
        verify_server_cert_signed_by_trust_anchor(&parsed, &roots.store, &[], UnixTime::now(), algs).is_err()
    );
    assert_eq!(check_validity(&ss, now), Ok(()));
    let err = check_validity(&ss, now + 40 * 86_400).unwrap_err();
    assert!(err.starts_with("certificate has expired (notAfter "), "{err}");
    let err = check_validity(&ss, 0).unwrap_err();
    assert!(err.starts_with("certificate is not yet valid"), "{err}");
}

#[test]
fn wildcard_and_inet_aton() {
    assert!(wildcard_match("*.example.com", "a.example.com"));
    assert!(wildcard_match("*.example.com", "A.EXAMPLE.com"));
    assert!(!wildcard_match("*.example.com", "a.b.example.com"));
    assert!(!wildcard_match("*.example.com", "example.com"));
    assert!(!wildcard_match("*.example.com", ".example.com"));
    assert!(!wildcard_match("a*.example.com", "ab.example.com"));
    assert!(!wildcard_match("*", "a"));
    assert_eq!(inet_aton("127.0.0.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
    assert_eq!(inet_aton("127.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
    assert_eq!(inet_aton("0x7f.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
    assert_eq!(inet_aton("010.0.0.1"), Some(Ipv4Addr::new(8, 0, 0, 1)));
    assert_eq!(inet_aton("2130706433"), Some(Ipv4Addr::new(127, 0, 0, 1)));
    assert_eq!(inet_aton("1.2.65535"), Some(Ipv4Addr::new(1, 2, 255, 255)));
    assert_eq!(inet_aton("1.2.65536"), None);
    assert_eq!(inet_aton("256.0.0.1"), None);
    assert_eq!(inet_aton("1.2.3.4.5"), None);
    assert_eq!(inet_aton("1..2"), None);
    assert_eq!(inet_aton("localhost"), None);
    assert_eq!(inet_aton(""), None);
    assert_eq!(inet_aton("08"), None);
}

#[test]
fn der_times_and_dates() {
    assert_eq!(der::parse_time((0x17, b"700101000000Z")), Ok(0));
    assert_eq!(der::parse_time((0x17, b"491231235959Z")), Ok(2_524_607_999));
    assert_eq!(der::parse_time((0x18, b"20000301000000Z")), Ok(951_868_800));
    assert!(der::parse_time((0x17, b"7001010000000")).is_err());
    assert!(der::parse_time((0x18, b"2000130100000Z")).is_err());
    assert_eq!(format_unix(951_868_800u64), "2000-03-01 00:00:00 UTC");
    assert_eq!(
        der::oid_to_string(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]),
        "1.2.840.113549.1.1.11"
    );
}

// ----- no panics on garbage ---------------------------------------------------------------------------

fn poke(der: &[u8]) {
    let _ = tls_server_end_point(der);
    let _ = verify_peer_name(der, "localhost");
    let _ = verify_peer_name(der, "127.0.0.1");
    let _ = check_validity(der, 1_800_000_000);
}

#[test]
fn mutated_certificates_do_not_panic() {
    let pki = Pki::new();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for name in ["server.crt", "ss.crt", "ca.crt"] {
        let der = pki.der(name);
        for cut in 0..der.len() {
            poke(&der[..cut]);
        }
        for i in 0..der.len() {
            for v in [0x00, 0x80, 0x81, 0x84, 0x85, 0xff, 0x1f, 0x30, 0x7f] {
                let mut m = der.clone();
                m[i] = v;
                poke(&m);
            }
        }
        for _ in 0..3000 {
            let mut m = der.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            poke(&m);
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        poke(&bytes);
    }

    #[test]
    fn random_der_shaped_bytes_do_not_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut der = vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8];
        der.extend_from_slice(&body);
        poke(&der);
    }
}
