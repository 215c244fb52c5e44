//! `walkeeper verify`: prove that a WAL archive at rest is whole, without trusting any of it.
//!
//! What is checked (each failure becomes a [`Problem`] naming the file, the LSN and the cause):
//! - format: segment size, page magic (hence the PostgreSQL major) and system identifier come from the long
//!   page headers of the segments (the values most segments agree on, the first segment breaking ties);
//!   every segment must agree (the decoder checks every long header against them);
//! - continuity: per timeline, no segment is missing between the first and the last; a complete segment holds
//!   exactly one segment of valid WAL; a `.partial` is checked up to the end of the valid data it holds (and
//!   must be full when later segments follow it);
//! - records: every page header and every record (header, prev-link, CRC32C) of every segment, with one decoder
//!   per timeline running across segment boundaries, so records spanning segments are checked whole;
//! - timelines: a history file for every timeline above 1, well-formed and consistent with the older ones; each
//!   timeline's first segment contains the start LSN its history gives; every page header carries the
//!   timeline that owned its LSN according to the history (the pages a new timeline copies from its parent carry
//!   the parent's timeline, later ones the new timeline); the parent's WAL reaches the fork point.
//! - diverged tails: WAL of a timeline past the LSN where a later timeline forked from it (what an old
//!   primary wrote that the promoted server never had) is information, not damage: it is summarised
//!   (`archive::fork`: bytes, records, commits, last commit time) in [`Summary::diverged_tails`], and its
//!   records are checked like all others.
//!
//! Files are read (and decompressed) in large chunks, and the decoder computes CRCs incrementally, so memory
//! stays at a few MiB whatever the segment size and the speed is that of reading plus CRC32C.

use crate::archive::catalog::{Catalog, NotRegular, SegFile, SegmentSize};
use crate::archive::contents::{self, CHUNK};
use crate::archive::fork::{fork_points, ForkPoint, TailReport};
use crate::archive::store::{Store, StoreError};
use crate::wal::at_rest::Feed;
use crate::wal::decoder::{
    major_for_page_magic, DecodeStatus, DecoderConfig, RecordInfo, StreamEnd, WalDecoder, SIZE_OF_SHORT_PHD,
    XLOG_BLCKSZ,
};
use crate::wal::segment::{history_file_name, Compression, SegmentId, TimeLineId};
use crate::wal::tail::TailSummary;
use crate::wal::timeline::{parse_history_of, timeline_of, timeline_start, HistoryEntry};
use crate::wal::Lsn;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

const BLCKSZ: u64 = XLOG_BLCKSZ as u64;

/// What kind of problem (stable names: they appear in `--json` output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// No segment file at all.
    NoSegments,
    /// The segment size or page magic cannot be established, or is not PostgreSQL's.
    UnknownFormat,
    /// A segment file name that cannot exist with the archive's segment size.
    BadFileName,
    /// Segments missing between two present ones (or where a timeline must begin).
    MissingSegment,
    /// A complete segment shorter than the segment size.
    TruncatedSegment,
    /// A complete segment longer than the segment size.
    OversizedSegment,
    /// Valid WAL stops before the end of a segment that must be full.
    IncompleteSegment,
    /// A page or record failed a check (CRC, prev-link, page address, system identifier...).
    InvalidWal,
    /// A compressed file that does not decompress.
    CorruptFile,
    /// A timeline above 1 without its history file.
    MissingHistory,
    /// A history file that cannot be parsed or names impossible timelines.
    InvalidHistory,
    /// History files and segments disagree.
    HistoryMismatch,
    /// A WAL-named entry that is not a regular file (a directory, a symlink): never read.
    NotRegularFile,
    /// A file could not be read (permissions, I/O error): the archive could not be verified.
    Io,
}

