//! The read side of the archive for PostgreSQL's `restore_command`: find the file PostgreSQL asks for
//! (`%f`) in the archive directory, in whatever form it is stored (plain, `.gz`, `.lz4`, `.zst`, and with
//! `--partial` the newest `.partial`), and write it to `%p` atomically: into a temporary file in `%p`'s
//! directory, fsync, rename, fsync the directory. A crash never leaves a half-written file under the name
//! PostgreSQL reads.
//!
//! Exit codes (see [`RestoreError::exit_code`]): exit code 1 with no output means "this file is not in the
//! archive" (the normal end of archive recovery); real errors get other codes and a message on stderr (which
//! lands in the server log). PostgreSQL itself treats every failure below 126 alike: in archive recovery it
//! ends replay there (a targeted recovery then fails with "recovery ended before configured recovery target
//! was reached"; one without a target ends early), in standby mode it retries. Exit codes above 125 and deaths
//! by signal are fatal to it: `--fatal-errors` turns 2 into 126 for operators who want a broken archive to stop
//! recovery outright. Codes:
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0 | served |
//! | 1 | not in the archive (nothing printed) |
//! | 2 | an error: archive directory missing, `%p`'s directory missing, read/write error, corrupt or truncated file |
//! | 3 | invalid invocation: bad options, `%f` not a WAL, history or backup history file name |
//! | 126 | an error, with `--fatal-errors` |
//!
//! A complete segment is checked before it is served: its first page must carry a long page header whose
//! segment size is a valid one, the decompressed length must be exactly that size (an lz4 frame cut at a
//! block boundary decodes without error, only shorter), and the page address must be the segment's own
//! start (a file renamed to the wrong name is refused).

use super::compress;
use super::error::WalDirError;
use super::fsutil;
use crate::wal::segment::{valid_segment_size, Compression, SegmentId, TimeLineId, WalFileName};
use crate::wal::Lsn;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Exit code: served.
pub const EXIT_OK: i32 = 0;
/// Exit code: not in the archive; nothing is printed.
pub const EXIT_NOT_FOUND: i32 = 1;
/// Exit code: a real error, reported on stderr.
pub const EXIT_ERROR: i32 = 2;
/// Exit code: invalid invocation (options, file name).
pub const EXIT_USAGE: i32 = 3;
/// Exit code for errors with `--fatal-errors`: above 125, which PostgreSQL treats as fatal.
pub const EXIT_FATAL: i32 = 126;

/// Size of the long page header at the start of every segment.
pub use crate::wal::decoder::SIZE_OF_LONG_PHD as LONG_HEADER;
use crate::wal::decoder::XLP_LONG_HEADER;

/// Compressed forms of a complete segment, in the order they are looked for.
const COMPLETE_FORMS: [Compression; 4] =
    [Compression::None, Compression::Zstd, Compression::Lz4, Compression::Gzip];

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
    /// A system call failed (or a compressed file could not be decoded).
    #[error(transparent)]
    Io(#[from] WalDirError),
    /// The file is there but not a valid segment.
    #[error("WAL file \"{}\" is damaged: {detail}", path.display())]
    Damaged { path: PathBuf, detail: String },
}

impl RestoreError {
    /// The exit code documented in the module header.
    pub fn exit_code(&self) -> i32 {
        match self {
            RestoreError::NotFound(_) => EXIT_NOT_FOUND,
            RestoreError::BadName { .. } => EXIT_USAGE,
            _ => EXIT_ERROR,
        }
    }

    fn damaged(path: &Path, detail: impl Into<String>) -> RestoreError {
        RestoreError::Damaged { path: path.to_path_buf(), detail: detail.into() }
    }
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

/// Where a requested file is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub compression: Compression,
    pub partial: bool,
}

/// What was served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The archive file (or spool entry) it came from.
    pub source: PathBuf,
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
    /// Serve the newest `.partial` of a segment that is not complete in the archive.
    pub partial: bool,
}

