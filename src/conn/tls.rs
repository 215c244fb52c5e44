//! TLS for one endpoint, with libpq's rules (fe-secure-openssl.c `initialize_SSL`, fe-secure-common.c).
//!
//! The connection code sends SSLRequest, reads the server's answer and, on `'S'`, calls [`handshake`] with the
//! [`TlsSetup`] built by [`setup`]. This module never touches the PostgreSQL protocol itself.
//!
//! libpq rules implemented here:
//!
//! * `sslmode=disable` → no TLS ([`setup`] returns `None`); Unix-domain sockets never use TLS
//!   ([`setup_for_endpoint`]).
//! * The root certificate file is `sslrootcert`, else `~/.postgresql/root.crt`. **If that file exists, the
//!   server's certificate chain is verified in every mode that uses TLS** (libpq loads it and sets
//!   `SSL_VERIFY_PEER` whatever the mode; the documented consequence is that `require` behaves like
//!   `verify-ca`, and the same holds for `allow`/`prefer`). Without the file, `allow`/`prefer`/`require` encrypt
//!   without verifying, and `verify-ca`/`verify-full` fail with libpq's "root certificate file ... does not exist".
//! * `verify-full` also matches the host name (`host`, never `hostaddr`) against the certificate as libpq does:
//!   dNSName and iPAddress subjectAltNames; the Common Name only when no SAN of the host's kind (DNS or IP)
//!   exists; a wildcard only as a whole leftmost label (`*.example.com` does not match `a.b.example.com`);
//!   case-insensitive; libpq's error texts.
//! * A server certificate that is itself in the root file is trusted (OpenSSL accepts a self-signed server
//!   certificate used as its own root, as PostgreSQL's documentation sets up); its validity dates are checked.
//! * Client certificate: `sslcert`, else `~/.postgresql/postgresql.crt`, used only if the file exists (chain
//!   allowed); its key `sslkey`, else `~/.postgresql/postgresql.key`, must exist, be a regular file, and not be
//!   group/world accessible (0600 or less; 0640 or less when owned by root); PEM, or DER as a fallback.
//! * SNI is sent unless the host is empty, all digits and dots, or contains `:` (libpq `sslsni=1`), ALPN
//!   `postgresql` is offered (libpq 17+), no session resumption (libpq keeps no session cache).
//!
//! With `allow`/`prefer`, libpq treats any TLS failure (a setup error here, or a failed handshake) as "try the
//! next method", i.e. a plaintext connection; that decision belongs to the connection code.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, Resumption};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme,
};
use sha2::Digest;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::params::{ConnParams, Endpoint, SslMode};

/// libpq's default file names, relative to the home directory.
const ROOT_CERT_FILE: &str = ".postgresql/root.crt";
const USER_CERT_FILE: &str = ".postgresql/postgresql.crt";
const USER_KEY_FILE: &str = ".postgresql/postgresql.key";

/// Which file an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    RootCert,
    Cert,
    Key,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::RootCert => "root certificate",
            FileKind::Cert => "certificate",
            FileKind::Key => "private key",
        })
    }
}

/// Everything that can go wrong in this module, one line each (libpq's wording where libpq has one).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "root certificate file \"{}\" does not exist; either provide the file or change sslmode to disable server certificate verification",
        .0.display()
    )]
    RootCertMissing(PathBuf),
    #[error(
        "could not get home directory to locate root certificate file; either provide the file (sslrootcert) or change sslmode to disable server certificate verification"
    )]
    NoHomeDirectory,
    #[error(
        "sslrootcert=system is not supported: the system certificate store is not available; set sslrootcert to a CA certificate file"
    )]
    SystemRootsUnsupported,
    #[error("could not read {kind} file \"{}\": {source}", path.display())]
    ReadFile {
        kind: FileKind,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not load {kind} file \"{}\": {detail}", path.display())]
    BadFile { kind: FileKind, path: PathBuf, detail: String },
    #[error("certificate present, but not private key file \"{}\"", .0.display())]
    KeyMissing(PathBuf),
    #[error("private key file \"{}\" is not a regular file", .0.display())]
    KeyNotRegular(PathBuf),
    #[error(
        "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
        .0.display()
    )]
    KeyPermissions(PathBuf),
    #[error("certificate does not match private key file \"{}\"", .0.display())]
    KeyMismatch(PathBuf),
    #[error("host name must be specified for a verified SSL connection")]
    HostNameRequired,
    /// The server's certificate was rejected; the text says why (unknown issuer, name mismatch, expired, ...).
    #[error("server certificate does not verify: {0}")]
    CertificateVerify(String),
    /// Any other TLS protocol failure (including an alert from the server, e.g. it wants a client certificate).
    #[error("SSL error: {0}")]
    Handshake(String),
    #[error("SSL SYSCALL error: EOF detected")]
    Eof,
    #[error("SSL SYSCALL error: {0}")]
    Io(#[source] io::Error),
    #[error("could not create SSL context: {0}")]
    Config(String),
    /// tls-server-end-point could not be computed (malformed certificate or a signature algorithm without a hash).
    #[error("could not compute channel binding data: {0}")]
    ChannelBinding(String),
}

