//! WAL at rest: the bytes of a segment file (decompressed), checked as they stream by, chunk after chunk.
//! Pure, no I/O.
//!
//! - [`Feed`] hands a file's bytes to a [`WalDecoder`], holding back the zeros at the end of a `.partial`
//!   (they are the padding after the data received, not WAL) — for verify, which runs one decoder per
//!   timeline across files, and for [`SegmentCheck`].
//! - [`SegmentCheck`] is what a segment must pass before `restore` serves it: a long page header of the
//!   segment it is named after (and of the expected database system), then every page header and record
//!   (prev-link chain, CRC32C), and the length. A segment may begin inside a record of the previous one and
//!   end inside one that continues in the next: the decoder handles both. A complete segment must hold valid
//!   WAL to its end (or to an XLOG_SWITCH): zeros in its middle would end recovery there.

use crate::wal::decoder::{DecoderConfig, RecordInfo, StreamEnd, WalDecoder};
use crate::wal::page::{self, LongHeader, PageError};
use crate::wal::segment::{SegmentId, TimeLineId};
use crate::wal::{Lsn, WalError};

/// Feeds a file's bytes to a decoder (see the module docs).
#[derive(Clone, Debug)]
pub struct Feed {
    hold_zeros: bool,
    /// Zeros read but not fed yet.
    held: u64,
}

impl Feed {
    /// For a `.partial` (`partial`), zeros are held back until non-zero bytes follow them.
    pub fn new(partial: bool) -> Feed {
        Feed { hold_zeros: partial, held: 0 }
    }

    /// Feed the next bytes of the file.
    pub fn push<F: FnMut(&RecordInfo)>(
        &mut self,
        d: &mut WalDecoder,
        data: &[u8],
        on_record: &mut F,
    ) -> Result<(), WalError> {
        if !self.hold_zeros {
            return d.feed_with(data, &mut *on_record);
        }
        let nonzero = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if nonzero > 0 {
            feed_zeros(d, std::mem::take(&mut self.held), on_record)?;
            d.feed_with(&data[..nonzero], &mut *on_record)?;
        }
        self.held += (data.len() - nonzero) as u64;
        Ok(())
    }

    /// After the last byte: the held-back zeros are fed if the WAL stays valid with them (they then end the
    /// WAL, or complete a record whose last bytes are zeros); otherwise they were padding after a record cut
    /// off by the end of what was received, and the decoder stays where the data ended. Returns the records
    /// completed by the zeros.
    pub fn finish(self, d: &mut WalDecoder) -> u64 {
        self.finish_with(d, &mut |_: &RecordInfo| {})
    }

    /// [`finish`](Feed::finish), handing the records the zeros complete to `on_record` (only when they are
    /// kept).
    pub fn finish_with<F: FnMut(&RecordInfo)>(self, d: &mut WalDecoder, on_record: &mut F) -> u64 {
        let mut with_zeros = d.clone();
        let mut completed = Vec::new();
        if feed_zeros(&mut with_zeros, self.held, &mut |r: &RecordInfo| completed.push(*r)).is_ok() {
            *d = with_zeros;
            completed.iter().for_each(&mut *on_record);
            completed.len() as u64
        } else {
            0
        }
    }
}

/// Feed `n` zero bytes.
fn feed_zeros<F: FnMut(&RecordInfo)>(
    d: &mut WalDecoder,
    mut n: u64,
    on_record: &mut F,
) -> Result<(), WalError> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        d.feed_with(&ZEROS[..k], &mut *on_record)?;
        n -= k as u64;
    }
    Ok(())
}

/// Why a segment file may not be served. Each message completes "WAL file "…" is damaged: ".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Page(#[from] PageError),
    /// WAL of another database system than expected.
    #[error("it is WAL of database system {found}, expected {expected}")]
    SystemId { found: u64, expected: u64 },
    /// A page or record failed a check; the decoder's message names the LSN and the check.
    #[error("{0}")]
    Wal(WalError),
    #[error("it holds {len} bytes of WAL, but its page header says the segment size is {size} bytes")]
    Size { len: u64, size: u32 },
    #[error("valid WAL ends at {at}, only zeros follow up to the end of this complete segment")]
    EndsEarly { at: Lsn },
}

/// What a checked segment file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    pub header: LongHeader,
    /// Bytes of WAL (decompressed) in the file.
    pub len: u64,
    /// How the valid WAL ends.
    pub end: StreamEnd,
}

/// The checks a segment file passes before it is served (module docs). Push its decompressed bytes in
/// order, then [`finish`](SegmentCheck::finish).
#[derive(Clone, Debug)]
pub struct SegmentCheck {
    segment: String,
    timeline: TimeLineId,
    partial: bool,
    whole_length: bool,
    system_id: Option<u64>,
    /// The first bytes, until the long page header is complete.
    head: Vec<u8>,
    started: Option<Started>,
    len: u64,
}