/// One thing wrong with the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// File name inside the directory (for a missing file, the name it should have).
    pub file: Option<String>,
    pub timeline: Option<TimeLineId>,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub lsn: Option<Lsn>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if let Some(lsn) = self.lsn {
            write!(f, "{lsn}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// How the last `.partial` of a timeline ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartialSummary {
    pub file: String,
    /// End of the valid WAL received into it: where streaming would resume.
    #[serde(serialize_with = "ser_lsn")]
    pub received_lsn: Lsn,
    /// `end_of_wal` (zeros follow), `inside_record` (cut in the middle of a record), `boundary`.
    pub ends: &'static str,
}

/// One timeline of the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineSummary {
    pub timeline: TimeLineId,
    /// Parent timeline and fork point, from the history file.
    pub parent: Option<TimeLineId>,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub forked_at: Option<Lsn>,
    pub first_segment: String,
    pub last_segment: String,
    /// Start of the first segment file.
    #[serde(serialize_with = "ser_lsn")]
    pub start_lsn: Lsn,
    /// End of the WAL held: the end of the last segment, or of the valid data of a final `.partial`.
    #[serde(serialize_with = "ser_lsn")]
    pub end_lsn: Lsn,
    /// Segment files (complete and partial).
    pub segments: usize,
    pub partial_segments: usize,
    pub partial: Option<PartialSummary>,
    /// Records validated.
    pub records: u64,
    /// Bytes of WAL read (decompressed).
    pub bytes: u64,
}

/// The archive as a whole.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub directory: String,
    #[serde(serialize_with = "ser_opt_u64_str")]
    pub system_identifier: Option<u64>,
    pub major: Option<u32>,
    pub page_magic: Option<String>,
    pub segment_size: Option<u32>,
    pub timelines: Vec<TimelineSummary>,
    /// Segment files (complete and partial, any compression).
    pub segments: usize,
    pub partial_segments: usize,
    pub history_files: usize,
    /// Bytes of WAL read (decompressed).
    pub bytes: u64,
    /// Bytes of the segment files on disk.
    pub file_bytes: u64,
    /// WAL of timelines past the points where later timelines forked from them (module docs).
    pub diverged_tails: Vec<TailReport>,
    pub records: u64,
    pub seconds: f64,
}

/// The result of verifying a directory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// True when no problem was found.
    pub whole: bool,
    pub summary: Summary,
    pub problems: Vec<Problem>,
}

impl Report {
    /// 0 when whole, 1 when a problem was found, 2 when a file could not be read (verification incomplete).
    pub fn exit_code(&self) -> i32 {
        if self.problems.iter().any(|p| p.kind == ProblemKind::Io) {
            2
        } else if self.problems.is_empty() {
            0
        } else {
            1
        }
    }

    /// The human-readable report: problems first, then per-timeline lines and the summary.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let s = &self.summary;
        let mut out = String::new();
        for p in &self.problems {
            let _ = writeln!(out, "problem: {p}");
        }
        for t in &s.timelines {
            let fork = match (t.parent, t.forked_at) {
                (Some(p), Some(at)) => format!(" (forked from timeline {p} at {at})"),
                _ => String::new(),
            };
            let _ = write!(
                out,
                "timeline {}{fork}: {} .. {}, {} segment files ({} partial), WAL {} .. {}, {} records",
                t.timeline,
                t.first_segment,
                t.last_segment,
                t.segments,
                t.partial_segments,
                t.start_lsn,
                t.end_lsn,
                t.records
            );
            if let Some(p) = &t.partial {
                let _ = write!(
                    out,
                    "; {} received up to {} ({})",
                    p.file,
                    p.received_lsn,
                    p.ends.replace('_', " ")
                );
            }
            out.push('\n');
        }
        for t in &s.diverged_tails {
            let _ = writeln!(out, "diverged tail: {}", t.describe());
        }
        let _ = writeln!(
            out,
            "summary: {} timelines, {} segment files ({} partial), {} history files, {} bytes of WAL ({} on disk), {} records in {:.2}s",
            s.timelines.len(),
            s.segments,
            s.partial_segments,
            s.history_files,
            s.bytes,
            s.file_bytes,
            s.records,
            s.seconds
        );
        if let (Some(sysid), Some(size)) = (s.system_identifier, s.segment_size) {
            let major = s.major.map_or_else(|| "unknown".to_string(), |m| m.to_string());
            let _ = writeln!(
                out,
                "system identifier {sysid}, PostgreSQL {major} (page magic {}), segment size {size} bytes",
                s.page_magic.as_deref().unwrap_or("?")
            );
        }
        if self.whole {
            out.push_str("archive is whole\n");
        } else {
            let _ = writeln!(out, "archive is NOT whole: {} problems", self.problems.len());
        }
        out
    }
}

fn ser_lsn<S: serde::Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&lsn.to_string())
}

