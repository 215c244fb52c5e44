//! walkeeper as a walsender: PostgreSQL standbys (13–18) stream from a source's archive as they would from
//! a primary — catching up from the segment files, then following live as the source's receive loop makes
//! WAL durable. A DR standby then needs no WAN stream and no slot on the primary; with walkeeper as the
//! primary's synchronous standby it loses nothing when the primary is lost (docs/dr-standby.md).
//!
//! - [`config`]: the `[source.serve]` section (listen address, SCRAM users, TLS);
//! - [`listener`]: the socket and one task per client; `conn`, `tls`, `handshake`: the connection, TLS,
//!   startup and SCRAM authentication;
//! - [`commands`]: replication commands answered from the archive (pure);
//! - [`source`]: what the archive holds and how far it may be served; [`reader`]: reading its files;
//! - `sender`: the CopyBoth loop (XLogData, keepalives, the standby's replies, timeline ends);
//! - [`downstreams`]: who is connected and what they still need (status, metrics, retention).
//!
//! Only WAL that is durable and validated is ever sent (DESIGN.md invariant 5): never past the receive
//! loop's `flushed`, at rest only the valid prefix of the files, and every byte through a WAL decoder.

pub mod commands;
pub mod config;
mod conn;
pub mod downstreams;
mod handshake;
pub mod listener;
pub mod reader;
mod sender;
mod session;
pub mod source;
mod tls;

pub use config::{ServeConfig, ServeConfigError, ServeSection};
pub use downstreams::{Downstream, DownstreamState, Downstreams, Needed};
pub use listener::Walsender;
pub use source::WalSource;

/// Why a walsender cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ServeConfigError),
}
