//! Pure codecs for the PostgreSQL frontend/backend protocol (version 3.0) as a replication client uses it:
//! framing with a bounded message size, backend messages (including CopyBothResponse), typed server errors,
//! replication command text per server version and the streaming sub-protocol (XLogData, keepalive, status update).
//! The server side of the same protocol is [`server`], with SCRAM-SHA-256 authentication in [`scram_server`].

pub mod codec;
pub mod messages;
pub mod replication;
pub mod scram_server;
pub mod server;
pub mod sqlstate;

pub use messages::ServerError;
