//! Where to start streaming, from what a WAL directory already holds (pg_receivewal's
//! `FindStreamingStart`): the highest segment wins (then the highest timeline, then a complete file
//! over a `.partial`); a complete segment means "start at the next segment", a `.partial` means
//! "start over at its beginning". Segment files of every compression method count.
//!
//! Complete segments are validated so that a directory written with another segment size is
//! refused: an uncompressed file must be exactly one segment long, a gzip file's ISIZE trailer must
//! say so. lz4 and zstd store no size, so they are decoded, and only for the file that decides the
//! start point (decoding a whole archive at every start would take minutes). Unlike
//! pg_receivewal, which warns and skips such files, a wrong size is an error.

use super::compress::decompressed_len;
use super::error::{Result, WalDirError};
use crate::wal::segment::{valid_segment_size, Compression, SegmentId, TimeLineId, WalFileName};
use crate::wal::Lsn;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

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
    /// Directory entries that are not segment files (history files, temporary files, others).
    pub other: usize,
}

/// A segment file seen in the directory.
#[derive(Clone, Debug)]
struct Found {
    segment: SegmentId,
    complete: bool,
    compression: Compression,
    file: String,
}

impl Found {
    /// pg_receivewal's order: segment number, then timeline, then complete over partial.
    fn rank(&self) -> (u64, TimeLineId, bool) {
        (self.segment.number, self.segment.timeline, self.complete)
    }
}

/// Scan `dir` and decide where streaming resumes; `None` when it holds no segment file.
pub fn find_start(dir: &Path, segment_size: u32) -> Result<Option<StartPoint>> {
    if !valid_segment_size(u64::from(segment_size)) {
        return Err(WalDirError::InvalidSegmentSize(u64::from(segment_size)));
    }
    let mut summary = ScanSummary::default();
    let mut best: Option<Found> = None;
    let mut partials: HashMap<(TimeLineId, u64), Found> = HashMap::new();
    let mut completes: HashSet<(TimeLineId, u64)> = HashSet::new();
    let entries = fs::read_dir(dir).map_err(|e| WalDirError::io("open directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalDirError::io("read directory", dir, e))?;
        let Some(found) = classify(dir, &entry.file_name().to_string_lossy(), segment_size)? else {
            summary.other += 1;
            continue;
        };
        if found.complete {
            summary.complete += 1;
            completes.insert((found.segment.timeline, found.segment.number));
            check_cheap_size(&dir.join(&found.file), found.compression, segment_size)?;
        } else {
            summary.partial += 1;
            partials.insert((found.segment.timeline, found.segment.number), found.clone());
        }
        summary.highest_timeline = summary.highest_timeline.max(found.segment.timeline);
        if best.as_ref().is_none_or(|b| found.rank() > b.rank()) {
            best = Some(found);
        }
    }
    let Some(mut best) = best else { return Ok(None) };
    // walkeeper renames a segment only once the record crossing its end has been validated, so a crash
    // can leave a run of `.partial` files (N, N+1, ...) on one timeline: start over at the first of the run.
    if !best.complete {
        while let Some(previous) = best
            .segment
            .number
            .checked_sub(1)
            .map(|n| (best.segment.timeline, n))
            .filter(|key| !completes.contains(key))
            .and_then(|key| partials.get(&key))
        {
            best = previous.clone();
        }
    }
    let path = dir.join(&best.file);
    if best.complete && matches!(best.compression, Compression::Lz4 | Compression::Zstd) {
        check_size(&path, decompressed_len(&path, best.compression)?, segment_size)?;
    }
    let lsn =
        if best.complete { best.segment.end_lsn(segment_size) } else { best.segment.start_lsn(segment_size) };
    let lsn = lsn.ok_or(WalDirError::LsnOverflow { path })?;
    Ok(Some(StartPoint {
        lsn,
        timeline: best.segment.timeline,
        file: best.file,
        from_partial: !best.complete,
        summary,
    }))
}

/// The segment file `name` stands for, or `None` if it is not one. PostgreSQL spells segment names
/// in upper case only, and timeline 0 does not exist: such names are not WAL.
fn classify(dir: &Path, name: &str, segment_size: u32) -> Result<Option<Found>> {
    let Some(WalFileName::Segment { name: segment_name, compression, partial }) = WalFileName::parse(name)
    else {
        return Ok(None);
    };
    if segment_name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Ok(None);
    }
    let Some(segment) = SegmentId::parse_name(&segment_name, segment_size) else {
        return Err(WalDirError::NameNotForSegmentSize { path: dir.join(name), segment_size });
    };
    if segment.timeline == 0 {
        return Ok(None);
    }
    Ok(Some(Found { segment, complete: !partial, compression, file: name.to_string() }))
}

/// Size checks that cost one `stat` or one small read: uncompressed length, gzip ISIZE.
fn check_cheap_size(path: &Path, compression: Compression, segment_size: u32) -> Result<()> {
    match compression {
        Compression::None => {
            let len = fs::metadata(path).map_err(|e| WalDirError::io("stat", path, e))?.len();
            check_size(path, len, segment_size)
        }
        Compression::Gzip => check_size(path, gzip_isize(path)?, segment_size),
        Compression::Lz4 | Compression::Zstd => Ok(()),
    }
}

fn check_size(path: &Path, size: u64, segment_size: u32) -> Result<()> {
    if size == u64::from(segment_size) {
        Ok(())
    } else {
        Err(WalDirError::SegmentSize { path: path.to_path_buf(), size, expected: u64::from(segment_size) })
    }
}