fn ser_opt_lsn<S: serde::Serializer>(lsn: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match lsn {
        Some(l) => s.serialize_str(&l.to_string()),
        None => s.serialize_none(),
    }
}

/// System identifiers exceed 2^53: as a string, so JSON readers keep every digit.
fn ser_opt_u64_str<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&v.to_string()),
        None => s.serialize_none(),
    }
}

/// What the long page header at the start of a segment says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Format {
    magic: u16,
    system_id: u64,
    segment_size: u32,
}

/// History of one timeline, as read from its file (entries, or why they are unusable).
struct History {
    file: String,
    entries: Option<Vec<HistoryEntry>>,
}

/// How many times a verification starts again because a listed file vanished before it was read.
const ATTEMPTS: usize = 3;

/// Verify the WAL archive in `store`. Only a store that cannot be listed is an error: everything else is a
/// problem of the report.
///
/// A receiver may be writing the archive meanwhile (readers never lock): a `.partial` listed, then renamed
/// to its final name when its segment completed, is gone when read. That is no damage, so a pass in which a
/// listed file vanished is started again from a new listing, up to [`ATTEMPTS`] times; a file that keeps
/// vanishing is then reported.
pub fn verify(store: &dyn Store) -> Result<Report, StoreError> {
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        let (mut report, vanished) = verify_once(store)?;
        if !vanished || attempt == ATTEMPTS {
            report.summary.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        attempt += 1;
    }
}

/// One pass over a listing; true when a listed file was gone when read.
fn verify_once(store: &dyn Store) -> Result<(Report, bool), StoreError> {
    let catalog = Catalog::read(store, SegmentSize::FromHeaders)?;
    // In a bucket, a `.partial` object next to its complete segment is the uploader's, about to be deleted.
    let catalog = match store.local_dir() {
        Some(_) => catalog,
        None => catalog.without_superseded_partials(),
    };
    let mut v = Verifier::new(store);
    for e in catalog.irregular() {
        let message = NotRegular(store.location_of(&e.name)).to_string();
        v.problem(ProblemKind::NotRegularFile, Some(&e.name), None, None, message);
    }
    let impossible = catalog.impossible();
    v.summary.segments = catalog.segments().len() + impossible.len();
    v.summary.partial_segments = catalog.segments().iter().filter(|s| s.partial).count()
        + impossible.iter().filter(|e| e.name.ends_with(".partial")).count();
    v.summary.file_bytes =
        catalog.segments().iter().map(|s| s.len).chain(impossible.iter().map(|e| e.len)).sum();
    v.summary.history_files = catalog.histories().len();
    v.read_histories(&catalog);
    if v.summary.segments == 0 {
        let message = format!("no WAL segment files in \"{}\"", store.location());
        v.problem(ProblemKind::NoSegments, None, None, None, message);
    } else if let Some(format) = v.establish_format(catalog.segments()) {
        let catalog = if format.segment_size == catalog.segment_size() {
            catalog
        } else {
            catalog.with_segment_size(format.segment_size)
        };
        v.verify_segments(format, &catalog);
    }
    let problems = v.problems;
    Ok((Report { whole: problems.is_empty(), summary: v.summary, problems }, v.vanished))
}

/// What a `.partial` may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PartialRole {
    /// The last of its timeline's trailing run (or a second file of a segment, checked alone): its WAL may
    /// end anywhere.
    Open,
    /// An earlier member of the trailing run: received whole.
    InRun,
    /// Followed by complete segments of its timeline: restore does not serve it.
    Leftover,
}

struct Verifier<'a> {
    store: &'a dyn Store,
    summary: Summary,
    problems: Vec<Problem>,
    histories: BTreeMap<TimeLineId, History>,
    buf: Vec<u8>,
    /// A listed file was gone when read (see [`verify`]).
    vanished: bool,
}

/// Per-timeline decoding state.
struct Chain {
    tli: TimeLineId,
    decoder: Option<WalDecoder>,
    /// Where this timeline's own WAL ends (the fork point of a later timeline), if one forked from it.
    end: Option<ForkPoint>,
    /// The records past `end`.
    tail: Option<TailSummary>,
    /// Owner of each LSN according to this timeline's history (None: no usable history).
    history: Option<Vec<HistoryEntry>>,
    records: u64,
    bytes: u64,
}

