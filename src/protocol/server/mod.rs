//! The server side of the PostgreSQL protocol, as pure code beside the client side: what a walsender needs to
//! talk to PostgreSQL standbys, `psql` and `pg_receivewal` without touching a socket.
//!
//! - [`startup`]: the untagged startup phase (StartupMessage for protocol 3.0 and 3.2, SSLRequest,
//!   GSSENCRequest, CancelRequest) and the protocol version negotiation PostgreSQL 18 clients may ask for;
//! - [`frontend`]: tagged frontend messages (Query, password/SASL, CopyData/CopyDone/CopyFail, Sync,
//!   Terminate; the extended query protocol is recognised so it can be refused) and their codec;
//! - [`backend`]: encoders for every backend message a walsender sends;
//! - [`command`]: the replication command grammar of PostgreSQL's repl_gram.y / repl_scanner.l;
//! - [`results`]: the result sets a walsender answers those commands with, shaped as PostgreSQL's are;
//! - [`stream`]: the CopyBoth payloads (XLogData, keepalive out; status update, hot standby feedback in);
//! - [`errors`]: SQLSTATEs and PostgreSQL's own words for every refusal.
//!
//! SCRAM-SHA-256 authentication lives in [`crate::protocol::scram_server`]. Sockets, TLS and the archive are
//! the walsender's business (`serve/`), not this module's.

pub mod backend;
pub mod command;
pub mod errors;
pub mod frontend;
pub mod results;
pub mod startup;
pub mod stream;

use crate::wal::Lsn;

/// An LSN as PostgreSQL 13–18 print it in replication results and error texts (`%X/%X`, no zero padding).
pub fn lsn_text(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn.0 >> 32, lsn.0 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_is_unpadded() {
        assert_eq!(lsn_text(Lsn(0x1_0000_0148)), "1/148");
        assert_eq!(lsn_text(Lsn(0)), "0/0");
        assert_eq!(lsn_text(Lsn(u64::MAX)), "FFFFFFFF/FFFFFFFF");
    }
}
