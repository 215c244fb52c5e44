//! Failover reconciliation (#12): before START_REPLICATION, compare what the archive holds with what a
//! candidate server says — its system identifier, timeline and timeline history — and either refuse the
//! server, saying why, or say where to start streaming and which old-timeline WAL past the server's fork
//! point the archive holds. Pure: no I/O; the caller reads the archive's catalog and asks the server.
//!
//! The rules (invariant 7 of the design: WAL on an old timeline past the fork point is kept, never
//! overwritten, and reported):
//! - A server of another system, on a timeline older than the archive's newest, or whose history does not
//!   lead through the archive's timeline with the same switch points, is refused: streaming from it would
//!   mix two histories (an old primary restarted without a rewind is read-write on the old timeline).
//! - On the archive's own timeline, streaming resumes at the segment holding the archive's end; a server
//!   that has not flushed that far is refused (a lagging standby: try again; a primary that lost WAL: what
//!   it writes next would replace the archive's).
//! - When the server's history leaves the archive's timeline at a fork point F: if the archive ends before
//!   F's segment, streaming resumes on the archive's timeline and follows the server's history (the server
//!   ends that timeline at F, and the session moves on to the next one at F's segment, as pg_receivewal
//!   does). Once the archive reaches F's segment, streaming starts on the next timeline at the start of F's
//!   segment — PostgreSQL copies the old timeline's bytes before F into the new timeline's file of that
//!   segment, so nothing is skipped — and the old timeline's files from F's segment on are never written
//!   again: new-timeline bytes go only to new-timeline names. Old-timeline WAL past F is the diverged tail:
//!   transactions the old primary wrote that the new one never had, kept as is and reported.

use crate::wal::segment::{SegmentId, TimeLineId};
use crate::wal::timeline::HistoryEntry;
use crate::wal::Lsn;

/// A position in the WAL on a timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub timeline: TimeLineId,
    pub lsn: Lsn,
}

/// One segment file in the archive (complete or `.partial`, any compression).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldSegment {
    pub id: SegmentId,
    /// The file's name in the archive, for reports.
    pub name: String,
}

/// What the archive holds, as its catalog sees it. Only non-empty archives are reconciled: an empty one
/// starts where the server or the slot says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveState {
    /// From the long page headers of the archive's segments.
    pub system_id: u64,
    pub segment_size: u32,
    /// The newest timeline that has segments, and the end of the valid WAL the archive holds on it
    /// (exclusive): the end of the last complete segment of its run, or, in a `.partial`, where the decoder
    /// finds valid WAL ends. It must be exact: it decides whether old-timeline WAL lies past a fork point,
    /// and an end beyond what a server on the same timeline has flushed refuses that server.
    pub newest: Position,
    /// The history of `newest.timeline` as the archive holds it (its `.history` file), oldest first; `None`
    /// when there is none (timeline 1 never has one). When present, the server's history must agree with
    /// every entry.
    pub history: Option<Vec<HistoryEntry>>,
    /// Every segment file in the archive.
    pub segments: Vec<HeldSegment>,
}

/// What a candidate server says: IDENTIFY_SYSTEM and TIMELINE_HISTORY of its timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub system_id: u64,
    pub timeline: TimeLineId,
    /// The parsed history file of `timeline`, oldest first; empty for timeline 1.
    pub history: Vec<HistoryEntry>,
    /// IDENTIFY_SYSTEM's `xlogpos`: how far the server has flushed WAL on `timeline`.
    pub flushed: Lsn,
}

/// Where to start streaming from a server that qualifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// START_REPLICATION's timeline and position (a segment start).
    pub timeline: TimeLineId,
    pub lsn: Lsn,
    /// Old-timeline WAL in the archive past the server's fork point, if any: keep it, report it.
    pub tail: Option<DivergedTail>,
}

/// WAL on the archive's newest timeline past the point where the server's history leaves that timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DivergedTail {
    pub timeline: TimeLineId,
    /// The fork point: where the server's history switches to the next timeline.
    pub from: Lsn,
    /// The end of the archive's WAL on `timeline`.
    pub to: Lsn,
    /// The archive's files of `timeline` that hold bytes of `from..to`, in order.
    pub files: Vec<String>,
}

/// Why a server cannot be streamed from. Messages are one line; the caller names the server.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("other database system: system identifier {server}, the archive's is {archive}")]
    SystemId { archive: u64, server: u64 },
    #[error("timeline {server} is older than the archive's newest timeline {archive}")]
    OlderTimeline { archive: TimeLineId, server: TimeLineId },
    #[error(
        "the history of timeline {server} does not lead through timeline {archive}, where the archive ends at {lsn}"
    )]
    NotInHistory { archive: TimeLineId, server: TimeLineId, lsn: Lsn },
    #[error(
        "its history differs from the archive's: {}, the archive's history of timeline {archive} says {}",
        describe(*.server_entry), describe(*.archive_entry)
    )]
    HistoryDiffers {
        archive: TimeLineId,
        archive_entry: Option<HistoryEntry>,
        server_entry: Option<HistoryEntry>,
    },
    #[error("the archive holds {file} on timeline {timeline}, before the server's timeline {timeline} begins at {begins}")]
    SegmentBeforeTimeline { timeline: TimeLineId, file: String, begins: Lsn },
    #[error(
        "it has flushed WAL only to {flushed} on timeline {timeline}; the archive holds WAL to {needed}"
    )]
    Behind { timeline: TimeLineId, flushed: Lsn, needed: Lsn },
    #[error("its history of timeline {timeline} is malformed: {reason}")]
    BadHistory { timeline: TimeLineId, reason: String },
}

