//! Errors of the local WAL directory (writer, scan, compression): each displays as one line naming
//! what was being done, the file and the OS error, like pg_receivewal's messages.

use crate::wal::segment::Compression;
use std::io;
use std::path::{Path, PathBuf};

/// Anything that can go wrong writing, reading or scanning a local WAL directory.
#[derive(Debug, thiserror::Error)]
pub enum WalDirError {
    /// An operating-system call failed on `path`.
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The WAL directory exists but is something else.
    #[error("\"{}\" is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// A segment size PostgreSQL cannot run with.
    #[error("invalid WAL segment size {0}: must be a power of two from 1 MB to 1 GB")]
    InvalidSegmentSize(u64),
    /// A compression level the method does not accept.
    #[error("invalid {method} compression level {level}: {allowed}")]
    InvalidCompressionLevel { method: Compression, level: i32, allowed: &'static str },
    /// An uncompressed `.partial` left behind is neither empty nor a whole padded segment.
    #[error("WAL file \"{}\" has {size} bytes, should be 0 or {expected}", path.display())]
    PartialSize { path: PathBuf, size: u64, expected: u64 },
    /// A complete segment whose length contradicts the segment size (uncompressed on disk, or
    /// uncompressed content of a compressed file).
    #[error(
        "segment file \"{}\" holds {size} bytes of WAL, but the WAL segment size is {expected} bytes",
        path.display()
    )]
    SegmentSize { path: PathBuf, size: u64, expected: u64 },
    /// A segment file name that cannot exist with this segment size (its low part is too large):
    /// the directory was written for a smaller segment size.
    #[error("segment file name \"{}\" is impossible with a WAL segment size of {segment_size} bytes", path.display())]
    NameNotForSegmentSize { path: PathBuf, segment_size: u32 },
    /// A write that does not continue exactly where the previous one ended.
    #[error("write of {len} bytes to \"{}\" at offset {offset} is out of order: expected offset {expected}", path.display())]
    UnexpectedOffset { path: PathBuf, offset: u64, len: usize, expected: u64 },
    /// A write that would run past the end of the segment.
    #[error("write of {len} bytes to \"{}\" at offset {offset} runs past the segment size {segment_size}", path.display())]
    BeyondSegment { path: PathBuf, offset: u64, len: usize, segment_size: u32 },
    /// A timeline history file is already there with other contents.
    #[error("timeline history file \"{}\" already exists with different contents", path.display())]
    HistoryConflict { path: PathBuf },
    /// A segment name whose position does not fit in a 64-bit LSN.
    #[error("segment file \"{}\" lies past the end of the WAL address space", path.display())]
    LsnOverflow { path: PathBuf },
}

impl WalDirError {
    /// Wrap an OS error with the operation and the file it concerned.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> WalDirError {
        WalDirError::Io { op, path: path.to_path_buf(), source }
    }

    /// The OS error behind this error, if any (to tell ENOSPC from the rest, for instance).
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            WalDirError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Shorthand used across the archive's local modules.
pub type Result<T, E = WalDirError> = std::result::Result<T, E>;
