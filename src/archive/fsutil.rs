//! File-system primitives with durability in mind: create with an exact mode, preallocate with zeros,
//! fsync a file or a directory, durable rename. Every error names the operation and the path.

use super::error::{Result, WalDirError};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Size of one zero write while preallocating: a 16 MiB segment takes 16 system calls (pg_receivewal
/// writes 8 kB blocks: 2048 calls). One static buffer, so no allocation or page faults per segment;
/// block-aligned, so it can be written with `O_DIRECT`.
const ZERO_CHUNK: usize = 1 << 20;
#[repr(C, align(4096))]
struct Zeros([u8; ZERO_CHUNK]);
static ZEROS: Zeros = Zeros([0; ZERO_CHUNK]);

/// How a new uncompressed segment file reaches its full size before WAL is written into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Write zeros through the whole file, as pg_receivewal does. Writing WAL later changes no
    /// metadata, so each fdatasync flushes data only: the right choice when syncs are frequent
    /// (`--synchronous`).
    #[default]
    ZeroFill,
    /// Reserve the blocks with fallocate(2): reads return zeros and a full disk fails up front, at half
    /// the write volume. Writes into reserved blocks change extent metadata, so an fdatasync also
    /// commits the journal: the right choice when syncs are rare (status interval, segment end).
    /// Falls back to zero-filling where the file system cannot reserve.
    Reserve,
}

/// Open `path` for writing, creating it if needed. A created file gets exactly `mode` (set with
/// fchmod after creation, so the process umask cannot narrow or widen it); an existing file keeps
/// its mode. With `truncate`, an existing file is emptied.
pub fn open_for_write(path: &Path, mode: u32, truncate: bool) -> Result<File> {
    match OpenOptions::new().write(true).create_new(true).mode(mode).open(path) {
        Ok(file) => {
            file.set_permissions(Permissions::from_mode(mode))
                .map_err(|e| WalDirError::io("set permissions of", path, e))?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
            .write(true)
            .truncate(truncate)
            .open(path)
            .map_err(|e| WalDirError::io("open", path, e)),
        Err(e) => Err(WalDirError::io("create", path, e)),
    }
}

/// Fill `file` with `len` zero bytes from offset 0, so that later writes never allocate blocks
/// (and a full disk shows up now, not in the middle of a segment). Real zero writes, as
/// pg_receivewal does, rather than `fallocate`: the blocks are really written on every file system.
/// Kept on its own so other strategies can be benchmarked against it. Works the same on a file opened
/// with `O_DIRECT` (then the zeros never enter the page cache) where `len` is a multiple of 4 kB.
fn preallocate_zeros(file: &File, path: &Path, len: u64) -> Result<()> {
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from(len - offset).map_or(ZERO_CHUNK, |rest| rest.min(ZERO_CHUNK));
        file.write_all_at(&ZEROS.0[..n], offset).map_err(|e| WalDirError::io("pad", path, e))?;
        offset += n as u64;
    }
    Ok(())
}

/// Give `file` its full length `len` the way `how` says (see [`Preallocation`]).
pub fn preallocate(file: &File, path: &Path, len: u64, how: Preallocation) -> Result<()> {
    if how == Preallocation::Reserve {
        use std::os::fd::AsRawFd;
        let Ok(len_off) = libc::off_t::try_from(len) else {
            return preallocate_zeros(file, path, len);
        };
        // SAFETY: plain syscall on a file descriptor we own; mode 0 allocates and extends the size.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {}
            _ => return Err(WalDirError::io("preallocate", path, err)),
        }
    }
    preallocate_zeros(file, path, len)
}

/// Write all of `buf` at `offset`, retrying short writes. On error, returns how many bytes did
/// reach the file before it, so the caller can resume exactly there.
pub fn write_at_tracked(file: &File, buf: &[u8], offset: u64) -> std::result::Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < buf.len() {
        match file.write_at(&buf[done..], offset + done as u64) {
            Ok(0) => return Err((done, io::Error::from(io::ErrorKind::WriteZero))),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

/// Make the file's data durable. `fdatasync` is enough: it also flushes the metadata needed to read
/// the data back (the file size); timestamps are not worth a journal commit.
pub fn sync_file(file: &File, path: &Path) -> Result<()> {
    file.sync_data().map_err(|e| WalDirError::io("fsync", path, e))
}

/// Make a directory's entries (file creations, renames) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(|e| WalDirError::io("open directory", dir, e))?;
    handle.sync_all().map_err(|e| WalDirError::io("fsync directory", dir, e))
}

/// Rename `from` to `to` (atomically replacing `to`), without any fsync.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| WalDirError::io("rename", from, e))
}

/// Rename and make the rename durable by syncing the containing directory. The caller must have
/// synced the file's contents first: otherwise a crash could leave the new name on empty data.
pub fn durable_rename(from: &Path, to: &Path) -> Result<()> {
    rename(from, to)?;
    sync_dir(parent_dir(to))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write a small file completely under `tmp`, sync it if `sync`, and return it closed.
pub fn write_new_file(tmp: &Path, contents: &[u8], mode: u32, sync: bool) -> Result<()> {
    let mut file = open_for_write(tmp, mode, true)?;
    file.write_all(contents).map_err(|e| WalDirError::io("write", tmp, e))?;
    if sync {
        sync_file(&file, tmp)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn creates_with_exact_mode_and_keeps_existing_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for mode in [0o600, 0o640] {
            let _ = fs::remove_file(&path);
            drop(open_for_write(&path, mode, false).unwrap());
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, mode);
        }
        drop(open_for_write(&path, 0o600, false).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
    }

    #[test]
    fn truncate_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"abc").unwrap();
        drop(open_for_write(&path, 0o600, false).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        drop(open_for_write(&path, 0o600, true).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn preallocates_exact_zero_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = open_for_write(&path, 0o600, false).unwrap();
        let len = (ZERO_CHUNK as u64) * 2 + 12345;
        preallocate_zeros(&file, &path, len).unwrap();
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, len);
        assert!(data.iter().all(|&b| b == 0));
        // Really allocated, not sparse.
        assert!(fs::metadata(&path).unwrap().blocks() * 512 >= len);
    }

    #[test]
    fn reserving_gives_zeros_and_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = open_for_write(&path, 0o600, false).unwrap();
        let len = (ZERO_CHUNK as u64) * 3 + 512;
        preallocate(&file, &path, len, Preallocation::Reserve).unwrap();
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, len);
        assert!(data.iter().all(|&b| b == 0));
        assert!(fs::metadata(&path).unwrap().blocks() * 512 >= len);
    }

    #[test]
    fn durable_rename_and_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a");
        let to = dir.path().join("b");
        fs::write(&from, b"x").unwrap();
        durable_rename(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"x");
        let err = durable_rename(&from, &to).unwrap_err().to_string();
        assert!(err.starts_with(&format!("could not rename \"{}\": ", from.display())), "{err}");
        assert!(err.contains("No such file"), "{err}");
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        let err = sync_dir(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.starts_with("could not open directory"), "{err}");
    }
}
