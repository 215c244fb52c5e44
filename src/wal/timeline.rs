//! Timeline history files (`TTTTTTTT.history`): parsing, and finding which timeline owns an LSN.
//!
//! Each line is `parentTLI<TAB>switchpoint<TAB>reason`; `#` comments and blank lines are ignored,
//! exactly as `readTimeLineHistory` does.

use crate::wal::segment::TimeLineId;
use crate::wal::Lsn;

/// One line of a history file: timeline `timeline` ended at `end` (exclusive) and its child began there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub timeline: TimeLineId,
    pub end: Lsn,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("line {line}: timeline {timeline} is not greater than the previous one")]
    NotIncreasing { line: usize, timeline: TimeLineId },
    #[error("line {line}: switch point {lsn} goes back before the previous one")]
    SwitchPointBackwards { line: usize, lsn: Lsn },
    /// The history file of `of` names a timeline that is not older than `of` as an ancestor.
    #[error(
        "timeline {timeline} (switch point {lsn}) cannot be an ancestor of timeline {of}: expected a timeline from 1 to {}",
        of.saturating_sub(1)
    )]
    NotAnAncestor { timeline: TimeLineId, lsn: Lsn, of: TimeLineId },
    /// The history file of a timeline above 1 names no parent.
    #[error("the history of timeline {0} lists no parent timeline")]
    NoParent(TimeLineId),
}

impl HistoryError {
    /// The switch point the error is about, if any.
    pub fn lsn(&self) -> Option<Lsn> {
        match self {
            HistoryError::SwitchPointBackwards { lsn, .. } | HistoryError::NotAnAncestor { lsn, .. } => {
                Some(*lsn)
            }
            _ => None,
        }
    }
}

/// Parse the contents of a history file. Entries come back in file order (oldest timeline first).
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut fields = trimmed.split(['\t', ' ']).filter(|f| !f.is_empty());
        let syntax = |reason: &str| HistoryError::Syntax { line, reason: reason.to_string() };
        let tli_text = fields.next().ok_or_else(|| syntax("missing timeline"))?;
        let timeline: TimeLineId =
            tli_text.parse().map_err(|_| syntax("timeline is not a decimal number"))?;
        let lsn_text = fields.next().ok_or_else(|| syntax("missing switch point"))?;
        let end: Lsn = lsn_text.parse().map_err(|_| syntax("switch point is not an LSN"))?;
        if let Some(prev) = entries.last() {
            if timeline <= prev.timeline {
                return Err(HistoryError::NotIncreasing { line, timeline });
            }
            if end < prev.end {
                return Err(HistoryError::SwitchPointBackwards { line, lsn: end });
            }
        }
        entries.push(HistoryEntry { timeline, end });
    }
    Ok(entries)
}

/// Parse the history file of `timeline` (`TTTTTTTT.history`) and check it can be that timeline's: every entry
/// names an older timeline, and a timeline above 1 has a parent. A file naming a later (or the same)
/// timeline as its ancestor would send recovery down a history that cannot exist.
pub fn parse_history_of(timeline: TimeLineId, text: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    let entries = parse_history(text)?;
    if let Some(e) = entries.iter().find(|e| e.timeline == 0 || e.timeline >= timeline) {
        return Err(HistoryError::NotAnAncestor { timeline: e.timeline, lsn: e.end, of: timeline });
    }
    if timeline > 1 && entries.is_empty() {
        return Err(HistoryError::NoParent(timeline));
    }
    Ok(entries)
}

/// The timeline that `lsn` belongs to, given the history of `current` (the newest timeline).
pub fn timeline_of(history: &[HistoryEntry], current: TimeLineId, lsn: Lsn) -> TimeLineId {
    history.iter().find(|e| lsn < e.end).map(|e| e.timeline).unwrap_or(current)
}

/// Where timeline `tli` begins, given the history file of a later (or the same) timeline:
/// `Lsn(0)` for the first timeline, `None` when `tli` is not on that history's path.
pub fn timeline_start(history: &[HistoryEntry], tli: TimeLineId) -> Option<Lsn> {
    let mut start = Lsn(0);
    for e in history {
        if e.timeline == tli {
            return Some(start);
        }
        if e.timeline > tli {
            return None;
        }
        start = e.end;
    }
    Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str =
        "1\t0/3000158\tno recovery target specified\n\n# comment\n2\t0/5000000\tbefore 2026-01-01\n";

    #[test]
    fn parses_real_format() {
        let h = parse_history(SAMPLE).unwrap();
        assert_eq!(
            h,
            vec![
                HistoryEntry { timeline: 1, end: Lsn(0x3000158) },
                HistoryEntry { timeline: 2, end: Lsn(0x5000000) }
            ]
        );
        assert_eq!(timeline_of(&h, 3, Lsn(0x100)), 1);
        assert_eq!(timeline_of(&h, 3, Lsn(0x3000158)), 2);
        assert_eq!(timeline_of(&h, 3, Lsn(0x6000000)), 3);
        assert_eq!(timeline_start(&h, 1), Some(Lsn(0)));
        assert_eq!(timeline_start(&h, 2), Some(Lsn(0x3000158)));
        assert_eq!(timeline_start(&h, 3), Some(Lsn(0x5000000)));
        let forked = parse_history("1\t0/100\tx\n4\t0/200\ty\n").unwrap();
        assert_eq!(timeline_start(&forked, 2), None);
        assert_eq!(timeline_start(&[], 1), Some(Lsn(0)));
    }

    #[test]
    fn rejects_bad_files() {
        assert!(matches!(parse_history("x\t0/1\n"), Err(HistoryError::Syntax { line: 1, .. })));
        assert!(matches!(parse_history("1\n"), Err(HistoryError::Syntax { .. })));
        assert!(matches!(
            parse_history("2\t0/5\n1\t0/6\n"),
            Err(HistoryError::NotIncreasing { line: 2, .. })
        ));
        assert!(matches!(
            parse_history("1\t0/5\n2\t0/4\n"),
            Err(HistoryError::SwitchPointBackwards { line: 2, .. })
        ));
    }

    #[test]
    fn a_history_names_only_older_timelines() {
        assert_eq!(parse_history_of(3, SAMPLE).unwrap().len(), 2);
        let e = parse_history_of(2, "# comment\n3\t0/5000000\tx\n").unwrap_err();
        assert_eq!(e, HistoryError::NotAnAncestor { timeline: 3, lsn: Lsn(0x5000000), of: 2 });
        assert_eq!(
            e.to_string(),
            "timeline 3 (switch point 0/05000000) cannot be an ancestor of timeline 2: expected a timeline from 1 to 1"
        );
        assert_eq!(e.lsn(), Some(Lsn(0x5000000)));
        assert!(matches!(parse_history_of(2, "2\t0/5\n"), Err(HistoryError::NotAnAncestor { .. })));
        assert!(matches!(parse_history_of(2, "0\t0/5\n"), Err(HistoryError::NotAnAncestor { .. })));
        assert_eq!(parse_history_of(2, "# nothing\n"), Err(HistoryError::NoParent(2)));
        assert_eq!(parse_history_of(1, ""), Ok(vec![]));
    }

    proptest! {
        #[test]
        fn never_panics(s in "(?s).{0,200}", tli: u32) {
            let _ = parse_history(&s);
            let _ = parse_history_of(tli, &s);
        }
    }
}
