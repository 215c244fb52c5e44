//! [`Store`] over an S3-compatible bucket (the `object_store` crate): objects `PREFIX/<name>`, exactly the
//! archive's file names, so other tools can read them.
//!
//! The trait is synchronous and object_store is async: each store owns a small tokio runtime (two worker
//! threads) and every call spawns its request there and waits on a channel. That works from a plain thread
//! and from `spawn_blocking` inside another runtime (nothing here enters a runtime or blocks one), and
//! dropping the store never blocks.
//!
//! Never overwrite (invariant 2): [`Store::put_new`] HEADs the key first; an object of the same size and
//! checksum is [`Put::AlreadyThere`], anything else a [`StoreError::Conflict`]. Only then a PUT with
//! `If-None-Match: *`; when the store refuses it (412: someone created the key meanwhile, or our own PUT was
//! retried after its answer was lost) the object is HEADed and compared again. A store that ignores the
//! header leaves a window between HEAD and PUT in which a racing writer's object can be replaced (see
//! docs/s3.md). Every object gets its SHA-256 as user metadata (`x-amz-meta-walkeeper-sha256`), which
//! SeaweedFS, MinIO and AWS return on HEAD; an object without it (written by another tool) is compared byte
//! by byte.
//!
//! "Absent" and "could not tell" stay apart (invariant 8): only a 404 is [`StoreError::NotFound`], and only
//! after the bucket itself answered (S3 gives a HEAD of a key in a missing bucket the same bodiless 404).
//! Everything else — connection refused, timeouts, 5xx, authentication — is [`StoreError::Io`] naming the
//! object and the endpoint.

mod config;
mod reader;

pub use config::{S3Location, S3Options, Timeouts};

use super::{Entry, Put, Store, StoreError};
use bytes::Bytes;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use reader::{ChunkReader, Frames};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

/// The user-metadata key holding an object's SHA-256 (lowercase hex): `x-amz-meta-walkeeper-sha256`.
const SHA256_METADATA: &str = "walkeeper-sha256";

/// Error messages quote at most this much of what the store said.
const MAX_DETAIL: usize = 400;

/// A bucket prefix used as an archive store.
pub struct S3Store {
    shared: Arc<Shared>,
}

/// What the store and its open readers share.
struct Shared {
    location: S3Location,
    /// The endpoint, for messages.
    endpoint: String,
    reads: Arc<AmazonS3>,
    writes: config::LazyClient,
    /// Where requests run.
    handle: tokio::runtime::Handle,
    /// Owns `handle`'s threads; `Some` until dropped (taken out to shut it down without blocking).
    runtime: Option<tokio::runtime::Runtime>,
    /// The bucket has answered a LIST: it exists (see [`S3Store::put_new`]).
    bucket_seen: AtomicBool,
}

/// A request running on the store's runtime. Dropping it cancels the request.
struct Pending<T> {
    answer: mpsc::Receiver<object_store::Result<T>>,
    task: tokio::task::AbortHandle,
}

/// What a HEAD says about an object.
struct Head {
    len: u64,
    modified: SystemTime,
    e_tag: Option<String>,
    sha256: Option<String>,
}

impl S3Store {
    /// The store at `url` (`s3://BUCKET[/PREFIX]`), configured from `options` and the process environment.
    /// Makes no request: a wrong endpoint or credentials show at the first operation.
    pub fn open(url: &str, options: &S3Options) -> Result<S3Store, StoreError> {
        let config_error =
            |detail: String| StoreError::Io { op: "open", location: url.to_string(), source: detail.into() };
        let location = S3Location::parse(url).map_err(config_error)?;
        let env =
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        let clients = config::clients(&location, env, options).map_err(config_error)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("walkeeper-s3")
            .enable_all()
            .build()
            .map_err(|e| config_error(format!("cannot start the S3 client's threads: {e}")))?;
        let shared = Shared {
            location,
            endpoint: clients.endpoint,
            reads: Arc::new(clients.reads),
            writes: clients.writes,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            bucket_seen: AtomicBool::new(false),
        };
        Ok(S3Store { shared: Arc::new(shared) })
    }

