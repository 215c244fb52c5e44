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
    #[error("line {line}: timeline {parent} cannot be an ancestor of timeline {timeline}")]
    NotAnAncestor { line: usize, parent: TimeLineId, timeline: TimeLineId },
    #[error("no parent timeline: the history of timeline {timeline} is empty")]
    Empty { timeline: TimeLineId },
}

/// Parse the contents of a history file. Entries come back in file order (oldest timeline first).
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    parse(text, None)
}

/// Parse the history file of `timeline` (above 1) and check that it can be one: it names at least one
/// parent, and every timeline it names is older than `timeline`.
pub fn parse_history_of(timeline: TimeLineId, text: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    let entries = parse(text, Some(timeline))?;
    if entries.is_empty() {
        return Err(HistoryError::Empty { timeline });
    }
    Ok(entries)
}

/// `parse_history`, refusing entries not below `child` when given.
fn parse(text: &str, child: Option<TimeLineId>) -> Result<Vec<HistoryEntry>, HistoryError> {
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
        if let Some(child) = child.filter(|&child| timeline >= child) {
            return Err(HistoryError::NotAnAncestor { line, parent: timeline, timeline: child });
        }
        entries.push(HistoryEntry { timeline, end });
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
    fn history_of_a_timeline_names_only_older_ones() {
        assert_eq!(parse_history_of(3, SAMPLE).unwrap().len(), 2);
        let err = parse_history_of(2, SAMPLE).unwrap_err();
        assert_eq!(err, HistoryError::NotAnAncestor { line: 4, parent: 2, timeline: 2 });
        assert_eq!(err.to_string(), "line 4: timeline 2 cannot be an ancestor of timeline 2");
        assert!(matches!(parse_history_of(2, "3\t0/5000000\tx\n"), Err(HistoryError::NotAnAncestor { .. })));
        let err = parse_history_of(2, "# nothing\n\n").unwrap_err();
        assert_eq!(err.to_string(), "no parent timeline: the history of timeline 2 is empty");
        assert!(matches!(parse_history_of(5, "garbage"), Err(HistoryError::Syntax { line: 1, .. })));
        assert!(matches!(
            parse_history_of(5, "1\t0/5\n2\t0/4\n"),
            Err(HistoryError::SwitchPointBackwards { .. })
        ));
    }

    proptest! {
        #[test]
        fn never_panics(s in "(?s).{0,200}", timeline in 0u32..5) {
            let _ = parse_history(&s);
            if let Ok(entries) = parse_history_of(timeline, &s) {
                prop_assert!(!entries.is_empty() && entries.iter().all(|e| e.timeline < timeline));
            }
        }
    }
}
