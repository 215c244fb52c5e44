//! One typed view of an archive: its [`Store`] is listed once and every name classified once — segment
//! files (timeline, segment number, compression, `.partial`, size, modification time), timeline history
//! files, backup history files, and the rest. scan, status, verify, restore, prefetch and cleanup read the
//! archive through a [`Catalog`] instead of listing and parsing names themselves.
//!
//! Rules every command shares:
//! - PostgreSQL spells WAL names in upper case and has no timeline 0: other spellings are not WAL ("others").
//! - A WAL-named entry that is not a regular file (a directory, a symlink, a device) is never read; every
//!   command reports it the same way: [`NotRegular`].
//! - Segment numbers depend on the segment size: the caller gives it (receive knows the server's), or it is
//!   read from the long page headers of the first segment files ([`SegmentSize::FromHeaders`]). A name that
//!   cannot exist with that size is kept apart ([`Catalog::impossible`]).
//! - The *trailing run* of a timeline ([`Catalog::trailing_partials`]): the `.partial` files after its last
//!   complete segment, consecutive up to its newest segment. walkeeper renames a segment only once the record
//!   crossing its end is validated, so a primary that dies while such a record is incomplete leaves N.partial
//!   (every byte of N received and acknowledged) and N+1.partial. Every segment of the run is the received
//!   end of the timeline: `restore --partial` serves each, status counts none of them as a gap, verify checks
//!   that all but the last are full, and receive restarts at the first.

use super::contents;
use super::store::{Entry, Store, StoreError};
use crate::wal::segment::{history_file_name, Compression, SegmentId, TimeLineId, WalFileName};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Segment size assumed when no segment file tells (an archive without a single readable header).
pub const FALLBACK_SEGMENT_SIZE: u32 = 16 << 20;

/// Segment files whose headers are read, at most, to find the segment size.
const SIZE_PROBES: usize = 8;

/// Forms of a complete segment, in the order a segment is looked for when several exist.
pub const COMPLETE_FORMS: [Compression; 4] =
    [Compression::None, Compression::Zstd, Compression::Lz4, Compression::Gzip];

/// A WAL-named entry that is not a regular file: never read, always reported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a regular file")]
pub struct NotRegular(pub String);

/// Where the segment size comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentSize {
    /// Given (the server's).
    Known(u32),
    /// Read from the long page headers of the first segment files; [`FALLBACK_SEGMENT_SIZE`] when none has one.
    FromHeaders,
}

/// A regular file holding (part of) one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegFile {
    /// Name in the store: the segment name, a compression suffix, maybe `.partial`.
    pub file: String,
    pub id: SegmentId,
    pub compression: Compression,
    pub partial: bool,
    /// Size in the store (compressed).
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl SegFile {
    /// The 24-character segment name.
    pub fn segment_name(&self) -> &str {
        &self.file[..24]
    }

    /// pg_receivewal's order for the newest file: segment number, then timeline, then complete over partial.
    fn rank(&self) -> (u64, TimeLineId, bool) {
        (self.id.number, self.id.timeline, !self.partial)
    }
}

/// What a name says, before the segment size is known.
enum Named {
    Segment { compression: Compression, partial: bool },
    History(TimeLineId),
    BackupHistory,
    Other,
}

/// Classify one name by PostgreSQL's spelling rules (module docs).
fn classify(name: &str) -> Named {
    let upper = |s: &str| !s.bytes().any(|b| b.is_ascii_lowercase());
    match WalFileName::parse(name) {
        Some(WalFileName::Segment { name: segment, compression, partial })
            if upper(&segment) && !segment.starts_with("00000000") =>
        {
            Named::Segment { compression, partial }
        }
        Some(WalFileName::History { timeline }) if timeline != 0 && name == history_file_name(timeline) => {
            Named::History(timeline)
        }
        Some(WalFileName::BackupHistory { segment, offset })
            if upper(&segment) && name == format!("{segment}.{offset:08X}.backup") =>
        {
            Named::BackupHistory
        }
        _ => Named::Other,
    }
}

