//! The long page header at the start of every WAL segment (`XLogLongPageHeaderData`): the one parser of it.
//! Pure, no I/O, with its own error type (the archive maps it into its own messages; `wal` never imports
//! `archive`). The WAL decoder checks page headers as part of the stream; this is for reading a segment
//! file's identity before its WAL: magic, system identifier, segment size, page address.

use crate::wal::decoder::{SIZE_OF_LONG_PHD, XLP_LONG_HEADER};
use crate::wal::segment::{valid_segment_size, SegmentId, TimeLineId};
use crate::wal::Lsn;

/// Bytes of the long page header.
pub const LEN: usize = SIZE_OF_LONG_PHD;

/// The fields of a segment's long page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeader {
    /// `xlp_magic`: tells the PostgreSQL major that wrote it.
    pub magic: u16,
    pub info: u16,
    /// `xlp_tli`: the timeline of the page (a new timeline's first segment starts with its parent's pages).
    pub timeline: TimeLineId,
    /// `xlp_pageaddr`: the LSN of the page, hence of the segment.
    pub page_addr: Lsn,
    pub system_id: u64,
    /// A valid segment size (checked by [`parse`]).
    pub segment_size: u32,
    pub block_size: u32,
}

/// Why the start of a file is not the long page header of a segment. Each message completes "… is damaged: ",
/// "… does not belong …" and the like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Only zeros (or nothing): a segment nothing was written to yet, e.g. a fresh `.partial`.
    #[error("its first page has no long page header, only zeros")]
    Zeroed,
    #[error("it holds only {0} bytes, fewer than a long page header")]
    Short(usize),
    #[error("its first page has no long page header")]
    NotLong,
    #[error("its page header gives an invalid segment size {0}")]
    SegmentSize(u32),
    #[error("its first page is at {found}, which is not the start of segment {segment}")]
    PageAddr { found: Lsn, segment: String },
}

/// Parse the long page header at the start of `head` (the first bytes of a segment, decompressed).
pub fn parse(head: &[u8]) -> Result<LongHeader, PageError> {
    let head = &head[..head.len().min(LEN)];
    if head.iter().all(|&b| b == 0) {
        return Err(PageError::Zeroed);
    }
    if head.len() < LEN {
        return Err(PageError::Short(head.len()));
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    let header = LongHeader {
        magic: u16_at(0),
        info: u16_at(2),
        timeline: u32_at(4),
        page_addr: Lsn(u64_at(8)),
        system_id: u64_at(24),
        segment_size: u32_at(32),
        block_size: u32_at(36),
    };
    if header.magic == 0 || header.info & XLP_LONG_HEADER == 0 {
        return Err(PageError::NotLong);
    }
    if !valid_segment_size(u64::from(header.segment_size)) {
        return Err(PageError::SegmentSize(header.segment_size));
    }
    Ok(header)
}

impl LongHeader {
    /// The page address must be the start of `segment` (a 24-character segment name) with this header's
    /// segment size: a file renamed to another segment's name fails here.
    pub fn check_page_addr(&self, segment: &str) -> Result<(), PageError> {
        let expected =
            SegmentId::parse_name(segment, self.segment_size).and_then(|s| s.start_lsn(self.segment_size));
        if expected == Some(self.page_addr) {
            Ok(())
        } else {
            Err(PageError::PageAddr { found: self.page_addr, segment: segment.to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(size: u32, addr: u64) -> Vec<u8> {
        let mut h = vec![0u8; LEN];
        h[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        h[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        h[4..8].copy_from_slice(&3u32.to_le_bytes());
        h[8..16].copy_from_slice(&addr.to_le_bytes());
        h[24..32].copy_from_slice(&77u64.to_le_bytes());
        h[32..36].copy_from_slice(&size.to_le_bytes());
        h[36..40].copy_from_slice(&8192u32.to_le_bytes());
        h
    }

    #[test]
    fn parses_every_field() {
        let h = parse(&header(1 << 20, 3 << 20)).unwrap();
        assert_eq!(
            h,
            LongHeader {
                magic: 0xD110,
                info: XLP_LONG_HEADER,
                timeline: 3,
                page_addr: Lsn(3 << 20),
                system_id: 77,
                segment_size: 1 << 20,
                block_size: 8192
            }
        );
        h.check_page_addr("000000030000000000000003").unwrap();
        let e = h.check_page_addr("000000030000000000000004").unwrap_err();
        assert_eq!(
            e.to_string(),
            "its first page is at 0/00300000, which is not the start of segment 000000030000000000000004"
        );
        // Longer input (a whole page) is fine.
        let mut page = header(1 << 20, 3 << 20);
        page.resize(8192, 9);
        assert_eq!(parse(&page).unwrap(), h);
    }

    #[test]
    fn refuses_what_is_not_a_long_header() {
        assert_eq!(parse(&[]), Err(PageError::Zeroed));
        assert_eq!(parse(&[0u8; 8192]), Err(PageError::Zeroed));
        assert_eq!(parse(&header(1 << 20, 0)[..20]), Err(PageError::Short(20)));
        let mut h = header(1 << 20, 0);
        h[2] = 0; // no XLP_LONG_HEADER
        assert_eq!(parse(&h), Err(PageError::NotLong));
        let mut h = header(1 << 20, 0);
        h[0..2].fill(0);
        assert_eq!(parse(&h), Err(PageError::NotLong));
        assert_eq!(parse(&header(12345, 0)), Err(PageError::SegmentSize(12345)));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), name in ".{0,30}") {
            if let Ok(h) = parse(&bytes) {
                let _ = h.check_page_addr(&name);
            }
        }
    }
}