/// Fail unless `archive` is a directory.
pub fn check_archive(archive: &Path) -> Result<(), RestoreError> {
    require_dir(archive, RestoreError::NoArchive)
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

/// Serve `file` (`%f`) from `archive` into `dest` (`%p`).
pub fn restore(
    archive: &Path,
    file: &str,
    dest: &Path,
    opts: &RestoreOptions,
) -> Result<Restored, RestoreError> {
    let request = parse_request(file)?;
    check_archive(archive)?;
    check_destination(dest)?;
    match request {
        Request::Segment { name } => {
            let source =
                find_segment(archive, &name, opts.partial)?.ok_or(RestoreError::NotFound(name.clone()))?;
            serve_segment(&name, &source, dest)
        }
        Request::History { .. } => {
            let path = archive.join(file);
            let bytes = read_optional(&path)?.ok_or_else(|| RestoreError::NotFound(file.to_string()))?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| RestoreError::damaged(&path, "a timeline history file is text"))?;
            crate::wal::timeline::parse_history(text)
                .map_err(|e| RestoreError::damaged(&path, e.to_string()))?;
            write_bytes(dest, &bytes)?;
            Ok(Restored { source: path, bytes: bytes.len() as u64, segment_size: None, partial: false })
        }
        Request::BackupHistory => {
            let path = archive.join(file);
            let bytes = read_optional(&path)?.ok_or_else(|| RestoreError::NotFound(file.to_string()))?;
            write_bytes(dest, &bytes)?;
            Ok(Restored { source: path, bytes: bytes.len() as u64, segment_size: None, partial: false })
        }
    }
}

/// Read a whole (small) file; `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, RestoreError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WalDirError::io("read", path, e).into()),
    }
}

fn exists(path: &Path) -> Result<bool, RestoreError> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.is_file()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(WalDirError::io("stat", path, e).into()),
    }
}

/// The archive file holding segment `name`: a complete one in any compression, else (with `partial`) its
/// `.partial` when that is the newest segment file of its timeline.
pub fn find_segment(archive: &Path, name: &str, partial: bool) -> Result<Option<Source>, RestoreError> {
    for compression in COMPLETE_FORMS {
        let path = archive.join(format!("{name}{}", compression.suffix()));
        if exists(&path)? {
            return Ok(Some(Source { path, compression, partial: false }));
        }
    }
    if !partial {
        return Ok(None);
    }
    for compression in COMPLETE_FORMS {
        let path = archive.join(format!("{name}{}.partial", compression.suffix()));
        if exists(&path)? {
            if newer_segment_on_timeline(archive, name)? {
                return Ok(None);
            }
            return Ok(Some(Source { path, compression, partial: true }));
        }
    }
    Ok(None)
}