/// A store's files, classified.
#[derive(Clone, Debug)]
pub struct Catalog {
    segment_size: u32,
    segment_size_known: bool,
    entries: Vec<Entry>,
    /// Sorted by timeline, segment number, complete first, then [`COMPLETE_FORMS`] order.
    segments: Vec<SegFile>,
    histories: BTreeMap<TimeLineId, Entry>,
    backup_histories: Vec<Entry>,
    impossible: Vec<Entry>,
    irregular: Vec<Entry>,
    others: Vec<Entry>,
}

impl Catalog {
    /// List `store` once and classify what it holds.
    pub fn read(store: &dyn Store, size: SegmentSize) -> Result<Catalog, StoreError> {
        let entries = store.list()?;
        let (size, known) = match size {
            SegmentSize::Known(size) => (size, true),
            SegmentSize::FromHeaders => match segment_size_from_headers(store, &entries) {
                Some(size) => (size, true),
                None => (FALLBACK_SEGMENT_SIZE, false),
            },
        };
        Ok(Catalog::new(entries, size, known))
    }

    /// List only what sorts after `after` in `store` ([`Store::list_after`]) and classify it: the segments
    /// and history files that can follow segment `after` (prefetch's plan), one request on a bucket however
    /// long the archive is.
    pub fn read_after(store: &dyn Store, after: &str, segment_size: u32) -> Result<Catalog, StoreError> {
        Ok(Catalog::new(store.list_after(after)?, segment_size, true))
    }