/// What the connection layer needs to do TLS for one endpoint.
#[derive(Clone, Debug)]
pub struct TlsSetup {
    /// The rustls client configuration (verifier, client certificate, ALPN, SNI switch).
    pub config: Arc<ClientConfig>,
    /// The name passed to rustls (used for SNI when enabled; verification uses libpq's rules on `host`).
    pub server_name: ServerName<'static>,
    /// The root certificate file the server's chain is verified against (None: no verification).
    pub root_cert: Option<PathBuf>,
    /// Whether the host name is checked (verify-full).
    pub verify_host_name: bool,
}

/// Build the client config for `params.sslmode` and the given host (the `host` setting, not `hostaddr`; may
/// be empty when only `hostaddr` was given). `disable` → `Ok(None)`.
pub fn setup(params: &ConnParams, host: &str) -> Result<Option<TlsSetup>, TlsError> {
    setup_with_home(params, host, home_dir)
}

/// [`setup`] for one endpoint: Unix-domain sockets never use TLS (libpq), so they give `Ok(None)`.
pub fn setup_for_endpoint(params: &ConnParams, endpoint: &Endpoint) -> Result<Option<TlsSetup>, TlsError> {
    match endpoint {
        Endpoint::Unix { .. } => Ok(None),
        Endpoint::Tcp { host, .. } => setup(params, host),
    }
}

/// The user's home directory as libpq finds it: `$HOME` if set and non-empty, else the password database.
pub fn home_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    home_from_passwd()
}

fn home_from_passwd() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwuid_r writes only into `pwd` and `buf` (whose length we pass); `result` is either null or
    // points at `pwd`, whose string pointers point into `buf`, which outlives their use below.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(libc::geteuid(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pwd.pw_dir).to_bytes().to_vec();
        (!dir.is_empty()).then(|| PathBuf::from(OsString::from_vec(dir)))
    }
}

fn non_empty(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref().filter(|p| !p.as_os_str().is_empty())
}

