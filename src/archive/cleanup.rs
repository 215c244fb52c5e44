//! Archive cleanup with `pg_archivecleanup`'s semantics: every WAL segment file (complete or `.partial`, of any
//! timeline, any compression) whose segment part sorts before the oldest kept file's is removed. As
//! pg_archivecleanup does, only the 16 trailing hex digits (log and segment number) are compared, ignoring
//! the timeline, so that a parent timeline's segments still needed are never removed early. Timeline history
//! files are never removed; backup history files only when asked (`-b`, pg_archivecleanup 17's
//! `--clean-backup-history`).
//!
//! The oldest kept file may be given as a segment name, with a compression and/or `.partial` suffix, or as a
//! backup history file name (`…​.00000028.backup`): then its segment part is used. Anything else is refused.
//!
//! In a bucket (`-D s3://…`) only complete objects are removed: `.partial` objects belong to the uploader of
//! `receive --upload`, which replaces and deletes them itself. No lock is taken there (a bucket has none), and
//! none is needed: the uploader only creates objects newer than any cut-off a running archive is given.
//!
//! The files come from the archive's [`Catalog`]. Two things are said before anything is removed (warnings):
//! a WAL-named entry that is not a regular file is left in place, and removing the live `.partial` (the
//! newest segment file of the newest timeline, which a running `walkeeper receive` may be writing) is
//! pointed out — pg_archivecleanup removes it silently.

use super::catalog::{Catalog, NotRegular, SegmentSize};
use super::error::WalDirError;
use super::fsutil;
use super::store::{Store, StoreError};
use crate::wal::segment::WalFileName;

/// Why cleanup refused to run.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("invalid file name argument \"{0}\": not a WAL segment or backup history file name")]
    InvalidName(String),
    #[error("archive location \"{0}\" does not exist or is not a directory")]
    NoArchive(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] WalDirError),
}

impl CleanupError {
    /// pg_archivecleanup's codes: 2 for a bad argument or a missing archive, 1 for a failure while removing.
    pub fn exit_code(&self) -> i32 {
        match self {
            CleanupError::InvalidName(_) | CleanupError::NoArchive(_) => 2,
            CleanupError::Store(_) | CleanupError::Io(_) => 1,
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

/// What cleanup removes, and what it says first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Names in the store, sorted.
    pub files: Vec<String>,
    /// One line each (module docs).
    pub warnings: Vec<String>,
}

/// The files of `store` that cleanup would remove for `oldest_kept`.
pub fn plan(store: &dyn Store, oldest_kept: &str, backup_history: bool) -> Result<Plan, CleanupError> {
    if let Some(dir) = store.local_dir() {
        if !dir.is_dir() {
            return Err(CleanupError::NoArchive(store.location()));
        }
    }
    let cutoff = cutoff_segment(oldest_kept)?;
    let catalog = Catalog::read(store, SegmentSize::FromHeaders)?;
    let removable = |name: &str| is_removable(name, &cutoff, backup_history);
    let mut plan = Plan::default();
    let bucket = store.local_dir().is_none();
    let candidates = catalog
        .segments()
        .iter()
        .filter(|s| !(bucket && s.partial))
        .map(|s| &s.file)
        .chain(catalog.impossible().iter().map(|e| &e.name))
        .chain(catalog.backup_histories().iter().map(|e| &e.name));
    plan.files = candidates.filter(|n| removable(n)).cloned().collect();
    plan.files.sort();
    for e in catalog.irregular().iter().filter(|e| removable(&e.name)) {
        plan.warnings.push(format!("{}: left in place", NotRegular(store.location_of(&e.name))));
    }
    // The newest segment file of the newest timeline (a complete file ranks before its stale .partial).
    let live = catalog.timelines().into_values().next_back().and_then(|files| {
        let last = files.last()?.id;
        files.iter().find(|f| f.id == last)
    });
    if let Some(live) = live.filter(|f| f.partial && !bucket && removable(&f.file)) {
        plan.warnings.push(format!(
            "removing \"{}\", the newest segment file of the newest timeline: a running walkeeper receive may still be writing it",
            store.location_of(&live.file)
        ));
    }
    Ok(plan)
}

/// Remove what [`plan`] lists. Its warnings are for the caller to show first.
pub fn remove(store: &dyn Store, plan: &Plan) -> Result<(), CleanupError> {
    for name in &plan.files {
        store.delete(name)?;
    }
    if let (Some(dir), false) = (store.local_dir(), plan.files.is_empty()) {
        // Make the removals durable: after a crash the archive does not hold files again that the operator
        // was told are gone.
        fsutil::sync_dir(dir)?;
    }
    Ok(())
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
    fn plans_from_the_catalog_and_warns_first() {
        use crate::archive::store::LocalStore;
        let tmp = crate::archive::catalog::test_archive(&[
            "000000010000000000000001",
            "000000010000000000000002.partial",
            "000000020000000000000002",
            "000000020000000000000003.zst.partial",
            "000000010000000000000001.00000028.backup",
            "00000002.history",
        ]);
        let store = LocalStore::new(tmp.path());
        std::fs::create_dir(tmp.path().join("000000010000000000000000")).unwrap();
        let p = plan(&store, "000000020000000000000003", false).unwrap();
        assert_eq!(
            p.files,
            ["000000010000000000000001", "000000010000000000000002.partial", "000000020000000000000002"]
        );
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(
            p.warnings[0].ends_with("000000010000000000000000\" is not a regular file: left in place"),
            "{:?}",
            p.warnings
        );
        // Past the live .partial of the newest timeline (timeline 1's older .partial is not live).
        let p = plan(&store, "000000020000000000000004", true).unwrap();
        assert_eq!(p.files.len(), 5, "{:?}", p.files);
        assert!(
            p.warnings[1].contains(
                "000000020000000000000003.zst.partial\", the newest segment file of the newest timeline"
            ),
            "{:?}",
            p.warnings
        );
        remove(&store, &p).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["000000010000000000000000", "00000002.history"]);
        let err =
            plan(&LocalStore::new(tmp.path().join("nope")), "000000020000000000000004", false).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
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