#[derive(Clone, Debug)]
struct Started {
    header: LongHeader,
    decoder: WalDecoder,
    feed: Feed,
}

impl SegmentCheck {
    /// Check the file of segment `segment` (24-character name). `partial`: a `.partial`, whose WAL may end
    /// anywhere; `whole_length`: the file is as long as the segment (uncompressed files, preallocated
    /// `.partial` ones included), else it holds at most the segment. `system_id`: the database system the WAL
    /// must belong to, when known.
    pub fn new(segment: &str, partial: bool, whole_length: bool, system_id: Option<u64>) -> SegmentCheck {
        let timeline = segment.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok()).unwrap_or(0);
        SegmentCheck {
            segment: segment.to_string(),
            timeline,
            partial,
            whole_length,
            system_id,
            head: Vec::with_capacity(page::LEN),
            started: None,
            len: 0,
        }
    }

    /// The next bytes of the file.
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), CheckError> {
        if self.started.is_none() {
            let take = (page::LEN - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() < page::LEN {
                return Ok(());
            }
            let head = std::mem::take(&mut self.head);
            self.start(&head)?;
        }
        let Some(s) = self.started.as_mut() else { return Ok(()) };
        self.len += data.len() as u64;
        if self.len > u64::from(s.header.segment_size) {
            return Err(CheckError::Size { len: self.len, size: s.header.segment_size });
        }
        s.feed.push(&mut s.decoder, data, &mut |_| {}).map_err(CheckError::Wal)
    }

    fn start(&mut self, head: &[u8]) -> Result<(), CheckError> {
        let header = page::parse(head)?;
        header.check_page_addr(&self.segment)?;
        if let Some(expected) = self.system_id {
            if header.system_id != expected {
                return Err(CheckError::SystemId { found: header.system_id, expected });
            }
        }
        let start = SegmentId::parse_name(&self.segment, header.segment_size)
            .and_then(|s| s.start_lsn(header.segment_size))
            .unwrap_or(header.page_addr);
        let cfg = DecoderConfig {
            segment_size: header.segment_size,
            page_magic: header.magic,
            system_id: Some(header.system_id),
            timeline: self.timeline,
        };
        let mut started =
            Started { header, decoder: WalDecoder::new(cfg, start), feed: Feed::new(self.partial) };
        self.len = head.len() as u64;
        started.feed.push(&mut started.decoder, head, &mut |_| {}).map_err(CheckError::Wal)?;
        self.started = Some(started);
        Ok(())
    }

    /// After the last byte: the length and how the WAL ends.
    pub fn finish(self) -> Result<Checked, CheckError> {
        let Some(Started { header, mut decoder, feed }) = self.started else {
            // Fewer bytes than a long page header: only zeros (nothing written yet), or too short.
            return Err(page::parse(&self.head).err().unwrap_or(PageError::Short(self.head.len())).into());
        };
        let size = u64::from(header.segment_size);
        if (self.whole_length && self.len != size) || self.len > size {
            return Err(CheckError::Size { len: self.len, size: header.segment_size });
        }
        feed.finish(&mut decoder);
        let status = decoder.status().map_err(CheckError::Wal)?;
        if let (false, StreamEnd::EndOfWal { at }) = (self.partial, status.end) {
            return Err(CheckError::EndsEarly { at });
        }
        Ok(Checked { header, len: self.len, end: status.end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::encoder::WalEncoder;

    const SEG: u32 = 1 << 20;
    const SYSID: u64 = 7_000_000_000_000_000_001;

    /// Segments 1..=3 of timeline 1: records of many sizes, some spanning segments, ending inside segment 3.
    fn wal() -> WalEncoder {
        let mut e = WalEncoder::new(0xD110, SEG, SYSID, 1, u64::from(SEG));
        let mut i = 0u32;
        while e.pos() < 3 * u64::from(SEG) + 200_000 {
            let len = [10usize, 300, 5000, 20_000][i as usize % 4];
            e.main_data_record(10, 0, i, &vec![i as u8 | 1; len]);
            i += 1;
        }
        e
    }

    fn segment(e: &WalEncoder, n: u64) -> Vec<u8> {
        let off = e.offset(n * u64::from(SEG));
        let mut s = e.bytes()[off..(off + SEG as usize).min(e.bytes().len())].to_vec();
        s.resize(SEG as usize, 0);
        s
    }

    fn check(
        name: &str,
        bytes: &[u8],
        partial: bool,
        whole: bool,
        chunk: usize,
    ) -> Result<Checked, CheckError> {
        let mut c = SegmentCheck::new(name, partial, whole, Some(SYSID));
        for piece in bytes.chunks(chunk.max(1)) {
            c.push(piece)?;
        }
        c.finish()
    }

    #[test]
    fn valid_segments_pass_in_any_chunking() {
        let e = wal();
        for chunk in [1 << 20, 7, 4096, 40] {
            let c = check("000000010000000000000002", &segment(&e, 2), false, true, chunk).unwrap();
            assert_eq!((c.len, c.header.segment_size), (u64::from(SEG), SEG));
            assert!(matches!(c.end, StreamEnd::InsideRecord { .. } | StreamEnd::Boundary), "{:?}", c.end);
        }
        // The last one as a preallocated .partial, and as a compressed one (only what was received).
        let last = segment(&e, 3);
        let c = check("000000010000000000000003", &last, true, true, 65536).unwrap();
        assert!(matches!(c.end, StreamEnd::EndOfWal { .. }), "{:?}", c.end);
        let received = &last[..150_000];
        let c = check("000000010000000000000003", received, true, false, 65536).unwrap();
        assert_eq!(c.len, 150_000);
    }

    #[test]
    fn damage_is_refused_naming_the_check() {
        let e = wal();
        let mut bad = segment(&e, 2);
        let rec = *e.records.iter().find(|&&r| r > 2 * u64::from(SEG) + 100_000).unwrap();
        bad[(rec - 2 * u64::from(SEG)) as usize + 30] ^= 0x20;
        let err = check("000000010000000000000002", &bad, false, true, 65536).unwrap_err();
        assert!(err.to_string().contains("incorrect record CRC32C"), "{err}");
        assert!(err.to_string().contains(&Lsn(rec).to_string()), "{err}");
        // Also in a .partial.
        assert!(check("000000010000000000000002", &bad, true, true, 65536).is_err());
        // Under another name: the page address.
        let err = check("000000010000000000000005", &segment(&e, 2), false, true, 65536).unwrap_err();
        assert!(err.to_string().contains("not the start of segment 000000010000000000000005"), "{err}");
        // Another database system.
        let mut c = SegmentCheck::new("000000010000000000000002", false, true, Some(SYSID + 1));
        let err = c.push(&segment(&e, 2)).unwrap_err();
        assert_eq!(err, CheckError::SystemId { found: SYSID, expected: SYSID + 1 });
        // Short, long, zeros in the middle of a complete segment.
        let seg2 = segment(&e, 2);
        let err = check("000000010000000000000002", &seg2[..500_000], false, true, 65536).unwrap_err();
        assert_eq!(err, CheckError::Size { len: 500_000, size: SEG });
        let mut longer = seg2.clone();
        longer.extend_from_slice(&[0; 10]);
        assert!(matches!(
            check("000000010000000000000002", &longer, true, false, 65536),
            Err(CheckError::Size { .. })
        ));
        let mut holed = seg2.clone();
        let cut = e.offset(rec) - e.offset(2 * u64::from(SEG));
        holed[cut..].fill(0);
        let err = check("000000010000000000000002", &holed, false, true, 65536).unwrap_err();
        assert_eq!(err, CheckError::EndsEarly { at: Lsn(rec) });
        // ... which a .partial may do.
        assert!(check("000000010000000000000002", &holed, true, true, 65536).is_ok());
    }

    #[test]
    fn files_without_a_header() {
        let zeros = vec![0u8; SEG as usize];
        let err = check("000000010000000000000002", &zeros, true, true, 65536).unwrap_err();
        assert_eq!(err, CheckError::Page(PageError::Zeroed));
        let err = check("000000010000000000000002", &[], true, false, 1).unwrap_err();
        assert_eq!(err, CheckError::Page(PageError::Zeroed));
        let err = check("000000010000000000000002", &[1, 2, 3], false, true, 1).unwrap_err();
        assert_eq!(err, CheckError::Page(PageError::Short(3)));
        let noise: Vec<u8> = (0..SEG).map(|i| (i % 251) as u8).collect();
        let err = check("000000010000000000000002", &noise, false, true, 65536).unwrap_err();
        assert!(matches!(err, CheckError::Page(_)), "{err}");
    }

    #[test]
    fn partial_zeros_are_padding_unless_they_are_wal() {
        let e = wal();
        // A .partial cut inside a record: the zeros after the cut are padding, not a bad CRC.
        let last = *e.records.last().unwrap();
        let mut cut = segment(&e, 3);
        let at = e.offset(last) - e.offset(3 * u64::from(SEG)) + 30;
        cut[at..].fill(0);
        let c = check("000000010000000000000003", &cut, true, true, 4096).unwrap();
        assert_eq!(c.end, StreamEnd::InsideRecord { record: Some(Lsn(last)) });
    }
}
