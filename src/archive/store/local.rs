//! [`Store`] over a local directory. Reads never follow a symlink (`O_NOFOLLOW`); writes go to a temporary
//! file that is fsynced and then linked (create-only) or renamed (replace) into place, with the directory
//! fsynced after, so a crash leaves either the old state or the complete new file.

use super::{Entry, Put, Store, StoreError};
use crate::archive::fsutil;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A directory used as an archive store.
#[derive(Clone, Debug)]
pub struct LocalStore {
    dir: PathBuf,
    /// Mode of files this store creates.
    file_mode: u32,
}

impl LocalStore {
    /// The directory `dir` (not checked here: the first operation reports a missing directory).
    pub fn new(dir: impl Into<PathBuf>) -> LocalStore {
        LocalStore { dir: dir.into(), file_mode: 0o600 }
    }

    /// Files created by [`Store::put_new`] and [`Store::put_replace`] get `mode`.
    pub fn with_file_mode(mut self, mode: u32) -> LocalStore {
        self.file_mode = mode;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn io_error(&self, op: &'static str, name: &str, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound { location: self.location_of(name) }
        } else {
            StoreError::Io { op, location: self.location_of(name), source: e.into() }
        }
    }

    fn open_file(&self, name: &str) -> Result<File, StoreError> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path(name))
            .map_err(|e| self.io_error("open", name, e))
    }

    /// Write `data` into a new temporary file next to `name`, fsynced; returns its path.
    fn write_temp(&self, name: &str, data: &[u8]) -> Result<PathBuf, StoreError> {
        let tmp = self.path(&format!(".{name}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        fsutil::write_new_file(&tmp, data, self.file_mode, true).map_err(|e| StoreError::Io {
            op: "write",
            location: tmp.display().to_string(),
            source: e.into(),
        })?;
        Ok(tmp)
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        fsutil::sync_dir(&self.dir).map_err(|e| StoreError::Io {
            op: "fsync",
            location: self.location(),
            source: e.into(),
        })
    }
}

fn entry_from(name: String, meta: &fs::Metadata) -> Entry {
    Entry { name, len: meta.len(), modified: meta.modified().ok(), regular: meta.file_type().is_file() }
}

impl Store for LocalStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn location_of(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let list_error = |e: io::Error| StoreError::Io {
            op: "open directory",
            location: self.location(),
            source: e.into(),
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // symlink_metadata: a symlink is listed as what it is, not as its target.
            match fs::symlink_metadata(entry.path()) {
                Ok(meta) => out.push(entry_from(name, &meta)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // removed while listing
                Err(e) => return Err(self.io_error("stat", &name, e)),
            }
        }
        Ok(out)
    }

    fn stat(&self, name: &str) -> Result<Option<Entry>, StoreError> {
        match fs::symlink_metadata(self.path(name)) {
            Ok(meta) => Ok(Some(entry_from(name.to_string(), &meta))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("stat", name, e)),
        }
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        Ok(Box::new(self.open_file(name)?))
    }

    fn open_entry(&self, name: &str) -> Result<(Entry, Box<dyn Read + Send>), StoreError> {
        let file = self.open_file(name)?;
        let meta = file.metadata().map_err(|e| self.io_error("stat", name, e))?;
        Ok((entry_from(name.to_string(), &meta), Box::new(file)))
    }

    fn read_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let file = self.open_file(name)?;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error("read", name, e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn put_new(&self, name: &str, data: &[u8]) -> Result<Put, StoreError> {
        let tmp = self.write_temp(name, data)?;
        // link(2) fails with EEXIST instead of replacing: create-only, atomic.
        let linked = fs::hard_link(&tmp, self.path(name));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                self.sync_dir()?;
                Ok(Put::Created)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if self.read_all(name)? == data {
                    Ok(Put::AlreadyThere)
                } else {
                    Err(StoreError::Conflict {
                        location: self.location_of(name),
                        detail: format!("{} bytes to store differ from what is there", data.len()),
                    })
                }
            }
            Err(e) => Err(self.io_error("create", name, e)),
        }
    }

    fn put_replace(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.write_temp(name, data)?;
        if let Err(e) = fs::rename(&tmp, self.path(name)) {
            let _ = fs::remove_file(&tmp);
            return Err(self.io_error("rename into", name, e));
        }
        self.sync_dir()
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error("remove", name, e)),
        }
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_plain_files_and_marks_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        fs::write(tmp.path().join("a"), b"abc").unwrap();
        fs::create_dir(tmp.path().join("d")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("a"), tmp.path().join("l")).unwrap();
        let mut entries = store.list().unwrap();
        entries.sort_by(|x, y| x.name.cmp(&y.name));
        let seen: Vec<(&str, bool)> = entries.iter().map(|e| (e.name.as_str(), e.regular)).collect();
        assert_eq!(seen, [("a", true), ("d", false), ("l", false)]);
        assert_eq!(entries[0].len, 3);
        // A symlink is never read through.
        let err = store.open("l").err().unwrap();
        assert!(!err.is_not_found(), "{err}");
        assert!(store.stat("missing").unwrap().is_none());
        assert!(store.open("missing").err().unwrap().is_not_found());
        let (entry, _) = store.open_entry("a").unwrap();
        assert_eq!(Some(entry), store.stat("a").unwrap());
        assert!(store.open_entry("missing").err().unwrap().is_not_found());
        assert!(!store.open_entry("l").err().unwrap().is_not_found(), "never through a symlink");
        let err = LocalStore::new(tmp.path().join("missing")).list().unwrap_err().to_string();
        assert!(err.starts_with("could not open directory"), "{err}");
    }

    #[test]
    fn reads_ranges_and_whole_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        fs::write(tmp.path().join("f"), b"0123456789").unwrap();
        assert_eq!(store.read_range("f", 2, 3).unwrap(), b"234");
        assert_eq!(store.read_range("f", 8, 10).unwrap(), b"89");
        assert_eq!(store.read_all("f").unwrap(), b"0123456789");
    }

    #[test]
    fn put_new_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path()).with_file_mode(0o640);
        assert_eq!(store.put_new("x", b"one").unwrap(), Put::Created);
        assert_eq!(store.put_new("x", b"one").unwrap(), Put::AlreadyThere);
        let err = store.put_new("x", b"two").unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert_eq!(fs::read(tmp.path().join("x")).unwrap(), b"one");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(tmp.path().join("x")).unwrap().mode() & 0o777, 0o640);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn put_replace_and_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        store.put_replace("p", b"1").unwrap();
        store.put_replace("p", b"22").unwrap();
        assert_eq!(store.read_all("p").unwrap(), b"22");
        store.delete("p").unwrap();
        store.delete("p").unwrap();
        assert!(store.stat("p").unwrap().is_none());
    }
}