/// True when the archive holds a segment file (complete or not) of `name`'s timeline after `name`: then a
/// `.partial` of `name` is a leftover, not the end of what was received.
fn newer_segment_on_timeline(archive: &Path, name: &str) -> Result<bool, RestoreError> {
    let entries = fs::read_dir(archive).map_err(|e| WalDirError::io("open directory", archive, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalDirError::io("read directory", archive, e))?;
        if let Some(WalFileName::Segment { name: other, .. }) =
            WalFileName::parse(&entry.file_name().to_string_lossy())
        {
            if other[..8] == name[..8] && other[8..] > name[8..] {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The fields of a segment's long page header that restore checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: TimeLineId,
    pub page_addr: Lsn,
    pub system_id: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

/// Parse the long page header at the start of a segment; `None` for a page that has none (all zeros: a
/// segment nothing was written to yet; or not WAL at all).
pub fn parse_long_header(head: &[u8]) -> Option<LongHeader> {
    if head.len() < LONG_HEADER {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().expect("8 bytes"));
    let header = LongHeader {
        magic: u16_at(0),
        info: u16_at(2),
        timeline: u32_at(4),
        page_addr: Lsn(u64_at(8)),
        system_id: u64_at(24),
        segment_size: u32_at(32),
        block_size: u32_at(36),
    };
    if header.magic == 0 || header.info & XLP_LONG_HEADER == 0 {
        return None;
    }
    Some(header)
}

/// Check the header and length of segment `name` read from `path`; returns the segment size.
pub fn check_segment(name: &str, path: &Path, head: &[u8], len: u64) -> Result<u32, RestoreError> {
    let header = parse_long_header(head)
        .ok_or_else(|| RestoreError::damaged(path, "its first page has no long page header"))?;
    let size = header.segment_size;
    if !valid_segment_size(u64::from(size)) {
        return Err(RestoreError::damaged(
            path,
            format!("its page header gives an invalid segment size {size}"),
        ));
    }
    if len != u64::from(size) {
        return Err(RestoreError::damaged(
            path,
            format!("it holds {len} bytes of WAL, but its page header says the segment size is {size} bytes"),
        ));
    }
    check_page_addr(name, path, &header)?;
    Ok(size)
}

fn check_page_addr(name: &str, path: &Path, header: &LongHeader) -> Result<(), RestoreError> {
    let expected =
        SegmentId::parse_name(name, header.segment_size).and_then(|s| s.start_lsn(header.segment_size));
    if expected != Some(header.page_addr) {
        return Err(RestoreError::damaged(
            path,
            format!("its first page is at {}, which is not the start of segment {name}", header.page_addr),
        ));
    }
    Ok(())
}

/// A temporary file next to `dest`, removed on drop unless renamed into place.
pub(crate) struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    pub(crate) fn create(dest: &Path) -> Result<TempFile, RestoreError> {
        let dir = fsutil::parent_dir(dest);
        let base = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = dir.join(format!(".{base}.walkeeper-{}-{nanos}.tmp", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RestoreError::NoDestinationDir(dir.to_path_buf())
            } else {
                WalDirError::io("create", &path, e).into()
            }
        })?;
        Ok(TempFile { path, file: Some(file) })
    }

    pub(crate) fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed")
    }

    /// fsync, rename over `dest`, fsync the directory: for spool entries, which are trusted later.
    pub(crate) fn commit(mut self, dest: &Path) -> Result<(), RestoreError> {
        let file = self.file.take().expect("open until committed");
        fsutil::sync_file(&file, &self.path)?;
        drop(file);
        fsutil::durable_rename(&self.path, dest)?;
        self.path = PathBuf::new();
        Ok(())
    }

    /// Rename over `dest` without fsync: for the file handed to PostgreSQL (`%p`). The rename makes it
    /// atomic, so PostgreSQL never reads half a file; durability is not needed, because after a crash
    /// recovery asks restore_command for the segment again and `%p` is written anew (PostgreSQL does not
    /// fsync restored files either). This saves an fsync of 16 MB per segment of replay.
    pub(crate) fn commit_for_reading(mut self, dest: &Path) -> Result<(), RestoreError> {
        drop(self.file.take().expect("open until committed"));
        fsutil::rename(&self.path, dest)?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Write `bytes` to `dest` atomically, for PostgreSQL to read.
pub fn write_bytes(dest: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    let mut tmp = TempFile::create(dest)?;
    let path = tmp.path.clone();
    tmp.file().write_all(bytes).map_err(|e| WalDirError::io("write", &path, e))?;
    tmp.commit_for_reading(dest)
}

/// A writer that remembers the first bytes through it and counts them all.
struct Capture<W> {
    inner: W,
    head: Vec<u8>,
    len: u64,
}

impl<W: Write> Write for Capture<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.head.len() < LONG_HEADER {
            let take = (LONG_HEADER - self.head.len()).min(n);
            self.head.extend_from_slice(&buf[..take]);
        }
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Produce segment `name` from `source` into the file `dest` (atomically), checking it.
pub fn serve_segment(name: &str, source: &Source, dest: &Path) -> Result<Restored, RestoreError> {
    let mut tmp = TempFile::create(dest)?;
    let restored = fill_segment(name, source, &mut tmp)?;
    tmp.commit_for_reading(dest)?;
    Ok(restored)
}

/// Write segment `name` from `source` into `tmp`, checking it; the caller commits.
pub(crate) fn fill_segment(
    name: &str,
    source: &Source,
    tmp: &mut TempFile,
) -> Result<Restored, RestoreError> {
    let tmp_path = tmp.path.clone();
    let path = &source.path;
    let (bytes, size) = match (source.compression, source.partial) {
        (Compression::None, partial) => {
            let mut src = File::open(path).map_err(|e| open_error(name, path, e))?;
            let len = src.metadata().map_err(|e| WalDirError::io("stat", path, e))?.len();
            let mut head = [0u8; LONG_HEADER];
            let got = read_at_most(&src, &mut head).map_err(|e| WalDirError::io("read", path, e))?;
            let size = if partial {
                check_partial_head(name, path, &head[..got], len, len)?
            } else {
                check_segment(name, path, &head[..got], len)?
            };
            let copied = io::copy(&mut src, tmp.file()).map_err(|e| WalDirError::io("copy", path, e))?;
            if copied != len {
                return Err(RestoreError::damaged(
                    path,
                    format!("it changed size while being read ({len} → {copied})"),
                ));
            }
            (copied, size)
        }
        (method, false) => {
            let mut out =
                Capture { inner: BufWriter::with_capacity(1 << 20, tmp.file()), head: Vec::new(), len: 0 };
            compress::decompress_to(path, method, &mut out).map_err(|e| map_open_error(name, e))?;
            out.flush().map_err(|e| WalDirError::io("write", &tmp_path, e))?;
            let size = check_segment(name, path, &out.head, out.len)?;
            (out.len, size)
        }
        (method, true) => {
            let data = compress::decompress_available(path, method).map_err(|e| map_open_error(name, e))?;
            let head_len = data.len().min(LONG_HEADER);
            let size = check_partial_head(name, path, &data[..head_len], data.len() as u64, 0)?;
            let file = tmp.file();
            file.write_all(&data).map_err(|e| WalDirError::io("write", &tmp_path, e))?;
            // The rest of the segment as zeros: PostgreSQL takes them for the end of WAL.
            file.set_len(u64::from(size)).map_err(|e| WalDirError::io("extend", &tmp_path, e))?;
            (u64::from(size), size)
        }
    };
    Ok(Restored { source: path.clone(), bytes, segment_size: Some(size), partial: source.partial })
}

/// Check the start of a `.partial` holding `len` bytes (for an uncompressed one, `file_len` is its length on
/// disk, which must be the whole padded segment). A partial nothing reached yet is "not found".
fn check_partial_head(
    name: &str,
    path: &Path,
    head: &[u8],
    len: u64,
    file_len: u64,
) -> Result<u32, RestoreError> {
    let Some(header) = parse_long_header(head) else {
        if head.iter().all(|&b| b == 0) {
            return Err(RestoreError::NotFound(name.to_string()));
        }
        return Err(RestoreError::damaged(path, "its first page has no long page header"));
    };
    let size = header.segment_size;
    if !valid_segment_size(u64::from(size)) {
        return Err(RestoreError::damaged(
            path,
            format!("its page header gives an invalid segment size {size}"),
        ));
    }
    if len > u64::from(size) || (file_len != 0 && file_len != u64::from(size)) {
        return Err(RestoreError::damaged(
            path,
            format!("it holds {len} bytes of WAL, but its page header says the segment size is {size} bytes"),
        ));
    }
    check_page_addr(name, path, &header)?;
    Ok(size)
}

fn read_at_most(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A file that vanished between lookup and open (a concurrent cleanup) is "not found".
fn open_error(name: &str, path: &Path, e: io::Error) -> RestoreError {
    if e.kind() == io::ErrorKind::NotFound {
        RestoreError::NotFound(name.to_string())
    } else {
        WalDirError::io("open", path, e).into()
    }
}

fn map_open_error(name: &str, e: WalDirError) -> RestoreError {
    match e {
        WalDirError::Io { op: "open", source, .. } if source.kind() == io::ErrorKind::NotFound => {
            RestoreError::NotFound(name.to_string())
        }
        e => e.into(),
    }
}

/// Read from `r` until `buf` is full or the end; returns how much was read.
pub fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
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
            assert_eq!(err.exit_code(), EXIT_USAGE, "{bad}");
        }
    }

    #[test]
    fn archive_and_destination_must_be_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(check_archive(tmp.path()).is_ok());
        for bad in [file.clone(), file.join("below"), tmp.path().join("missing")] {
            let e = check_archive(&bad).unwrap_err();
            assert!(matches!(&e, RestoreError::NoArchive(p) if *p == bad), "{e}");
            assert_eq!(e.exit_code(), EXIT_ERROR);
        }
        assert!(check_destination(&tmp.path().join("RECOVERYXLOG")).is_ok());
        let e = check_destination(&file.join("RECOVERYXLOG")).unwrap_err();
        assert!(matches!(&e, RestoreError::NoDestinationDir(p) if *p == file), "{e}");
    }

    #[test]
    fn long_header_checks() {
        let size = 1u32 << 20;
        let mut head = vec![0u8; LONG_HEADER];
        assert_eq!(parse_long_header(&head), None);
        head[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        assert_eq!(parse_long_header(&head), None, "no XLP_LONG_HEADER bit");
        head[2..4].copy_from_slice(&2u16.to_le_bytes());
        head[8..16].copy_from_slice(&(3u64 << 20).to_le_bytes());
        head[32..36].copy_from_slice(&size.to_le_bytes());
        let p = Path::new("x");
        assert_eq!(check_segment("000000010000000000000003", p, &head, u64::from(size)).unwrap(), size);
        let e = check_segment("000000010000000000000004", p, &head, u64::from(size)).unwrap_err();
        assert!(e.to_string().contains("not the start of segment"), "{e}");
        let e = check_segment("000000010000000000000003", p, &head, 5).unwrap_err();
        assert!(e.to_string().contains("holds 5 bytes"), "{e}");
        assert_eq!(e.exit_code(), EXIT_ERROR);
        head[32..36].copy_from_slice(&12345u32.to_le_bytes());
        assert!(check_segment("000000010000000000000003", p, &head, 12345).is_err());
    }
}
