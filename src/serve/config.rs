//! What a source's walsender is configured with — the service's `[source.serve]` section: where it listens,
//! who may connect (SCRAM-SHA-256; a secret is a plaintext password or a verifier copied from
//! `pg_authid.rolpassword`), and optionally TLS (then `sslmode=require` and `verify-full` work).
//!
//! ```toml
//! [source.serve]
//! listen = "127.0.0.1:5499"
//! users = { standby = "secret" }
//! # tls_cert = "/etc/walkeeper/server.crt"
//! # tls_key = "/etc/walkeeper/server.key"
//! ```

use crate::protocol::scram_server::Verifier;
use rustls::ServerConfig as TlsConfig;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// The `[source.serve]` section as written in the configuration file.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// `host:port` to listen on (`127.0.0.1:5499`, `[::1]:5499`, `0.0.0.0:5499`).
    pub listen: String,
    /// User name → password or SCRAM verifier.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Secrets stay out of logs.
impl fmt::Debug for ServeSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeSection")
            .field("listen", &self.listen)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// A `[source.serve]` section that cannot be used, one line naming the setting (the service adds the file,
/// the source and `serve`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServeConfigError(String);

/// A checked, ready-to-use walsender configuration.
#[derive(Clone)]
pub struct ServeConfig {
    pub listen: String,
    pub users: HashMap<String, Verifier>,
    pub tls: Option<Arc<TlsConfig>>,
}

impl fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ServeConfig {
    /// Check a section: a `host:port` address, at least one user, valid verifiers, a readable certificate and
    /// key that match. Plaintext passwords become verifiers here (random salt), so none is kept in memory.
    pub fn from_section(section: &ServeSection) -> Result<ServeConfig, ServeConfigError> {
        let err = |m: String| ServeConfigError(m);
        let port_ok = section
            .listen
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
        if !port_ok {
            return Err(err(format!(
                "listen = \"{}\": expected host:port, e.g. \"127.0.0.1:5499\"",
                section.listen.escape_debug()
            )));
        }
        if section.users.is_empty() {
            return Err(err(
                "users: no user may connect; add one, e.g. users = { standby = \"secret\" }".into()
            ));
        }
        let mut users = HashMap::new();
        for (name, secret) in &section.users {
            if name.is_empty() || name.len() > 63 || name.contains('\0') {
                return Err(err(format!(
                    "users: \"{}\" is not a user name PostgreSQL clients can send (1 to 63 bytes)",
                    name.escape_debug()
                )));
            }
            if secret.is_empty() {
                return Err(err(format!("users.{name}: empty password")));
            }
            let verifier = Verifier::from_secret(secret).map_err(|e| err(format!("users.{name}: {e}")))?;
            users.insert(name.clone(), verifier);
        }
        let tls = match (&section.tls_cert, &section.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                Some(super::tls::server_config(cert, key).map_err(|e| err(e.to_string()))?)
            }
            (Some(_), None) => {
                return Err(err("tls_cert is set but tls_key is not: give both or neither".into()))
            }
            (None, Some(_)) => {
                return Err(err("tls_key is set but tls_cert is not: give both or neither".into()))
            }
        };
        Ok(ServeConfig { listen: section.listen.clone(), users, tls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<ServeSection, String> {
        #[derive(serde::Deserialize)]
        struct File {
            serve: ServeSection,
        }
        serde_json::from_str::<File>(text).map(|f| f.serve).map_err(|e| e.to_string())
    }

    #[test]
    fn sections_are_checked() {
        let ok =
            section(r#"{"serve": {"listen": "127.0.0.1:5499", "users": {"standby": "secret"}}}"#).unwrap();
        assert!(!format!("{ok:?}").contains("secret"), "{ok:?}");
        let cfg = ServeConfig::from_section(&ok).unwrap();
        assert!(cfg.users.contains_key("standby") && cfg.tls.is_none());
        assert!(!format!("{cfg:?}").contains("secret"));

        let unknown = section(r#"{"serve": {"listen": "x:1", "user": {}}}"#).unwrap_err();
        assert!(unknown.contains("unknown field `user`"), "{unknown}");

        let bad = |s: ServeSection| ServeConfig::from_section(&s).unwrap_err().to_string();
        let with = |listen: &str, users: &[(&str, &str)]| ServeSection {
            listen: listen.into(),
            users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            tls_cert: None,
            tls_key: None,
        };
        assert!(bad(with("5499", &[("a", "b")])).starts_with("listen = \"5499\": expected host:port"));
        assert!(bad(with("[::1]:0", &[("a", "b")])).contains("expected host:port"));
        assert!(ServeConfig::from_section(&with("[::1]:5499", &[("a", "b")])).is_ok());
        assert!(bad(with("h:1", &[])).contains("users: no user may connect"));
        assert!(bad(with("h:1", &[("a", "")])).contains("users.a: empty password"));
        let e = bad(with("h:1", &[("a", "SCRAM-SHA-256$4096:bad")]));
        assert!(e.starts_with("users.a: invalid SCRAM verifier"), "{e}");
        assert!(!e.contains("bad"), "a secret is never quoted: {e}");
        let mut half = with("h:1", &[("a", "b")]);
        half.tls_cert = Some("/x.crt".into());
        assert!(bad(half).contains("tls_cert is set but tls_key is not"));
        let mut missing = with("h:1", &[("a", "b")]);
        missing.tls_cert = Some("/nonexistent/walkeeper.crt".into());
        missing.tls_key = Some("/nonexistent/walkeeper.key".into());
        assert!(bad(missing).contains("/nonexistent/walkeeper.crt"));
    }
}
