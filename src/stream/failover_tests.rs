use super::*;
use proptest::prelude::*;

const SEG: u32 = 16 << 20; // segment N starts at 0/N000000
const SYSID: u64 = 7_300_000_000_000_000_001;

fn lsn(s: &str) -> Lsn {
    s.parse().unwrap()
}

fn hist(entries: &[(TimeLineId, &str)]) -> Vec<HistoryEntry> {
    entries.iter().map(|&(timeline, end)| HistoryEntry { timeline, end: lsn(end) }).collect()
}

/// Segments `numbers` of timeline `tli`, the last one `.partial` when `partial_last`.
fn files(tli: TimeLineId, numbers: std::ops::RangeInclusive<u64>, partial_last: bool) -> Vec<HeldSegment> {
    let last = *numbers.end();
    numbers
        .map(|number| {
            let id = SegmentId { timeline: tli, number };
            let suffix = if partial_last && number == last { ".partial" } else { "" };
            HeldSegment { id, name: format!("{}{suffix}", id.file_name(SEG)) }
        })
        .collect()
}

fn archive(tli: TimeLineId, end: &str, history: Option<Vec<HistoryEntry>>) -> ArchiveState {
    // Files up to the one holding the end (complete before it, `.partial` if the end is inside it).
    let end = lsn(end);
    let last = Lsn(end.0 - 1).segment_number(SEG);
    let first = history.as_ref().and_then(|h| h.last()).map_or(1, |e| e.end.segment_number(SEG));
    let segments = files(tli, first..=last, end.segment_offset(SEG) != 0);
    ArchiveState {
        system_id: SYSID,
        segment_size: SEG,
        newest: Position { timeline: tli, lsn: end },
        history,
        segments,
    }
}

fn server(tli: TimeLineId, history: Vec<HistoryEntry>, flushed: &str) -> ServerState {
    ServerState { system_id: SYSID, timeline: tli, history, flushed: lsn(flushed) }
}

fn start(tli: TimeLineId, at: &str) -> Start {
    Start { timeline: tli, lsn: lsn(at), tail: None }
}

fn name(tli: TimeLineId, number: u64, partial: bool) -> String {
    let n = SegmentId { timeline: tli, number }.file_name(SEG);
    if partial {
        n + ".partial"
    } else {
        n
    }
}

#[test]
fn same_timeline_resumes_at_the_segment_holding_the_end() {
    // Timeline 1 servers have no history file.
    let s = server(1, vec![], "0/9000000");
    assert_eq!(reconcile(&archive(1, "0/5000000", None), &s), Ok(start(1, "0/5000000")));
    assert_eq!(reconcile(&archive(1, "0/5123458", None), &s), Ok(start(1, "0/5000000")));
    assert_eq!(reconcile(&archive(1, "0/5123458", Some(vec![])), &s), Ok(start(1, "0/5000000")));
    // A later timeline, no failover since.
    let s = server(2, hist(&[(1, "0/3000158")]), "0/9000000");
    let a = archive(2, "0/7654320", Some(hist(&[(1, "0/3000158")])));
    assert_eq!(reconcile(&a, &s), Ok(start(2, "0/7000000")));
}

#[test]
fn a_server_behind_the_archive_on_its_timeline_is_refused() {
    let a = archive(1, "0/5123458", None);
    let at_end = server(1, vec![], "0/5123458");
    assert_eq!(reconcile(&a, &at_end), Ok(start(1, "0/5000000")));
    let behind = server(1, vec![], "0/5123450");
    let err = reconcile(&a, &behind).unwrap_err();
    assert_eq!(err, Refusal::Behind { timeline: 1, flushed: lsn("0/5123450"), needed: lsn("0/5123458") });
    assert_eq!(
        err.to_string(),
        "it has flushed WAL only to 0/05123450 on timeline 1; the archive holds WAL to 0/05123458"
    );
}

