//! Connecting to PostgreSQL as libpq does for a replication client: settings from conninfo strings, URIs,
//! command-line options and the environment (`params`, `conninfo`, `env`, `pgpass`), then socket, TLS and
//! authentication (`connect`, `tls`, `auth`).

pub mod conninfo;
pub mod env;
pub mod params;
pub mod pgpass;
pub mod tls;

pub use params::{ChannelBinding, ConnParams, Endpoint, SslMode, TargetSessionAttrs};
pub mod auth;
pub mod connect;
pub mod connection;
pub mod stream;
pub mod tls;

pub use connect::{connect, ConnectError, ConnectOptions, PasswordPrompt};
pub use connection::{ConnError, Connection};