impl<'a> Verifier<'a> {
    fn new(store: &'a dyn Store) -> Verifier<'a> {
        Verifier {
            store,
            summary: Summary {
                directory: store.location(),
                system_identifier: None,
                major: None,
                page_magic: None,
                segment_size: None,
                timelines: Vec::new(),
                segments: 0,
                partial_segments: 0,
                history_files: 0,
                bytes: 0,
                file_bytes: 0,
                diverged_tails: Vec::new(),
                records: 0,
                seconds: 0.0,
            },
            problems: Vec::new(),
            histories: BTreeMap::new(),
            buf: Vec::new(),
            vanished: false,
        }
    }

    fn problem(
        &mut self,
        kind: ProblemKind,
        file: Option<&str>,
        timeline: Option<TimeLineId>,
        lsn: Option<Lsn>,
        message: String,
    ) {
        self.problems.push(Problem { kind, file: file.map(str::to_string), timeline, lsn, message });
    }

    fn io_problem(&mut self, file: &str, e: &StoreError) {
        self.vanished |= e.is_not_found();
        self.problem(ProblemKind::Io, Some(file), None, None, e.to_string());
    }

    /// Read and sanity-check every history file.
    fn read_histories(&mut self, catalog: &Catalog) {
        for (&tli, entry) in catalog.histories() {
            let file = &entry.name;
            let text = match self.store.read_all(file) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => {
                    self.io_problem(file, &e);
                    self.histories.insert(tli, History { file: file.clone(), entries: None });
                    continue;
                }
            };
            let entries = match parse_history_of(tli, &text) {
                Ok(entries) => Some(entries),
                Err(e) => {
                    let message = format!("invalid timeline history: {e}");
                    self.problem(ProblemKind::InvalidHistory, Some(file), Some(tli), e.lsn(), message);
                    None
                }
            };
            self.histories.insert(tli, History { file: file.clone(), entries });
        }
        // A child's history repeats its parent's, plus one line.
        let mut mismatches = Vec::new();
        for (&tli, h) in &self.histories {
            let Some(entries) = &h.entries else { continue };
            let Some(last) = entries.last() else { continue };
            let Some(parent) = self.histories.get(&last.timeline) else { continue };
            let Some(parent_entries) = &parent.entries else { continue };
            if parent_entries.as_slice() != &entries[..entries.len() - 1] {
                mismatches.push((
                    h.file.clone(),
                    tli,
                    format!(
                        "timeline history of timeline {tli} does not repeat the history of its parent timeline {} ({})",
                        last.timeline, parent.file
                    ),
                ));
            }
        }
        for (file, tli, msg) in mismatches {
            self.problem(ProblemKind::HistoryMismatch, Some(&file), Some(tli), None, msg);
        }
    }

    /// Segment size, page magic and system identifier: what most segments' first long page header says.
    fn establish_format(&mut self, segfiles: &[SegFile]) -> Option<Format> {
        let mut counts: HashMap<Format, (usize, usize)> = HashMap::new(); // format -> (count, first index)
        for (i, s) in segfiles.iter().enumerate() {
            if let Some(f) = self.read_format(s) {
                let e = counts.entry(f).or_insert((0, i));
                e.0 += 1;
            }
        }
        let best =
            counts.iter().max_by_key(|(_, &(n, first))| (n, std::cmp::Reverse(first))).map(|(f, _)| *f);
        let Some(f) = best else {
            self.problem(
                ProblemKind::UnknownFormat,
                None,
                None,
                None,
                "no segment starts with a valid long page header: cannot tell the segment size and system identifier"
                    .into(),
            );
            return None;
        };
        self.summary.system_identifier = Some(f.system_id);
        self.summary.page_magic = Some(format!("{:04X}", f.magic));
        self.summary.segment_size = Some(f.segment_size);
        self.summary.major = major_for_page_magic(f.magic);
        if self.summary.major.is_none() {
            self.problem(
                ProblemKind::UnknownFormat,
                None,
                None,
                None,
                format!("page magic {:04X} is not that of PostgreSQL 13 to 18", f.magic),
            );
        }
        Some(f)
    }

    /// The long page header of a segment file, if it has a plausible one.
    fn read_format(&mut self, s: &SegFile) -> Option<Format> {
        let h = contents::read_header(self.store, &s.file, s.compression, s.partial).ok()?.ok()?;
        Some(Format { magic: h.magic, system_id: h.system_id, segment_size: h.segment_size })
    }