#[test]
fn another_system_or_an_older_timeline_is_refused() {
    let a = archive(2, "0/5000000", Some(hist(&[(1, "0/3000158")])));
    let mut s = server(2, hist(&[(1, "0/3000158")]), "0/9000000");
    s.system_id ^= 1;
    let err = reconcile(&a, &s).unwrap_err();
    assert!(matches!(err, Refusal::SystemId { .. }));
    assert!(err.to_string().starts_with("other database system: system identifier "), "{err}");
    // The old primary, restarted without a rewind: read-write on timeline 1.
    let old_primary = server(1, vec![], "0/9000000");
    let err = reconcile(&a, &old_primary).unwrap_err();
    assert_eq!(err, Refusal::OlderTimeline { archive: 2, server: 1 });
    assert_eq!(err.to_string(), "timeline 1 is older than the archive's newest timeline 2");
}

/// Timeline 1 → 2 at 0/5000158 (in segment 5); the server is on 2.
fn promoted() -> ServerState {
    server(2, hist(&[(1, "0/5000158")]), "0/9000000")
}

#[test]
fn archive_behind_the_fork_segment_follows_the_old_timeline() {
    let s = promoted();
    assert_eq!(reconcile(&archive(1, "0/4800000", None), &s), Ok(start(1, "0/4000000")));
    assert_eq!(reconcile(&archive(1, "0/2000000", None), &s), Ok(start(1, "0/2000000")));
}

#[test]
fn archive_reaching_the_fork_segment_starts_the_new_timeline_there() {
    let s = promoted();
    // Complete up to the fork's segment.
    assert_eq!(reconcile(&archive(1, "0/5000000", None), &s), Ok(start(2, "0/5000000")));
    // Inside the fork's segment, before the fork.
    assert_eq!(reconcile(&archive(1, "0/5000100", None), &s), Ok(start(2, "0/5000000")));
    // Exactly at the fork.
    assert_eq!(reconcile(&archive(1, "0/5000158", None), &s), Ok(start(2, "0/5000000")));
}

#[test]
fn archive_past_the_fork_inside_its_segment_keeps_the_tail() {
    let got = reconcile(&archive(1, "0/5800000", None), &promoted()).unwrap();
    assert_eq!((got.timeline, got.lsn), (2, lsn("0/5000000")));
    assert_eq!(
        got.tail,
        Some(DivergedTail {
            timeline: 1,
            from: lsn("0/5000158"),
            to: lsn("0/5800000"),
            files: vec![name(1, 5, true)],
        })
    );
}

#[test]
fn archive_segments_past_the_fork_are_the_tail() {
    // Complete segments 1..=7 and 8.partial on timeline 1; the server forked in segment 5.
    let got = reconcile(&archive(1, "0/8400000", None), &promoted()).unwrap();
    assert_eq!((got.timeline, got.lsn), (2, lsn("0/5000000")));
    let tail = got.tail.unwrap();
    assert_eq!((tail.timeline, tail.from, tail.to), (1, lsn("0/5000158"), lsn("0/8400000")));
    assert_eq!(tail.files, vec![name(1, 5, false), name(1, 6, false), name(1, 7, false), name(1, 8, true)]);
    // Ending at a segment boundary: the last segment holding tail bytes is the one before (not the next
    // one's `.partial`, created but still empty).
    let mut a = archive(1, "0/8000000", None);
    a.segments.extend(files(1, 8..=8, true));
    let tail = reconcile(&a, &promoted()).unwrap().tail.unwrap();
    assert_eq!(tail.files.last(), Some(&name(1, 7, false)));
}

#[test]
fn fork_at_a_segment_boundary() {
    let s = server(2, hist(&[(1, "0/5000000")]), "0/9000000");
    assert_eq!(reconcile(&archive(1, "0/4FFFFF8", None), &s), Ok(start(1, "0/4000000")));
    assert_eq!(reconcile(&archive(1, "0/5000000", None), &s), Ok(start(2, "0/5000000")));
    let got = reconcile(&archive(1, "0/5000028", None), &s).unwrap();
    assert_eq!((got.timeline, got.lsn), (2, lsn("0/5000000")));
    assert_eq!(got.tail.unwrap().files, vec![name(1, 5, true)]);
}

/// 1 → 2 at 0/3000158, 2 → 3 at 0/6000200; the server is on 3.
fn twice_promoted() -> ServerState {
    server(3, hist(&[(1, "0/3000158"), (2, "0/6000200")]), "0/9000000")
}