    /// Classify `entries` (pure). `segment_size` must be a valid segment size.
    fn new(entries: Vec<Entry>, segment_size: u32, segment_size_known: bool) -> Catalog {
        let mut c = Catalog {
            segment_size,
            segment_size_known,
            entries: Vec::new(),
            segments: Vec::new(),
            histories: BTreeMap::new(),
            backup_histories: Vec::new(),
            impossible: Vec::new(),
            irregular: Vec::new(),
            others: Vec::new(),
        };
        for e in &entries {
            let named = classify(&e.name);
            if !matches!(named, Named::Other) && !e.regular {
                c.irregular.push(e.clone());
                continue;
            }
            match named {
                Named::Segment { compression, partial } => {
                    match SegmentId::parse_name(&e.name[..24], segment_size) {
                        Some(id) => c.segments.push(SegFile {
                            file: e.name.clone(),
                            id,
                            compression,
                            partial,
                            len: e.len,
                            modified: e.modified,
                        }),
                        None => c.impossible.push(e.clone()),
                    }
                }
                Named::History(tli) => {
                    c.histories.insert(tli, e.clone());
                }
                Named::BackupHistory => c.backup_histories.push(e.clone()),
                Named::Other => c.others.push(e.clone()),
            }
        }
        let form = |s: &SegFile| COMPLETE_FORMS.iter().position(|&f| f == s.compression);
        c.segments.sort_by(|a, b| {
            (a.id.timeline, a.id.number, a.partial, form(a), &a.file).cmp(&(
                b.id.timeline,
                b.id.number,
                b.partial,
                form(b),
                &b.file,
            ))
        });
        for list in [&mut c.backup_histories, &mut c.impossible, &mut c.irregular, &mut c.others] {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
        c.entries = entries;
        c
    }

    /// The same files without the `.partial` files that a complete file of the same segment supersedes. In a
    /// bucket such an object is expected for a moment (the uploader deletes it only once the complete object
    /// is uploaded and checked) and is no part of the archive; `verify` and `status` on a bucket ignore it.
    pub fn without_superseded_partials(self) -> Catalog {
        let complete: std::collections::BTreeSet<SegmentId> =
            self.segments.iter().filter(|s| !s.partial).map(|s| s.id).collect();
        let superseded: std::collections::BTreeSet<&str> = self
            .segments
            .iter()
            .filter(|s| s.partial && complete.contains(&s.id))
            .map(|s| s.file.as_str())
            .collect();
        let entries =
            self.entries.iter().filter(|e| !superseded.contains(e.name.as_str())).cloned().collect();
        Catalog::new(entries, self.segment_size, self.segment_size_known)
    }

    /// The same files, classified for another segment size (verify, once the headers have told).
    pub fn with_segment_size(self, segment_size: u32) -> Catalog {
        Catalog::new(self.entries, segment_size, true)
    }

    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    /// False when the segment size is [`FALLBACK_SEGMENT_SIZE`] because no header told it.
    pub fn segment_size_known(&self) -> bool {
        self.segment_size_known
    }

    /// Every segment file, by timeline, segment number, complete first.
    pub fn segments(&self) -> &[SegFile] {
        &self.segments
    }

    /// The segment files of each timeline.
    pub fn timelines(&self) -> BTreeMap<TimeLineId, &[SegFile]> {
        let mut out = BTreeMap::new();
        for chunk in self.segments.chunk_by(|a, b| a.id.timeline == b.id.timeline) {
            out.insert(chunk[0].id.timeline, chunk);
        }
        out
    }

    fn of_timeline(&self, tli: TimeLineId) -> &[SegFile] {
        let from = self.segments.partition_point(|s| s.id.timeline < tli);
        let to = self.segments.partition_point(|s| s.id.timeline <= tli);
        &self.segments[from..to]
    }

    /// The newest segment file by pg_receivewal's order: highest segment, then timeline, complete first.
    pub fn newest(&self) -> Option<&SegFile> {
        self.segments.iter().max_by_key(|s| s.rank())
    }

    /// Segment files from the newest down, in pg_receivewal's order.
    fn newest_first(&self) -> Vec<&SegFile> {
        let mut v: Vec<&SegFile> = self.segments.iter().collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.rank()));
        v
    }

    /// The trailing run of `.partial` files of timeline `tli` (module docs), oldest first: one file per
    /// segment (the first form when several exist). Empty when the timeline's newest segment is complete.
    pub fn trailing_partials(&self, tli: TimeLineId) -> Vec<&SegFile> {
        let mut run: Vec<&SegFile> = Vec::new();
        for same in self.of_timeline(tli).chunk_by(|a, b| a.id.number == b.id.number).rev() {
            let number = same[0].id.number;
            let consecutive = run.last().is_none_or(|next| next.id.number.checked_sub(1) == Some(number));
            if !consecutive || same.iter().any(|s| !s.partial) {
                break;
            }
            run.push(&same[0]);
        }
        run.reverse();
        run
    }

    /// True when `f` is a `.partial` of its timeline's trailing run.
    pub fn in_trailing_run(&self, f: &SegFile) -> bool {
        f.partial && self.trailing_partials(f.id.timeline).iter().any(|p| p.id == f.id)
    }

    /// The file serving segment `id`: a complete one (in [`COMPLETE_FORMS`] order); else, with `partial`, its
    /// `.partial` when it is in the trailing run of its timeline.
    pub fn find(&self, id: SegmentId, partial: bool) -> Option<&SegFile> {
        let tl = self.of_timeline(id.timeline);
        let from = tl.partition_point(|s| s.id.number < id.number);
        let same = tl[from..].iter().take_while(|s| s.id.number == id.number);
        if let Some(complete) = same.clone().find(|s| !s.partial) {
            return Some(complete);
        }
        if !partial {
            return None;
        }
        self.trailing_partials(id.timeline).into_iter().find(|s| s.id == id)
    }

    /// Timeline history files (`TTTTTTTT.history`), by timeline.
    pub fn histories(&self) -> &BTreeMap<TimeLineId, Entry> {
        &self.histories
    }

    /// Backup history files (`….backup`), by name.
    pub fn backup_histories(&self) -> &[Entry] {
        &self.backup_histories
    }

    /// Segment file names that cannot exist with the segment size (the archive was written for a smaller one).
    pub fn impossible(&self) -> &[Entry] {
        &self.impossible
    }

    /// WAL-named entries that are not regular files ([`NotRegular`]).
    pub fn irregular(&self) -> &[Entry] {
        &self.irregular
    }

    /// Everything that is not WAL (temporary files, lock files, lower-case names, ...).
    pub fn others(&self) -> &[Entry] {
        &self.others
    }

    /// The [`NotRegular`] error of the first irregular entry, if any.
    pub fn first_irregular(&self, store: &dyn Store) -> Option<NotRegular> {
        self.irregular.first().map(|e| NotRegular(store.location_of(&e.name)))
    }

    /// The database system the archive belongs to: the system identifier in the long page header of the
    /// newest segment file that has one (a fresh `.partial` holds zeros), and that file. Reads at most a few
    /// headers.
    pub fn system_id(&self, store: &dyn Store) -> Result<Option<(u64, &SegFile)>, StoreError> {
        for f in self.newest_first().into_iter().take(SIZE_PROBES) {
            if let Ok(h) = contents::read_header(store, &f.file, f.compression, f.partial)? {
                return Ok(Some((h.system_id, f)));
            }
        }
        Ok(None)
    }
}

