//! A compressed segment streamed again from its start while its `.partial` already holds WAL (after a
//! restart, a reconnect or a failed validation): the new stream is written under a temporary name and
//! takes the `.partial` name only once it holds everything of the old file worth keeping. Until then a
//! crash, a lost server or a corrupt new stream leaves the old `.partial` exactly as it was, so WAL
//! acknowledged by an earlier run is never truncated away (issue 11, finding 5). An uncompressed segment
//! needs none of this: it is rewritten in place, and its old bytes past the new data stay until
//! overwritten (see [`super::direct`]).
//!
//! Each byte of the new stream is compared with the old file's decompressed content as it arrives. The
//! old file is in one of three states:
//!
//! - **covering**: every byte written so far equals the old file's, and the old file holds at least as
//!   many. Its name already holds the new stream's bytes (fsynced when the segment was opened), so a sync
//!   may claim all of them without touching the new file (invariant 1), and a crash leaves a `.partial`
//!   from which the next start streams the segment again (invariant 3).
//! - **passed**: the old content ended (or could not be decoded further) while it still matched: the new
//!   stream holds all of it and more. The next sync gives the new file the name.
//! - **diverged** at offset `k`: the two differ from `k` on. The name holds only `k` of the new bytes, so
//!   that is all a sync may claim. Which side is right only validation can tell: once the caller's
//!   validated position passes `k`, the new byte at `k` is the server's WAL, the old bytes from `k` on are
//!   not, and the new file takes the name; if the new stream is the corrupt one, validation never passes
//!   `k`, the session fails, and the old `.partial` stays. The flush position reported to the server is
//!   already capped by the validated position, so it never exceeds `k` in between either.
//!
//! Replacing is: sync flush of the compressor, fsync of the new file (its bytes must be on disk before the
//! name points at them), rename over the `.partial`, fsync of the directory (so that the claim made next
//! survives a crash). The temporary name, `<name>.partial.tmp`, is not a WAL file name for any reader, and
//! a stale one is replaced the next time the segment is opened.

use super::compress;
use super::error::{Result, WalDirError};
use super::fsutil;
use crate::wal::segment::Compression;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// Bytes of old content decoded per comparison step.
const COMPARE_CHUNK: usize = 64 * 1024;

/// The temporary name a file is prepared under before it is renamed to `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Where the old `.partial` stands against the new stream (see the module comment).
enum Old {
    Covering(Box<dyn Read + Send>),
    Passed,
    Diverged(u64),
}

/// The old `.partial` of a compressed segment being streamed again, and where the new stream goes.
pub struct Restream {
    old: Old,
    /// Leading bytes of the new stream known to equal the old file's.
    matched: u64,
    old_path: PathBuf,
    tmp: PathBuf,
    /// The new file has been renamed to `old_path`; only the directory sync may be missing.
    renamed: bool,
    buf: Vec<u8>,
}

impl Restream {
    /// Prepare to stream `partial` (compressed with `method`) again: `None` when there is no old content
    /// to protect (no file, an empty one, or not a regular file, which the plain open then reports).
    /// With `sync`, the old file is fsynced first: its bytes back the positions claimed until it is
    /// replaced, and the run that wrote them may have died before syncing them.
    pub fn start(partial: &Path, method: Compression, sync: bool) -> Result<Option<Restream>> {
        match fs::symlink_metadata(partial) {
            Ok(meta) if meta.is_file() && meta.len() > 0 => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalDirError::io("stat", partial, e)),
        }
        let file = File::open(partial).map_err(|e| WalDirError::io("open", partial, e))?;
        if sync {
            fsutil::sync_file(&file, partial)?;
        }
        let reader = compress::decoder(method, BufReader::new(file))
            .map_err(|e| WalDirError::io("decompress", partial, e))?;
        Ok(Some(Restream {
            old: Old::Covering(reader),
            matched: 0,
            old_path: partial.to_path_buf(),
            tmp: temp_path(partial),
            renamed: false,
            buf: vec![0; COMPARE_CHUNK],
        }))
    }

    /// Where the new stream is: its temporary name until it is renamed over the old file.
    pub fn new_file_path(&self) -> &Path {
        if self.renamed {
            &self.old_path
        } else {
            &self.tmp
        }
    }

    /// Compare the next bytes of the new stream with the old content.
    pub fn compare(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let Old::Covering(reader) = &mut self.old else { return };
            let want = data.len().min(self.buf.len());
            let got = match reader.read(&mut self.buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !compress::is_truncation(&e) {
                        tracing::warn!(
                            "could not decompress \"{}\" past offset {}: {e}; the new stream replaces it",
                            self.old_path.display(),
                            self.matched
                        );
                    }
                    0
                }
            };
            if got == 0 {
                self.old = Old::Passed;
                return;
            }
            if let Some(i) = self.buf[..got].iter().zip(data).position(|(a, b)| a != b) {
                let at = self.matched + i as u64;
                tracing::warn!(
                    "\"{}\" differs from the WAL streamed again at offset {at}; it is kept until the new WAL is validated there",
                    self.old_path.display()
                );
                self.matched = at;
                self.old = Old::Diverged(at);
                return;
            }
            self.matched += got as u64;
            data = &data[got..];
        }
    }

    /// How many leading bytes of the new stream the old `.partial` holds, while it must keep its name;
    /// `None` once the new file may take the name, given that the caller has validated the new stream's
    /// first `checked` bytes.
    pub fn held(&self, checked: u64) -> Option<u64> {
        match self.old {
            _ if self.renamed => None,
            Old::Covering(_) => Some(self.matched),
            Old::Diverged(at) if checked <= at => Some(at),
            Old::Passed | Old::Diverged(_) => None,
        }
    }

    /// Give the new file (its contents synced by the caller when sync is on) the `.partial` name; with
    /// `sync_dir`, make the rename durable before anything is claimed from it. Can be retried after an
    /// error.
    pub fn replace(&mut self, sync_dir: bool) -> Result<()> {
        if !self.renamed {
            fsutil::rename(&self.tmp, &self.old_path)?;
            self.renamed = true;
        }
        if sync_dir {
            fsutil::sync_dir(fsutil::parent_dir(&self.old_path))?;
        }
        Ok(())
    }

    /// Keep the old `.partial` and remove the new file.
    pub fn abandon(self) -> Result<()> {
        match fs::remove_file(&self.tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(WalDirError::io("remove", &self.tmp, e)),
        }
    }
}
