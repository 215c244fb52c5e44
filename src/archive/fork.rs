//! The archive at a timeline fork, from its [`Catalog`]: where the valid WAL of its newest timeline ends (what
//! `receive` holds against a server's timeline history, `stream::failover`), and its *diverged tails* — WAL
//! of a timeline past the point where a later timeline forked from it: transactions an old primary wrote
//! that the promoted server never had. walkeeper keeps a tail as it is (invariant 7) and reports it: `receive`
//! when it starts the new timeline, `status` and `verify` (information, not damage).
//!
//! Both read the files concerned through the WAL decoder, chunk by chunk: the newest timeline's trailing run
//! of `.partial` files, or a tail's files. Only valid records count; reading stops at the first gap, damaged
//! file or invalid record (`verify` reports those).

use super::catalog::{Catalog, SegFile};
use super::contents::{self, CHUNK};
use super::store::{Store, StoreError};
use crate::wal::at_rest::Feed;
use crate::wal::decoder::{DecoderConfig, RecordInfo, WalDecoder};
use crate::wal::segment::TimeLineId;
use crate::wal::tail::TailSummary;
use crate::wal::timeline::{parse_history_of, HistoryEntry};
use crate::wal::Lsn;
use serde::Serialize;
use std::collections::BTreeMap;

/// Where a timeline ends because a later one forked from it (from the archive's history files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkPoint {
    /// The switch point: the timeline's own WAL ends here.
    pub at: Lsn,
    /// The timeline that began there.
    pub child: TimeLineId,
}

/// Where each timeline ends, from the histories given as (timeline, its parsed history): each entry of a
/// history names a timeline, where it ended and, by the next entry (or the history's own timeline), the
/// timeline that followed. When histories disagree the latest switch point counts: WAL of the timeline before
/// it is the history of some later timeline.
pub fn fork_points<'a>(
    histories: impl IntoIterator<Item = (TimeLineId, &'a [HistoryEntry])>,
) -> BTreeMap<TimeLineId, ForkPoint> {
    let mut out: BTreeMap<TimeLineId, ForkPoint> = BTreeMap::new();
    for (tli, entries) in histories {
        for (i, e) in entries.iter().enumerate() {
            let child = entries.get(i + 1).map_or(tli, |next| next.timeline);
            let point = ForkPoint { at: e.end, child };
            out.entry(e.timeline).and_modify(|p| *p = (*p).max_by_at(point)).or_insert(point);
        }
    }
    out
}

impl ForkPoint {
    fn max_by_at(self, other: ForkPoint) -> ForkPoint {
        if other.at > self.at {
            other
        } else {
            self
        }
    }
}

/// WAL of a timeline past its fork point, as the archive holds it (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TailReport {
    pub timeline: TimeLineId,
    /// The timeline that forked from it at `from`.
    pub forked_to: TimeLineId,
    /// The fork point.
    pub from: Lsn,
    /// Just past the last valid record of the tail.
    pub to: Lsn,
    /// `to - from`.
    pub bytes: u64,
    pub records: u64,
    /// Commit records: transactions committed on the tail, lost to the later timeline.
    pub commits: u64,
    /// The time of the last of them (RFC 3339, UTC).
    pub last_commit: Option<String>,
    /// The timeline's files holding the tail, in order.
    pub files: Vec<String>,
}

impl TailReport {
    /// A report of `summary` (records of `timeline` from the fork point on); None when it holds no record.
    pub fn new(
        timeline: TimeLineId,
        forked_to: TimeLineId,
        summary: &TailSummary,
        files: Vec<String>,
    ) -> Option<TailReport> {
        (summary.records > 0).then(|| TailReport {
            timeline,
            forked_to,
            from: summary.from,
            to: summary.to,
            bytes: summary.bytes,
            records: summary.records,
            commits: summary.commits,
            last_commit: summary.last_commit.map(|t| t.to_string()),
            files,
        })
    }

    /// One line: what the tail holds and where.
    pub fn describe(&self) -> String {
        let last = match &self.last_commit {
            Some(t) => format!(", the last at {t}"),
            None => String::new(),
        };
        let files = match self.files.as_slice() {
            [] => String::new(),
            [one] => format!(" in {one}"),
            [first, .., last] => format!(" in {first} .. {last} ({} files)", self.files.len()),
        };
        format!(
            "timeline {} continues past {}, where timeline {} forked from it: {} bytes of WAL to {}, {} records, {} commits{last}{files}",
            self.timeline, self.from, self.forked_to, self.bytes, self.to, self.records, self.commits
        )
    }
}