    fn verify_segments(&mut self, format: Format, catalog: &Catalog) {
        let seg = format.segment_size;
        for e in catalog.impossible() {
            let message = format!("segment file name is impossible with a WAL segment size of {seg} bytes");
            self.problem(ProblemKind::BadFileName, Some(&e.name), None, None, message);
        }
        // timeline -> segment number -> files (the complete one first).
        let mut timelines: BTreeMap<TimeLineId, BTreeMap<u64, Vec<&SegFile>>> = BTreeMap::new();
        for s in catalog.segments() {
            if s.id.end_lsn(seg).is_some() {
                timelines.entry(s.id.timeline).or_default().entry(s.id.number).or_default().push(s);
            } else {
                let message = "segment file name lies past the end of the WAL address space".to_string();
                self.problem(ProblemKind::BadFileName, Some(&s.file), None, None, message);
            }
        }
        // Where each timeline ends: the latest switch point any history gives for it.
        let ends =
            fork_points(self.histories.iter().filter_map(|(&tli, h)| Some((tli, h.entries.as_deref()?))));
        let mut summaries: BTreeMap<TimeLineId, TimelineSummary> = BTreeMap::new();
        for (&tli, segments) in &timelines {
            let history = if tli == 1 {
                Some(self.histories.get(&1).and_then(|h| h.entries.clone()).unwrap_or_default())
            } else {
                match self.histories.get(&tli) {
                    Some(h) => h.entries.clone(),
                    None => {
                        let first = *segments.keys().next().expect("non-empty");
                        let lsn = SegmentId { timeline: tli, number: first }.start_lsn(seg);
                        self.problem(
                            ProblemKind::MissingHistory,
                            Some(&history_file_name(tli)),
                            Some(tli),
                            lsn,
                            format!("timeline {tli} has segments but no history file"),
                        );
                        None
                    }
                }
            };
            let summary =
                self.verify_timeline(format, catalog, tli, segments, history, ends.get(&tli).copied());
            summaries.insert(tli, summary);
        }
        self.check_forks(seg, &timelines, &summaries);
        self.summary.records = summaries.values().map(|t| t.records).sum();
        self.summary.bytes = summaries.values().map(|t| t.bytes).sum();
        self.summary.timelines = summaries.into_values().collect();
    }

    /// Each timeline's first segment holds its start LSN, and its parent's WAL reaches there.
    fn check_forks(
        &mut self,
        seg: u32,
        timelines: &BTreeMap<TimeLineId, BTreeMap<u64, Vec<&SegFile>>>,
        summaries: &BTreeMap<TimeLineId, TimelineSummary>,
    ) {
        for (&tli, segments) in timelines {
            if tli == 1 {
                continue;
            }
            let Some(Some(entries)) = self.histories.get(&tli).map(|h| h.entries.clone()) else { continue };
            let Some(last) = entries.last().copied() else { continue };
            let hfile = history_file_name(tli);
            let start = last.end;
            let start_seg = start.segment_number(seg);
            let first = *segments.keys().next().expect("non-empty");
            let first_name = SegmentId { timeline: tli, number: first }.file_name(seg);
            if first < start_seg {
                self.problem(
                    ProblemKind::HistoryMismatch,
                    Some(&first_name),
                    Some(tli),
                    SegmentId { timeline: tli, number: first }.start_lsn(seg),
                    format!(
                        "segment of timeline {tli} before the timeline's start: {hfile} says it forked from timeline {} at {start}",
                        last.timeline
                    ),
                );
                continue;
            }
            let parent = summaries.get(&last.timeline);
            if first > start_seg && parent.is_some() {
                let missing = SegmentId { timeline: tli, number: start_seg };
                self.problem(
                    ProblemKind::MissingSegment,
                    Some(&missing.file_name(seg)),
                    Some(tli),
                    Some(start),
                    format!(
                        "timeline {tli} begins at {start} (per {hfile}) in this segment, but its first segment is {first_name}"
                    ),
                );
            }
            if let Some(p) = parent {
                // The parent's WAL must reach the fork point (when the archive covers it at all).
                let p_first = timelines[&p.timeline].keys().next().copied().unwrap_or(0);
                if p_first <= start_seg && p.end_lsn < start {
                    let last_file = timelines[&p.timeline].values().next_back().map(|f| f[0].file.clone());
                    self.problem(
                        ProblemKind::MissingSegment,
                        last_file.as_deref(),
                        Some(p.timeline),
                        Some(p.end_lsn),
                        format!(
                            "WAL of timeline {} ends at {}, before timeline {tli} forked from it at {start} (per {hfile})",
                            p.timeline, p.end_lsn
                        ),
                    );
                }
            }
        }
    }

