//! What a stretch of WAL holds, for a report: its bytes, records, commit records and last commit time.
//! Made for the old timeline's tail past a fork point — WAL an old primary wrote that the promoted server
//! never had, kept in the archive after a failover (#12): how much, how many transactions, up to when.
//! Pure: the WAL goes through the decoder, so only valid records count.

use crate::wal::decoder::{DecodeStatus, DecoderConfig, RecordInfo, WalDecoder, WalError};
use crate::wal::pgtime::PgTimestamp;
use crate::wal::records::RecordKind;
use crate::wal::Lsn;

/// The records that start at or after `from`, as far as the WAL is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailSummary {
    /// Where the tail begins (the fork point).
    pub from: Lsn,
    /// Just past its last valid record (`from` when there is none).
    pub to: Lsn,
    /// `to - from`.
    pub bytes: u64,
    pub records: u64,
    /// Commit records (XLOG_XACT_COMMIT and XLOG_XACT_COMMIT_PREPARED): transactions committed on the tail.
    pub commits: u64,
    /// The time of the last commit record, if any.
    pub last_commit: Option<PgTimestamp>,
}

impl TailSummary {
    /// An empty summary of the WAL from `from` on.
    pub fn new(from: Lsn) -> TailSummary {
        TailSummary { from, to: from, bytes: 0, records: 0, commits: 0, last_commit: None }
    }

    /// Count one valid record, in stream order (a [`WalDecoder`] callback); records before `from` are ignored.
    pub fn observe(&mut self, r: &RecordInfo) {
        if r.lsn < self.from {
            return;
        }
        self.records += 1;
        self.to = r.end;
        self.bytes = r.end.0 - self.from.0;
        if let RecordKind::Commit { time, .. } = r.kind {
            self.commits += 1;
            self.last_commit = Some(time);
        }
    }
}

/// Summarize the WAL in `data` that lies at or after `from`. `data` holds consecutive WAL files at rest
/// from `start` (a segment boundary at or before `from`, since the decoder begins at one: the fork
/// segment's start), the last of which may be a zero-padded `.partial` whose final record was cut off.
/// An error means the WAL is inconsistent before its end (it names the LSN); the status says where valid
/// WAL ends.
pub fn summarize_tail(
    cfg: DecoderConfig,
    start: Lsn,
    from: Lsn,
    data: &[u8],
) -> Result<(TailSummary, DecodeStatus), WalError> {
    let mut summary = TailSummary::new(from);
    let status = WalDecoder::check_at_rest_with(cfg, start, data, |r| summary.observe(r))?;
    Ok((summary, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::encoder::WalEncoder;
    use crate::wal::records::{RM_XACT_ID, XLOG_XACT_ABORT, XLOG_XACT_COMMIT, XLOG_XACT_COMMIT_PREPARED};

    const SEG: u32 = 1 << 20;
    const START: u64 = 5 * SEG as u64;

    fn cfg() -> DecoderConfig {
        DecoderConfig { segment_size: SEG, page_magic: 0xD116, system_id: Some(9), timeline: 1 }
    }

    fn commit(e: &mut WalEncoder, info: u8, time: i64) -> u64 {
        let mut main = time.to_le_bytes().to_vec();
        main.extend_from_slice(&[0; 4]); // a commit record's data may end in zero bytes
        e.main_data_record(RM_XACT_ID, info, 700, &main)
    }

    /// Heap-like records, commits and an abort, across a segment boundary; returns the commits' LSNs and the
    /// end of the last record.
    fn sample() -> (WalEncoder, Vec<u64>, u64) {
        let mut e = WalEncoder::new(0xD116, SEG, 9, 1, START);
        let mut commits = Vec::new();
        for i in 0..400 {
            e.record(10, 0, 700, &vec![i as u8 | 1; 3000]);
            if i % 40 == 0 {
                commits.push(commit(&mut e, XLOG_XACT_COMMIT, 1000 + i));
            }
        }
        commits.push(commit(&mut e, XLOG_XACT_COMMIT_PREPARED, 5000));
        commit(&mut e, XLOG_XACT_ABORT, 6000);
        let last = e.record(10, 0, 700, &[1; 100]);
        assert!(last % 8192 + 124 <= 8192, "the last record stays on its page");
        (e, commits, last + 124)
    }

    #[test]
    fn counts_what_lies_past_the_fork() {
        let (mut e, commits, last_end) = sample();
        assert!(e.pos() > START + u64::from(SEG), "the sample crosses a segment boundary");
        e.zeros_to(START + 2 * u64::from(SEG)); // a zero-padded .partial
                                                // The fork: the start of the 5th commit record (the commits before it are shared history).
        let fork = Lsn(commits[4]);
        let (s, st) = summarize_tail(cfg(), Lsn(START), fork, e.bytes()).unwrap();
        assert_eq!(s.commits, commits.len() as u64 - 4);
        assert_eq!(s.last_commit, Some(PgTimestamp(5000)));
        assert_eq!((s.from, s.to, s.bytes), (fork, Lsn(last_end), last_end - fork.0));
        assert_eq!(s.records, e.records.iter().filter(|&&r| r >= fork.0).count() as u64);
        assert!(st.validated_up_to >= s.to);

        // Nothing past the end of the WAL: an empty tail.
        let (s, _) =
            summarize_tail(cfg(), Lsn(START), Lsn(e.records[e.records.len() - 1] + 128), e.bytes()).unwrap();
        assert_eq!((s.records, s.commits, s.bytes, s.last_commit), (0, 0, 0, None));
    }

    #[test]
    fn a_last_commit_ending_in_zeros_counts_a_cut_off_one_does_not() {
        let mut e = WalEncoder::new(0xD116, SEG, 9, 1, START);
        e.record(10, 0, 1, &[7; 50]);
        let c = commit(&mut e, XLOG_XACT_COMMIT, 42);
        e.zeros_to(START + u64::from(SEG));
        let (s, _) = summarize_tail(cfg(), Lsn(START), Lsn(START), e.bytes()).unwrap();
        assert_eq!((s.commits, s.last_commit, s.records), (1, Some(PgTimestamp(42)), 2));
        // Received only up to the commit's main data (the rest of the `.partial` is zeros): not a commit.
        let mut cut = e.bytes().to_vec();
        let o = e.offset(c) + 24 + 2;
        cut[o..].fill(0);
        let (s, st) = summarize_tail(cfg(), Lsn(START), Lsn(START), &cut).unwrap();
        assert_eq!((s.commits, s.records), (0, 1));
        assert!(st.validated_up_to.0 <= c);
    }

    #[test]
    fn corruption_before_the_end_is_an_error_naming_the_record() {
        let (e, commits, _) = sample();
        let mut b = e.bytes().to_vec();
        let o = e.offset(commits[2]);
        b[o + 30] ^= 1;
        let err = summarize_tail(cfg(), Lsn(START), Lsn(commits[1]), &b).unwrap_err();
        assert_eq!(err.lsn(), Lsn(commits[2]));
    }
}
