//! The read side of the archive for PostgreSQL's `restore_command`: find the file PostgreSQL asks for (`%f`)
//! in the archive, in whatever form it is stored (plain, `.gz`, `.lz4`, `.zst`; with `--partial` also the
//! `.partial` files of a timeline's trailing run, see `archive::catalog`), check it, and write it to `%p`
//! atomically: into a temporary file in `%p`'s directory, then a rename. A crash never leaves a half-written
//! file under the name PostgreSQL reads.
//!
//! # What is checked before serving
//!
//! Every segment runs through the WAL decoder on its way to `%p` ([`SegmentCheck`]): its long page header
//! must be that of the segment it is named after (page address, a valid segment size) and, when restore runs
//! in a data directory (PostgreSQL runs `restore_command` there), of the database system in its
//! `global/pg_control`; then every page header, the prev-link chain and the CRC of every record; the
//! decompressed length must be the segment size (an lz4 frame cut at a block boundary decodes without
//! error, only shorter), and a complete segment must hold valid WAL to its end. A `.partial` may end
//! anywhere; zeros follow its data. This costs milliseconds per segment (CRC32C runs at memory speed) and
//! catches a flipped bit in any file, compressed or not. A history file must parse and name only older
//! timelines as ancestors.
//!
//! # Exit codes
//!
//! PostgreSQL treats an exit code from 1 to 125 as "not in the archive", and above 125 (or a death by
//! signal) as fatal. "Not in the archive" ends archive recovery there and promotes, so an error must not
//! look like it in archive recovery: commits after the damaged file would be silently lost. In standby mode
//! it is the opposite: "not found" makes the standby retry and fall back to streaming from its primary,
//! which may well have the file. So what an error exits with depends on how restore runs ([`Mode`], from the
//! signal files in the working directory; [`exit_code`]):
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0 | served |
//! | 1 | not in the archive (nothing printed); in standby mode (`standby.signal`) also an error, printed |
//! | 2 | an error, run by hand (no signal file): missing archive, read error, damaged or foreign file |
//! | 3 | invalid invocation: bad options, `%f` not a WAL, history or backup history file name |
//! | 126 | an error in archive recovery (`recovery.signal`), or any error with `--fatal-errors` |
//!
//! Errors are one line on stderr, which lands in the server log.

use super::catalog::{self, Catalog, NotRegular, SegmentSize};
use super::contents::{self, CHUNK};
use super::error::WalDirError;
use super::fsutil;
use super::store::{Entry, Store, StoreError};
use crate::wal::at_rest::{CheckError, SegmentCheck};
use crate::wal::page::PageError;
use crate::wal::segment::{Compression, SegmentId, TimeLineId, WalFileName};
use crate::wal::timeline::parse_history_of;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// Exit code: served.
pub const EXIT_OK: i32 = 0;
/// Exit code: not in the archive; nothing is printed.
pub const EXIT_NOT_FOUND: i32 = 1;
/// Exit code: a real error, reported on stderr (run by hand).
pub const EXIT_ERROR: i32 = 2;
/// Exit code: invalid invocation (options, file name).
pub const EXIT_USAGE: i32 = 3;
/// Exit code for errors in archive recovery and with `--fatal-errors`: above 125, fatal to PostgreSQL.
pub const EXIT_FATAL: i32 = 126;

/// Anything that keeps a file from being served.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Not in the archive: the normal end of archive recovery.
    #[error("file \"{0}\" is not in the archive")]
    NotFound(String),
    /// `%f` is not a name restore serves.
    #[error("refusing to restore \"{name}\": {reason}")]
    BadName { name: String, reason: &'static str },
    /// The archive directory is missing or not a directory.
    #[error("archive directory \"{}\" does not exist or is not a directory", .0.display())]
    NoArchive(PathBuf),
    /// The directory `%p` should land in is missing.
    #[error("directory \"{}\" of the destination file does not exist", .0.display())]
    NoDestinationDir(PathBuf),
    /// Writing `%p` (or the spool) failed.
    #[error(transparent)]
    Io(#[from] WalDirError),
    /// Reading the archive failed (never "not found": that is [`RestoreError::NotFound`]).
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    NotRegular(#[from] NotRegular),
    /// The file is there but does not pass the checks.
    #[error("WAL file \"{location}\" is damaged: {detail}")]
    Damaged { location: String, detail: String },
    /// A segment of another database system than the one being recovered.
    #[error(
        "WAL file \"{location}\" is from database system {found}, but the server being recovered is database system {expected} (global/pg_control)"
    )]
    OtherSystem { location: String, found: u64, expected: u64 },
}