fn setup_with_home(
    params: &ConnParams,
    host: &str,
    home: impl FnOnce() -> Option<PathBuf>,
) -> Result<Option<TlsSetup>, TlsError> {
    if params.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let verify_mode = matches!(params.sslmode, SslMode::VerifyCa | SslMode::VerifyFull);

    // Like libpq, look the home directory up only when some file name is defaulted.
    let explicit_root = non_empty(&params.sslrootcert);
    let explicit_cert = non_empty(&params.sslcert);
    let explicit_key = non_empty(&params.sslkey);
    let home = if explicit_root.is_none() || explicit_cert.is_none() || explicit_key.is_none() {
        home()
    } else {
        None
    };
    let defaulted = |explicit: Option<&Path>, default: &str| {
        explicit.map(Path::to_path_buf).or_else(|| home.as_ref().map(|h| h.join(default)))
    };

    // Root certificate.
    let root_path = defaulted(explicit_root, ROOT_CERT_FILE);
    if root_path.as_deref() == Some(Path::new("system")) {
        return Err(TlsError::SystemRootsUnsupported);
    }
    let roots = match root_path {
        Some(path) if std::fs::metadata(&path).is_ok() => Some(load_roots(path)?),
        missing => {
            if verify_mode {
                return Err(match missing {
                    Some(path) => TlsError::RootCertMissing(path),
                    None => TlsError::NoHomeDirectory,
                });
            }
            None
        }
    };

    let verify_host = if params.sslmode == SslMode::VerifyFull {
        if host.is_empty() {
            return Err(TlsError::HostNameRequired);
        }
        Some(host.to_string())
    } else {
        None
    };

    // Client certificate and key.
    let client_auth = match defaulted(explicit_cert, USER_CERT_FILE) {
        None => None,
        Some(cert_path) => match std::fs::metadata(&cert_path) {
            Ok(_) => {
                let chain = load_cert_chain(&cert_path)?;
                let key_path = defaulted(explicit_key, USER_KEY_FILE)
                    .ok_or_else(|| TlsError::KeyMissing(PathBuf::from("~/").join(USER_KEY_FILE)))?;
                let key = load_key(&key_path)?;
                Some((chain, key, key_path))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => None,
            Err(source) => return Err(TlsError::ReadFile { kind: FileKind::Cert, path: cert_path, source }),
        },
    };

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root_cert = roots.as_ref().map(|r| r.path.clone());
    let verifier = Arc::new(PgVerifier { provider: provider.clone(), roots, verify_host });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain, key, key_path)) => builder.with_client_auth_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch(key_path),
            other => TlsError::BadFile { kind: FileKind::Key, path: key_path, detail: other.to_string() },
        })?,
    };
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_sni = sends_sni(host);

    Ok(Some(TlsSetup {
        config: Arc::new(config),
        server_name: server_name_for(host),
        root_cert,
        verify_host_name: params.sslmode == SslMode::VerifyFull,
    }))
}

/// libpq sends SNI unless the host is empty, only digits and dots, or contains ':' (an IP literal).
fn sends_sni(host: &str) -> bool {
    !host.is_empty() && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.') && !host.contains(':')
}

fn server_name_for(host: &str) -> ServerName<'static> {
    // The verifier checks names itself (libpq's rules); rustls uses this for SNI only, so any host that is
    // not a valid DNS name or IP address (SNI is then off or the name is unusable anyway) gets a placeholder.
    match ServerName::try_from(host) {
        Ok(name) => name.to_owned(),
        Err(_) => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into()),
    }
}

#[derive(Debug)]
struct Roots {
    path: PathBuf,
    store: Arc<RootCertStore>,
    certs: Vec<CertificateDer<'static>>,
}

fn read_file(kind: FileKind, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile { kind, path: path.to_path_buf(), source })
}

fn pem_certs(kind: FileKind, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(kind, path)?;
    let bad = |detail: String| TlsError::BadFile { kind, path: path.to_path_buf(), detail };
    let certs = rustls_pemfile::certs(&mut &bytes[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    Ok(certs)
}

fn load_roots(path: PathBuf) -> Result<Roots, TlsError> {
    let certs = pem_certs(FileKind::RootCert, &path)?;
    let mut store = RootCertStore::empty();
    for cert in &certs {
        store.add(cert.clone()).map_err(|e| TlsError::BadFile {
            kind: FileKind::RootCert,
            path: path.clone(),
            detail: e.to_string(),
        })?;
    }
    Ok(Roots { path, store: Arc::new(store), certs })
}

pub(crate) fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certs(FileKind::Cert, path)
}

/// libpq's checks on the client key file, then PEM (or DER as a fallback) parsing.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TlsError::KeyMissing(path.to_path_buf()))
        }
        Err(source) => {
            return Err(TlsError::ReadFile { kind: FileKind::Key, path: path.to_path_buf(), source })
        }
    };
    if !meta.is_file() {
        return Err(TlsError::KeyNotRegular(path.to_path_buf()));
    }
    if key_mode_too_open(meta.uid(), meta.mode()) {
        return Err(TlsError::KeyPermissions(path.to_path_buf()));
    }
    let bytes = read_file(FileKind::Key, path)?;
    let bad = |detail: &str| TlsError::BadFile {
        kind: FileKind::Key,
        path: path.to_path_buf(),
        detail: detail.into(),
    };
    match rustls_pemfile::private_key(&mut &bytes[..]) {
        Ok(Some(key)) => Ok(key),
        Ok(None) | Err(_) => {
            let text = String::from_utf8_lossy(&bytes);
            if text.contains("ENCRYPTED") {
                return Err(bad(
                    "the key is encrypted, which is not supported (sslpassword); decrypt it with \"openssl pkey\"",
                ));
            }
            PrivateKeyDer::try_from(bytes.clone()).map_err(|_| bad("no PEM or DER private key found"))
        }
    }
}

