//! WAL arithmetic and formats: LSNs, segment and history file names, timeline history, the long page header,
//! the page/record decoder.

pub mod at_rest;
pub mod decoder;
pub mod encoder;
pub mod lsn;
pub mod page;
pub mod segment;
pub mod timeline;

pub use decoder::{DecoderConfig, WalDecoder, WalError};
pub use lsn::Lsn;