/// The complete file of segment `name` (a 24-character segment name), found by name in [`COMPLETE_FORMS`]
/// order (no listing; one round trip where the store asks for every form at once, see
/// [`Store::stat_first`]): restore's lookup for every segment PostgreSQL asks for. A form that exists but is
/// not a regular file is [`NotRegular`].
pub fn lookup_complete(
    store: &dyn Store,
    name: &str,
) -> Result<Result<Option<(Entry, Compression)>, NotRegular>, StoreError> {
    let files: Vec<String> = COMPLETE_FORMS.iter().map(|c| format!("{name}{}", c.suffix())).collect();
    let Some((form, entry)) = store.stat_first(&files)? else { return Ok(Ok(None)) };
    if !entry.regular {
        return Ok(Err(NotRegular(store.location_of(&entry.name))));
    }
    Ok(Ok(Some((entry, COMPLETE_FORMS[form]))))
}

/// The segment size from the long page header of the first segment files that have one (complete files
/// first); `None` when none of the first few has a readable one.
fn segment_size_from_headers(store: &dyn Store, entries: &[Entry]) -> Option<u32> {
    let mut candidates: Vec<(bool, &str, Compression)> = entries
        .iter()
        .filter(|e| e.regular)
        .filter_map(|e| match classify(&e.name) {
            Named::Segment { compression, partial } => Some((partial, e.name.as_str(), compression)),
            _ => None,
        })
        .collect();
    candidates.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    candidates.into_iter().take(SIZE_PROBES).find_map(|(partial, file, compression)| {
        contents::read_header(store, file, compression, partial).ok()?.ok().map(|h| h.segment_size)
    })
}

/// A temporary directory holding an empty file for each of `names`: for the tests of the modules that read
/// archives.
#[cfg(test)]
pub(crate) fn test_archive(names: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in names {
        std::fs::write(tmp.path().join(name), b"").unwrap();
    }
    tmp
}

