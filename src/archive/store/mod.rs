//! The archive's storage seam: every read of an archive (catalog listing, restore, verify, status, cleanup,
//! identity) and every upload goes through [`Store`], so the same code serves a local directory
//! ([`LocalStore`]) and an S3-compatible bucket (`S3Store`, see the object-storage issue).
//!
//! The trait is synchronous: the read commands are synchronous programs, and an object store's async client
//! is driven from inside its implementation. It is deliberately small — list, stat, ranged and streaming
//! reads, create-only and replacing writes, delete — and says nothing about WAL: the catalog
//! (`archive::catalog`) gives names their meaning.
//!
//! Errors keep "absent" apart from "could not tell" (DESIGN.md invariant 8): only [`StoreError::NotFound`]
//! may ever become restore's "not in the archive".

pub mod local;
pub mod s3;

pub use local::LocalStore;
pub use s3::{S3Options, S3Store};

use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

/// Opens the store at `location`: `s3://BUCKET[/PREFIX]` (endpoint and credentials from the standard AWS
/// environment, see docs/s3.md), or else a local directory. Other `scheme://` locations are refused rather than
/// taken for a directory. Makes no request and touches no file: errors show at the first operation.
pub fn open(location: &str) -> Result<Box<dyn Store>, StoreError> {
    open_with(location, &S3Options::default())
}

/// [`open`], with explicit settings for an S3 location (the service's configuration keys); unset ones still
/// come from the environment.
pub fn open_with(location: &str, s3: &S3Options) -> Result<Box<dyn Store>, StoreError> {
    if location.starts_with("s3://") {
        return Ok(Box::new(S3Store::open(location, s3)?));
    }
    if let Some((scheme, _)) = location.split_once("://") {
        if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b)) {
            return Err(StoreError::Io {
                op: "open",
                location: location.to_string(),
                source: format!("\"{scheme}://\" is not a supported store (s3:// or a directory)").into(),
            });
        }
    }
    Ok(Box::new(LocalStore::new(location)))
}

/// [`open`] for a command's `-D` argument: a path that is not UTF-8 can only be a directory.
pub fn open_path(location: &Path) -> Result<Box<dyn Store>, StoreError> {
    match location.to_str() {
        Some(text) => open(text),
        None => Ok(Box::new(LocalStore::new(location))),
    }
}

/// One file of a directory or one object of a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Name inside the store (no directory part, no prefix).
    pub name: String,
    /// Size in bytes.
    pub len: u64,
    /// Last modification, when the store knows it.
    pub modified: Option<SystemTime>,
    /// False for a directory, symlink, device or anything else that is not a plain file. Objects are
    /// always regular. Nothing that is not regular is ever read as WAL.
    pub regular: bool,
}

/// What [`Store::put_new`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The name did not exist; it now holds the data.
    Created,
    /// The name already held exactly this data (a re-upload after a crash): nothing was written.
    AlreadyThere,
}

