//! Where WAL lands and how it is served back: the segment writer (`.partial`, preallocation, fsync,
//! durable rename), compression, the read side (restore, verify, status, cleanup), and the uploader that copies it
//! off-site.

pub mod backups;
pub mod catalog;
pub mod cleanup;
pub mod compress;
pub mod contents;
pub mod direct;
pub mod error;
pub mod fork;
pub mod fsutil;
pub mod local;
pub mod lock;
pub mod prefetch;
pub mod restore;
mod restream;
pub mod retention;
pub mod scan;
pub mod status;
pub mod store;
pub mod upload;
pub mod verify;

pub use error::WalDirError;