/// Write `bytes` (WAL of a segment) into `dir` as `name`, compressed as the name says (a compressed `.partial`
/// as an open, sync-flushed stream); other names as they are. For the tests of the modules that read archives.
#[cfg(test)]
pub(crate) fn write_wal_file(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let compressor = match WalFileName::parse(name) {
        Some(WalFileName::Segment { compression, partial, .. }) => {
            super::compress::Compressor::new(compression, None).unwrap().map(|c| (c, partial))
        }
        _ => None,
    };
    let out = match compressor {
        None => bytes.to_vec(),
        Some((mut c, partial)) => {
            c.write(bytes).unwrap();
            if partial {
                c.sync_flush().unwrap();
                std::mem::take(c.output())
            } else {
                c.finish().unwrap()
            }
        }
    };
    std::fs::write(dir.join(name), out).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::store::LocalStore;

    const SEG: u32 = 1 << 20;

    fn entry(name: &str) -> Entry {
        Entry { name: name.to_string(), len: 1, modified: None, regular: true }
    }

    fn catalog(names: &[&str]) -> Catalog {
        Catalog::new(names.iter().map(|n| entry(n)).collect(), SEG, true)
    }

    fn files(v: &[&SegFile]) -> Vec<String> {
        v.iter().map(|s| s.file.clone()).collect()
    }

    #[test]
    fn classifies_once_by_postgres_spelling() {
        let mut entries: Vec<Entry> = [
            "000000010000000000000002.zst",
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003.gz.partial",
            "00000002.history",
            "0000000a.history",
            "00000000.history",
            "000000010000000000000002.00000028.backup",
            "00000001000000000000000a",
            "000000000000000000000005",
            "000000010000000000001000",
            "000000010000000000000002.bz2",
            ".walkeeper.lock",
            "README",
        ]
        .iter()
        .map(|n| entry(n))
        .collect();
        entries.push(Entry { regular: false, ..entry("000000010000000000000009") });
        entries.push(Entry { regular: false, ..entry("00000003.history") });
        let c = Catalog::new(entries, SEG, true);
        let segs: Vec<&str> = c.segments().iter().map(|s| s.file.as_str()).collect();
        assert_eq!(
            segs,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.zst",
                "000000010000000000000003.gz.partial"
            ]
        );
        assert_eq!(c.segments()[3].id, SegmentId { timeline: 1, number: 3 });
        assert_eq!(c.segments()[3].compression, Compression::Gzip);
        assert!(c.segments()[3].partial);
        assert_eq!(c.histories().keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(c.backup_histories().len(), 1);
        let names = |v: &[Entry]| v.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(c.impossible()), ["000000010000000000001000"]);
        assert_eq!(names(c.irregular()), ["000000010000000000000009", "00000003.history"]);
        assert_eq!(c.others().len(), 7);
        // With 16 MiB segments only 256 per xlogid: 0x100 is impossible too.
        let mut c16 = c.clone();
        c16.entries.push(entry("000000010000000000000100"));
        let c16 = c16.with_segment_size(16 << 20);
        assert_eq!(names(c16.impossible()), ["000000010000000000000100", "000000010000000000001000"]);
        let store = LocalStore::new("/a");
        assert_eq!(
            c.first_irregular(&store).unwrap().to_string(),
            "\"/a/000000010000000000000009\" is not a regular file"
        );
    }

    #[test]
    fn newest_and_timelines() {
        let c = catalog(&[
            "000000010000000000000006",
            "0000000A0000000000000005",
            "000000020000000000000006.partial",
            "000000020000000000000004",
        ]);
        // Segment number first, then timeline (as FindStreamingStart).
        assert_eq!(c.newest().unwrap().file, "000000020000000000000006.partial");
        let t = c.timelines();
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), [1, 2, 10]);
        assert_eq!(t[&2].len(), 2);
        assert_eq!(
            catalog(&["000000010000000000000004.partial", "000000010000000000000004"]).newest().unwrap().file,
            "000000010000000000000004"
        );
        assert!(catalog(&[]).newest().is_none());
    }

    #[test]
    fn trailing_runs() {
        let c = catalog(&[
            "000000010000000000000003",
            "000000010000000000000004.partial",
            "000000010000000000000005.zst.partial",
            "000000010000000000000006.partial",
            // Timeline 2: a partial followed by a complete segment, then a gap before the last partial.
            "000000020000000000000004.partial",
            "000000020000000000000005",
            "000000020000000000000007.partial",
            // Timeline 3: ends complete, a stale partial beside its complete segment.
            "000000030000000000000008.partial",
            "000000030000000000000008",
        ]);
        assert_eq!(
            files(&c.trailing_partials(1)),
            [
                "000000010000000000000004.partial",
                "000000010000000000000005.zst.partial",
                "000000010000000000000006.partial"
            ]
        );
        assert_eq!(files(&c.trailing_partials(2)), ["000000020000000000000007.partial"]);
        assert!(c.trailing_partials(3).is_empty());
        assert!(c.trailing_partials(9).is_empty());
        let id = |tli, number| SegmentId { timeline: tli, number };
        assert_eq!(c.find(id(1, 4), true).unwrap().file, "000000010000000000000004.partial");
        assert_eq!(c.find(id(1, 4), false), None);
        assert_eq!(c.find(id(1, 3), false).unwrap().file, "000000010000000000000003");
        // Not in the run: a leftover.
        assert_eq!(c.find(id(2, 4), true), None);
        assert_eq!(c.find(id(2, 6), true), None);
        assert_eq!(c.find(id(3, 8), true).unwrap().file, "000000030000000000000008");
        assert!(c.in_trailing_run(c.find(id(1, 5), true).unwrap()));
    }

    #[test]
    fn superseded_partials_can_be_left_out() {
        let c = catalog(&[
            "000000010000000000000003",
            "000000010000000000000003.zst.partial",
            "000000010000000000000004.partial",
            "00000002.history",
        ])
        .without_superseded_partials();
        let segs: Vec<&str> = c.segments().iter().map(|s| s.file.as_str()).collect();
        assert_eq!(segs, ["000000010000000000000003", "000000010000000000000004.partial"]);
        assert_eq!(c.histories().len(), 1);
        assert_eq!(c.with_segment_size(SEG).segments().len(), 2, "gone from the entries too");
    }

    #[test]
    fn forms_in_lookup_order() {
        let c = catalog(&[
            "000000010000000000000002.gz",
            "000000010000000000000002.lz4",
            "000000010000000000000002.zst",
        ]);
        assert_eq!(
            c.find(SegmentId { timeline: 1, number: 2 }, false).unwrap().file,
            "000000010000000000000002.zst"
        );
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        std::fs::write(tmp.path().join("000000010000000000000002.lz4"), b"x").unwrap();
        std::fs::write(tmp.path().join("000000010000000000000002.gz"), b"x").unwrap();
        let (e, c) = lookup_complete(&store, "000000010000000000000002").unwrap().unwrap().unwrap();
        assert_eq!((e.name.as_str(), c), ("000000010000000000000002.lz4", Compression::Lz4));
        assert_eq!(lookup_complete(&store, "000000010000000000000003").unwrap().unwrap(), None);
        std::fs::create_dir(tmp.path().join("000000010000000000000003")).unwrap();
        let err = lookup_complete(&store, "000000010000000000000003").unwrap().unwrap_err();
        assert!(err.to_string().ends_with("000000010000000000000003\" is not a regular file"), "{err}");
    }

    #[test]
    fn segment_size_and_system_id_from_headers() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path());
        let header = |sysid: u64, size: u32, n: u64| {
            let mut e = crate::wal::encoder::WalEncoder::new(0xD110, size, sysid, 1, n * u64::from(size));
            e.main_data_record(10, 0, 1, b"x");
            let mut b = e.into_bytes();
            b.resize(8192, 0);
            b
        };
        let c = Catalog::read(&store, SegmentSize::FromHeaders).unwrap();
        assert_eq!((c.segment_size(), c.segment_size_known()), (FALLBACK_SEGMENT_SIZE, false));
        assert_eq!(c.system_id(&store).unwrap(), None);
        std::fs::write(tmp.path().join("000000010000000000000001"), header(5, 2 << 20, 1)).unwrap();
        std::fs::write(tmp.path().join("000000010000000000000002.partial"), header(6, 2 << 20, 2)).unwrap();
        let c = Catalog::read(&store, SegmentSize::FromHeaders).unwrap();
        assert_eq!((c.segment_size(), c.segment_size_known()), (2 << 20, true));
        let (id, f) = c.system_id(&store).unwrap().unwrap();
        assert_eq!((id, f.file.as_str()), (6, "000000010000000000000002.partial"));
        // A fresh, zero-filled .partial has no header yet: the next newest tells.
        std::fs::write(tmp.path().join("000000010000000000000003.partial"), vec![0u8; 8192]).unwrap();
        let c = Catalog::read(&store, SegmentSize::Known(2 << 20)).unwrap();
        assert_eq!(c.system_id(&store).unwrap().unwrap().0, 6);
        let err =
            Catalog::read(&LocalStore::new(tmp.path().join("nope")), SegmentSize::FromHeaders).unwrap_err();
        assert!(err.to_string().starts_with("could not open directory"), "{err}");
    }
}