    fn verify_timeline(
        &mut self,
        format: Format,
        catalog: &Catalog,
        tli: TimeLineId,
        segments: &BTreeMap<u64, Vec<&SegFile>>,
        history: Option<Vec<HistoryEntry>>,
        end: Option<ForkPoint>,
    ) -> TimelineSummary {
        let seg = format.segment_size;
        let cfg = DecoderConfig {
            segment_size: seg,
            page_magic: format.magic,
            system_id: Some(format.system_id),
            timeline: tli,
        };
        let tail = end.map(|e| TailSummary::new(e.at));
        let mut chain = Chain { tli, decoder: None, end, tail, history, records: 0, bytes: 0 };
        let name = |n: u64| SegmentId { timeline: tli, number: n }.file_name(seg);
        let first = *segments.keys().next().expect("non-empty");
        let last = *segments.keys().next_back().expect("non-empty");
        let mut previous: Option<u64> = None;
        let mut end_lsn = Lsn(0);
        let mut partial_summary = None;
        let mut partial_count = 0;
        let mut file_count = 0;
        for (&number, files) in segments {
            let id = SegmentId { timeline: tli, number };
            let start = id.start_lsn(seg).expect("checked");
            let seg_end = id.end_lsn(seg).expect("checked");
            if let Some(p) = previous {
                if number != p + 1 {
                    let n = number - p - 1;
                    let to = if n > 1 { format!(" to {}", name(number - 1)) } else { String::new() };
                    self.problem(
                        ProblemKind::MissingSegment,
                        Some(&name(p + 1)),
                        Some(tli),
                        SegmentId { timeline: tli, number: p + 1 }.start_lsn(seg),
                        format!(
                            "missing segment{}{to} ({n} segments) on timeline {tli}",
                            if n > 1 { "s" } else { "" }
                        ),
                    );
                    chain.decoder = None;
                }
            }
            previous = Some(number);
            // Sorted complete first: the complete file continues the chain, others are checked on their own.
            let (main, extra) = files.split_first().expect("non-empty");
            file_count += files.len();
            partial_count += files.iter().filter(|f| f.partial).count();
            if chain.decoder.is_none() {
                chain.decoder = Some(WalDecoder::new(cfg, start));
            }
            let role = if number == last {
                PartialRole::Open
            } else if catalog.in_trailing_run(main) {
                PartialRole::InRun
            } else {
                PartialRole::Leftover
            };
            let outcome = self.check_file(&mut chain, main, start, seg_end, role);
            end_lsn = end_lsn.max(outcome.end);
            if main.partial && number == last {
                partial_summary = outcome.partial;
            }
            for f in extra {
                // A second file for the same segment: verify it on its own.
                let mut alone = Chain {
                    tli,
                    decoder: Some(WalDecoder::new(cfg, start)),
                    end: chain.end,
                    tail: None,
                    history: chain.history.clone(),
                    records: 0,
                    bytes: 0,
                };
                self.check_file(&mut alone, f, start, seg_end, PartialRole::Open);
            }
        }
        if let (Some(fork), Some(tail)) = (chain.end, &chain.tail) {
            // The files holding the tail: the main file of each segment from the fork's one to the tail's end.
            let files = segments
                .range(fork.at.segment_number(seg)..)
                .filter(|(&n, _)| {
                    SegmentId { timeline: tli, number: n }.start_lsn(seg).is_some_and(|s| s < tail.to)
                })
                .map(|(_, f)| f[0].file.clone())
                .collect();
            self.summary.diverged_tails.extend(TailReport::new(tli, fork.child, tail, files));
        }
        TimelineSummary {
            timeline: tli,
            parent: if tli > 1 {
                chain.history.as_ref().and_then(|h| h.last()).map(|e| e.timeline)
            } else {
                None
            },
            forked_at: if tli > 1 {
                chain.history.as_ref().and_then(|h| h.last()).map(|e| e.end)
            } else {
                None
            },
            first_segment: name(first),
            last_segment: name(last),
            start_lsn: SegmentId { timeline: tli, number: first }.start_lsn(seg).expect("checked"),
            end_lsn,
            segments: file_count,
            partial_segments: partial_count,
            partial: partial_summary,
            records: chain.records,
            bytes: chain.bytes,
        }
    }