#[test]
fn two_switches_in_a_row() {
    let s = twice_promoted();
    // Archive on 1, behind the first fork: streams 1, then 2, then 3.
    assert_eq!(reconcile(&archive(1, "0/2800000", None), &s), Ok(start(1, "0/2000000")));
    // Archive on 1, past the first fork: timeline 2 from the first fork's segment, the tail on 1 kept.
    let got = reconcile(&archive(1, "0/4100000", None), &s).unwrap();
    assert_eq!((got.timeline, got.lsn), (2, lsn("0/3000000")));
    let tail = got.tail.unwrap();
    assert_eq!((tail.timeline, tail.from, tail.to), (1, lsn("0/3000158"), lsn("0/4100000")));
    assert_eq!(tail.files, vec![name(1, 3, false), name(1, 4, true)]);
    // Archive on 1 far past both forks: still timeline 2 from the first fork's segment.
    let got = reconcile(&archive(1, "0/8000000", None), &s).unwrap();
    assert_eq!((got.timeline, got.lsn), (2, lsn("0/3000000")));
    // Archive on 2, behind the second fork, then past it.
    let h2 = Some(hist(&[(1, "0/3000158")]));
    assert_eq!(reconcile(&archive(2, "0/4100000", h2.clone()), &s), Ok(start(2, "0/4000000")));
    let got = reconcile(&archive(2, "0/6100000", h2.clone()), &s).unwrap();
    assert_eq!((got.timeline, got.lsn), (3, lsn("0/6000000")));
    assert_eq!(got.tail.unwrap().files, vec![name(2, 6, true)]);
    // Without its history file, the archive's timeline 2 is taken on the server's word.
    let mut a = archive(2, "0/4100000", None);
    a.segments = files(2, 3..=4, true);
    assert_eq!(reconcile(&a, &s), Ok(start(2, "0/4000000")));
}

#[test]
fn a_server_whose_history_does_not_contain_the_archive_is_refused() {
    // Timeline 3 forked from timeline 1: the archive followed a timeline 2 that 3 does not descend from.
    let s = server(3, hist(&[(1, "0/3000158")]), "0/9000000");
    let a = archive(2, "0/4100000", Some(hist(&[(1, "0/3000158")])));
    let err = reconcile(&a, &s).unwrap_err();
    assert_eq!(err, Refusal::NotInHistory { archive: 2, server: 3, lsn: lsn("0/4100000") });
    assert_eq!(
        err.to_string(),
        "the history of timeline 3 does not lead through timeline 2, where the archive ends at 0/04100000"
    );
    // Another timeline 2, forked from 1 elsewhere (another standby promoted on its own).
    let s = server(2, hist(&[(1, "0/3000100")]), "0/9000000");
    let err = reconcile(&a, &s).unwrap_err();
    assert_eq!(
        err,
        Refusal::HistoryDiffers {
            archive: 2,
            archive_entry: Some(HistoryEntry { timeline: 1, end: lsn("0/3000158") }),
            server_entry: Some(HistoryEntry { timeline: 1, end: lsn("0/3000100") }),
        }
    );
    assert_eq!(
        err.to_string(),
        "its history differs from the archive's: timeline 1 ends at 0/03000100, \
         the archive's history of timeline 2 says timeline 1 ends at 0/03000158"
    );
    // A history that lists more switches before the archive's timeline than the server's does.
    let a3 = archive(3, "0/7000000", Some(hist(&[(1, "0/3000158"), (2, "0/6000200")])));
    let s = server(3, hist(&[(1, "0/3000158")]), "0/9000000");
    assert!(matches!(
        reconcile(&a3, &s),
        Err(Refusal::HistoryDiffers { archive_entry: Some(_), server_entry: None, .. })
    ));
    // Without a history file, segments of the archive's timeline before that timeline begins on the
    // server give the other branch away.
    let mut a = archive(2, "0/4100000", None);
    a.segments = files(2, 2..=4, true);
    let err = reconcile(&a, &twice_promoted()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the archive holds {} on timeline 2, before the server's timeline 2 begins at 0/03000158",
            name(2, 2, false)
        )
    );
}