impl RestoreError {
    fn store(name: &str, e: StoreError) -> RestoreError {
        // A file that vanished between lookup and read (a concurrent cleanup) is "not found".
        if e.is_not_found() {
            RestoreError::NotFound(name.to_string())
        } else {
            RestoreError::Store(e)
        }
    }
}

/// How `restore_command` runs, from the signal files in the working directory (PostgreSQL runs it in the
/// data directory). It decides what an error exits with (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `recovery.signal`: archive recovery, which ends (and promotes) at the first file not found.
    ArchiveRecovery,
    /// `standby.signal` (PostgreSQL's standby mode, also when `recovery.signal` exists too): retries.
    Standby,
    /// Neither: run by hand.
    ByHand,
}

impl Mode {
    /// The mode of a server whose data directory is `dir`.
    pub fn of_data_directory(dir: &Path) -> Mode {
        if dir.join("standby.signal").exists() {
            Mode::Standby
        } else if dir.join("recovery.signal").exists() {
            Mode::ArchiveRecovery
        } else {
            Mode::ByHand
        }
    }
}

/// The exit code for `e` (module docs): the one rule for every error, whatever the store.
pub fn exit_code(e: &RestoreError, mode: Mode, fatal_errors: bool) -> i32 {
    match e {
        RestoreError::NotFound(_) => EXIT_NOT_FOUND,
        RestoreError::BadName { .. } => EXIT_USAGE,
        _ if fatal_errors => EXIT_FATAL,
        _ => match mode {
            Mode::ArchiveRecovery => EXIT_FATAL,
            Mode::Standby => EXIT_NOT_FOUND,
            Mode::ByHand => EXIT_ERROR,
        },
    }
}

/// The system identifier of the server whose data directory is `dir`: the first field of
/// `global/pg_control` (`ControlFileData.system_identifier`, in every major). `None` when there is none.
pub fn data_directory_system_id(dir: &Path) -> Option<u64> {
    let mut file = File::open(dir.join("global/pg_control")).ok()?;
    let mut id = [0u8; 8];
    file.read_exact(&mut id).ok()?;
    Some(u64::from_le_bytes(id))
}