/// libpq: root-owned key files may be u=rw,g=r (0640) or less, others u=rw (0600) or less.
pub(crate) fn key_mode_too_open(uid: u32, mode: u32) -> bool {
    let (s_irwxg, s_iwgrp, s_ixgrp, s_irwxo) = (0o070, 0o020, 0o010, 0o007);
    if uid == 0 {
        mode & (s_iwgrp | s_ixgrp | s_irwxo) != 0
    } else {
        mode & (s_irwxg | s_irwxo) != 0
    }
}

/// Wrap an established TCP stream (after the server answered 'S' to SSLRequest).
pub async fn handshake(setup: &TlsSetup, stream: TcpStream) -> Result<TlsStream<TcpStream>, TlsError> {
    TlsConnector::from(setup.config.clone())
        .connect(setup.server_name.clone(), stream)
        .await
        .map_err(|e| handshake_error(e, setup.root_cert.as_deref()))
}

/// The tls-server-end-point channel binding data of an established connection (for SCRAM-SHA-256-PLUS).
pub fn peer_tls_server_end_point(stream: &TlsStream<TcpStream>) -> Result<Vec<u8>, TlsError> {
    let (_, conn) = stream.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| TlsError::ChannelBinding("the server sent no certificate".into()))?;
    tls_server_end_point(leaf)
}

fn handshake_error(err: io::Error, root_cert: Option<&Path>) -> TlsError {
    if let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return rustls_error(tls, root_cert);
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof => TlsError::Eof,
        _ => TlsError::Io(err),
    }
}

fn rustls_error(err: &rustls::Error, root_cert: Option<&Path>) -> TlsError {
    match err {
        rustls::Error::InvalidCertificate(cert_err) => TlsError::CertificateVerify(match cert_err {
            CertificateError::UnknownIssuer => match root_cert {
                Some(p) => format!(
                    "unknown issuer: the chain does not lead to a certificate in root certificate file \"{}\"",
                    p.display()
                ),
                None => "unknown issuer".to_string(),
            },
            CertificateError::Expired => "certificate has expired".to_string(),
            CertificateError::ExpiredContext { not_after, .. } => {
                format!("certificate has expired (notAfter {})", format_unix(not_after.as_secs()))
            }
            CertificateError::NotValidYet => "certificate is not yet valid".to_string(),
            CertificateError::NotValidYetContext { not_before, .. } => {
                format!("certificate is not yet valid (notBefore {})", format_unix(not_before.as_secs()))
            }
            CertificateError::BadSignature => "bad signature in the certificate chain".to_string(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "certificate is not valid for TLS server authentication (extended key usage)".to_string()
            }
            CertificateError::Other(other) => other.to_string(),
            other => rustls::Error::InvalidCertificate(other.clone()).to_string(),
        }),
        other => TlsError::Handshake(other.to_string()),
    }
}

/// A verification failure described by our own checks (name mismatch, self-trusted certificate dates).
#[derive(Debug)]
struct VerifyFailure(String);

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VerifyFailure {}

fn verify_failure(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(VerifyFailure(msg)))))
}

