//! A replication session: IDENTIFY_SYSTEM → TIMELINE_HISTORY → START_REPLICATION → the CopyBoth loop,
//! feedback, end-of-timeline handling (`session`), the silent-server timeout (`liveness`), the reconnect
//! loop around it (`follow`), and what to do with a server after a failover: hunting for the server to
//! stream from (`hunt`), the archive held against its history (`resume`, deciding with the pure `failover`).

pub mod failover;
pub mod feedback;
pub mod follow;
pub mod hunt;
pub mod liveness;
pub mod resume;
pub mod session;
pub mod slot;
pub mod state;

use crate::archive::fsutil::Preallocation;
use crate::archive::local::WalDirOptions;
use crate::archive::upload::UploadLink;
use crate::conn::{ConnParams, ConnectOptions};
use crate::wal::segment::Compression;
use crate::wal::Lsn;
use feedback::ApplyReport;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `walkeeper receive` needs, after argument parsing.
#[derive(Clone, Debug)]
pub struct ReceiveConfig {
    pub conn: ConnParams,
    pub connect: ConnectOptions,
    pub directory: PathBuf,
    pub slot: Option<String>,
    pub endpos: Option<Lsn>,
    /// None disables periodic status updates (`-s 0`).
    pub status_interval: Option<Duration>,
    /// `--receive-timeout`: give a silent connection up after this long (None: never); see `liveness`.
    pub receive_timeout: Option<Duration>,
    pub synchronous: bool,
    /// false with `--no-sync`.
    pub fsync: bool,
    pub compression: Compression,
    pub compression_level: Option<i32>,
    pub no_loop: bool,
    pub validate: bool,
    pub apply_report: ApplyReport,
    /// Standbys reading this archive live through the walsender: while any do, every batch is synced.
    pub live_readers: state::LiveReaders,
    /// `--failover` (#12): hunt among the connection string's hosts for the server to stream from, at most a
    /// second apart while none qualifies, instead of libpq's first-suitable-host with a 1 to 30 s backoff
    /// (`hunt`). Resolve the connection string with read-write as the default `target_session_attrs`.
    pub failover: bool,
    /// Create the slot (physical, reserving WAL) on the server streamed from when it is missing there,
    /// instead of failing as pg_receivewal does. `--failover` implies it when a slot is named.
    pub create_slot: bool,
    /// `--upload`: the running uploader (the start position and the flush cap read it); see `archive::upload`.
    pub upload: Option<UploadLink>,
}

impl ReceiveConfig {
    /// pg_receivewal reports a flush position only when using a slot or `--synchronous`.
    pub fn reports_flush(&self) -> bool {
        self.slot.is_some() || self.synchronous
    }

    pub fn dir_options(&self, segment_size: u32, file_mode: u32) -> WalDirOptions {
        WalDirOptions {
            segment_size,
            compression: self.compression,
            compression_level: self.compression_level,
            sync: self.fsync,
            file_mode,
            // Frequent fdatasyncs stay data-only on zero-filled files; otherwise reserve (half the writes).
            preallocation: if self.synchronous { Preallocation::ZeroFill } else { Preallocation::Reserve },
            // With fsync on, WAL goes to the device anyway: skip the page cache. With --no-sync, leave it there.
            direct_io: self.fsync,
        }
    }
}
