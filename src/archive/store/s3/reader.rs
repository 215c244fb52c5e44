//! Streaming read of one object: ranged GETs of [`CHUNK`] bytes, the next one already in flight while the
//! current one is consumed, so a 1 GiB segment is never whole in memory (at most two chunks are). A GET's body
//! is handed to the reader frame by frame as the network delivers it: the first bytes are used while the rest
//! still arrives, and no chunk is first copied into one buffer. Every GET but the one that first tells the
//! object's ETag carries `If-Match` with it: an object replaced while it is read (a `.partial` that grew)
//! fails the read instead of mixing two versions.

use super::{no_answer, Shared};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::{mpsc, Arc};

/// Bytes per ranged GET: two per 16 MB segment. Halving the requests of 4 MB ranges took about a tenth off
/// SeaweedFS's CPU per byte served (docs/benchmarks.md, Off-site); at most two chunks are held per reader, so
/// the prefetch worker's four fetches hold at most 64 MiB. A GET must finish within the read timeout (30 s:
/// 0.3 MB/s per GET).
pub(super) const CHUNK: u64 = 8 << 20;

/// Chunks requested at once, the one being read included.
const IN_FLIGHT: usize = 2;

/// What a GET's task sends the reader.
enum Frame {
    Data(Bytes),
    Failed(object_store::Error),
    /// The whole body was delivered.
    End,
}

/// One ranged GET running on the store's runtime, its body arriving frame by frame. Dropping it cancels the
/// GET.
pub(super) struct Frames {
    /// The bytes it must deliver (known once the first GET has answered: see [`Frames::start`]).
    range: Range<u64>,
    frames: mpsc::Receiver<Frame>,
    task: tokio::task::AbortHandle,
    /// Bytes delivered so far.
    got: u64,
}

impl Frames {
    /// Starts a GET of `range` of `key` (with `If-Match: e_tag` when given). With `meta`, the answer's object
    /// metadata is sent there before the body (the first GET of an object tells its size and ETag); when the
    /// GET fails, nothing is sent there and the error comes as the first frame.
    pub(super) fn start(
        shared: &Shared,
        key: Path,
        range: Range<u64>,
        e_tag: Option<String>,
        meta: Option<mpsc::SyncSender<ObjectMeta>>,
    ) -> Frames {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: e_tag,
            ..GetOptions::default()
        };
        let client = shared.reads.clone();
        let (tx, frames) = mpsc::channel();
        // The channel is unbounded, but a body is never longer than its range: object_store checks the answer's
        // Content-Range, the HTTP client the body's length (and the reader checks again).
        let task = shared.handle.spawn(async move {
            let answer = match client.get_opts(&key, options).await {
                Ok(answer) => answer,
                Err(e) => {
                    let _ = tx.send(Frame::Failed(e));
                    return;
                }
            };
            if let Some(meta) = meta {
                let _ = meta.send(answer.meta.clone());
            }
            let mut body = answer.into_stream();
            while let Some(frame) = body.next().await {
                let (frame, failed) = match frame {
                    Ok(bytes) => (Frame::Data(bytes), false),
                    Err(e) => (Frame::Failed(e), true),
                };
                if tx.send(frame).is_err() || failed {
                    return;
                }
            }
            let _ = tx.send(Frame::End);
        });
        Frames { range, frames, task: task.abort_handle(), got: 0 }
    }

    /// The error of a GET that failed before any byte: what the store answered.
    pub(super) fn first_error(&self) -> object_store::Error {
        match self.frames.recv() {
            Ok(Frame::Failed(e)) => e,
            _ => no_answer(),
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A [`Read`] over one object of known size.
pub(super) struct ChunkReader {
    shared: Arc<Shared>,
    key: Path,
    len: u64,
    e_tag: Option<String>,
    /// First byte not yet requested.
    next: u64,
    /// Requested chunks, in order; the first is being read.
    pending: VecDeque<Frames>,
    current: Bytes,
}

impl ChunkReader {
    /// Starts reading `key`, which is `len` bytes long with this ETag (when the store gave one).
    pub(super) fn new(shared: Arc<Shared>, key: Path, len: u64, e_tag: Option<String>) -> ChunkReader {
        let mut reader =
            ChunkReader { shared, key, len, e_tag, next: 0, pending: VecDeque::new(), current: Bytes::new() };
        reader.request_ahead();
        reader
    }

    /// Goes on reading `key` with its first GET `first` running (started from offset 0; its answer told the
    /// object's size `len` and ETag).
    pub(super) fn after_first(
        shared: Arc<Shared>,
        key: Path,
        len: u64,
        e_tag: Option<String>,
        mut first: Frames,
    ) -> ChunkReader {
        first.range = 0..len.min(first.range.end);
        let next = first.range.end;
        let mut reader = ChunkReader {
            shared,
            key,
            len,
            e_tag,
            next,
            pending: VecDeque::from([first]),
            current: Bytes::new(),
        };
        reader.request_ahead();
        reader
    }

    fn request_ahead(&mut self) {
        while self.pending.len() < IN_FLIGHT && self.next < self.len {
            let end = self.len.min(self.next.saturating_add(CHUNK));
            let range = self.next..end;
            self.pending.push_back(Frames::start(
                &self.shared,
                self.key.clone(),
                range,
                self.e_tag.clone(),
                None,
            ));
            self.next = end;
        }
    }

    /// The next bytes of the object; empty at its end.
    fn next_frame(&mut self) -> io::Result<Bytes> {
        loop {
            let Some(front) = self.pending.front_mut() else { return Ok(Bytes::new()) };
            let expected = front.range.end - front.range.start;
            let what = format!("bytes {}-{}", front.range.start, front.range.end.saturating_sub(1));
            match front.frames.recv() {
                Ok(Frame::Data(frame)) if frame.is_empty() => {}
                Ok(Frame::Data(frame)) => {
                    front.got = front.got.saturating_add(frame.len() as u64);
                    if front.got > expected {
                        return Err(io::Error::other(format!(
                            "{what}: the store returned more than {expected} bytes (was the object replaced?)"
                        )));
                    }
                    return Ok(frame);
                }
                Ok(Frame::Failed(object_store::Error::Precondition { .. })) => {
                    return Err(io::Error::other(format!(
                        "{what}: the object was replaced while it was being read (its ETag changed)"
                    )))
                }
                Ok(Frame::Failed(e)) => {
                    return Err(io::Error::other(format!("{what}: {}", self.shared.describe(&e))))
                }
                Err(mpsc::RecvError) => {
                    return Err(io::Error::other(format!("{what}: {}", self.shared.describe(&no_answer()))))
                }
                Ok(Frame::End) => {
                    if front.got != expected {
                        return Err(io::Error::other(format!(
                            "{what}: the store returned {} bytes instead of {expected} (was the object replaced?)",
                            front.got
                        )));
                    }
                    self.pending.pop_front();
                    self.request_ahead();
                }
            }
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.current.is_empty() {
            self.current = self.next_frame()?;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