/// The server certificate verifier: chain (when a root file is present) and host name (verify-full).
#[derive(Debug)]
struct PgVerifier {
    provider: Arc<CryptoProvider>,
    roots: Option<Roots>,
    verify_host: Option<String>,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            let algs = self.provider.signature_verification_algorithms.all;
            if let Err(err) =
                verify_server_cert_signed_by_trust_anchor(&parsed, &roots.store, intermediates, now, algs)
            {
                // OpenSSL trusts a certificate found in the trust store as it is (a self-signed server
                // certificate doubling as root.crt); webpki refuses a CA certificate as end entity.
                if !roots.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
                    return Err(err);
                }
                check_validity(end_entity, now.as_secs()).map_err(verify_failure)?;
            }
        }
        if let Some(host) = &self.verify_host {
            verify_peer_name(end_entity, host).map_err(verify_failure)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn check_validity(cert_der: &[u8], now: u64) -> Result<(), String> {
    let cert = der::parse_certificate(cert_der).map_err(|e| format!("malformed certificate: {e}"))?;
    let not_before = der::parse_time(cert.not_before).map_err(|e| format!("malformed certificate: {e}"))?;
    let not_after = der::parse_time(cert.not_after).map_err(|e| format!("malformed certificate: {e}"))?;
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if now < not_before {
        return Err(format!("certificate is not yet valid (notBefore {})", format_unix(not_before)));
    }
    if now > not_after {
        return Err(format!("certificate has expired (notAfter {})", format_unix(not_after)));
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time.
fn format_unix(secs: impl TryInto<i64>) -> String {
    let secs: i64 = secs.try_into().unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::calendar::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ---------------------------------------------------------------------------------------------------------
// Host name matching (fe-secure-common.c / pgtls_verify_peer_name_matches_certificate_guts)
// ---------------------------------------------------------------------------------------------------------

/// `inet_aton`: a.b.c.d, a.b.c, a.b or a, each part decimal, octal (leading 0) or hex (0x).
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut vals = Vec::with_capacity(parts.len());
    for p in &parts {
        let v = if let Some(hex) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            if hex.is_empty() {
                0
            } else {
                u32::from_str_radix(hex, 16).ok()?
            }
        } else if p.len() > 1 && p.starts_with('0') {
            u32::from_str_radix(&p[1..], 8).ok()?
        } else if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            p.parse::<u32>().ok()?
        } else {
            return None;
        };
        vals.push(v);
    }
    let (last, head) = vals.split_last()?;
    if head.iter().any(|&v| v > 255) {
        return None;
    }
    let bits = 8 * (4 - head.len() as u32);
    if bits < 32 && *last >= 1 << bits {
        return None;
    }
    let mut addr = *last;
    for (i, &v) in head.iter().enumerate() {
        addr |= v << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(addr))
}

fn host_ip(host: &str) -> Option<IpAddr> {
    inet_aton(host).map(IpAddr::V4).or_else(|| host.parse::<Ipv6Addr>().ok().map(IpAddr::V6))
}

/// libpq's wildcard rule: only a leading `*.`, and `*` does not match a dot.
fn wildcard_match(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.as_bytes(), host.as_bytes());
    if p.len() < 3 || p[0] != b'*' || p[1] != b'.' || p.len() > h.len() {
        return false;
    }
    let suffix_start = h.len() - p.len() + 1;
    if !p[1..].eq_ignore_ascii_case(&h[suffix_start..]) {
        return false;
    }
    // No dot left of where the pattern started to match.
    !h[..suffix_start].contains(&b'.')
}

