//! Pure codecs for the PostgreSQL frontend/backend protocol (version 3.0) as a replication client uses it:
//! framing with a bounded message size, backend messages (including CopyBothResponse), typed server errors,
//! replication command text per server version and the streaming sub-protocol (XLogData, keepalive, status update).

pub mod codec;
pub mod messages;
pub mod replication;
pub mod sqlstate;

pub use messages::ServerError;
