//! Archive cleanup with `pg_archivecleanup`'s semantics: every WAL segment file (complete or `.partial`, of any
//! timeline, any compression) whose segment part sorts before the oldest kept file's is removed. As
//! pg_archivecleanup does, only the 16 trailing hex digits (log and segment number) are compared, ignoring
//! the timeline, so that a parent timeline's segments still needed are never removed early. Timeline history
//! files are never removed; backup history files only when asked (`-b`, pg_archivecleanup 17's
//! `--clean-backup-history`).
//!
//! The oldest kept file may be given as a segment name, with a compression and/or `.partial` suffix, or as a
//! backup history file name (`…​.00000028.backup`): then its segment part is used. Anything else is refused.

use super::error::WalDirError;
use super::fsutil;
use crate::wal::segment::WalFileName;
use std::fs;
use std::path::{Path, PathBuf};

/// Why cleanup refused to run.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("invalid file name argument \"{0}\": not a WAL segment or backup history file name")]
    InvalidName(String),
    #[error("archive location \"{}\" does not exist or is not a directory", .0.display())]
    NoArchive(PathBuf),
    #[error(transparent)]
    Io(#[from] WalDirError),
}

impl CleanupError {
    /// pg_archivecleanup's codes: 2 for a bad argument or a missing archive, 1 for a failure while removing.
    pub fn exit_code(&self) -> i32 {
        match self {
            CleanupError::InvalidName(_) | CleanupError::NoArchive(_) => 2,
            CleanupError::Io(_) => 1,
        }
    }
}

fn upper_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// The 24-character segment name that is the cleanup cutoff for the argument `oldest_kept`.
pub fn cutoff_segment(oldest_kept: &str) -> Result<String, CleanupError> {
    let invalid = || CleanupError::InvalidName(oldest_kept.to_string());
    let segment = match WalFileName::parse(oldest_kept) {
        Some(WalFileName::Segment { name, .. }) => name,
        Some(WalFileName::BackupHistory { segment, .. }) => segment,
        _ => return Err(invalid()),
    };
    let stem = oldest_kept.split('.').take(2).collect::<Vec<_>>();
    if !upper_hex(&segment) || (oldest_kept.ends_with(".backup") && !upper_hex(stem[1])) {
        return Err(invalid());
    }
    Ok(segment)
}

/// True when file `name` is one cleanup removes for `cutoff` (a segment name).
pub fn is_removable(name: &str, cutoff: &str, backup_history: bool) -> bool {
    let segment = match WalFileName::parse(name) {
        Some(WalFileName::Segment { name: segment, .. }) => segment,
        Some(WalFileName::BackupHistory { segment, .. }) if backup_history => segment,
        _ => return false,
    };
    upper_hex(&segment) && segment[8..] < cutoff[8..]
}

/// The files of `dir` that cleanup would remove for `oldest_kept`, sorted.
pub fn plan(dir: &Path, oldest_kept: &str, backup_history: bool) -> Result<Vec<PathBuf>, CleanupError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        _ => return Err(CleanupError::NoArchive(dir.to_path_buf())),
    }
    let cutoff = cutoff_segment(oldest_kept)?;
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalDirError::io("open directory", dir, e))? {
        let entry = entry.map_err(|e| WalDirError::io("read directory", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_removable(&name, &cutoff, backup_history) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Remove what [`plan`] lists (unless `dry_run`); returns the files removed (or that would be).
pub fn cleanup(
    dir: &Path,
    oldest_kept: &str,
    backup_history: bool,
    dry_run: bool,
) -> Result<Vec<PathBuf>, CleanupError> {
    let files = plan(dir, oldest_kept, backup_history)?;
    if dry_run || files.is_empty() {
        return Ok(files);
    }
    for path in &files {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalDirError::io("remove file", path, e).into()),
        }
    }
    fsutil::sync_dir(dir)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_names() {
        assert_eq!(cutoff_segment("000000010000000000000010").unwrap(), "000000010000000000000010");
        assert_eq!(cutoff_segment("000000010000000000000010.zst").unwrap(), "000000010000000000000010");
        assert_eq!(
            cutoff_segment("000000010000000000000010.gz.partial").unwrap(),
            "000000010000000000000010"
        );
        assert_eq!(
            cutoff_segment("000000010000003700000010.00000020.backup").unwrap(),
            "000000010000003700000010"
        );
        for bad in [
            "00000001.history",
            "000000010000000000000010.bz2",
            "00000001000000000000001",
            "00000001000000000000001a",
            "../000000010000000000000010",
            "000000010000000000000010.0000002x.backup",
            "",
        ] {
            assert!(matches!(cutoff_segment(bad), Err(CleanupError::InvalidName(_))), "{bad}");
        }
    }

    #[test]
    fn removes_older_segments_of_every_timeline_only() {
        let cut = "000000020000000000000010";
        for (name, removed) in [
            ("00000001000000000000000F", true),
            ("00000003000000000000000F.zst", true),
            ("00000002000000000000000F.lz4.partial", true),
            ("000000010000000000000010", false),
            ("000000020000000000000010.partial", false),
            ("000000010000000000000011.gz", false),
            ("000000010000000100000000", false),
            ("00000002.history", false),
            ("00000001000000000000000A.00000028.backup", false),
            ("00000001000000000000000a", false),
            ("README", false),
        ] {
            assert_eq!(is_removable(name, cut, false), removed, "{name}");
        }
        assert!(is_removable("00000001000000000000000A.00000028.backup", cut, true));
        assert!(!is_removable("000000010000000000000010.00000028.backup", cut, true));
    }
}
