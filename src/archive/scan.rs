//! Where to start streaming, from what an archive already holds (pg_receivewal's `FindStreamingStart`,
//! over the [`Catalog`]): the newest segment file wins (highest segment, then highest timeline, then a
//! complete file over a `.partial`); a complete segment means "start at the next segment", a `.partial`
//! means "start over at the first `.partial` of its timeline's trailing run". Segment files of every
//! compression method count.
//!
//! Unlike pg_receivewal, nothing is trusted by its name alone, because the start position decides what the
//! server may recycle once the slot follows: a stray file named beyond the archive's end (say, a zero-filled
//! 16 MB file) would make streaming start after it and skip WAL that was never archived. So:
//! - the file that decides the start must be a segment of this archive: a complete segment needs a long page
//!   header at its own segment address, with the server's segment size and system identifier; a `.partial`
//!   is started over, so it only must not carry another segment's or another system's header (a fresh one
//!   holds zeros). When it has no header, the newest file that has one must be of the server's system;
//! - every complete segment's length is checked where that is cheap (uncompressed length, gzip's ISIZE
//!   trailer); lz4 and zstd store no length, so they are decoded, only for the deciding file;
//! - a WAL-named entry that is not a regular file, or a name impossible with the server's segment size, is an
//!   error.
//!
//! Each of these errors names the file and says what to do; none is retried ([`ScanError::is_fatal`]).

use super::catalog::{Catalog, NotRegular, SegFile, SegmentSize};
use super::contents;
use super::error::WalDirError;
use super::store::{Store, StoreError};
use crate::wal::page::PageError;
use crate::wal::segment::{valid_segment_size, Compression, TimeLineId};
use crate::wal::Lsn;
use std::path::PathBuf;

/// Where streaming should start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartPoint {
    /// Always a segment boundary.
    pub lsn: Lsn,
    pub timeline: TimeLineId,
    /// The file name that decided it.
    pub file: String,
    /// True when the deciding file is a `.partial` that streaming starts over.
    pub from_partial: bool,
    pub summary: ScanSummary,
}

/// What the scan found, for logging.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Complete segment files (any compression).
    pub complete: usize,
    /// `.partial` segment files (any compression).
    pub partial: usize,
    /// Highest timeline among all segment files.
    pub highest_timeline: TimeLineId,
    /// Entries that are not segment files (history files, temporary files, others).
    pub other: usize,
}

/// Why the archive gives no start position.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dir(#[from] WalDirError),
    #[error("{0}: move it out of the archive directory")]
    NotRegular(NotRegular),
    #[error("segment file \"{location}\" does not belong in this archive: {reason}; move it out of the archive directory")]
    DoesNotBelong { location: String, reason: String },
    #[error(
        "archive \"{archive}\" holds WAL of database system {found} (\"{location}\"), but the server's system identifier is {expected}: use another directory for this server, or move the file away if it does not belong"
    )]
    OtherSystem { archive: String, location: String, found: u64, expected: u64 },
}

impl ScanError {
    /// Errors only the user can resolve (a file to move away, another directory to use): retrying is pointless.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ScanError::NotRegular(_) | ScanError::DoesNotBelong { .. } | ScanError::OtherSystem { .. }
        )
    }
}