#[test]
fn a_malformed_server_history_is_refused() {
    let a = archive(1, "0/4000000", None);
    for (h, reason) in [
        (hist(&[(3, "0/3000000")]), "it lists timeline 3 as an ancestor"),
        (hist(&[(1, "0/3000000"), (1, "0/4000000")]), "timeline 1 follows timeline 1"),
        (
            hist(&[(1, "0/3000000"), (2, "0/2000000")]),
            "timeline 2 ends at 0/02000000 before it begins at 0/03000000",
        ),
    ] {
        let err = reconcile(&a, &server(3, h, "0/9000000")).unwrap_err();
        assert_eq!(err, Refusal::BadHistory { timeline: 3, reason: reason.to_string() });
    }
}

// ---------------------------------------------------------------------------------------------------------
// Properties over generated histories and archives
// ---------------------------------------------------------------------------------------------------------

const PSEG: u32 = 1 << 20;

#[derive(Debug, Clone)]
struct Case {
    archive: ArchiveState,
    server: ServerState,
}

/// A server path (ancestors chosen among the lower timelines, non-decreasing switch points), and an
/// archive on one of its timelines or another one, mostly consistent with it.
fn case() -> impl Strategy<Value = Case> {
    (
        1u32..=5,
        proptest::collection::vec((any::<bool>(), 0u64..(24 << 20)), 5),
        (0u32..8, 0u8..3),
        (0u64..(32 << 20), -(2i64 << 20)..(2i64 << 20)),
        (0u8..10, 0u8..10, 0u8..10, 0u8..10),
        0u64..(40 << 20),
    )
        .prop_map(
            |(
                stli,
                picks,
                (atli, near),
                (a_off, delta),
                (hist_mode, seg_mode, sys_mode, flush_mode),
                flush,
            )| {
                // Mostly a timeline the server has (or had), sometimes a later one.
                let atli = if atli < 6 { 1 + atli % stli } else { stli + atli - 5 };
                let mut points: Vec<u64> = picks.iter().map(|p| p.1 & !7).collect();
                points.sort_unstable();
                let history: Vec<HistoryEntry> = (1..stli)
                    .filter(|&t| picks[t as usize - 1].0 || t == 1)
                    .map(|t| HistoryEntry { timeline: t, end: Lsn(points[t as usize - 1]) })
                    .collect();
                let mut begins = Lsn(0);
                let mut at_history = None;
                for (i, e) in history.iter().enumerate() {
                    if e.timeline == atli {
                        at_history = Some(history[..i].to_vec());
                        break;
                    }
                    begins = e.end;
                }
                if atli == stli {
                    at_history = Some(history.clone());
                }
                // The archive's end lies on its timeline, past where that timeline begins: anywhere, or near
                // where the server leaves that timeline (often in the same segment).
                let fork = history.iter().find(|e| e.timeline == atli).map(|e| e.end.0);
                let end = match fork {
                    Some(f) if near > 0 => {
                        Lsn(f.saturating_add_signed(delta >> (near * 4)).max(begins.0 + 1))
                    }
                    _ => Lsn(begins.0 + a_off.max(1)),
                };
                let archive_history = match (hist_mode, &at_history) {
                    (0..=3, Some(h)) => Some(h.clone()),
                    (4, Some(h)) if !h.is_empty() => {
                        let mut h = h.clone();
                        h[0].end = Lsn(h[0].end.0 + 8);
                        Some(h)
                    }
                    _ => None,
                };
                let first = if seg_mode == 0 {
                    begins.segment_number(PSEG).saturating_sub(1)
                } else {
                    begins.segment_number(PSEG)
                };
                let last = Lsn(end.0 - 1).segment_number(PSEG);
                let segments = (first..=last.max(first))
                    .map(|number| {
                        let id = SegmentId { timeline: atli, number };
                        HeldSegment { id, name: id.file_name(PSEG) }
                    })
                    .collect();
                let flushed = if flush_mode < 8 { Lsn(end.0.max(points[4]) + flush) } else { Lsn(flush) };
                Case {
                    archive: ArchiveState {
                        system_id: SYSID,
                        segment_size: PSEG,
                        newest: Position { timeline: atli, lsn: end },
                        history: archive_history,
                        segments,
                    },
                    server: ServerState {
                        system_id: if sys_mode == 0 { SYSID + 1 } else { SYSID },
                        timeline: stli,
                        history,
                        flushed,
                    },
                }
            },
        )
}

