//! WAL arithmetic and formats: LSNs, segment and history file names, timeline history, the long page header,
//! the page/record decoder, what a few record types say, and a summary of a stretch of WAL.

pub mod at_rest;
pub mod decoder;
pub mod encoder;
pub mod lsn;
pub mod page;
pub mod pgtime;
pub mod records;
pub mod segment;
pub mod tail;
pub mod timeline;

pub use decoder::{DecoderConfig, WalDecoder, WalError};
pub use lsn::Lsn;