/// Check the certificate against `host` as libpq does for verify-full; the error is libpq's text.
fn verify_peer_name(cert_der: &[u8], host: &str) -> Result<(), String> {
    let cert = der::parse_certificate(cert_der).map_err(|e| format!("malformed certificate: {e}"))?;
    let names = der::subject_alt_names(&cert).map_err(|e| format!("malformed subjectAltName: {e}"))?;
    let ip = host_ip(host);
    let mut examined = 0usize;
    let mut first_name: Option<String> = None;
    let mut check_cn = true;
    let mut matched = false;

    let text_name = |raw: &[u8]| -> Result<String, String> {
        if raw.contains(&0) {
            return Err("SSL certificate's name contains embedded null".to_string());
        }
        Ok(String::from_utf8_lossy(raw).into_owned())
    };

    for name in names {
        let (same_kind, this_name, is_match) = match name {
            der::GeneralName::Dns(raw) => {
                let n = text_name(raw)?;
                let m = n.eq_ignore_ascii_case(host) || wildcard_match(&n, host);
                (ip.is_none(), n, m)
            }
            der::GeneralName::Ip(raw) => {
                let cert_ip = match raw.len() {
                    4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
                    16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw).expect("length checked"))),
                    n => return Err(format!("certificate contains IP address with invalid length {n}")),
                };
                (ip.is_some(), cert_ip.to_string(), ip == Some(cert_ip))
            }
            der::GeneralName::Other => continue,
        };
        if same_kind {
            check_cn = false;
        }
        examined += 1;
        first_name.get_or_insert(this_name);
        if is_match {
            matched = true;
            check_cn = false;
            break;
        }
    }

    if check_cn {
        if let Some(raw) = der::first_common_name(&cert).map_err(|e| format!("malformed subject: {e}"))? {
            let n = text_name(raw)?;
            examined += 1;
            matched = n.eq_ignore_ascii_case(host) || wildcard_match(&n, host);
            first_name.get_or_insert(n);
        }
    }

    if matched {
        return Ok(());
    }
    let first = first_name.unwrap_or_default();
    Err(match examined {
        0 => "could not get server's host name from server certificate".to_string(),
        1 => format!("server certificate for \"{first}\" does not match host name \"{host}\""),
        n => format!(
            "server certificate for \"{first}\" (and {} other name{}) does not match host name \"{host}\"",
            n - 1,
            if n == 2 { "" } else { "s" }
        ),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Channel binding (RFC 5929 tls-server-end-point, as libpq's pgtls_get_peer_certificate_hash)
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BindingHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The hash RFC 5929 prescribes for a certificate signature algorithm OID (content bytes): the signature's
/// own hash, with MD5 and SHA-1 replaced by SHA-256. None when the algorithm has no separate hash (Ed25519,
/// Ed448, RSASSA-PSS whose hash is in parameters — libpq fails on those too) or is unknown.
fn binding_hash_for(oid: &[u8]) -> Option<BindingHash> {
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    const NIST_SIG: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03];
    use BindingHash::*;
    if let Some(rest) = oid.strip_prefix(PKCS1) {
        return match rest {
            [0x04] | [0x05] | [0x0b] => Some(Sha256), // md5, sha1, sha256 WithRSAEncryption
            [0x0c] => Some(Sha384),
            [0x0d] => Some(Sha512),
            [0x0e] => Some(Sha224),
            _ => None, // 0x0a RSASSA-PSS and anything else
        };
    }
    if let Some(rest) = oid.strip_prefix(ECDSA) {
        return match rest {
            [0x01] => Some(Sha256), // ecdsa-with-SHA1
            [0x03, 0x01] => Some(Sha224),
            [0x03, 0x02] => Some(Sha256),
            [0x03, 0x03] => Some(Sha384),
            [0x03, 0x04] => Some(Sha512),
            _ => None,
        };
    }
    if let Some(rest) = oid.strip_prefix(NIST_SIG) {
        return match rest {
            [0x01] => Some(Sha224), // dsa-with-sha224
            [0x02] => Some(Sha256), // dsa-with-sha256 (SHA-3 based algorithms: no SHA-2 hash, unsupported)
            _ => None,
        };
    }
    match oid {
        [0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03] => Some(Sha256), // dsa-with-sha1
        [0x2b, 0x0e, 0x03, 0x02, 0x1d] => Some(Sha256),             // sha1WithRSASignature (OIW)
        _ => None,
    }
}

/// SCRAM-SHA-256-PLUS channel binding data: the tls-server-end-point hash of the server's leaf certificate
/// (RFC 5929: hash with the certificate's signature hash algorithm; MD5/SHA-1 → SHA-256).
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, TlsError> {
    let oid = der::signature_algorithm(cert_der)
        .map_err(|e| TlsError::ChannelBinding(format!("malformed server certificate: {e}")))?;
    let hash = binding_hash_for(oid).ok_or_else(|| {
        TlsError::ChannelBinding(format!(
            "could not determine a hash for the server certificate's signature algorithm (OID {})",
            der::oid_to_string(oid)
        ))
    })?;
    Ok(match hash {
        BindingHash::Sha224 => sha2::Sha224::digest(cert_der).to_vec(),
        BindingHash::Sha256 => sha2::Sha256::digest(cert_der).to_vec(),
        BindingHash::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        BindingHash::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

// ---------------------------------------------------------------------------------------------------------
// A tiny DER walk: just enough of X.509 for the signature algorithm, validity, subject CN and SANs.
// ---------------------------------------------------------------------------------------------------------

mod der {
    use std::fmt::Write as _;

    pub type Result<T> = std::result::Result<T, &'static str>;

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    const BOOLEAN: u8 = 0x01;
    const INTEGER: u8 = 0x02;
    const BIT_STRING: u8 = 0x03;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;

    const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    /// A reader over a run of TLVs.
    pub struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        pub fn new(data: &'a [u8]) -> Self {
            Reader(data)
        }

        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }

        pub fn peek_tag(&self) -> Option<u8> {
            self.0.first().copied()
        }

        /// The next TLV: its first tag byte (high tag numbers are skipped over, leaving the byte with
        /// number 0x1f, which no caller looks for) and its contents.
        pub fn read(&mut self) -> Result<(u8, &'a [u8])> {
            let data = self.0;
            let tag = *data.first().ok_or("truncated")?;
            let mut pos = 1;
            if tag & 0x1f == 0x1f {
                loop {
                    let b = *data.get(pos).ok_or("truncated tag")?;
                    pos += 1;
                    if b & 0x80 == 0 {
                        break;
                    }
                    if pos > 6 {
                        return Err("tag too long");
                    }
                }
            }
            let first = *data.get(pos).ok_or("truncated length")?;
            pos += 1;
            let len = if first < 0x80 {
                first as usize
            } else if first == 0x80 {
                return Err("indefinite length");
            } else {
                let n = (first & 0x7f) as usize;
                if n > 4 {
                    return Err("length too long");
                }
                let bytes = data.get(pos..pos + n).ok_or("truncated length")?;
                pos += n;
                bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize)
            };
            let end = pos.checked_add(len).ok_or("length overflow")?;
            let content = data.get(pos..end).ok_or("truncated contents")?;
            self.0 = &data[end..];
            Ok((tag, content))
        }

        pub fn expect(&mut self, tag: u8) -> Result<&'a [u8]> {
            match self.read()? {
                (t, content) if t == tag => Ok(content),
                _ => Err("unexpected tag"),
            }
        }
    }

    pub struct Certificate<'a> {
        pub not_before: (u8, &'a [u8]),
        pub not_after: (u8, &'a [u8]),
        pub subject: &'a [u8],
        pub extensions: Option<&'a [u8]>,
    }

    fn whole(der: &[u8], tag: u8) -> Result<&[u8]> {
        let mut r = Reader::new(der);
        let content = r.expect(tag)?;
        if !r.is_empty() {
            return Err("trailing data");
        }
        Ok(content)
    }

    fn algorithm_oid(alg_id: &[u8]) -> Result<&[u8]> {
        Reader::new(alg_id).expect(OID)
    }

    /// The outer signatureAlgorithm OID (content bytes) of a certificate.
    pub fn signature_algorithm(der: &[u8]) -> Result<&[u8]> {
        let mut cert = Reader::new(whole(der, SEQUENCE)?);
        cert.expect(SEQUENCE)?; // tbsCertificate
        algorithm_oid(cert.expect(SEQUENCE)?)
    }

    pub fn parse_certificate(der: &[u8]) -> Result<Certificate<'_>> {
        let mut cert = Reader::new(whole(der, SEQUENCE)?);
        let tbs = cert.expect(SEQUENCE)?;
        algorithm_oid(cert.expect(SEQUENCE)?)?;
        cert.expect(BIT_STRING)?;
        let mut tbs = Reader::new(tbs);
        if tbs.peek_tag() == Some(0xa0) {
            tbs.read()?; // [0] version
        }
        tbs.expect(INTEGER)?; // serialNumber
        tbs.expect(SEQUENCE)?; // signature
        tbs.expect(SEQUENCE)?; // issuer
        let mut validity = Reader::new(tbs.expect(SEQUENCE)?);
        let not_before = validity.read()?;
        let not_after = validity.read()?;
        let subject = tbs.expect(SEQUENCE)?;
        tbs.expect(SEQUENCE)?; // subjectPublicKeyInfo
        let mut extensions = None;
        while !tbs.is_empty() {
            let (tag, content) = tbs.read()?;
            if tag == 0xa3 {
                extensions = Some(whole(content, SEQUENCE)?);
            }
        }
        Ok(Certificate { not_before, not_after, subject, extensions })
    }

    pub enum GeneralName<'a> {
        Dns(&'a [u8]),
        Ip(&'a [u8]),
        Other,
    }

    /// All subjectAltName entries, in order (empty without the extension).
    pub fn subject_alt_names<'a>(cert: &Certificate<'a>) -> Result<Vec<GeneralName<'a>>> {
        let mut names = Vec::new();
        let Some(exts) = cert.extensions else { return Ok(names) };
        let mut exts = Reader::new(exts);
        while !exts.is_empty() {
            let mut ext = Reader::new(exts.expect(SEQUENCE)?);
            let oid = ext.expect(OID)?;
            if ext.peek_tag() == Some(BOOLEAN) {
                ext.read()?;
            }
            let value = ext.expect(OCTET_STRING)?;
            if oid != OID_SUBJECT_ALT_NAME {
                continue;
            }
            let mut gns = Reader::new(whole(value, SEQUENCE)?);
            while !gns.is_empty() {
                let (tag, content) = gns.read()?;
                names.push(match tag {
                    0x82 => GeneralName::Dns(content),
                    0x87 => GeneralName::Ip(content),
                    _ => GeneralName::Other,
                });
            }
        }
        Ok(names)
    }

    /// The value bytes of the first commonName attribute in the subject.
    pub fn first_common_name<'a>(cert: &Certificate<'a>) -> Result<Option<&'a [u8]>> {
        let mut rdns = Reader::new(cert.subject);
        while !rdns.is_empty() {
            let mut set = Reader::new(rdns.expect(SET)?);
            while !set.is_empty() {
                let mut atv = Reader::new(set.expect(SEQUENCE)?);
                let oid = atv.expect(OID)?;
                let (_, value) = atv.read()?;
                if oid == OID_COMMON_NAME {
                    return Ok(Some(value));
                }
            }
        }
        Ok(None)
    }

    /// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) → Unix seconds.
    pub fn parse_time((tag, value): (u8, &[u8])) -> Result<i64> {
        let digits = |s: &[u8]| -> Result<i64> {
            if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
                return Err("bad time");
            }
            Ok(s.iter().fold(0i64, |acc, &b| acc * 10 + i64::from(b - b'0')))
        };
        let (year, rest) = match (tag, value.len()) {
            (UTC_TIME, 13) => {
                let yy = digits(&value[..2])?;
                (if yy < 50 { 2000 + yy } else { 1900 + yy }, &value[2..])
            }
            (GENERALIZED_TIME, 15) => (digits(&value[..4])?, &value[4..]),
            _ => return Err("unsupported time format"),
        };
        if rest[10] != b'Z' {
            return Err("time not in UTC");
        }
        let (mo, d, h, mi, s) = (
            digits(&rest[0..2])?,
            digits(&rest[2..4])?,
            digits(&rest[4..6])?,
            digits(&rest[6..8])?,
            digits(&rest[8..10])?,
        );
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
            return Err("bad time");
        }
        Ok(crate::calendar::days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
    }

    /// Dotted text of an OID's content bytes (for messages).
    pub fn oid_to_string(oid: &[u8]) -> String {
        let mut out = String::new();
        let mut value: u64 = 0;
        let mut first = true;
        for &b in oid {
            value = value.saturating_mul(128) | u64::from(b & 0x7f);
            if b & 0x80 != 0 {
                continue;
            }
            if first {
                let (a, b) = if value < 40 {
                    (0, value)
                } else if value < 80 {
                    (1, value - 40)
                } else {
                    (2, value - 80)
                };
                let _ = write!(out, "{a}.{b}");
                first = false;
            } else {
                let _ = write!(out, ".{value}");
            }
            value = 0;
        }
        if out.is_empty() {
            out.push_str("(empty)");
        }
        out
    }
}

#[cfg(test)]
mod tests;