    /// Read one segment file into the timeline's decoder. Leaves `chain.decoder` as `None` when the chain is
    /// broken (an error, or WAL ending early), so the next segment starts a fresh decoder.
    fn check_file(
        &mut self,
        chain: &mut Chain,
        f: &SegFile,
        start: Lsn,
        seg_end: Lsn,
        role: PartialRole,
    ) -> FileOutcome {
        let tli = chain.tli;
        let mut outcome = FileOutcome { end: start, partial: None };
        let mut reader = match contents::open(self.store, &f.file, f.compression) {
            Ok(r) => r,
            Err(e @ StoreError::Io { op: "decompress", .. }) => {
                self.problem(ProblemKind::CorruptFile, Some(&f.file), Some(tli), Some(start), e.to_string());
                chain.decoder = None;
                return outcome;
            }
            Err(e) => {
                self.io_problem(&f.file, &e);
                chain.decoder = None;
                return outcome;
            }
        };
        let seg_len = seg_end.0 - start.0;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(CHUNK.min(seg_len as usize), 0);
        let mut pos = 0u64; // bytes of the segment read so far
        let mut feed = Feed::new(f.partial);
        let mut oversized = false;
        let mut failed = false;
        let mut tli_reported = false;
        loop {
            let (n, err) = contents::fill(&mut reader, &mut buf);
            if let Some(e) = err {
                if !contents::is_open_end(f.partial, f.compression, &e) {
                    if f.compression == Compression::None {
                        self.io_problem(
                            &f.file,
                            &contents::read_error(self.store, &f.file, f.compression, e),
                        );
                    } else {
                        self.problem(
                            ProblemKind::CorruptFile,
                            Some(&f.file),
                            Some(tli),
                            Some(Lsn(start.0 + pos + n as u64)),
                            format!("cannot decompress after {} bytes: {e}", pos + n as u64),
                        );
                    }
                    failed = true;
                }
            }
            if n == 0 {
                break;
            }
            let mut data = &buf[..n];
            if pos + n as u64 > seg_len {
                data = &data[..(seg_len - pos) as usize];
                oversized = true;
            }
            if !data.is_empty() {
                let base = Lsn(start.0 + pos);
                if !tli_reported {
                    if let Some(p) = page_timeline_problem(chain, base, data) {
                        self.problem(ProblemKind::HistoryMismatch, Some(&f.file), Some(tli), Some(p.0), p.1);
                        tli_reported = true;
                    }
                }
                if let Some(d) = chain.decoder.as_mut() {
                    let mut records = 0u64;
                    let tail = &mut chain.tail;
                    let mut on_record = |r: &RecordInfo| {
                        records += 1;
                        if let Some(t) = tail.as_mut() {
                            t.observe(r);
                        }
                    };
                    let result = feed.push(d, data, &mut on_record);
                    chain.records += records;
                    if let Err(e) = result {
                        self.invalid_wal(f, tli, &e);
                        chain.decoder = None;
                        failed = true;
                    }
                }
                pos += data.len() as u64;
                chain.bytes += data.len() as u64;
            }
            if oversized || failed {
                break;
            }
        }
        self.buf = buf;
        if oversized {
            self.problem(
                ProblemKind::OversizedSegment,
                Some(&f.file),
                Some(tli),
                Some(seg_end),
                format!("segment file holds more than the WAL segment size of {seg_len} bytes"),
            );
        }
        if failed {
            chain.decoder = None;
            outcome.end = Lsn(start.0 + pos);
            return outcome;
        }
        let Some(d) = chain.decoder.as_mut() else { return outcome };
        if f.partial {
            // Zeros at the end: padding, unless feeding them keeps the WAL valid (they end it cleanly).
            let tail = &mut chain.tail;
            chain.records += feed.finish_with(d, &mut |r: &RecordInfo| {
                if let Some(t) = tail.as_mut() {
                    t.observe(r);
                }
            });
            let status = match d.status() {
                Ok(s) => s,
                Err(e) => {
                    self.invalid_wal(f, tli, &e);
                    chain.decoder = None;
                    return outcome;
                }
            };
            let received = received_lsn(&status);
            outcome.end = received;
            let full = pos == seg_len && !matches!(status.end, StreamEnd::EndOfWal { .. });
            if role != PartialRole::Open && !full {
                self.problem(
                    ProblemKind::IncompleteSegment,
                    Some(&f.file),
                    Some(tli),
                    Some(received),
                    format!("partial segment's valid WAL ends at {received}, but later segments of timeline {tli} follow"),
                );
            } else if role == PartialRole::Leftover {
                let name = f.segment_name();
                self.problem(
                    ProblemKind::MissingSegment,
                    Some(name),
                    Some(tli),
                    Some(start),
                    format!(
                        "segment {name} is held only by {}, and complete segments of timeline {tli} follow it: restore serves a .partial only at the end of its timeline",
                        f.file
                    ),
                );
            }
            if !full {
                chain.decoder = None;
            }
            outcome.partial = Some(PartialSummary {
                file: f.file.clone(),
                received_lsn: received,
                ends: match status.end {
                    StreamEnd::EndOfWal { .. } => "end_of_wal",
                    StreamEnd::InsideRecord { .. } => "inside_record",
                    StreamEnd::Boundary => "boundary",
                },
            });
            return outcome;
        }
        if pos < seg_len {
            self.problem(
                ProblemKind::TruncatedSegment,
                Some(&f.file),
                Some(tli),
                Some(Lsn(start.0 + pos)),
                format!("segment file holds {pos} bytes of WAL, expected {seg_len}"),
            );
            chain.decoder = None;
            outcome.end = Lsn(start.0 + pos);
            return outcome;
        }
        outcome.end = seg_end;
        if let Ok(DecodeStatus { end: StreamEnd::EndOfWal { at }, .. }) = d.status() {
            self.problem(
                ProblemKind::IncompleteSegment,
                Some(&f.file),
                Some(tli),
                Some(at),
                format!("valid WAL ends at {at}, only zeros follow up to the end of this complete segment"),
            );
            chain.decoder = None;
            outcome.end = at;
        }
        outcome
    }