    fn key(&self, name: &str) -> Result<Path, StoreError> {
        self.shared.location.key(name).map_err(|detail| StoreError::Io {
            op: "use",
            location: self.location_of(name),
            source: format!("not a valid object name: {detail}").into(),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        request: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> object_store::Result<T> {
        self.shared.spawn(request).wait()
    }

    fn io(&self, op: &'static str, name: &str, e: &object_store::Error) -> StoreError {
        StoreError::Io { op, location: self.location_of(name), source: self.shared.describe(e).into() }
    }

    /// After a 404 for `name`: checks that the bucket answers, so a missing bucket (or a gateway that has lost
    /// it) is an error and never "not found". Costs one small LIST, only on a miss.
    fn confirm_absent(&self, op: &'static str, name: &str, key: &Path) -> Result<(), StoreError> {
        let client = self.shared.reads.clone();
        let probe = key.clone();
        match self.run(async move { client.list_with_delimiter(Some(&probe)).await }) {
            Ok(_) => {
                self.shared.bucket_seen.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(StoreError::Io {
                op,
                location: self.location_of(name),
                source: format!(
                    "the object seems absent, but the bucket did not answer: {}",
                    self.shared.describe(&e)
                )
                .into(),
            }),
        }
    }

    fn list_error(&self, e: &object_store::Error) -> StoreError {
        StoreError::Io { op: "list", location: self.location(), source: self.shared.describe(e).into() }
    }

    /// The entry of a listed object exactly one part below `prefix`. A folder marker ("PREFIX/", which
    /// SeaweedFS lists once the last object under it is deleted) reads back as the prefix itself and is no
    /// entry; neither is anything deeper.
    fn direct_child(&self, prefix: &Path, meta: object_store::ObjectMeta) -> Option<Entry> {
        let mut below = meta.location.prefix_match(prefix)?;
        let name = below.next()?.as_ref().to_string();
        if below.next().is_some() {
            return None;
        }
        Some(Entry { name, len: meta.size, modified: Some(meta.last_modified.into()), regular: true })
    }

    /// HEAD `key`: `None` only when it really does not exist.
    fn head(&self, op: &'static str, name: &str, key: &Path) -> Result<Option<Head>, StoreError> {
        match self.head_unconfirmed(op, name, key)? {
            Some(head) => Ok(Some(head)),
            None => {
                self.confirm_absent(op, name, key)?;
                Ok(None)
            }
        }
    }

    /// HEAD `key`: `None` on a 404, which may also mean a missing bucket.
    fn head_unconfirmed(&self, op: &'static str, name: &str, key: &Path) -> Result<Option<Head>, StoreError> {
        self.head_answer(op, name, self.head_request(key).wait())
    }

    /// Starts a HEAD of `key` on the store's runtime.
    fn head_request(&self, key: &Path) -> Pending<object_store::GetResult> {
        let client = self.shared.reads.clone();
        let path = key.clone();
        let options = GetOptions { head: true, ..GetOptions::default() };
        self.shared.spawn(async move { client.get_opts(&path, options).await })
    }

    /// What a HEAD of `name` answered: `None` on a 404.
    fn head_answer(
        &self,
        op: &'static str,
        name: &str,
        answer: object_store::Result<object_store::GetResult>,
    ) -> Result<Option<Head>, StoreError> {
        match answer {
            Ok(answer) => {
                let sha256 = answer
                    .attributes
                    .get(&Attribute::Metadata(SHA256_METADATA.into()))
                    .map(|v| v.as_ref().to_string());
                Ok(Some(Head {
                    len: answer.meta.size,
                    modified: answer.meta.last_modified.into(),
                    e_tag: answer.meta.e_tag,
                    sha256,
                }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io(op, name, &e)),
        }
    }

    /// `name` exists as `existing`: the same data (already there) or a conflict.
    fn settle(
        &self,
        name: &str,
        key: &Path,
        existing: &Head,
        data: &[u8],
        digest: &str,
    ) -> Result<Put, StoreError> {
        match compare(existing.len, existing.sha256.as_deref(), data.len() as u64, digest) {
            Verdict::Same => Ok(Put::AlreadyThere),
            Verdict::Differs(detail) => {
                Err(StoreError::Conflict { location: self.location_of(name), detail })
            }
            Verdict::ReadToKnow => {
                let reader =
                    ChunkReader::new(self.shared.clone(), key.clone(), existing.len, existing.e_tag.clone());
                match first_difference(reader, data) {
                    Ok(None) => Ok(Put::AlreadyThere),
                    Ok(Some(at)) => Err(StoreError::Conflict {
                        location: self.location_of(name),
                        detail: format!(
                            "its bytes differ from byte {at} on (it has no {SHA256_METADATA} metadata)"
                        ),
                    }),
                    Err(e) => Err(StoreError::Io {
                        op: "compare with",
                        location: self.location_of(name),
                        source: e.into(),
                    }),
                }
            }
        }
    }

    fn put(&self, key: Path, data: &[u8], mode: PutMode, digest: &str) -> object_store::Result<()> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata(SHA256_METADATA.into()), digest.to_string().into());
        let options = PutOptions { mode, attributes, ..PutOptions::default() };
        // One copy of the data: object_store needs owned bytes, the trait lends a slice. Up to a 1 GiB segment
        // is sent as one PUT (S3 takes up to 5 GiB); the signed payload hash lets the store check the body.
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        let client = self.shared.writes()?;
        self.run(async move { client.put_opts(&key, payload, options).await.map(|_| ()) })
    }
}

impl Shared {
    /// The write client, built at the first write (see `config::Clients`).
    fn writes(&self) -> object_store::Result<Arc<AmazonS3>> {
        self.writes
            .get()
            .map_err(|detail| object_store::Error::Generic { store: "S3", source: detail.into() })
    }

    fn spawn<T: Send + 'static>(
        &self,
        request: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Pending<T> {
        let (tx, answer) = mpsc::sync_channel(1);
        let task = self.handle.spawn(async move {
            let _ = tx.send(request.await);
        });
        Pending { answer, task: task.abort_handle() }
    }

    /// One line for an error of this store: what object_store said (with its causes), and the endpoint.
    fn describe(&self, e: &object_store::Error) -> String {
        format!("{} (endpoint {})", one_line(e), self.endpoint)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // shutdown_background never blocks, so a store may be dropped anywhere, even inside async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl<T> Pending<T> {
    fn wait(self) -> object_store::Result<T> {
        self.answer.recv().unwrap_or_else(|_| Err(no_answer()))
    }
}

/// What a request whose task ended without answering (it panicked, or was cancelled) failed with.
fn no_answer() -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: "the request ended without an answer (its task panicked or was cancelled)".into(),
    }
}

/// The entry of object `name`: objects are always regular files.
fn object_entry(name: &str, len: u64, modified: SystemTime) -> Entry {
    Entry { name: name.to_string(), len, modified: Some(modified), regular: true }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.shared.location.url())
            .field("endpoint", &self.shared.endpoint)
            .finish_non_exhaustive()
    }
}

impl Store for S3Store {
    fn location(&self) -> String {
        self.shared.location.url()
    }

