//! Where WAL lands and how it is served back: the segment writer (`.partial`, preallocation, fsync,
//! durable rename), compression, and the read side (restore, verify, status, cleanup).

pub mod compress;
pub mod error;
pub mod fsutil;
pub mod identity;
pub mod local;
pub mod scan;
pub mod verify;

pub use error::WalDirError;