/// The server's timelines as (timeline, begins, ends), written independently of `server_path`.
fn path_of(s: &ServerState) -> Vec<(TimeLineId, u64, Option<u64>)> {
    let mut out = Vec::new();
    let mut begins = 0;
    for e in &s.history {
        out.push((e.timeline, begins, Some(e.end.0)));
        begins = e.end.0;
    }
    out.push((s.timeline, begins, None));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decisions_never_leave_a_gap_nor_write_into_the_tail(c in case()) {
        let (a, s) = (&c.archive, &c.server);
        let seg = u64::from(PSEG);
        let path = path_of(s);
        let newest = a.newest;
        let at = path.iter().position(|p| p.0 == newest.timeline);
        let expected_prefix = at.map(|i| s.history[..i].to_vec());
        let begins = at.map(|i| path[i].1);
        let early_file = begins.is_some_and(|b| {
            a.segments.iter().any(|f| f.id.timeline == newest.timeline && f.id.number < b / seg)
        });
        let fork = at.and_then(|i| path[i].2);
        let behind = match fork {
            None => s.flushed < newest.lsn,
            Some(f) => newest.lsn.0 / seg >= f / seg && path[at.unwrap() + 1].2.is_none() && s.flushed.0 < f / seg * seg,
        };
        let should_refuse = a.system_id != s.system_id
            || s.timeline < newest.timeline
            || at.is_none()
            || a.history.as_ref().is_some_and(|h| Some(h) != expected_prefix.as_ref())
            || early_file
            || behind;
        match reconcile(a, s) {
            Err(_) => prop_assert!(should_refuse, "refused a consistent server"),
            Ok(start) => {
                prop_assert!(!should_refuse, "accepted {:?}", start);
                let at = at.unwrap();
                let l = start.lsn.0;
                prop_assert_eq!(l % seg, 0, "START_REPLICATION at a segment start");
                // No gap: never after the archive's end, nor after where the server leaves its timeline.
                prop_assert!(l <= newest.lsn.0);
                if let Some(f) = fork {
                    prop_assert!(l <= f);
                }
                // The server can serve it: a timeline of its path at or after the archive's, whose file of
                // that segment exists there, and not past its end (or the server's flush position).
                let k = path.iter().position(|p| p.0 == start.timeline).expect("timeline on the path");
                prop_assert!(k == at || k == at + 1);
                prop_assert!(l >= path[k].1 / seg * seg);
                match path[k].2 {
                    Some(end) => prop_assert!(l <= end),
                    None => prop_assert!(l <= s.flushed.0),
                }
                // Old-timeline bytes past the fork: a tail, never written — the stream then starts on a later
                // timeline; a stream on the archive's timeline writes only files before the archive's end.
                let past_fork = fork.is_some_and(|f| newest.lsn.0 > f);
                prop_assert_eq!(start.tail.is_some(), past_fork);
                if let Some(f) = fork.filter(|_| past_fork) {
                    prop_assert!(start.timeline != newest.timeline);
                    let tail = start.tail.clone().unwrap();
                    prop_assert_eq!((tail.timeline, tail.from.0, tail.to), (newest.timeline, f, newest.lsn));
                    let want: Vec<String> = a.segments.iter()
                        .filter(|x| x.id.timeline == newest.timeline && (f / seg..=(newest.lsn.0 - 1) / seg).contains(&x.id.number))
                        .map(|x| x.name.clone())
                        .collect();
                    prop_assert_eq!(tail.files, want);
                }
                if start.timeline == newest.timeline {
                    prop_assert!(fork.is_none_or(|f| newest.lsn.0 <= f && l < f / seg * seg));
                } else {
                    prop_assert_eq!(Some(l), fork.map(|f| f / seg * seg), "the new timeline starts at the fork's segment");
                }
            }
        }
    }
}