    fn location_of(&self, name: &str) -> String {
        format!("{}/{name}", self.shared.location.url())
    }

    fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let client = self.shared.reads.clone();
        let prefix = self.shared.location.prefix_path();
        let asked = prefix.clone();
        // Delimited: only the prefix's direct children, every page (object_store follows continuation tokens).
        let listing = self.run(async move {
            let asked = (!asked.as_ref().is_empty()).then_some(asked);
            client.list_with_delimiter(asked.as_ref()).await
        });
        let listing = listing.map_err(|e| self.list_error(&e))?;
        self.shared.bucket_seen.store(true, Ordering::Relaxed);
        Ok(listing.objects.into_iter().filter_map(|meta| self.direct_child(&prefix, meta)).collect())
    }

    fn list_after(&self, after: &str) -> Result<Vec<Entry>, StoreError> {
        let client = self.shared.reads.clone();
        let prefix = self.shared.location.prefix_path();
        let asked = prefix.clone();
        let offset = self.key(after)?;
        // `start-after`: the store skips what sorts before (an archive's older segments), every page followed.
        // Not delimited: deeper objects come too, and are no entries (as in `list`).
        let listing = self.run(async move {
            use futures_util::TryStreamExt;
            let asked = (!asked.as_ref().is_empty()).then_some(asked);
            client.list_with_offset(asked.as_ref(), &offset).try_collect::<Vec<_>>().await
        });
        let listing = listing.map_err(|e| self.list_error(&e))?;
        self.shared.bucket_seen.store(true, Ordering::Relaxed);
        Ok(listing.into_iter().filter_map(|meta| self.direct_child(&prefix, meta)).collect())
    }

    fn stat(&self, name: &str) -> Result<Option<Entry>, StoreError> {
        let key = self.key(name)?;
        Ok(self.head("stat", name, &key)?.map(|head| object_entry(name, head.len, head.modified)))
    }

