//! A WAL writer for tests and benchmarks: lays out pages and records the way PostgreSQL's
//! `CopyXLogRecordToWAL` / `AdvanceXLInsertBuffer` do (long header on each segment's first page, records
//! MAXALIGNed, continuations after the next page header with `xlp_rem_len`, XLOG_SWITCH padding with zeroed
//! page headers, XLOG_OVERWRITE_CONTRECORD after a record cut off at a page boundary). The record contents
//! are opaque bytes: only the framing and CRC are real.

use crate::wal::decoder::{
    SIZE_OF_LONG_PHD, SIZE_OF_SHORT_PHD, SIZE_OF_XLOG_RECORD, XLOG_BLCKSZ, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
};
use crate::wal::records::{RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD, XLOG_SWITCH};

const BLCKSZ: u64 = XLOG_BLCKSZ as u64;

/// Builds a contiguous WAL byte stream starting at a segment boundary.
#[derive(Clone, Debug)]
pub struct WalEncoder {
    pub magic: u16,
    pub segment_size: u32,
    pub system_id: u64,
    pub timeline: u32,
    start: u64,
    out: Vec<u8>,
    prev: u64,
    /// Start LSN of every complete record written, in order.
    pub records: Vec<u64>,
    /// Flag the next page header with XLP_FIRST_IS_OVERWRITE_CONTRECORD.
    next_page_overwrite: bool,
    /// Write real (short) page headers instead of zeros in XLOG_SWITCH padding, as PostgreSQL < 11 did.
    pub switch_padding_headers: bool,
}