/// The newest timeline that has segment files and the end of the valid WAL the archive holds on it: the end
/// of its last segment when that is complete, else where valid records end in its trailing run of `.partial`
/// files (decoded from the first of the run). None for an archive without segment files.
pub fn newest_end(store: &dyn Store, catalog: &Catalog) -> Result<Option<(TimeLineId, Lsn)>, StoreError> {
    let seg = catalog.segment_size();
    let Some(tli) = catalog.segments().iter().map(|s| s.id.timeline).max() else { return Ok(None) };
    let run = catalog.trailing_partials(tli);
    let Some(first) = run.first() else {
        let last = catalog.segments().iter().rfind(|s| s.id.timeline == tli).expect("tli has segments");
        return Ok(last.id.end_lsn(seg).map(|end| (tli, end)));
    };
    let Some(start) = first.id.start_lsn(seg) else { return Ok(None) };
    let Some(mut d) = decoder_for(store, first, tli, seg, start)? else { return Ok(Some((tli, start))) };
    decode(store, &run, &mut d, &mut |_| {})?;
    Ok(Some((tli, d.validated_up_to())))
}

/// The history of `tli` as the archive's history file says (None when it has none or it does not parse).
pub fn history(store: &dyn Store, catalog: &Catalog, tli: TimeLineId) -> Option<Vec<HistoryEntry>> {
    let entry = catalog.histories().get(&tli)?;
    let text = store.read_all(&entry.name).ok()?;
    parse_history_of(tli, &String::from_utf8_lossy(&text)).ok()
}

/// Summarise the WAL of `timeline` from `fork.at` on, as the archive holds it: its files from the one holding
/// the fork point, consecutive segments, read until valid WAL ends. None when no record lies past the fork.
pub fn summarize(
    store: &dyn Store,
    catalog: &Catalog,
    timeline: TimeLineId,
    fork: ForkPoint,
) -> Result<Option<TailReport>, StoreError> {
    let seg = catalog.segment_size();
    let first_number = fork.at.segment_number(seg);
    // One file per segment (the catalog lists the complete one first), consecutive from the first one.
    let mut files: Vec<&SegFile> = Vec::new();
    for f in catalog.segments().iter().filter(|s| s.id.timeline == timeline && s.id.number >= first_number) {
        match files.last() {
            Some(prev) if prev.id.number == f.id.number => continue,
            Some(prev) if prev.id.number.checked_add(1) != Some(f.id.number) => break,
            _ => files.push(f),
        }
    }
    let Some(first) = files.first() else { return Ok(None) };
    let Some(start) = first.id.start_lsn(seg) else { return Ok(None) };
    let Some(mut d) = decoder_for(store, first, timeline, seg, start)? else { return Ok(None) };
    let mut summary = TailSummary::new(fork.at);
    decode(store, &files, &mut d, &mut |r| summary.observe(r))?;
    let holding: Vec<String> = files
        .iter()
        .filter(|f| f.id.start_lsn(seg).is_some_and(|s| s < summary.to))
        .map(|f| f.file.clone())
        .collect();
    Ok(TailReport::new(timeline, fork.child, &summary, holding))
}

/// Every diverged tail of the archive (from its history files; see [`fork_points`]), oldest timeline first.
pub fn diverged_tails(store: &dyn Store, catalog: &Catalog) -> Result<Vec<TailReport>, StoreError> {
    let histories: Vec<(TimeLineId, Vec<HistoryEntry>)> =
        catalog.histories().keys().filter_map(|&tli| Some((tli, history(store, catalog, tli)?))).collect();
    let points = fork_points(histories.iter().map(|(tli, h)| (*tli, h.as_slice())));
    let mut out = Vec::new();
    for (tli, fork) in points {
        if let Some(report) = summarize(store, catalog, tli, fork)? {
            out.push(report);
        }
    }
    Ok(out)
}

/// A decoder at `start` (the start of `first`'s segment) for WAL of the system and major `first`'s long page
/// header names; None when it has none (a `.partial` nothing was written to).
fn decoder_for(
    store: &dyn Store,
    first: &SegFile,
    timeline: TimeLineId,
    segment_size: u32,
    start: Lsn,
) -> Result<Option<WalDecoder>, StoreError> {
    let Ok(header) = contents::read_header(store, &first.file, first.compression, first.partial)? else {
        return Ok(None);
    };
    let cfg =
        DecoderConfig { segment_size, page_magic: header.magic, system_id: Some(header.system_id), timeline };
    Ok(Some(WalDecoder::new(cfg, start)))
}

/// Feed `files` (consecutive segments, the first at the decoder's position) to `d`. Stops quietly where the
/// WAL stops being valid; only a file that cannot be read is an error.
fn decode(
    store: &dyn Store,
    files: &[&SegFile],
    d: &mut WalDecoder,
    on_record: &mut dyn FnMut(&RecordInfo),
) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    for f in files {
        let mut reader = contents::open(store, &f.file, f.compression)?;
        let mut feed = Feed::new(f.partial);
        buf.resize(CHUNK, 0);
        loop {
            let (n, err) = contents::fill(&mut reader, &mut buf);
            if n > 0 && feed.push(d, &buf[..n], &mut |r: &RecordInfo| on_record(r)).is_err() {
                return Ok(());
            }
            match err {
                Some(e) if contents::is_open_end(f.partial, f.compression, &e) => break,
                Some(e) => return Err(contents::read_error(store, &f.file, f.compression, e)),
                None if n < buf.len() => break,
                None => {}
            }
        }
        if f.partial {
            feed.finish_with(d, &mut |r: &RecordInfo| on_record(r));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "fork_tests.rs"]
mod tests;