fn describe(e: Option<HistoryEntry>) -> String {
    match e {
        Some(e) => format!("timeline {} ends at {}", e.timeline, e.end),
        None => "no further switch".to_string(),
    }
}

/// One timeline of the server's history: where it begins and, unless it is the server's current one,
/// where it ends (the next one's switch point).
#[derive(Clone, Copy, Debug)]
struct Step {
    timeline: TimeLineId,
    begins: Lsn,
    ends: Option<Lsn>,
}

/// The server's timelines from the oldest to its current one.
fn server_path(server: &ServerState) -> Result<Vec<Step>, Refusal> {
    let bad = |reason: String| Refusal::BadHistory { timeline: server.timeline, reason };
    let mut path = Vec::with_capacity(server.history.len() + 1);
    let mut begins = Lsn(0);
    for e in &server.history {
        if let Some(prev) = path.last().map(|s: &Step| s.timeline) {
            if e.timeline <= prev {
                return Err(bad(format!("timeline {} follows timeline {prev}", e.timeline)));
            }
        }
        if e.timeline >= server.timeline {
            return Err(bad(format!("it lists timeline {} as an ancestor", e.timeline)));
        }
        if e.end < begins {
            return Err(bad(format!(
                "timeline {} ends at {} before it begins at {begins}",
                e.timeline, e.end
            )));
        }
        path.push(Step { timeline: e.timeline, begins, ends: Some(e.end) });
        begins = e.end;
    }
    path.push(Step { timeline: server.timeline, begins, ends: None });
    Ok(path)
}

/// Decide whether and where to stream from `server`, given what `archive` holds. See the module
/// documentation for the rules.
pub fn reconcile(archive: &ArchiveState, server: &ServerState) -> Result<Start, Refusal> {
    if archive.system_id != server.system_id {
        return Err(Refusal::SystemId { archive: archive.system_id, server: server.system_id });
    }
    let newest = archive.newest;
    if server.timeline < newest.timeline {
        return Err(Refusal::OlderTimeline { archive: newest.timeline, server: server.timeline });
    }
    let path = server_path(server)?;
    let not_in_history =
        || Refusal::NotInHistory { archive: newest.timeline, server: server.timeline, lsn: newest.lsn };
    let at = path.iter().position(|s| s.timeline == newest.timeline).ok_or_else(not_in_history)?;
    let step = path[at];
    if let Some(history) = &archive.history {
        // The switch points that led to the archive's timeline must be the server's too.
        let expected = &server.history[..at];
        if let Some(i) = (0..history.len().max(at)).find(|&i| history.get(i) != expected.get(i)) {
            return Err(Refusal::HistoryDiffers {
                archive: newest.timeline,
                archive_entry: history.get(i).copied(),
                server_entry: expected.get(i).copied(),
            });
        }
    }
    let seg = archive.segment_size;
    let on_timeline = || archive.segments.iter().filter(|s| s.id.timeline == newest.timeline);
    // PostgreSQL creates a timeline's first file at the segment of its switch point, never earlier.
    let first_number = step.begins.segment_number(seg);
    if let Some(early) = on_timeline().filter(|s| s.id.number < first_number).min_by_key(|s| s.id.number) {
        return Err(Refusal::SegmentBeforeTimeline {
            timeline: newest.timeline,
            file: early.name.clone(),
            begins: step.begins,
        });
    }
    let resume = newest.lsn.segment_start(seg);
    let Some(fork) = step.ends else {
        // The archive is on the server's timeline: no failover in between.
        if server.flushed < newest.lsn {
            return Err(Refusal::Behind {
                timeline: server.timeline,
                flushed: server.flushed,
                needed: newest.lsn,
            });
        }
        return Ok(Start { timeline: server.timeline, lsn: resume, tail: None });
    };
    let fork_segment = fork.segment_start(seg);
    if resume < fork_segment {
        // Behind the fork's segment: the server streams the archive's timeline up to the fork.
        return Ok(Start { timeline: newest.timeline, lsn: resume, tail: None });
    }
    let next = path[at + 1];
    if next.ends.is_none() && server.flushed < fork_segment {
        return Err(Refusal::Behind {
            timeline: next.timeline,
            flushed: server.flushed,
            needed: fork_segment,
        });
    }
    let tail = (newest.lsn > fork).then(|| {
        let (first, last) = (fork.segment_number(seg), Lsn(newest.lsn.0 - 1).segment_number(seg));
        let mut held: Vec<&HeldSegment> =
            on_timeline().filter(|s| (first..=last).contains(&s.id.number)).collect();
        held.sort_by(|a, b| (a.id.number, &a.name).cmp(&(b.id.number, &b.name)));
        DivergedTail {
            timeline: newest.timeline,
            from: fork,
            to: newest.lsn,
            files: held.into_iter().map(|s| s.name.clone()).collect(),
        }
    });
    Ok(Start { timeline: next.timeline, lsn: fork_segment, tail })
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
