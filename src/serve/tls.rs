//! The walsender's TLS: a rustls server configuration from a PEM certificate chain and private key, on the
//! same crypto provider (ring) as the rest of walkeeper. The files are read and checked as the client side
//! reads its own (`conn::tls`: the key must not be group or world accessible, as PostgreSQL requires of
//! `ssl_key_file`). No client certificates are asked for: clients authenticate with SCRAM.

use crate::conn::tls::{load_cert_chain, load_key, TlsError};
use rustls::ServerConfig;
use std::path::Path;
use std::sync::Arc;

/// The ALPN protocol libpq 17+ offers.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The server configuration for `cert` (chain, leaf first) and its `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_cert_chain(cert)?;
    let key_der = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch(key.to_path_buf()),
            other => TlsError::Config(other.to_string()),
        })?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}