/// What `%f` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A segment, by its 24-character name.
    Segment { name: String },
    /// `TTTTTTTT.history`
    History { timeline: TimeLineId },
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`
    BackupHistory,
}

/// Classify `%f`, refusing anything that is not a plain WAL segment, timeline history or backup history
/// file name (PostgreSQL only ever asks for those; anything else, a path above all, is a misuse).
pub fn parse_request(file: &str) -> Result<Request, RestoreError> {
    let bad = |reason| RestoreError::BadName { name: file.to_string(), reason };
    if file.is_empty() || file.contains('/') || file.contains('\0') || file.contains("..") {
        return Err(bad("not a plain file name"));
    }
    let lower_case = file
        .split('.')
        .filter(|part| *part != "history" && *part != "backup")
        .any(|part| part.bytes().any(|b| b.is_ascii_lowercase()));
    if lower_case {
        return Err(bad("WAL file names are upper-case hexadecimal"));
    }
    match WalFileName::parse(file) {
        Some(WalFileName::Segment { name, compression: Compression::None, partial: false }) => {
            Ok(Request::Segment { name })
        }
        Some(WalFileName::History { timeline }) => Ok(Request::History { timeline }),
        Some(WalFileName::BackupHistory { .. }) => Ok(Request::BackupHistory),
        _ => Err(bad("not a WAL segment, timeline history or backup history file name")),
    }
}

/// The file a segment is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Name in the store.
    pub file: String,
    pub compression: Compression,
    pub partial: bool,
}

/// What was served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Where it came from: the archive file, or the spool entry.
    pub source: String,
    /// Bytes written to the destination.
    pub bytes: u64,
    /// For segments: the segment size read from the page header.
    pub segment_size: Option<u32>,
    /// True when a `.partial` was served.
    pub partial: bool,
}

/// How to serve.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Also serve the `.partial` files of a timeline's trailing run.
    pub partial: bool,
    /// The database system every segment must belong to (from `global/pg_control`), when known.
    pub system_id: Option<u64>,
}

/// Fail unless the archive can be there: a local store's directory must exist.
pub fn check_archive(store: &dyn Store) -> Result<(), RestoreError> {
    match store.local_dir() {
        Some(dir) => require_dir(dir, RestoreError::NoArchive),
        None => Ok(()),
    }
}

/// Fail unless the directory `dest` goes into exists.
pub fn check_destination(dest: &Path) -> Result<(), RestoreError> {
    require_dir(fsutil::parent_dir(dest), RestoreError::NoDestinationDir)
}

/// `missing(dir)` unless `dir` is a directory; other stat failures are I/O errors.
fn require_dir(dir: &Path, missing: fn(PathBuf) -> RestoreError) -> Result<(), RestoreError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(missing(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => {
            Err(missing(dir.to_path_buf()))
        }
        Err(e) => Err(WalDirError::io("stat", dir, e).into()),
    }
}

/// Serve `file` (`%f`) from `store` into `dest` (`%p`).
pub fn restore(
    store: &dyn Store,
    file: &str,
    dest: &Path,
    opts: &RestoreOptions,
) -> Result<Restored, RestoreError> {
    let request = parse_request(file)?;
    check_archive(store)?;
    check_destination(dest)?;
    match request {
        Request::Segment { name } => {
            let source =
                find_segment(store, &name, opts.partial)?.ok_or(RestoreError::NotFound(name.clone()))?;
            serve_segment(store, &name, &source, dest, opts.system_id)
        }
        Request::History { timeline } => {
            let bytes = read_small(store, file)?;
            let location = store.location_of(file);
            let damaged = |detail: String| RestoreError::Damaged { location: location.clone(), detail };
            let text =
                std::str::from_utf8(&bytes).map_err(|_| damaged("a timeline history file is text".into()))?;
            parse_history_of(timeline, text).map_err(|e| damaged(e.to_string()))?;
            write_bytes(dest, &bytes)?;
            Ok(Restored { source: location, bytes: bytes.len() as u64, segment_size: None, partial: false })
        }
        Request::BackupHistory => {
            let bytes = read_small(store, file)?;
            write_bytes(dest, &bytes)?;
            Ok(Restored {
                source: store.location_of(file),
                bytes: bytes.len() as u64,
                segment_size: None,
                partial: false,
            })
        }
    }
}

/// Read a whole (small) regular file of the store.
fn read_small(store: &dyn Store, file: &str) -> Result<Vec<u8>, RestoreError> {
    match store.stat(file).map_err(|e| RestoreError::store(file, e))? {
        None => Err(RestoreError::NotFound(file.to_string())),
        Some(e) if !e.regular => Err(NotRegular(store.location_of(file)).into()),
        Some(_) => store.read_all(file).map_err(|e| RestoreError::store(file, e)),
    }
}

/// The file serving segment `name`: a complete one in any compression (found by name, no listing), else,
/// with `partial`, its `.partial` when it is in the trailing run of its timeline (this lists the archive).
fn find_segment(store: &dyn Store, name: &str, partial: bool) -> Result<Option<Source>, RestoreError> {
    if let Some((entry, compression)) =
        catalog::lookup_complete(store, name).map_err(RestoreError::Store)??
    {
        return Ok(Some(Source { file: entry.name, compression, partial: false }));
    }
    if !partial {
        return Ok(None);
    }
    let catalog = Catalog::read(store, SegmentSize::FromHeaders).map_err(RestoreError::Store)?;
    if let Some(e) = catalog.irregular().iter().find(|e| e.name.starts_with(name)) {
        return Err(NotRegular(store.location_of(&e.name)).into());
    }
    let Some(id) = SegmentId::parse_name(name, catalog.segment_size()) else { return Ok(None) };
    Ok(catalog.find(id, true).map(|f| Source {
        file: f.file.clone(),
        compression: f.compression,
        partial: f.partial,
    }))
}

/// A temporary file in the directory of `dest` (`.NAME.walkeeper-XXXXXX.tmp`, mode 0600), removed when
/// dropped unless persisted.
pub(crate) fn temp_beside(dest: &Path) -> Result<NamedTempFile, RestoreError> {
    let dir = fsutil::parent_dir(dest);
    let base = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new().prefix(&format!(".{base}.walkeeper-")).suffix(".tmp").tempfile_in(dir).map_err(
        |e| match e.kind() {
            io::ErrorKind::NotFound => RestoreError::NoDestinationDir(dir.to_path_buf()),
            _ => WalDirError::io("create a temporary file in", dir, e).into(),
        },
    )
}

/// Rename `tmp` over `dest` without fsync: for the file handed to PostgreSQL (`%p`). The rename makes it
/// atomic, so PostgreSQL never reads half a file; durability is not needed, because after a crash recovery
/// asks restore_command for the segment again and `%p` is written anew (PostgreSQL does not fsync restored
/// files either). This saves an fsync of 16 MB per segment of replay.
fn persist_for_reading(tmp: NamedTempFile, dest: &Path) -> Result<(), RestoreError> {
    tmp.persist(dest).map(drop).map_err(|e| WalDirError::io("rename into", dest, e.error).into())
}

/// fsync `tmp`, rename it over `dest`, fsync the directory: for spool entries, which are served later
/// without reading the archive again, so a crash must never leave the name on data that did not reach the
/// disk.
pub(crate) fn persist_durably(tmp: NamedTempFile, dest: &Path) -> Result<(), RestoreError> {
    fsutil::sync_file(tmp.as_file(), tmp.path())?;
    tmp.persist(dest).map_err(|e| WalDirError::io("rename into", dest, e.error))?;
    fsutil::sync_dir(fsutil::parent_dir(dest))?;
    Ok(())
}

/// Write `bytes` to `dest` atomically, for PostgreSQL to read.
pub fn write_bytes(dest: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    let mut tmp = temp_beside(dest)?;
    tmp.write_all(bytes).map_err(|e| WalDirError::io("write", tmp.path(), e))?;
    persist_for_reading(tmp, dest)
}

/// Produce segment `name` from `source` into the file `dest` (atomically), checking it.
fn serve_segment(
    store: &dyn Store,
    name: &str,
    source: &Source,
    dest: &Path,
    system_id: Option<u64>,
) -> Result<Restored, RestoreError> {
    let mut tmp = temp_beside(dest)?;
    let (restored, _) = fill_segment(store, name, source, &mut tmp, system_id)?;
    persist_for_reading(tmp, dest)?;
    Ok(restored)
}

/// Write segment `name` from `source` into `out`, checking it on the way (module docs); the caller
/// persists `out` only when this succeeds. Also returns the archive's entry as it was read.
pub(crate) fn fill_segment(
    store: &dyn Store,
    name: &str,
    source: &Source,
    out: &mut NamedTempFile,
    system_id: Option<u64>,
) -> Result<(Restored, Entry), RestoreError> {
    let location = store.location_of(&source.file);
    let (partial, compression) = (source.partial, source.compression);
    let out_path = out.path().to_path_buf();
    let write_error = |e| RestoreError::from(WalDirError::io("write", &out_path, e));
    let (entry, mut reader) =
        contents::open_entry(store, &source.file, compression).map_err(|e| RestoreError::store(name, e))?;
    let whole_length = !partial || compression == Compression::None;
    let mut check = SegmentCheck::new(name, partial, whole_length, system_id);
    let mut writer = BufWriter::with_capacity(1 << 20, out.as_file_mut());
    let mut buf = vec![0u8; CHUNK];
    loop {
        let (n, err) = contents::fill(&mut reader, &mut buf);
        if let Some(e) = err.filter(|e| !contents::is_open_end(partial, compression, e)) {
            let e = contents::read_error(store, &source.file, compression, e);
            return Err(RestoreError::store(name, e));
        }
        check.push(&buf[..n]).map_err(|e| check_error(name, &location, partial, e))?;
        writer.write_all(&buf[..n]).map_err(write_error)?;
        if n < buf.len() {
            break;
        }
    }
    let checked = check.finish().map_err(|e| check_error(name, &location, partial, e))?;
    let file = writer.into_inner().map_err(|e| write_error(e.into_error()))?;
    let size = checked.header.segment_size;
    if checked.len < u64::from(size) {
        // A compressed .partial holds what was received: the rest of the segment as zeros, which
        // PostgreSQL takes for the end of WAL.
        file.set_len(u64::from(size)).map_err(|e| WalDirError::io("extend", &out_path, e))?;
    }
    let restored = Restored { source: location, bytes: u64::from(size), segment_size: Some(size), partial };
    Ok((restored, entry))
}

/// What a failed check means for restore: a `.partial` nothing reached yet is not in the archive.
fn check_error(name: &str, location: &str, partial: bool, e: CheckError) -> RestoreError {
    match e {
        CheckError::Page(PageError::Zeroed) if partial => RestoreError::NotFound(name.to_string()),
        CheckError::SystemId { found, expected } => {
            RestoreError::OtherSystem { location: location.to_string(), found, expected }
        }
        e => RestoreError::Damaged { location: location.to_string(), detail: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request("000000010000000A000000FF").unwrap(),
            Request::Segment { name: "000000010000000A000000FF".into() }
        );
        assert_eq!(parse_request("0000000A.history").unwrap(), Request::History { timeline: 10 });
        assert_eq!(
            parse_request("000000010000000000000002.00000028.backup").unwrap(),
            Request::BackupHistory
        );
        for bad in [
            "",
            "/x",
            "..",
            "a/../b",
            "000000010000000a000000FF",
            "0000000a.history",
            "000000010000000000000002.0000002a.backup",
            "000000010000000000000002.partial",
            "000000010000000000000002.gz",
            "00000001.history.tmp",
            "RECOVERYXLOG",
        ] {
            let err = parse_request(bad).unwrap_err();
            assert_eq!(exit_code(&err, Mode::ArchiveRecovery, true), EXIT_USAGE, "{bad}");
        }
    }

    #[test]
    fn archive_and_destination_must_be_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(check_archive(&super::super::store::LocalStore::new(tmp.path())).is_ok());
        for bad in [file.clone(), file.join("below"), tmp.path().join("missing")] {
            let e = check_archive(&super::super::store::LocalStore::new(&bad)).unwrap_err();
            assert!(matches!(&e, RestoreError::NoArchive(p) if *p == bad), "{e}");
            assert_eq!(exit_code(&e, Mode::ByHand, false), EXIT_ERROR);
        }
        assert!(check_destination(&tmp.path().join("RECOVERYXLOG")).is_ok());
        let e = check_destination(&file.join("RECOVERYXLOG")).unwrap_err();
        assert!(matches!(&e, RestoreError::NoDestinationDir(p) if *p == file), "{e}");
    }

    #[test]
    fn exit_codes_follow_the_recovery_mode() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(Mode::of_data_directory(tmp.path()), Mode::ByHand);
        fs::write(tmp.path().join("recovery.signal"), b"").unwrap();
        assert_eq!(Mode::of_data_directory(tmp.path()), Mode::ArchiveRecovery);
        fs::write(tmp.path().join("standby.signal"), b"").unwrap();
        assert_eq!(
            Mode::of_data_directory(tmp.path()),
            Mode::Standby,
            "standby.signal wins, as in PostgreSQL"
        );
        let damaged = RestoreError::Damaged { location: "x".into(), detail: "y".into() };
        let missing = RestoreError::NotFound("x".into());
        let table = [
            (Mode::ArchiveRecovery, false, EXIT_FATAL),
            (Mode::Standby, false, EXIT_NOT_FOUND),
            (Mode::ByHand, false, EXIT_ERROR),
            (Mode::Standby, true, EXIT_FATAL),
            (Mode::ByHand, true, EXIT_FATAL),
        ];
        for (mode, fatal, code) in table {
            assert_eq!(exit_code(&damaged, mode, fatal), code, "{mode:?} {fatal}");
            assert_eq!(exit_code(&missing, mode, fatal), EXIT_NOT_FOUND, "{mode:?} {fatal}");
        }
        const { assert!(EXIT_FATAL > 125) };
    }

    #[test]
    fn system_identifier_of_a_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(data_directory_system_id(tmp.path()), None);
        fs::create_dir(tmp.path().join("global")).unwrap();
        let mut control = 7_345_678_901_234_567_890u64.to_le_bytes().to_vec();
        control.resize(8192, 0);
        fs::write(tmp.path().join("global/pg_control"), control).unwrap();
        assert_eq!(data_directory_system_id(tmp.path()), Some(7_345_678_901_234_567_890));
    }
}
