//! Streaming read of one object: ranged GETs of [`CHUNK`] bytes, the next one already in flight while the
//! current one is consumed, so a 1 GiB segment is never whole in memory (at most two chunks are). Every GET
//! carries `If-Match` with the ETag seen when the object was opened: an object replaced while it is read (a
//! `.partial` that grew) fails the read instead of mixing two versions.

use super::{Pending, Shared};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;

/// Bytes per ranged GET: two per 16 MB segment. Halving the requests of 4 MB ranges took about a tenth off
/// the store's CPU per byte served (docs/benchmarks.md); at most two chunks are held per reader.
pub(super) const CHUNK: u64 = 8 << 20;

/// Chunks requested ahead of the reader, the current one included.
const IN_FLIGHT: usize = 2;

/// A [`Read`] over one object of known size.
pub(super) struct ChunkReader {
    shared: Arc<Shared>,
    key: Path,
    len: u64,
    e_tag: Option<String>,
    /// First byte not yet requested.
    next: u64,
    /// Requested chunks, in order, with the range each must hold.
    pending: VecDeque<(std::ops::Range<u64>, Pending<Bytes>)>,
    current: Bytes,
}

impl ChunkReader {
    /// Starts reading `key`, which is `len` bytes long with this ETag (when the store gave one).
    pub(super) fn new(shared: Arc<Shared>, key: Path, len: u64, e_tag: Option<String>) -> ChunkReader {
        ChunkReader::after_first(shared, key, len, e_tag, Bytes::new())
    }

    /// Goes on reading `key` after its first bytes `first` (a GET of the first chunk returned them, with the
    /// object's size and ETag; empty: nothing read yet).
    pub(super) fn after_first(
        shared: Arc<Shared>,
        key: Path,
        len: u64,
        e_tag: Option<String>,
        first: Bytes,
    ) -> ChunkReader {
        let next = first.len() as u64;
        let mut reader =
            ChunkReader { shared, key, len, e_tag, next, pending: VecDeque::new(), current: first };
        reader.request_ahead();
        reader
    }

    fn request_ahead(&mut self) {
        while self.pending.len() < IN_FLIGHT && self.next < self.len {
            let end = self.len.min(self.next.saturating_add(CHUNK));
            let range = self.next..end;
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.clone())),
                if_match: self.e_tag.clone(),
                ..GetOptions::default()
            };
            let client = self.shared.reads.clone();
            let key = self.key.clone();
            let pending =
                self.shared.spawn(async move { client.get_opts(&key, options).await?.bytes().await });
            self.pending.push_back((range, pending));
            self.next = end;
        }
    }

    /// Waits for the oldest requested chunk; `None` at the end of the object.
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let Some((range, pending)) = self.pending.pop_front() else {
            return Ok(None);
        };
        let what = format!("bytes {}-{}", range.start, range.end - 1);
        let bytes = match pending.wait() {
            Ok(bytes) => bytes,
            Err(object_store::Error::Precondition { .. }) => {
                return Err(io::Error::other(format!(
                    "{what}: the object was replaced while it was being read (its ETag changed)"
                )))
            }
            Err(e) => return Err(io::Error::other(format!("{what}: {}", self.shared.describe(&e)))),
        };
        let expected = range.end - range.start;
        if bytes.len() as u64 != expected {
            return Err(io::Error::other(format!(
                "{what}: the store returned {} bytes instead of {expected} (was the object replaced?)",
                bytes.len()
            )));
        }
        self.request_ahead();
        Ok(Some(bytes))
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.next_chunk()? {
                Some(bytes) => self.current = bytes,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
