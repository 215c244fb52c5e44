//! Connecting to PostgreSQL as libpq does for a replication client: settings from conninfo strings, URIs,
//! command-line options and the environment (`params`, `conninfo`, `env`, `pgpass`), then socket, TLS and
//! authentication (`connect`, `tcp`, `stream`, `tls`, `auth`), and the established `connection`.

pub mod auth;
pub mod connect;
pub mod connection;
pub mod conninfo;
pub mod env;
pub mod params;
pub mod pgpass;
pub mod stream;
pub mod tcp;
pub mod tls;

pub use connect::{connect, ConnectError, ConnectOptions, PasswordPrompt};
pub use connection::{ConnError, Connection};
pub use params::{ChannelBinding, ConnParams, Endpoint, SslMode, TargetSessionAttrs};
