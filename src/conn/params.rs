//! The resolved connection settings (what libpq's `PQconninfoOption` array holds after parsing and
//! defaults), and the enums for the settings that take a fixed set of values.

use std::path::PathBuf;
use std::time::Duration;

/// Where to connect: a TCP host name/address or a Unix-domain socket directory, with its port.
/// (libpq: a `host` value beginning with `/` or `@` is a socket directory.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `host` (name used for TLS verification and .pgpass), optional `hostaddr` (numeric, used to connect).
    Tcp { host: String, hostaddr: Option<String>, port: u16 },
    /// Socket file is `<dir>/.s.PGSQL.<port>`.
    Unix { dir: PathBuf, port: u16 },
}

impl Endpoint {
    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Tcp { port, .. } | Endpoint::Unix { port, .. } => *port,
        }
    }

    /// The host as libpq names it in messages and looks it up in .pgpass (`pgpass::lookup` maps an empty host
    /// and the default socket directory to `localhost`).
    pub fn host_for_display(&self) -> String {
        match self {
            Endpoint::Tcp { host, hostaddr, .. } => {
                if host.is_empty() {
                    hostaddr.clone().unwrap_or_default()
                } else {
                    host.clone()
                }
            }
            Endpoint::Unix { dir, .. } => dir.display().to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    Disable,
    #[default]
    Prefer,
    Require,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    #[default]
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

/// Everything needed to open a connection, after conninfo, options, environment and defaults are merged.
/// `ConnParams::default()` has libpq's defaults where libpq has one without looking at the environment
/// (sslmode prefer, channel_binding prefer, keepalives on); endpoints and user are empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnParams {
    /// Tried in order (libpq's multi-host behaviour); never empty.
    pub endpoints: Vec<Endpoint>,
    pub user: String,
    /// `dbname` for the startup packet; replication connections for physical streaming send `replication`.
    pub dbname: Option<String>,
    /// An explicit password (conninfo `password=` or PGPASSWORD); `.pgpass` is consulted only when this is None.
    pub password: Option<String>,
    /// `passfile` / PGPASSFILE, else `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    pub application_name: Option<String>,
    pub fallback_application_name: Option<String>,
    pub options: Option<String>,
    pub sslmode: SslMode,
    /// The literal `system` means the operating system's trust store (libpq 16+; implies `verify-full`).
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub sslpassword: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub channel_binding: ChannelBinding,
    pub target_session_attrs: TargetSessionAttrs,
    pub keepalives: bool,
    /// TCP keepalive tuning (`keepalives_idle`, `keepalives_interval`, `keepalives_count`; TCP only, applied
    /// with setsockopt as libpq does; None = system default).
    pub keepalives_idle: Option<Duration>,
    pub keepalives_interval: Option<Duration>,
    pub keepalives_count: Option<u32>,
    /// `tcp_user_timeout` (TCP_USER_TIMEOUT, milliseconds in the connection string).
    pub tcp_user_timeout: Option<Duration>,
}

impl Default for ConnParams {
    fn default() -> Self {
        ConnParams {
            endpoints: Vec::new(),
            user: String::new(),
            dbname: None,
            password: None,
            passfile: None,
            application_name: None,
            fallback_application_name: None,
            options: None,
            sslmode: SslMode::default(),
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            sslpassword: None,
            connect_timeout: None,
            channel_binding: ChannelBinding::default(),
            target_session_attrs: TargetSessionAttrs::default(),
            keepalives: true,
            keepalives_idle: None,
            keepalives_interval: None,
            keepalives_count: None,
            tcp_user_timeout: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_libpq_s_where_libpq_has_one() {
        let d = ConnParams::default();
        assert_eq!(d.sslmode, SslMode::Prefer);
        assert_eq!(d.channel_binding, ChannelBinding::Prefer);
        assert_eq!(d.target_session_attrs, TargetSessionAttrs::Any);
        assert!(d.keepalives, "libpq's keepalives defaults to 1");
    }
}