/// The gzip ISIZE trailer: uncompressed length modulo 2^32, in the last 4 bytes (little endian).
/// Segments are at most 1 GiB, so it is exact for a valid segment.
fn gzip_isize(path: &Path) -> Result<u64> {
    let read = || -> io::Result<u32> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::End(-4))?;
        let mut trailer = [0u8; 4];
        file.read_exact(&mut trailer)?;
        Ok(u32::from_le_bytes(trailer))
    };
    read().map(u64::from).map_err(|e| WalDirError::io("read the size trailer of", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::local::{LocalWalDir, WalDirOptions};

    const SEG: u32 = 1 << 20;

    /// Write file `name` holding `len` zero bytes, compressed as its name says (a compressed
    /// `.partial` as an open, sync-flushed stream).
    fn put(dir: &Path, name: &str, len: usize) {
        let path = dir.join(name);
        let Some(WalFileName::Segment { compression, partial, .. }) = WalFileName::parse(name) else {
            fs::write(&path, vec![0u8; len]).unwrap();
            return;
        };
        if compression == Compression::None {
            fs::write(&path, vec![0u8; len]).unwrap();
            return;
        }
        let mut c = crate::archive::compress::Compressor::new(compression, None).unwrap().unwrap();
        c.write(&vec![0u8; len]).unwrap();
        let out = if partial {
            c.sync_flush().unwrap();
            std::mem::take(c.output())
        } else {
            c.finish().unwrap()
        };
        fs::write(&path, out).unwrap();
    }

    fn scan(files: &[(&str, usize)]) -> Result<Option<StartPoint>> {
        let tmp = tempfile::tempdir().unwrap();
        for (name, len) in files {
            put(tmp.path(), name, *len);
        }
        find_start(tmp.path(), SEG)
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
        let tmp = tempfile::tempdir().unwrap();
        for junk in [
            "00000002.history",
            "00000002.history.tmp",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000002.bz2",
            "00000001000000000000000a",
            "0000000000000000000000005",
            "000000000000000000000005",
            "README",
            ".hidden",
        ] {
            fs::write(tmp.path().join(junk), b"junk").unwrap();
        }
        fs::create_dir(tmp.path().join("archive_status")).unwrap();
        assert_eq!(find_start(tmp.path(), SEG).unwrap(), None);
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
        let err = find_start(tmp.path(), SEG).unwrap_err().to_string();
        assert!(err.starts_with("could not read the size trailer of \""), "{err}");
        fs::remove_file(tmp.path().join("000000010000000000000002.gz")).unwrap();
        fs::write(tmp.path().join("000000010000000000000002.zst"), b"not zstd").unwrap();
        let err = find_start(tmp.path(), SEG).unwrap_err().to_string();
        assert!(err.starts_with("could not decompress \""), "{err}");
    }

    #[test]
    fn names_impossible_for_the_segment_size() {
        // With 16 MiB segments there are only 256 per xlogid: a 1 MiB directory has larger ones.
        let tmp = tempfile::tempdir().unwrap();
        put(tmp.path(), "000000010000000000000100.partial", 3);
        let err = find_start(tmp.path(), 16 << 20).unwrap_err().to_string();
        assert!(
            err.contains("000000010000000000000100.partial\" is impossible with a WAL segment size"),
            "{err}"
        );
        assert!(find_start(tmp.path(), SEG).is_ok());
        // A segment size contradicting the files shows up as a size error.
        put(tmp.path(), "000000010000000000000001", FULL);
        let err = find_start(tmp.path(), 2 << 20).unwrap_err().to_string();
        assert!(
            err.contains("holds 1048576 bytes of WAL, but the WAL segment size is 2097152 bytes"),
            "{err}"
        );
    }

    #[test]
    fn last_segment_of_the_address_space_overflows() {
        let err = scan(&[("00000001FFFFFFFF00000FFF", FULL)]).unwrap_err();
        assert!(matches!(err, WalDirError::LsnOverflow { .. }), "{err}");
        assert_eq!(start(&[("00000001FFFFFFFF00000FFF.partial", 0)]), (Lsn(u64::MAX - SEG_LSN + 1), 1, true));
    }

    #[test]
    fn bad_arguments_and_directories() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(find_start(tmp.path(), 12345), Err(WalDirError::InvalidSegmentSize(12345))));
        let missing = tmp.path().join("missing");
        let err = find_start(&missing, SEG).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "could not open directory \"{}\": No such file or directory (os error 2)",
                missing.display()
            )
        );
        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = find_start(&file, SEG).unwrap_err().to_string();
        assert!(err.ends_with("Not a directory (os error 20)"), "{err}");
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
            w.write_at(0, &vec![1u8; FULL]).unwrap();
            w.close().unwrap();
            let s = find_start(tmp.path(), SEG).unwrap().unwrap();
            assert_eq!((s.lsn, s.timeline, s.from_partial), (Lsn(21 * SEG_LSN), 3, false), "{compression}");
            let mut w = dir.open_segment(SegmentId { timeline: 3, number: 21 }).unwrap();
            w.write_at(0, b"abc").unwrap();
            w.close().unwrap();
            let s = find_start(tmp.path(), SEG).unwrap().unwrap();
            assert_eq!((s.lsn, s.timeline, s.from_partial), (Lsn(21 * SEG_LSN), 3, true), "{compression}");
            for entry in fs::read_dir(tmp.path()).unwrap() {
                fs::remove_file(entry.unwrap().path()).unwrap();
            }
        }
    }
}