/// Decide where streaming resumes in `store` for a server with `segment_size` and `system_id`; `None` when
/// the archive holds no segment file.
pub fn find_start(
    store: &dyn Store,
    segment_size: u32,
    system_id: u64,
) -> Result<Option<StartPoint>, ScanError> {
    if !valid_segment_size(u64::from(segment_size)) {
        return Err(WalDirError::InvalidSegmentSize(u64::from(segment_size)).into());
    }
    let catalog = Catalog::read(store, SegmentSize::Known(segment_size))?;
    if let Some(e) = catalog.first_irregular(store) {
        return Err(ScanError::NotRegular(e));
    }
    if let Some(e) = catalog.impossible().first() {
        let path = PathBuf::from(store.location_of(&e.name));
        return Err(WalDirError::NameNotForSegmentSize { path, segment_size }.into());
    }
    let segments = catalog.segments();
    let summary = ScanSummary {
        complete: segments.iter().filter(|s| !s.partial).count(),
        partial: segments.iter().filter(|s| s.partial).count(),
        highest_timeline: segments.iter().map(|s| s.id.timeline).max().unwrap_or(0),
        other: catalog.others().len() + catalog.histories().len() + catalog.backup_histories().len(),
    };
    for f in segments.iter().filter(|s| !s.partial) {
        check_cheap_size(store, f, segment_size)?;
    }
    let Some(newest) = catalog.newest() else { return Ok(None) };
    // A crash can leave a run of `.partial` files (N, N+1, ...) on one timeline: start over at its first.
    let deciding = if newest.partial {
        catalog.trailing_partials(newest.id.timeline).first().copied().unwrap_or(newest)
    } else {
        newest
    };
    let location = store.location_of(&deciding.file);
    if !deciding.partial && matches!(deciding.compression, Compression::Lz4 | Compression::Zstd) {
        let len = contents::decoded_len(store, &deciding.file, deciding.compression, false)?;
        check_size(&location, len, segment_size)?;
    }
    if !check_belongs(store, deciding, segment_size, system_id)? {
        if let Some((found, f)) = catalog.system_id(store)? {
            if found != system_id {
                return Err(other_system(store, f, found, system_id));
            }
        }
    }
    let lsn = if deciding.partial {
        deciding.id.start_lsn(segment_size)
    } else {
        deciding.id.end_lsn(segment_size)
    };
    let lsn = lsn.ok_or(WalDirError::LsnOverflow { path: location.into() })?;
    Ok(Some(StartPoint {
        lsn,
        timeline: deciding.id.timeline,
        file: deciding.file.clone(),
        from_partial: deciding.partial,
        summary,
    }))
}

/// Where streaming would resume after the newest complete segment of `store` alone (`.partial` files are
/// ignored): for `receive --remove-uploaded`, whose spool gives uploaded segments up, this is what the upload
/// store adds to the spool's start. That segment's header is checked as in [`find_start`]; the other files
/// are not read (a bucket may hold many).
pub fn after_newest_complete(
    store: &dyn Store,
    segment_size: u32,
    system_id: u64,
) -> Result<Option<StartPoint>, ScanError> {
    let catalog = Catalog::read(store, SegmentSize::Known(segment_size))?;
    let Some(newest) =
        catalog.segments().iter().filter(|s| !s.partial).max_by_key(|s| (s.id.number, s.id.timeline))
    else {
        return Ok(None);
    };
    check_cheap_size(store, newest, segment_size)?;
    if matches!(newest.compression, Compression::Lz4 | Compression::Zstd) {
        let len = contents::decoded_len(store, &newest.file, newest.compression, false)?;
        check_size(&store.location_of(&newest.file), len, segment_size)?;
    }
    check_belongs(store, newest, segment_size, system_id)?;
    let lsn = newest
        .id
        .end_lsn(segment_size)
        .ok_or(WalDirError::LsnOverflow { path: store.location_of(&newest.file).into() })?;
    Ok(Some(StartPoint {
        lsn,
        timeline: newest.id.timeline,
        file: newest.file.clone(),
        from_partial: false,
        summary: ScanSummary::default(),
    }))
}

/// Check the long page header of the deciding file `f` (module docs). False when it has none (a `.partial`
/// nothing was written to, or that is started over anyway).
fn check_belongs(
    store: &dyn Store,
    f: &SegFile,
    segment_size: u32,
    system_id: u64,
) -> Result<bool, ScanError> {
    let does_not_belong =
        |reason: String| ScanError::DoesNotBelong { location: store.location_of(&f.file), reason };
    let header = match contents::read_header(store, &f.file, f.compression, f.partial)? {
        Ok(h) => h,
        Err(_) if f.partial => return Ok(false),
        Err(e) => return Err(does_not_belong(e.to_string())),
    };
    // Another system first: it explains a wrong segment size or address as well.
    if header.system_id != system_id {
        return Err(other_system(store, f, header.system_id, system_id));
    }
    header.check_page_addr(f.segment_name()).map_err(|e: PageError| does_not_belong(e.to_string()))?;
    if header.segment_size != segment_size {
        return Err(does_not_belong(format!(
            "its page header says the segment size is {} bytes, but the server's is {segment_size} bytes",
            header.segment_size
        )));
    }
    Ok(true)
}