    fn invalid_wal(&mut self, f: &SegFile, tli: TimeLineId, e: &crate::wal::WalError) {
        self.problem(ProblemKind::InvalidWal, Some(&f.file), Some(tli), Some(e.lsn()), e.to_string());
    }
}

struct FileOutcome {
    /// End of the WAL this file holds (valid data for a partial).
    end: Lsn,
    partial: Option<PartialSummary>,
}

/// Where a partial's valid WAL ends.
fn received_lsn(status: &DecodeStatus) -> Lsn {
    match status.end {
        StreamEnd::EndOfWal { at } => at,
        StreamEnd::InsideRecord { .. } => status.validated_up_to,
        StreamEnd::Boundary => status.position,
    }
}

/// Every page header in `data` (which starts at `base`, page-aligned) must carry the timeline that owns its
/// address according to the history: pages copied from the parent before the fork carry the parent's, later
/// pages the timeline's own. Zeroed headers (after XLOG_SWITCH, past the end of WAL) are skipped.
fn page_timeline_problem(chain: &Chain, base: Lsn, data: &[u8]) -> Option<(Lsn, String)> {
    let history = chain.history.as_ref()?;
    let mut off = ((BLCKSZ - base.0 % BLCKSZ) % BLCKSZ) as usize;
    while off + SIZE_OF_SHORT_PHD <= data.len() {
        let h = &data[off..off + SIZE_OF_SHORT_PHD];
        let page = Lsn(base.0 + off as u64);
        off += BLCKSZ as usize;
        if h.iter().all(|&b| b == 0) {
            continue;
        }
        let tli = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let expected = timeline_of(history, chain.tli, page);
        if tli != expected {
            let why = match timeline_start(history, chain.tli) {
                Some(s) if chain.tli > 1 => {
                    format!("timeline {} began at {s} per {}", chain.tli, history_file_name(chain.tli))
                }
                _ => format!("timeline {} has no earlier timeline", chain.tli),
            };
            return Some((page, format!("page carries timeline {tli}, expected {expected}: {why}")));
        }
    }
    None
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