/// A store operation that failed. Every variant names the file or object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file or object does not exist.
    #[error("\"{location}\" does not exist")]
    NotFound { location: String },
    /// A create-only write found the name taken by different contents (invariant 2: never overwritten).
    #[error("\"{location}\" already exists with different contents: {detail}")]
    Conflict { location: String, detail: String },
    /// The store could not be read or written (I/O error, network, permissions, a store outage).
    #[error("could not {op} \"{location}\": {source}")]
    Io {
        op: &'static str,
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// True only when the store said "no such file or object".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// A directory or a bucket prefix holding archive files.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages: a directory path, or `s3://bucket/prefix`.
    fn location(&self) -> String;

    /// Where one name of the store is, for messages.
    fn location_of(&self, name: &str) -> String;

    /// Every entry, in no particular order. A store that cannot be listed is an error, never an empty list.
    fn list(&self) -> Result<Vec<Entry>, StoreError>;

    /// The entries whose names sort after `after` (byte order), in no particular order: what follows a
    /// segment in an archive (later segments of its timeline, every later timeline and its history file)
    /// without listing everything before it where the store can skip (S3's `start-after`). An error as
    /// [`Store::list`].
    fn list_after(&self, after: &str) -> Result<Vec<Entry>, StoreError> {
        Ok(self.list()?.into_iter().filter(|e| e.name.as_str() > after).collect())
    }

    /// One entry; `None` when it does not exist.
    fn stat(&self, name: &str) -> Result<Option<Entry>, StoreError>;

    /// The first of `names` that exists, with its index in `names`; `None` when none does. Where the store
    /// can ask for all of them at once (S3: concurrent HEADs), one round trip instead of one per name. An
    /// error as [`Store::stat`] when any name before the first one found could not be told.
    fn stat_first(&self, names: &[String]) -> Result<Option<(usize, Entry)>, StoreError> {
        for (i, name) in names.iter().enumerate() {
            if let Some(entry) = self.stat(name)? {
                return Ok(Some((i, entry)));
            }
        }
        Ok(None)
    }

    /// A reader over the whole contents (streaming: segments are read in chunks, never whole in memory).
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, StoreError>;

    /// [`Store::open`], with the entry that is read (its size and modification time), in one request where
    /// the store can (an S3 GET answers both with the first bytes; a file's come from the open descriptor).
    /// The default stats, then opens: a file replaced in between gets an entry older than what is read, never
    /// the reverse (a spool entry stamped with it is then refused, not served stale).
    fn open_entry(&self, name: &str) -> Result<(Entry, Box<dyn Read + Send>), StoreError> {
        let entry =
            self.stat(name)?.ok_or_else(|| StoreError::NotFound { location: self.location_of(name) })?;
        Ok((entry, self.open(name)?))
    }

    /// Up to `len` bytes from `offset`; shorter only at the end of the file.
    fn read_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError>;

    /// The whole contents, for small files (history files, headers of small test segments).
    fn read_all(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.open(name)?.read_to_end(&mut out).map_err(|e| StoreError::Io {
            op: "read",
            location: self.location_of(name),
            source: e.into(),
        })?;
        Ok(out)
    }

    /// Create `name` holding `data`, atomically and durably, only if it does not exist. An existing entry with
    /// the same contents is [`Put::AlreadyThere`]; with other contents, [`StoreError::Conflict`] and nothing is
    /// changed.
    fn put_new(&self, name: &str, data: &[u8]) -> Result<Put, StoreError>;

    /// Create or replace `name` with `data`, atomically. Only for the `.partial` of the open segment, which
    /// grows in place; final names go through [`Store::put_new`].
    fn put_replace(&self, name: &str, data: &[u8]) -> Result<(), StoreError>;

    /// Remove `name`; removing what is already gone is not an error.
    fn delete(&self, name: &str) -> Result<(), StoreError>;

    /// The directory behind a local store (the writer's durable first stage, the lock file); `None` for
    /// object storage.
    fn local_dir(&self) -> Option<&Path> {
        None
    }
}

#[cfg(test)]
mod open_tests {
    use super::*;

    #[test]
    fn open_picks_the_store_by_location() {
        let dir = open("/var/lib/walkeeper/archive").unwrap();
        assert_eq!(dir.local_dir(), Some(Path::new("/var/lib/walkeeper/archive")));
        let bucket = open("s3://bucket/wal/main").unwrap();
        assert_eq!(bucket.location(), "s3://bucket/wal/main");
        assert_eq!(bucket.location_of("00000002.history"), "s3://bucket/wal/main/00000002.history");
        assert!(bucket.local_dir().is_none());
        for (bad, why) in [("gs://bucket/x", "\"gs://\" is not a supported store"), ("s3://", "no bucket")] {
            let err = open(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("could not open \"{bad}\"")) && err.contains(why), "{err}");
        }
    }
}