    fn stat_first(&self, names: &[String]) -> Result<Option<(usize, Entry)>, StoreError> {
        let keys = names.iter().map(|name| self.key(name)).collect::<Result<Vec<_>, _>>()?;
        // Every HEAD in flight at once; the answers are taken in order, so the first name that exists wins
        // and an error before it is an error (it might have been there).
        let requests: Vec<_> = keys.iter().map(|key| self.head_request(key)).collect();
        for (i, (name, request)) in names.iter().zip(requests).enumerate() {
            if let Some(head) = self.head_answer("stat", name, request.wait())? {
                return Ok(Some((i, object_entry(name, head.len, head.modified))));
            }
        }
        if let (Some(name), Some(key)) = (names.first(), keys.first()) {
            self.confirm_absent("stat", name, key)?;
        }
        Ok(None)
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        self.open_entry(name).map(|(_, reader)| reader)
    }

    fn open_entry(&self, name: &str) -> Result<(Entry, Box<dyn Read + Send>), StoreError> {
        let key = self.key(name)?;
        // The first chunk's GET tells the size, time and ETag too: no HEAD before it.
        let (meta_tx, meta) = mpsc::sync_channel(1);
        let first = Frames::start(&self.shared, key.clone(), 0..reader::CHUNK, None, Some(meta_tx));
        let head = match meta.recv() {
            Ok(meta) => {
                let found = object_entry(name, meta.size, meta.last_modified.into());
                let reader = ChunkReader::after_first(self.shared.clone(), key, meta.size, meta.e_tag, first);
                return Ok((found, Box::new(reader)));
            }
            Err(_) => match first.first_error() {
                object_store::Error::NotFound { .. } => {
                    self.confirm_absent("open", name, &key)?;
                    return Err(StoreError::NotFound { location: self.location_of(name) });
                }
                // An empty object answers a range with 416: the HEAD tells its size.
                e if one_line(&e).contains("416 Range Not Satisfiable") => self.head("open", name, &key)?,
                e => return Err(self.io("open", name, &e)),
            },
        };
        match head {
            Some(head) => {
                let found = object_entry(name, head.len, head.modified);
                Ok((found, Box::new(ChunkReader::new(self.shared.clone(), key, head.len, head.e_tag))))
            }
            None => Err(StoreError::NotFound { location: self.location_of(name) }),
        }
    }

    fn read_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let key = self.key(name)?;
        let end = offset.saturating_add(len as u64);
        if end == offset {
            // Nothing to fetch, but "does it exist" still gets its true answer.
            return match self.head("read", name, &key)? {
                Some(_) => Ok(Vec::new()),
                None => Err(StoreError::NotFound { location: self.location_of(name) }),
            };
        }
        let client = self.shared.reads.clone();
        let path = key.clone();
        let options = GetOptions { range: Some(GetRange::Bounded(offset..end)), ..GetOptions::default() };
        match self.run(async move { client.get_opts(&path, options).await?.bytes().await }) {
            Ok(bytes) => Ok(Vec::from(bytes)),
            Err(object_store::Error::NotFound { .. }) => {
                self.confirm_absent("read", name, &key)?;
                Err(StoreError::NotFound { location: self.location_of(name) })
            }
            Err(e) => match self.head("read", name, &key)? {
                // S3 answers a range that starts at or past the end with 416; the local store reads nothing.
                Some(head) if offset >= head.len => Ok(Vec::new()),
                _ => Err(self.io("read", name, &e)),
            },
        }
    }

    fn put_new(&self, name: &str, data: &[u8]) -> Result<Put, StoreError> {
        let key = self.key(name)?;
        let digest = sha256_hex(data);
        // Once the bucket has answered a LIST, a 404 here is taken as "absent" without another LIST (one
        // request fewer per upload: the uploader lists the bucket before its first upload). Before that, it
        // is confirmed: a store may accept a PUT into a bucket that does not exist (SeaweedFS 4.48 does), which
        // would hide a mistyped bucket name.
        let existing = match self.shared.bucket_seen.load(Ordering::Relaxed) {
            true => self.head_unconfirmed("create", name, &key)?,
            false => self.head("create", name, &key)?,
        };
        if let Some(existing) = existing {
            return self.settle(name, &key, &existing, data, &digest);
        }
        match self.put(key.clone(), data, PutMode::Create, &digest) {
            // The store may ignore If-None-Match: then a writer racing us since the HEAD was overwritten.
            Ok(()) => Ok(Put::Created),
            // Created since the HEAD: by a racing writer, or by this very PUT when its answer was lost and
            // object_store retried it. Either way, what is there now decides.
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                match self.head("create", name, &key)? {
                    Some(existing) => self.settle(name, &key, &existing, data, &digest),
                    None => Err(StoreError::Io {
                        op: "create",
                        location: self.location_of(name),
                        source: format!(
                            "the store refused a create-only PUT (If-None-Match) but has no such object (endpoint {})",
                            self.shared.endpoint
                        )
                        .into(),
                    }),
                }
            }
            Err(e) => Err(self.io("create", name, &e)),
        }
    }

    fn put_replace(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let key = self.key(name)?;
        self.put(key, data, PutMode::Overwrite, &sha256_hex(data)).map_err(|e| self.io("write", name, &e))
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let key = self.key(name)?;
        let client = self.shared.writes().map_err(|e| self.io("delete", name, &e))?;
        match self.run(async move { client.delete(&key).await }) {
            // S3 answers 204 for a missing key too; a store that says 404 means the same: it is gone.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io("delete", name, &e)),
        }
    }
}