impl WalEncoder {
    pub fn new(magic: u16, segment_size: u32, system_id: u64, timeline: u32, start: u64) -> Self {
        assert_eq!(start % u64::from(segment_size), 0, "start must be a segment boundary");
        WalEncoder {
            magic,
            segment_size,
            system_id,
            timeline,
            start,
            out: Vec::new(),
            prev: 0,
            records: Vec::new(),
            next_page_overwrite: false,
            switch_padding_headers: false,
        }
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// LSN of the next byte to be written.
    pub fn pos(&self) -> u64 {
        self.start + self.out.len() as u64
    }

    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// Index into [`bytes`](Self::bytes) of the byte at `lsn`.
    pub fn offset(&self, lsn: u64) -> usize {
        (lsn - self.start) as usize
    }

    fn page_header(&mut self, rem_len: u32) {
        let pos = self.pos();
        debug_assert_eq!(pos % BLCKSZ, 0);
        let long = pos % u64::from(self.segment_size) == 0;
        let mut info = 0u16;
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        if long {
            info |= XLP_LONG_HEADER;
        }
        if std::mem::take(&mut self.next_page_overwrite) {
            info |= XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        }
        let mut h = Vec::with_capacity(SIZE_OF_LONG_PHD);
        h.extend_from_slice(&self.magic.to_le_bytes());
        h.extend_from_slice(&info.to_le_bytes());
        h.extend_from_slice(&self.timeline.to_le_bytes());
        h.extend_from_slice(&pos.to_le_bytes());
        h.extend_from_slice(&rem_len.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        if long {
            h.extend_from_slice(&self.system_id.to_le_bytes());
            h.extend_from_slice(&self.segment_size.to_le_bytes());
            h.extend_from_slice(&XLOG_BLCKSZ.to_le_bytes());
        }
        debug_assert_eq!(h.len(), if long { SIZE_OF_LONG_PHD } else { SIZE_OF_SHORT_PHD });
        self.out.extend_from_slice(&h);
    }

    /// Write `bytes` as (part of) one record's data: page headers are inserted at page boundaries, with
    /// `xlp_rem_len` = bytes of the record still to come (`total_left` counts from the start of `bytes`).
    /// Stops early, returning the number written, if `stop_at_page_end` and a page ends.
    fn write_spanning(&mut self, bytes: &[u8], total_left: u32, stop_at_page_end: bool) -> usize {
        let mut written = 0usize;
        while written < bytes.len() {
            if self.pos() % BLCKSZ == 0 {
                if stop_at_page_end && written > 0 {
                    return written;
                }
                let rem = if written > 0 { total_left - written as u32 } else { 0 };
                self.page_header(rem);
            }
            let page_left = (BLCKSZ - self.pos() % BLCKSZ) as usize;
            let n = page_left.min(bytes.len() - written);
            self.out.extend_from_slice(&bytes[written..written + n]);
            written += n;
        }
        written
    }

    fn align(&mut self) {
        while self.pos() % 8 != 0 {
            self.out.push(0);
        }
    }

    /// Make sure the page header is written when the position is at a page boundary.
    fn ensure_header(&mut self) {
        if self.pos() % BLCKSZ == 0 {
            self.page_header(0);
        }
    }

    /// Serialize a record: header with CRC over `data` then the header up to xl_crc.
    pub fn record_bytes(&self, rmid: u8, info: u8, xid: u32, data: &[u8]) -> Vec<u8> {
        let tot_len = SIZE_OF_XLOG_RECORD + data.len() as u32;
        let mut h = Vec::with_capacity(tot_len as usize);
        h.extend_from_slice(&tot_len.to_le_bytes());
        h.extend_from_slice(&xid.to_le_bytes());
        h.extend_from_slice(&self.prev.to_le_bytes());
        h.push(info);
        h.push(rmid);
        h.extend_from_slice(&[0, 0]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(data), &h);
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(data);
        h
    }

    /// Append a record; returns its start LSN. `data` is everything after the fixed header.
    pub fn record(&mut self, rmid: u8, info: u8, xid: u32, data: &[u8]) -> u64 {
        self.ensure_header();
        let start = self.pos();
        let rec = self.record_bytes(rmid, info, xid, data);
        self.write_spanning(&rec, rec.len() as u32, false);
        self.align();
        self.prev = start;
        self.records.push(start);
        start
    }

    /// A record whose data is `main` as main data (XLR_BLOCK_ID_DATA_SHORT/LONG), like most real records.
    pub fn main_data_record(&mut self, rmid: u8, info: u8, xid: u32, main: &[u8]) -> u64 {
        self.record(rmid, info, xid, &main_data(main))
    }

    /// XLOG_SWITCH: the record, then zeros (or headers, see `switch_padding_headers`) to the segment end.
    pub fn switch(&mut self) -> u64 {
        let start = self.record(RM_XLOG_ID, XLOG_SWITCH, 0, &[]);
        let seg = u64::from(self.segment_size);
        let end = self.pos();
        // The record may end exactly at a segment end (nothing to pad), else pad that segment.
        if end % seg != 0 {
            let seg_end = end.div_ceil(seg) * seg;
            while self.pos() < seg_end {
                if self.pos() % BLCKSZ == 0 && self.switch_padding_headers {
                    self.page_header(0);
                } else {
                    let next = (self.pos() / BLCKSZ + 1) * BLCKSZ;
                    let n = (next.min(seg_end) - self.pos()) as usize;
                    self.out.resize(self.out.len() + n, 0);
                }
            }
        }
        start
    }

    /// Write the first part of a record up to the end of the current page and abandon it, as a crash does;
    /// the next page is flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD and starts with XLOG_OVERWRITE_CONTRECORD
    /// naming the abandoned record. Returns (abandoned start, overwrite record start).
    pub fn cut_off_record(&mut self, rmid: u8, info: u8, data: &[u8]) -> (u64, u64) {
        self.ensure_header();
        let start = self.pos();
        let rec = self.record_bytes(rmid, info, 1, data);
        let written = self.write_spanning(&rec, rec.len() as u32, true);
        assert!(written < rec.len(), "record must cross the page end to be cut off");
        self.next_page_overwrite = true;
        let mut body = start.to_le_bytes().to_vec();
        body.extend_from_slice(&0x0102_0304_0506_0708i64.to_le_bytes());
        let ow = self.main_data_record(RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD, 0, &body);
        (start, ow)
    }

    /// Begin the stream inside a record we never show: the first page says XLP_FIRST_IS_CONTRECORD and
    /// `len` bytes of its tail follow (spilling onto further pages as needed).
    pub fn tail_of_unseen_record(&mut self, len: u32) {
        assert!(self.out.is_empty() && len > 0);
        let tail: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        let mut written = 0usize;
        while written < tail.len() {
            if self.pos() % BLCKSZ == 0 {
                self.page_header(len - written as u32);
            }
            let page_left = (BLCKSZ - self.pos() % BLCKSZ) as usize;
            let n = page_left.min(tail.len() - written);
            self.out.extend_from_slice(&tail[written..written + n]);
            written += n;
        }
        self.align();
    }

    /// Pad with zeros to `lsn` (end of WAL written so far, as in a `.partial` file).
    pub fn zeros_to(&mut self, lsn: u64) {
        let n = (lsn - self.pos()) as usize;
        self.out.resize(self.out.len() + n, 0);
    }
}

/// Record data holding only main data: XLR_BLOCK_ID_DATA_SHORT (255) + u8 length, or
/// XLR_BLOCK_ID_DATA_LONG (254) + u32 length, then the bytes (xlogrecord.h).
pub fn main_data(main: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(main.len() + 5);
    if main.len() < 256 {
        v.push(255);
        v.push(main.len() as u8);
    } else {
        v.push(254);
        v.extend_from_slice(&(main.len() as u32).to_le_bytes());
    }
    v.extend_from_slice(main);
    v
}