fn other_system(store: &dyn Store, f: &SegFile, found: u64, expected: u64) -> ScanError {
    ScanError::OtherSystem {
        archive: store.location(),
        location: store.location_of(&f.file),
        found,
        expected,
    }
}

/// Size checks that cost no decoding: uncompressed length (from the listing), gzip ISIZE.
fn check_cheap_size(store: &dyn Store, f: &SegFile, segment_size: u32) -> Result<(), ScanError> {
    let location = store.location_of(&f.file);
    match f.compression {
        Compression::None => check_size(&location, f.len, segment_size),
        Compression::Gzip => check_size(&location, gzip_isize(store, f)?, segment_size),
        Compression::Lz4 | Compression::Zstd => Ok(()),
    }
}

fn check_size(location: &str, size: u64, segment_size: u32) -> Result<(), ScanError> {
    if size == u64::from(segment_size) {
        Ok(())
    } else {
        Err(WalDirError::SegmentSize { path: location.into(), size, expected: u64::from(segment_size) }
            .into())
    }
}

/// The gzip ISIZE trailer: uncompressed length modulo 2^32, in the last 4 bytes (little endian).
/// Segments are at most 1 GiB, so it is exact for a valid segment.
fn gzip_isize(store: &dyn Store, f: &SegFile) -> Result<u64, ScanError> {
    let trailer = match f.len.checked_sub(4) {
        Some(at) => store.read_range(&f.file, at, 4)?,
        None => Vec::new(),
    };
    let trailer: [u8; 4] = trailer.try_into().map_err(|_| StoreError::Io {
        op: "read the size trailer of",
        location: store.location_of(&f.file),
        source: format!("{} bytes are too few for a gzip file", f.len).into(),
    })?;
    Ok(u64::from(u32::from_le_bytes(trailer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::local::{LocalWalDir, WalDirOptions};
    use crate::archive::store::LocalStore;
    use crate::wal::encoder::WalEncoder;
    use crate::wal::segment::{SegmentId, WalFileName};
    use std::fs;
    use std::path::Path;

    const SEG: u32 = 1 << 20;
    const SYSID: u64 = 7_000_000_000_000_000_001;

    /// `len` bytes of segment `name` of database system `sysid`: a long page header and one record, then zeros.
    fn wal(name: &str, len: usize, sysid: u64) -> Vec<u8> {
        let id = SegmentId::parse_name(&name[..24], SEG).unwrap();
        let start = id.start_lsn(SEG).unwrap().0;
        let mut e = WalEncoder::new(0xD110, SEG, sysid, id.timeline, start);
        e.main_data_record(10, 0, 1, b"scan");
        let mut b = e.into_bytes();
        b.resize(len, 0);
        b
    }

    /// Write file `name` holding `len` bytes of WAL (zeros when shorter than a record), compressed as its
    /// name says (a compressed `.partial` as an open, sync-flushed stream).
    fn put_bytes(dir: &Path, name: &str, bytes: &[u8]) {
        let path = dir.join(name);
        let Some(WalFileName::Segment { compression, partial, .. }) = WalFileName::parse(name) else {
            fs::write(&path, bytes).unwrap();
            return;
        };
        let Some(mut c) = crate::archive::compress::Compressor::new(compression, None).unwrap() else {
            fs::write(&path, bytes).unwrap();
            return;
        };
        c.write(bytes).unwrap();
        let out = if partial {
            c.sync_flush().unwrap();
            std::mem::take(c.output())
        } else {
            c.finish().unwrap()
        };
        fs::write(&path, out).unwrap();
    }

    fn put(dir: &Path, name: &str, len: usize) {
        let bytes =
            if len >= 100 && !name.ends_with(".bz2") { wal(name, len, SYSID) } else { vec![0u8; len] };
        put_bytes(dir, name, &bytes);
    }

    fn find(dir: &Path) -> Result<Option<StartPoint>, ScanError> {
        find_start(&LocalStore::new(dir), SEG, SYSID)
    }

    fn scan(files: &[(&str, usize)]) -> Result<Option<StartPoint>, ScanError> {
        let tmp = tempfile::tempdir().unwrap();
        for (name, len) in files {
            put(tmp.path(), name, *len);
        }
        find(tmp.path())
    }

    fn start(files: &[(&str, usize)]) -> (Lsn, TimeLineId, bool) {
        let s = scan(files).unwrap().unwrap();
        (s.lsn, s.timeline, s.from_partial)
    }

    const FULL: usize = SEG as usize;
    const SEG_LSN: u64 = SEG as u64;

    #[test]
    fn empty_or_foreign_directory_has_no_start() {
        assert_eq!(scan(&[]).unwrap(), None);
        let tmp = crate::archive::catalog::test_archive(&[
            "00000002.history",
            "00000002.history.tmp",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000002.bz2",
            "00000001000000000000000a",
            "0000000000000000000000005",
            "000000000000000000000005",
            "README",
            ".hidden",
        ]);
        fs::create_dir(tmp.path().join("archive_status")).unwrap();
        assert_eq!(find(tmp.path()).unwrap(), None);
    }

    #[test]
    fn complete_segment_starts_at_the_next_one() {
        let s =
            scan(&[("000000010000000000000003", FULL), ("000000010000000000000002", FULL)]).unwrap().unwrap();
        assert_eq!(s.lsn, Lsn(4 * SEG_LSN));
        assert_eq!(s.timeline, 1);
        assert_eq!(s.file, "000000010000000000000003");
        assert!(!s.from_partial);
        assert_eq!(s.summary, ScanSummary { complete: 2, partial: 0, highest_timeline: 1, other: 0 });
    }

    #[test]
    fn after_the_newest_complete_segment_of_a_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        assert_eq!(after_newest_complete(&store, SEG, SYSID).unwrap(), None);
        put(tmp.path(), "000000010000000000000002", FULL);
        put(tmp.path(), "000000010000000000000003.zst", FULL);
        put(tmp.path(), "000000010000000000000009.partial", FULL);
        let s = after_newest_complete(&store, SEG, SYSID).unwrap().unwrap();
        assert_eq!(
            (s.lsn, s.timeline, s.file.as_str()),
            (Lsn(4 * SEG_LSN), 1, "000000010000000000000003.zst")
        );
        // Its header is checked: another system's WAL gives no start.
        let err = after_newest_complete(&store, SEG, SYSID + 1).unwrap_err();
        assert!(matches!(err, ScanError::OtherSystem { .. }), "{err}");
        // A complete segment cut short is refused.
        put(tmp.path(), "000000010000000000000004", FULL / 2);
        assert!(after_newest_complete(&store, SEG, SYSID).is_err());
    }

    #[test]
    fn partial_segment_starts_over() {
        assert_eq!(
            start(&[("000000010000000000000003", FULL), ("000000010000000000000004.partial", FULL)]),
            (Lsn(4 * SEG_LSN), 1, true)
        );
        // A partial of any size counts: the writer checks it when reopening.
        assert_eq!(start(&[("000000010000000000000004.partial", 12)]), (Lsn(4 * SEG_LSN), 1, true));
    }

    #[test]
    fn run_of_partials_starts_at_its_first() {
        // N's last record was not validated yet when N+1 began: both stay partial, start over at N.
        assert_eq!(
            start(&[
                ("000000010000000000000003", FULL),
                ("000000010000000000000004.partial", FULL),
                ("000000010000000000000005.partial", FULL),
                ("000000010000000000000006.partial", FULL),
            ]),
            (Lsn(4 * SEG_LSN), 1, true)
        );
        // Another timeline's partial, or a segment that is also complete, does not extend the run.
        assert_eq!(
            start(&[
                ("000000010000000000000004.partial", FULL),
                ("000000020000000000000005.partial", FULL),
                ("000000020000000000000004", FULL),
                ("000000020000000000000004.partial", FULL),
            ]),
            (Lsn(5 * SEG_LSN), 2, true)
        );
    }

    #[test]
    fn complete_beats_partial_of_the_same_segment() {
        assert_eq!(
            start(&[("000000010000000000000004.partial", FULL), ("000000010000000000000004", FULL)]),
            (Lsn(5 * SEG_LSN), 1, false)
        );
        assert_eq!(
            start(&[("000000010000000000000004.gz.partial", 10), ("000000010000000000000004.zst", FULL)]),
            (Lsn(5 * SEG_LSN), 1, false)
        );
    }

    #[test]
    fn timelines() {
        // Same segment: the higher timeline wins, even as a partial.
        let s = scan(&[("000000010000000000000005", FULL), ("000000020000000000000005.partial", FULL)])
            .unwrap()
            .unwrap();
        assert_eq!((s.lsn, s.timeline, s.from_partial), (Lsn(5 * SEG_LSN), 2, true));
        assert_eq!(s.summary.highest_timeline, 2);
        // A higher segment beats a higher timeline (as FindStreamingStart does).
        let s =
            scan(&[("000000010000000000000006", FULL), ("0000000A0000000000000005", FULL)]).unwrap().unwrap();
        assert_eq!((s.lsn, s.timeline), (Lsn(7 * SEG_LSN), 1));
        assert_eq!(s.summary.highest_timeline, 10);
        // Names across an xlogid boundary (4096 segments of 1 MiB per id).
        assert_eq!(start(&[("000000030000000100000FFF", FULL)]), (Lsn(0x2_0000_0000), 3, false));
    }

    #[test]
    fn compressed_segments_of_every_method() {
        for sfx in [".gz", ".lz4", ".zst"] {
            let complete = format!("000000010000000000000008{sfx}");
            let partial = format!("000000010000000000000009{sfx}.partial");
            assert_eq!(start(&[(&complete, FULL)]), (Lsn(9 * SEG_LSN), 1, false), "{sfx}");
            assert_eq!(start(&[(&complete, FULL), (&partial, 100)]), (Lsn(9 * SEG_LSN), 1, true), "{sfx}");
        }
        let s = scan(&[
            ("000000010000000000000001", FULL),
            ("000000010000000000000002.gz", FULL),
            ("000000010000000000000003.lz4", FULL),
            ("000000010000000000000004.zst.partial", 5),
            ("00000001.history", 0),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.file, "000000010000000000000004.zst.partial");
        assert_eq!(s.summary, ScanSummary { complete: 3, partial: 1, highest_timeline: 1, other: 1 });
    }

    #[test]
    fn wrong_sizes_are_errors_naming_the_file_and_sizes() {
        let cases = [
            ("000000010000000000000002", FULL / 2),
            ("000000010000000000000002.gz", FULL * 2),
            ("000000010000000000000002.lz4", FULL - 1),
            ("000000010000000000000002.zst", 16 << 20),
        ];
        for (name, len) in cases {
            let err = scan(&[(name, len), ("000000010000000000000001", FULL)]).unwrap_err().to_string();
            assert!(err.starts_with("segment file \""), "{err}");
            assert!(err.contains(&format!("/{name}\" holds {len} bytes of WAL")), "{err}");
            assert!(err.ends_with("but the WAL segment size is 1048576 bytes"), "{err}");
        }
        // Also when not deciding the start (except lz4/zstd, which are only decoded then).
        assert!(scan(&[("000000010000000000000002", 5), ("000000010000000000000009", FULL)]).is_err());
        assert!(scan(&[("000000010000000000000002.lz4", 5), ("000000010000000000000009", FULL)]).is_ok());
    }

    #[test]
    fn broken_compressed_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("000000010000000000000002.gz"), b"ab").unwrap();
        let err = find(tmp.path()).unwrap_err().to_string();
        assert!(err.starts_with("could not read the size trailer of \""), "{err}");
        fs::remove_file(tmp.path().join("000000010000000000000002.gz")).unwrap();
        fs::write(tmp.path().join("000000010000000000000002.zst"), b"not zstd").unwrap();
        let err = find(tmp.path()).unwrap_err().to_string();
        assert!(err.starts_with("could not decompress \""), "{err}");
    }

    #[test]
    fn names_impossible_for_the_segment_size() {
        // With 16 MiB segments there are only 256 per xlogid: a 1 MiB directory has larger ones.
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), "000000010000000000000100.partial", 3);
        let err = find_start(&LocalStore::new(tmp.path()), 16 << 20, SYSID).unwrap_err().to_string();
        assert!(
            err.contains("000000010000000000000100.partial\" is impossible with a WAL segment size"),
            "{err}"
        );
        assert!(find(tmp.path()).is_ok());
        // A segment size contradicting the files shows up as a size error.
        put(tmp.path(), "000000010000000000000001", FULL);
        let err = find_start(&LocalStore::new(tmp.path()), 2 << 20, SYSID).unwrap_err().to_string();
        assert!(
            err.contains("holds 1048576 bytes of WAL, but the WAL segment size is 2097152 bytes"),
            "{err}"
        );
    }

    #[test]
    fn last_segment_of_the_address_space_overflows() {
        let err = scan(&[("00000001FFFFFFFF00000FFF", FULL)]).unwrap_err();
        assert!(matches!(err, ScanError::Dir(WalDirError::LsnOverflow { .. })), "{err}");
        assert_eq!(start(&[("00000001FFFFFFFF00000FFF.partial", 0)]), (Lsn(u64::MAX - SEG_LSN + 1), 1, true));
    }

    #[test]
    fn bad_arguments_and_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let err = find_start(&LocalStore::new(tmp.path()), 12345, SYSID).unwrap_err();
        assert!(matches!(err, ScanError::Dir(WalDirError::InvalidSegmentSize(12345))), "{err}");
        // A directory that cannot be listed is an error (the store's message names it), never "empty".
        assert!(matches!(find(&tmp.path().join("missing")), Err(ScanError::Store(_))));
    }

    #[test]
    fn a_stray_file_never_decides_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), "000000010000000000000003", FULL);
        // Zero-filled, named beyond the archive's end: it would skip segments 4 to 8.
        put_bytes(tmp.path(), "000000010000000000000009", &vec![0u8; FULL]);
        let err = find(tmp.path()).unwrap_err();
        assert!(err.is_fatal());
        let text = err.to_string();
        assert!(text.starts_with("segment file \""), "{text}");
        assert!(
            text.ends_with("000000010000000000000009\" does not belong in this archive: its first page has no long page header, only zeros; move it out of the archive directory"),
            "{text}"
        );
        // Another segment renamed, and another segment size: the same.
        put_bytes(tmp.path(), "000000010000000000000009", &wal("000000010000000000000003", FULL, SYSID));
        let text = find(tmp.path()).unwrap_err().to_string();
        assert!(text.contains("which is not the start of segment 000000010000000000000009"), "{text}");
        let mut other_size = wal("000000010000000000000009", FULL, SYSID);
        other_size[32..36].copy_from_slice(&(2u32 << 20).to_le_bytes());
        other_size[8..16].copy_from_slice(&(9u64 << 21).to_le_bytes());
        put_bytes(tmp.path(), "000000010000000000000009", &other_size);
        let text = find(tmp.path()).unwrap_err().to_string();
        assert!(text.contains("its page header says the segment size is 2097152 bytes"), "{text}");
        // Compressed the same way.
        fs::remove_file(tmp.path().join("000000010000000000000009")).unwrap();
        put_bytes(tmp.path(), "000000010000000000000009.zst", &vec![0u8; FULL]);
        assert!(matches!(find(tmp.path()), Err(ScanError::DoesNotBelong { .. })));
        fs::remove_file(tmp.path().join("000000010000000000000009.zst")).unwrap();
        // A fresh, zero-filled .partial is fine: the writer starts it over.
        put_bytes(tmp.path(), "000000010000000000000004.partial", &vec![0u8; FULL]);
        assert_eq!(find(tmp.path()).unwrap().unwrap().lsn, Lsn(4 * SEG_LSN));
        // ... but not a .partial carrying another segment's header.
        put_bytes(
            tmp.path(),
            "000000010000000000000004.partial",
            &wal("000000010000000000000003", FULL, SYSID),
        );
        assert!(matches!(find(tmp.path()), Err(ScanError::DoesNotBelong { .. })));
    }

    #[test]
    fn the_archive_must_be_of_the_servers_system() {
        let tmp = tempfile::tempdir().unwrap();
        put_bytes(tmp.path(), "000000010000000000000003", &wal("000000010000000000000003", FULL, SYSID + 1));
        let err = find(tmp.path()).unwrap_err();
        assert!(
            matches!(err, ScanError::OtherSystem { found, expected, .. } if found == SYSID + 1 && expected == SYSID)
        );
        assert!(err.is_fatal());
        assert!(err.to_string().contains(&format!("holds WAL of database system {}", SYSID + 1)), "{err}");
        // Behind a fresh .partial, the newest file with a header tells.
        put_bytes(tmp.path(), "000000010000000000000004.partial", &vec![0u8; FULL]);
        assert!(matches!(find(tmp.path()), Err(ScanError::OtherSystem { .. })));
        put_bytes(tmp.path(), "000000010000000000000003", &wal("000000010000000000000003", FULL, SYSID));
        assert!(find(tmp.path()).unwrap().is_some());
    }

    #[test]
    fn entries_that_are_not_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), "000000010000000000000003", FULL);
        fs::create_dir(tmp.path().join("000000010000000000000002")).unwrap();
        let err = find(tmp.path()).unwrap_err();
        assert!(err.is_fatal());
        assert!(
            err.to_string().ends_with(
                "000000010000000000000002\" is not a regular file: move it out of the archive directory"
            ),
            "{err}"
        );
        fs::remove_dir(tmp.path().join("000000010000000000000002")).unwrap();
        std::os::unix::fs::symlink(
            tmp.path().join("000000010000000000000003"),
            tmp.path().join("000000010000000000000004"),
        )
        .unwrap();
        assert!(matches!(find(tmp.path()), Err(ScanError::NotRegular(_))));
    }

    #[test]
    fn resumes_where_the_writer_left_off() {
        let tmp = tempfile::tempdir().unwrap();
        for compression in [Compression::None, Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let dir = LocalWalDir::open(
                tmp.path(),
                WalDirOptions { compression, sync: false, ..WalDirOptions::new(SEG) },
            )
            .unwrap();
            let mut w = dir.open_segment(SegmentId { timeline: 3, number: 20 }).unwrap();
            w.write_at(0, &wal("000000030000000000000014", FULL, SYSID)).unwrap();
            w.close().unwrap();
            let s = find(tmp.path()).unwrap().unwrap();
            assert_eq!((s.lsn, s.timeline, s.from_partial), (Lsn(21 * SEG_LSN), 3, false), "{compression}");
            let mut w = dir.open_segment(SegmentId { timeline: 3, number: 21 }).unwrap();
            w.write_at(0, &wal("000000030000000000000015", 3000, SYSID)).unwrap();
            w.close().unwrap();
            let s = find(tmp.path()).unwrap().unwrap();
            assert_eq!((s.lsn, s.timeline, s.from_partial), (Lsn(21 * SEG_LSN), 3, true), "{compression}");
            for entry in fs::read_dir(tmp.path()).unwrap() {
                fs::remove_file(entry.unwrap().path()).unwrap();
            }
        }
    }
}