/// What a HEAD tells about an existing object compared with the data to store.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Same,
    Differs(String),
    /// Same size, no checksum to compare: only the bytes can tell.
    ReadToKnow,
}

fn compare(existing_len: u64, existing_sha256: Option<&str>, len: u64, digest: &str) -> Verdict {
    if existing_len != len {
        return Verdict::Differs(format!("it holds {existing_len} bytes, the data to store {len}"));
    }
    match existing_sha256 {
        Some(theirs) if theirs.trim().eq_ignore_ascii_case(digest) => Verdict::Same,
        Some(theirs) => Verdict::Differs(format!(
            "its SHA-256 is {}, the data's is {digest}",
            theirs.chars().take(64).collect::<String>()
        )),
        None => Verdict::ReadToKnow,
    }
}

/// Where `reader` first differs from `data` (a shorter or longer object differs at the shorter end); `None`
/// when they are equal.
fn first_difference(mut reader: impl Read, data: &[u8]) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0usize;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok((at != data.len()).then_some(at as u64));
        }
        let ours = &data[at.min(data.len())..data.len().min(at + n)];
        if let Some(i) = ours.iter().zip(&buf[..n]).position(|(a, b)| a != b) {
            return Ok(Some((at + i) as u64));
        }
        if ours.len() < n {
            return Ok(Some(data.len() as u64));
        }
        at += n;
    }
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error and its causes on one line (causes already quoted by their parent are not repeated), whitespace
/// collapsed (stores answer with multi-line XML), at most [`MAX_DETAIL`] characters.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = line.char_indices().nth(MAX_DETAIL) {
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(sha256_hex(b"hello"), DIGEST);
    }

    #[test]
    fn compare_decides_from_size_and_checksum() {
        assert_eq!(compare(5, Some(DIGEST), 5, DIGEST), Verdict::Same);
        assert_eq!(compare(5, Some(&DIGEST.to_uppercase()), 5, DIGEST), Verdict::Same);
        let Verdict::Differs(detail) = compare(6, Some(DIGEST), 5, DIGEST) else { panic!() };
        assert_eq!(detail, "it holds 6 bytes, the data to store 5");
        let Verdict::Differs(detail) = compare(5, Some("00"), 5, DIGEST) else { panic!() };
        assert!(detail.contains("SHA-256 is 00,"), "{detail}");
        // A size mismatch wins even without a checksum; without one, only the bytes can tell.
        assert!(matches!(compare(4, None, 5, DIGEST), Verdict::Differs(_)));
        assert_eq!(compare(5, None, 5, DIGEST), Verdict::ReadToKnow);
    }

    /// A reader that hands out at most 3 bytes per call.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn first_difference_finds_the_byte() {
        assert_eq!(first_difference(Trickle(b"abcdefg"), b"abcdefg").unwrap(), None);
        assert_eq!(first_difference(Trickle(b"abcdXfg"), b"abcdefg").unwrap(), Some(4));
        assert_eq!(first_difference(Trickle(b"abcd"), b"abcdefg").unwrap(), Some(4));
        assert_eq!(first_difference(Trickle(b"abcdefgh"), b"abcdefg").unwrap(), Some(7));
        assert_eq!(first_difference(Trickle(b""), b"").unwrap(), None);
        assert_eq!(first_difference(Trickle(b"x"), b"").unwrap(), Some(0));
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn one_line_keeps_causes_once_and_flattens() {
        let e = Layer(
            "HTTP error: request failed",
            Some(Box::new(Layer(
                "request failed",
                Some(Box::new(Layer("Connection refused\n (os error 111)", None))),
            ))),
        );
        assert_eq!(one_line(&e), "HTTP error: request failed: Connection refused (os error 111)");
        let long = Layer(Box::leak("x ".repeat(1000).into_boxed_str()), None);
        let line = one_line(&long);
        assert_eq!(line.chars().count(), MAX_DETAIL + 1);
        assert!(line.ends_with('…'));
    }
}
