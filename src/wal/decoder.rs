//! Incremental WAL decoder: checks every page header and every record (header fields, prev-link chain,
//! CRC32C) of a WAL byte stream as it arrives, the way PostgreSQL's `xlogreader.c` does when it reads WAL
//! for recovery. Pure: no I/O, bounded memory, never panics on any input.
//!
//! Where each check comes from in PostgreSQL (13–18):
//! - page headers: `XLogReaderValidatePageHeader` (magic, info bits, long header with system identifier,
//!   segment size and XLOG_BLCKSZ, `xlp_pageaddr`, timeline never going back);
//! - continuation pages: `XLogDecodeNextRecord` ("there is no contrecord flag", "invalid contrecord length",
//!   `XLP_FIRST_IS_OVERWRITE_CONTRECORD` abandoning a record cut off by a crash);
//! - record headers: `ValidXLogRecordHeader` (length, resource manager ID, exact prev-link);
//! - record CRC: `ValidXLogRecord` (CRC32C over the data after the header, then the header up to `xl_crc`);
//! - XLOG_SWITCH: the reader skips to the end of the segment (`XLogDecodeNextRecord`); the writer zeroes the
//!   rest of the segment including the page headers (`CopyXLogRecordToWAL`, since PostgreSQL 11);
//! - XLOG_OVERWRITE_CONTRECORD must name the record it replaces (`xlogrecovery_redo`).
//!
//! The CRC is computed incrementally as bytes pass, so a record is never buffered: memory use is a few
//! hundred bytes whatever the declared record length. Only the 24-byte record header and page header are
//! copied (when split across calls), plus the first bytes (at most `records::CAPTURE_LEN`) of the data of
//! the few record types whose contents walkeeper reads: transaction commit and abort, XLOG_BACKUP_END,
//! checkpoints and XLOG_OVERWRITE_CONTRECORD. Each valid record reaches the callback of
//! [`WalDecoder::feed_with`] with its header fields and, in [`RecordInfo::kind`], what those types say
//! (commit time, backup start, redo pointer; parsed by [`crate::wal::records`]), once its CRC has matched.

use crate::wal::records::{
    is_read, RecordKind, CAPTURE_LEN, RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD, XLR_RMGR_INFO_MASK,
};
use crate::wal::segment::valid_segment_size;
use crate::wal::Lsn;

/// Size of a WAL page (`XLOG_BLCKSZ`); PostgreSQL's default and the only size built by distributions.
pub const XLOG_BLCKSZ: u32 = 8192;
/// `SizeOfXLogShortPHD`: MAXALIGN(sizeof(XLogPageHeaderData)).
pub const SIZE_OF_SHORT_PHD: usize = 24;
/// `SizeOfXLogLongPHD`: MAXALIGN(sizeof(XLogLongPageHeaderData)).
pub const SIZE_OF_LONG_PHD: usize = 40;
/// `SizeOfXLogRecord`: the fixed record header.
pub const SIZE_OF_XLOG_RECORD: u32 = 24;
/// `XLogRecordMaxSize` (xlogrecord.h): no record is longer.
pub const XLOG_RECORD_MAX_SIZE: u32 = 1020 * 1024 * 1024;

/// `xlp_info` bits (xlog_internal.h).
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// Added in 15 and back-patched to the 10–14 minor releases of August 2021, so every supported major has it.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// Highest built-in resource manager ID in 13–18 (RM_LOGICALMSG_ID).
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// Custom resource managers (15+) use IDs 128..=255.
pub const RM_MIN_CUSTOM_ID: u8 = 128;

const BLCKSZ: u64 = XLOG_BLCKSZ as u64;

/// `XLOG_PAGE_MAGIC` of a PostgreSQL major version, `None` for versions this decoder does not know.
pub fn page_magic_for_major(major: u32) -> Option<u16> {
    match major {
        13 => Some(0xD106),
        14 => Some(0xD10D),
        15 => Some(0xD110),
        16 => Some(0xD113),
        17 => Some(0xD116),
        18 => Some(0xD118),
        _ => None,
    }
}

/// The major version whose WAL carries this page magic.
pub fn major_for_page_magic(magic: u16) -> Option<u32> {
    (13..=18).find(|&m| page_magic_for_major(m) == Some(magic))
}

/// What the decoder checks the stream against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    /// `wal_segment_size` of the server (a power of two from 1 MiB to 1 GiB).
    pub segment_size: u32,
    /// `XLOG_PAGE_MAGIC` of the server's major version ([`page_magic_for_major`]).
    pub page_magic: u16,
    /// System identifier from IDENTIFY_SYSTEM; checked against every long page header when set.
    pub system_id: Option<u64>,
    /// The timeline being received: no page may carry a later one.
    pub timeline: u32,
}

/// A record that passed every check, as handed to the callback of [`WalDecoder::feed_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// Start of the record.
    pub lsn: Lsn,
    /// Just past its last byte (before MAXALIGN padding).
    pub end: Lsn,
    pub tot_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    /// What the record says, for the few types whose first data bytes the decoder reads (commits, aborts,
    /// backup end, checkpoints, switch; see [`crate::wal::records`]); `RecordKind::Other` for the rest.
    pub kind: RecordKind,
}

impl RecordInfo {
    pub fn is_switch(&self) -> bool {
        self.kind == RecordKind::Switch
    }
}

/// How the data fed so far ends (see [`WalDecoder::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// At a record boundary, or inside page headers, alignment or XLOG_SWITCH padding: nothing pending.
    Boundary,
    /// Inside a record (or the page header in front of its continuation) that began at `record`; `None`
    /// while still skipping the tail of a record that began before the decoder's start.
    InsideRecord { record: Option<Lsn> },
    /// A record start held a zero `xl_tot_len` and only zeros followed: the end of the WAL written so far,
    /// as in a `.partial` file or a zero-filled segment at rest. `at` is where the next record would start.
    EndOfWal { at: Lsn },
}

/// The decoder's view of the stream so far: where checked data ends and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeStatus {
    pub validated_up_to: Lsn,
    pub position: Lsn,
    pub end: StreamEnd,
    pub records: u64,
    pub last_record: Option<Lsn>,
}

/// A failed check. Each names the LSN (of the page or record) and what was expected against what was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("{lsn}: invalid decoder configuration: {reason}")]
    Config { lsn: Lsn, reason: String },
    #[error("page {page}: invalid page magic: expected {expected:04X}, found {found:04X}")]
    PageMagic { page: Lsn, expected: u16, found: u16 },
    #[error(
        "page {page}: invalid page info bits: expected only bits of {:04X}, found {found:04X}",
        XLP_ALL_FLAGS
    )]
    PageFlags { page: Lsn, found: u16 },
    #[error("page {page}: first page of a segment without a long header: expected XLP_LONG_HEADER in info, found info {found:04X}")]
    LongHeaderMissing { page: Lsn, found: u16 },
    #[error(
        "page {page}: long page header inside a segment: expected a short header, found info {found:04X}"
    )]
    UnexpectedLongHeader { page: Lsn, found: u16 },
    #[error("page {page}: WAL is from a different database system: expected system identifier {expected}, found {found}")]
    SystemId { page: Lsn, expected: u64, found: u64 },
    #[error("page {page}: incorrect segment size in long page header: expected {expected}, found {found}")]
    SegmentSize { page: Lsn, expected: u32, found: u32 },
    #[error("page {page}: incorrect XLOG_BLCKSZ in long page header: expected {expected}, found {found}")]
    BlockSize { page: Lsn, expected: u32, found: u32 },
    #[error("page {page}: unexpected page address: expected {page}, found {found}")]
    PageAddr { page: Lsn, found: Lsn },
    #[error("page {page}: out-of-sequence timeline ID: expected at least {previous} (the previous page's), found {found}")]
    TimelineBackwards { page: Lsn, previous: u32, found: u32 },
    #[error("page {page}: timeline ID ahead of the timeline being received: expected at most {configured}, found {found}")]
    TimelineAhead { page: Lsn, configured: u32, found: u32 },
    #[error("page {page}: no contrecord flag: expected XLP_FIRST_IS_CONTRECORD continuing the record at {}, found info {found:04X}", fmt_opt(*.record))]
    MissingContrecord { page: Lsn, record: Option<Lsn>, found: u16 },
    #[error("page {page}: invalid contrecord length for the record at {}: expected xlp_rem_len {expected}, found {found}", fmt_opt(*.record))]
    ContrecordLength { page: Lsn, record: Option<Lsn>, expected: u32, found: u32 },
    #[error("page {page}: unexpected contrecord: expected a record to start after the page header, found XLP_FIRST_IS_CONTRECORD with xlp_rem_len {rem_len}")]
    UnexpectedContrecord { page: Lsn, rem_len: u32 },
    #[error("page {page}: xlp_rem_len without XLP_FIRST_IS_CONTRECORD: expected 0, found {found}")]
    RemLenWithoutContrecord { page: Lsn, found: u32 },
    #[error("page {page}: unexpected XLP_FIRST_IS_OVERWRITE_CONTRECORD: expected a record cut off at this page, found the previous record complete")]
    UnexpectedOverwrite { page: Lsn },
    #[error("record {at}: invalid record length: expected at least {}, found {found}", SIZE_OF_XLOG_RECORD)]
    RecordTooShort { at: Lsn, found: u32 },
    #[error(
        "record {at}: record too long: expected at most {} (XLogRecordMaxSize), found {found}",
        XLOG_RECORD_MAX_SIZE
    )]
    RecordTooLong { at: Lsn, found: u32 },
    #[error("record {at}: invalid resource manager ID: expected {allowed}, found {found}")]
    InvalidRmgr { at: Lsn, allowed: &'static str, found: u8 },
    #[error("record {at}: incorrect prev-link: expected {expected}, found {found}")]
    PrevLink { at: Lsn, expected: Lsn, found: Lsn },
    #[error("record {at}: incorrect record CRC32C: expected {expected:08X} (computed), found {found:08X} (xl_crc)")]
    Crc { at: Lsn, expected: u32, found: u32 },
    #[error("record {at}: first record after an overwritten contrecord: expected XLOG_OVERWRITE_CONTRECORD (rmgr 0, info D0), found rmgr {rmid}, info {info:02X}")]
    OverwriteRecord { at: Lsn, rmid: u8, info: u8 },
    #[error("record {at}: mismatching overwritten LSN: expected {expected}, found {}", fmt_opt(*.found))]
    OverwrittenLsn { at: Lsn, expected: Lsn, found: Option<Lsn> },
    #[error("{at}: data after the end of WAL: expected zeros after the zero record length at {end}, found a non-zero byte")]
    DataAfterEndOfWal { at: Lsn, end: Lsn },
    #[error("{lsn}: timeline went back: expected at least {current}, found {requested}")]
    TimelineSetBackwards { lsn: Lsn, current: u32, requested: u32 },
    #[error("{lsn}: LSN overflow: expected fewer than {len} more bytes, found {len}")]
    LsnOverflow { lsn: Lsn, len: u64 },
}

fn fmt_opt(l: Option<Lsn>) -> String {
    l.map_or_else(|| "(before the decoder's start)".to_string(), |l| l.to_string())
}

impl WalError {
    /// The LSN the error is about (page, record or byte).
    pub fn lsn(&self) -> Lsn {
        use WalError::*;
        match self {
            Config { lsn, .. } | TimelineSetBackwards { lsn, .. } | LsnOverflow { lsn, .. } => *lsn,
            PageMagic { page, .. }
            | PageFlags { page, .. }
            | LongHeaderMissing { page, .. }
            | UnexpectedLongHeader { page, .. }
            | SystemId { page, .. }
            | SegmentSize { page, .. }
            | BlockSize { page, .. }
            | PageAddr { page, .. }
            | TimelineBackwards { page, .. }
            | TimelineAhead { page, .. }
            | MissingContrecord { page, .. }
            | ContrecordLength { page, .. }
            | UnexpectedContrecord { page, .. }
            | RemLenWithoutContrecord { page, .. }
            | UnexpectedOverwrite { page } => *page,
            RecordTooShort { at, .. }
            | RecordTooLong { at, .. }
            | InvalidRmgr { at, .. }
            | PrevLink { at, .. }
            | Crc { at, .. }
            | OverwriteRecord { at, .. }
            | OverwrittenLsn { at, .. }
            | DataAfterEndOfWal { at, .. } => *at,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the first page header: it tells whether the stream begins inside a record.
    Start,
    /// Skipping the tail of a record that began before the start; `remaining` bytes of it are left.
    SkipTail { remaining: u32 },
    /// At a record boundary.
    RecordStart,
    /// `got` bytes of the current record's header are in `rec_hdr`.
    RecordHeader { got: u8 },
    /// Header checked; `remaining` bytes of record data still to come (CRC'd as they pass).
    RecordBody { remaining: u32 },
    /// MAXALIGN padding after a record (or after a skipped tail).
    Align { remaining: u8 },
    /// After XLOG_SWITCH, up to the end of the segment.
    SwitchPadding,
    /// A zero `xl_tot_len` at `at`: nothing more is valid, and only zeros may follow.
    EndOfWal { at: u64 },
}

/// What the first record after a `XLP_FIRST_IS_OVERWRITE_CONTRECORD` page header must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overwrite {
    None,
    /// XLOG_OVERWRITE_CONTRECORD naming `aborted` (unknown when the cut-off record began before our start).
    Expect {
        aborted: Option<u64>,
    },
}

/// Incremental WAL validator. See the module documentation.
#[derive(Clone, Debug)]
pub struct WalDecoder {
    cfg: DecoderConfig,
    rmid_allows_custom: bool,
    failed: Option<WalError>,
    pos: u64,
    validated: u64,
    phase: Phase,
    // Page header being assembled (phdr_len == 0: not inside a page header).
    phdr: [u8; SIZE_OF_LONG_PHD],
    phdr_got: usize,
    phdr_len: usize,
    latest_tli: u32,
    // Current record.
    rec_start: u64,
    rec_hdr: [u8; SIZE_OF_XLOG_RECORD as usize],
    rec_tot_len: u32,
    crc: u32,
    overwrite: Overwrite,
    /// The current record is of a type [`RecordKind::of`] reads ([`is_read`]): its first data bytes go to
    /// `capture`.
    capturing: bool,
    capture: [u8; CAPTURE_LEN],
    capture_len: usize,
    /// False while the bytes since the start include the skipped tail of a record we never saw: nothing is
    /// validated until the first record completes.
    trusted: bool,
    // Chain.
    prev: Option<u64>,
    records: u64,
}

impl WalDecoder {
    /// Start decoding at `start`, a segment boundary. The first page may begin with the tail of a record
    /// that started earlier (XLP_FIRST_IS_CONTRECORD): it is skipped, as `XLogFindNextRecord` does.
    /// An invalid configuration or start leaves the decoder failed: every `feed` reports why.
    pub fn new(cfg: DecoderConfig, start: Lsn) -> Self {
        let mut d = Self {
            cfg,
            rmid_allows_custom: major_for_page_magic(cfg.page_magic).is_none_or(|m| m >= 15),
            failed: None,
            pos: start.0,
            validated: start.0,
            phase: Phase::Start,
            phdr: [0; SIZE_OF_LONG_PHD],
            phdr_got: 0,
            phdr_len: 0,
            latest_tli: 1, // timelines start at 1: a zero TLI is out of sequence
            rec_start: 0,
            rec_hdr: [0; SIZE_OF_XLOG_RECORD as usize],
            rec_tot_len: 0,
            crc: 0,
            overwrite: Overwrite::None,
            capturing: false,
            capture: [0; CAPTURE_LEN],
            capture_len: 0,
            trusted: true,
            prev: None,
            records: 0,
        };
        let reason = if !valid_segment_size(u64::from(cfg.segment_size)) {
            Some(format!("segment size {} is not a power of two from 1 MiB to 1 GiB", cfg.segment_size))
        } else if start.0 % u64::from(cfg.segment_size) != 0 {
            Some(format!("start {start} is not at a segment boundary"))
        } else if cfg.timeline == 0 {
            Some("timeline 0 is not a valid timeline".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            d.failed = Some(WalError::Config { lsn: start, reason });
        }
        d
    }

    /// Feed the next bytes of the stream, in any chunking. After an error the decoder stays failed and
    /// returns the same error.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), WalError> {
        self.feed_with(data, |_| {})
    }

    /// Like [`feed`](Self::feed), calling `on_record` for every record that passes all checks, in order.
    pub fn feed_with<F: FnMut(&RecordInfo)>(
        &mut self,
        data: &[u8],
        mut on_record: F,
    ) -> Result<(), WalError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pos.checked_add(data.len() as u64).is_none() {
            let e = WalError::LsnOverflow { lsn: Lsn(self.pos), len: data.len() as u64 };
            self.failed = Some(e.clone());
            return Err(e);
        }
        match self.run(data, &mut on_record) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Everything before this LSN has been checked and is consistent: the end (with MAXALIGN padding) of the
    /// last complete, CRC-valid record, or a later position inside page headers or XLOG_SWITCH padding.
    pub fn validated_up_to(&self) -> Lsn {
        Lsn(self.validated)
    }

    /// The LSN of the next byte expected.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// A new timeline begins here (the receiver follows a timeline switch). Timelines never go back: a
    /// lower one fails the decoder.
    pub fn set_timeline(&mut self, tli: u32) -> Result<(), WalError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if tli < self.cfg.timeline {
            let e = WalError::TimelineSetBackwards {
                lsn: Lsn(self.pos),
                current: self.cfg.timeline,
                requested: tli,
            };
            self.failed = Some(e.clone());
            return Err(e);
        }
        self.cfg.timeline = tli;
        Ok(())
    }

    pub fn timeline(&self) -> u32 {
        self.cfg.timeline
    }

    pub fn records_seen(&self) -> u64 {
        self.records
    }

    /// Start of the last complete, valid record.
    pub fn last_record(&self) -> Option<Lsn> {
        self.prev.map(Lsn)
    }

    /// The error that failed the decoder, if any.
    pub fn error(&self) -> Option<&WalError> {
        self.failed.as_ref()
    }

    /// Where checked data ends and why: for verifying a file at rest, feed it all and call this. An error
    /// means the data is inconsistent; [`StreamEnd::EndOfWal`] that valid WAL ends at `at` and the rest is
    /// zeros; [`StreamEnd::InsideRecord`] that the data stops inside a record (a truncated stream).
    pub fn status(&self) -> Result<DecodeStatus, WalError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let end = match self.phase {
            Phase::EndOfWal { at } => StreamEnd::EndOfWal { at: Lsn(at) },
            Phase::RecordHeader { .. } | Phase::RecordBody { .. } => {
                StreamEnd::InsideRecord { record: Some(Lsn(self.rec_start)) }
            }
            Phase::SkipTail { .. } => StreamEnd::InsideRecord { record: None },
            Phase::Start | Phase::RecordStart | Phase::Align { .. } | Phase::SwitchPadding => {
                StreamEnd::Boundary
            }
        };
        Ok(DecodeStatus {
            validated_up_to: Lsn(self.validated),
            position: Lsn(self.pos),
            end,
            records: self.records,
            last_record: self.last_record(),
        })
    }

    fn seg(&self) -> u64 {
        u64::from(self.cfg.segment_size)
    }

    fn run<F: FnMut(&RecordInfo)>(&mut self, mut data: &[u8], on_record: &mut F) -> Result<(), WalError> {
        while !data.is_empty() {
            if let Phase::EndOfWal { at } = self.phase {
                if let Some(i) = data.iter().position(|&b| b != 0) {
                    return Err(WalError::DataAfterEndOfWal { at: Lsn(self.pos + i as u64), end: Lsn(at) });
                }
                self.pos += data.len() as u64;
                return Ok(());
            }
            if self.phdr_len == 0 && self.pos % BLCKSZ == 0 {
                self.phdr_len = if self.pos % self.seg() == 0 { SIZE_OF_LONG_PHD } else { SIZE_OF_SHORT_PHD };
                self.phdr_got = 0;
            }
            if self.phdr_len > 0 {
                let page = self.pos - self.phdr_got as u64;
                let need = self.phdr_len - self.phdr_got;
                if self.phdr_got == 0 && data.len() >= need {
                    let (h, rest) = data.split_at(need);
                    self.pos += need as u64;
                    self.phdr_len = 0;
                    self.page_header(page, h)?;
                    data = rest;
                } else {
                    let n = need.min(data.len());
                    self.phdr[self.phdr_got..self.phdr_got + n].copy_from_slice(&data[..n]);
                    self.phdr_got += n;
                    self.pos += n as u64;
                    data = &data[n..];
                    if self.phdr_got == self.phdr_len {
                        let hdr = self.phdr;
                        let len = self.phdr_len;
                        self.phdr_len = 0;
                        self.phdr_got = 0;
                        self.page_header(page, &hdr[..len])?;
                    }
                }
                continue;
            }
            let page_left = (BLCKSZ - self.pos % BLCKSZ) as usize;
            let avail = data.len().min(page_left);
            let used = match self.phase {
                Phase::Start | Phase::RecordStart => {
                    self.rec_start = self.pos;
                    self.phase = Phase::RecordHeader { got: 0 };
                    0
                }
                Phase::RecordHeader { got } => self.record_header(got, &data[..avail], on_record)?,
                Phase::RecordBody { remaining } => {
                    let n = avail.min(remaining as usize);
                    let chunk = &data[..n];
                    self.crc = crc32c::crc32c_append(self.crc, chunk);
                    if self.capturing {
                        self.capture(chunk);
                    }
                    let remaining = remaining - n as u32;
                    self.pos += n as u64;
                    self.phase = Phase::RecordBody { remaining };
                    if remaining == 0 {
                        self.complete_record(on_record)?;
                    }
                    n
                }
                Phase::Align { remaining } => {
                    let n = avail.min(usize::from(remaining));
                    self.pos += n as u64;
                    let remaining = remaining - n as u8;
                    self.phase = if remaining == 0 { Phase::RecordStart } else { Phase::Align { remaining } };
                    if self.trusted {
                        self.validated = self.pos;
                    }
                    n
                }
                Phase::SkipTail { remaining } => {
                    let n = avail.min(remaining as usize);
                    self.pos += n as u64;
                    let remaining = remaining - n as u32;
                    self.phase = if remaining == 0 {
                        match align_pad(self.pos) {
                            0 => Phase::RecordStart,
                            p => Phase::Align { remaining: p },
                        }
                    } else {
                        Phase::SkipTail { remaining }
                    };
                    n
                }
                Phase::SwitchPadding => {
                    self.pos += avail as u64;
                    self.validated = self.pos;
                    if self.pos % self.seg() == 0 {
                        self.phase = Phase::RecordStart;
                    }
                    avail
                }
                Phase::EndOfWal { .. } => 0, // handled above
            };
            data = &data[used..];
        }
        Ok(())
    }

    /// Collect header bytes of the current record from `chunk` (which lies within one page).
    fn record_header<F: FnMut(&RecordInfo)>(
        &mut self,
        got: u8,
        chunk: &[u8],
        on_record: &mut F,
    ) -> Result<usize, WalError> {
        let got = usize::from(got);
        let n = (SIZE_OF_XLOG_RECORD as usize - got).min(chunk.len());
        self.rec_hdr[got..got + n].copy_from_slice(&chunk[..n]);
        let now = got + n;
        let at = Lsn(self.rec_start);
        if got < 4 && now >= 4 {
            // xl_tot_len is always on the record's first page (records are MAXALIGNed).
            let tot_len =
                u32::from_le_bytes([self.rec_hdr[0], self.rec_hdr[1], self.rec_hdr[2], self.rec_hdr[3]]);
            if tot_len == 0 {
                // No record here: the end of the WAL written so far. The rest of the header must be zeros too.
                if let Some(i) = self.rec_hdr[4..now].iter().position(|&b| b != 0) {
                    return Err(WalError::DataAfterEndOfWal {
                        at: Lsn(self.rec_start + 4 + i as u64),
                        end: at,
                    });
                }
                self.pos += n as u64;
                self.phase = Phase::EndOfWal { at: self.rec_start };
                return Ok(n);
            }
            if tot_len < SIZE_OF_XLOG_RECORD {
                return Err(WalError::RecordTooShort { at, found: tot_len });
            }
            if tot_len > XLOG_RECORD_MAX_SIZE {
                return Err(WalError::RecordTooLong { at, found: tot_len });
            }
            self.rec_tot_len = tot_len;
        }
        self.pos += n as u64;
        if now < SIZE_OF_XLOG_RECORD as usize {
            self.phase = Phase::RecordHeader { got: now as u8 };
            return Ok(n);
        }
        // Whole header: ValidXLogRecordHeader.
        let h = &self.rec_hdr;
        let rmid = h[17];
        let info = h[16];
        let builtin = rmid <= RM_MAX_BUILTIN_ID;
        let custom = self.rmid_allows_custom && rmid >= RM_MIN_CUSTOM_ID;
        if !builtin && !custom {
            let allowed = if self.rmid_allows_custom { "0..=21 or 128..=255" } else { "0..=21" };
            return Err(WalError::InvalidRmgr { at, allowed, found: rmid });
        }
        let xl_prev = u64::from_le_bytes(h[8..16].try_into().unwrap_or([0; 8]));
        if let Some(prev) = self.prev {
            if xl_prev != prev {
                return Err(WalError::PrevLink { at, expected: Lsn(prev), found: Lsn(xl_prev) });
            }
        }
        if let Overwrite::Expect { .. } = self.overwrite {
            if rmid != RM_XLOG_ID || info & XLR_RMGR_INFO_MASK != XLOG_OVERWRITE_CONTRECORD {
                return Err(WalError::OverwriteRecord { at, rmid, info });
            }
        }
        self.capturing = is_read(rmid, info);
        self.capture_len = 0;
        self.crc = 0;
        let remaining = self.rec_tot_len - SIZE_OF_XLOG_RECORD;
        self.phase = Phase::RecordBody { remaining };
        if remaining == 0 {
            self.complete_record(on_record)?;
        }
        Ok(n)
    }

    /// Keep the first bytes of the current record's data. Out of line and cold: most records are not read,
    /// and the loop that feeds their bytes stays as tight as before.
    #[cold]
    #[inline(never)]
    fn capture(&mut self, chunk: &[u8]) {
        let k = (CAPTURE_LEN - self.capture_len).min(chunk.len());
        self.capture[self.capture_len..self.capture_len + k].copy_from_slice(&chunk[..k]);
        self.capture_len += k;
    }

    /// What the current record (complete, of a type [`is_read`] accepts) says.
    #[cold]
    #[inline(never)]
    fn captured_kind(&self) -> RecordKind {
        RecordKind::of(self.rec_hdr[17], self.rec_hdr[16], &self.capture[..self.capture_len])
    }

    /// All of the record's bytes have passed: ValidXLogRecord, then move past it.
    fn complete_record<F: FnMut(&RecordInfo)>(&mut self, on_record: &mut F) -> Result<(), WalError> {
        let h = self.rec_hdr;
        let at = Lsn(self.rec_start);
        let crc = crc32c::crc32c_append(self.crc, &h[..20]);
        let stored = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
        if crc != stored {
            return Err(WalError::Crc { at, expected: crc, found: stored });
        }
        let mut rec = RecordInfo {
            lsn: at,
            end: Lsn(self.pos),
            tot_len: self.rec_tot_len,
            xid: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            prev: Lsn(u64::from_le_bytes(h[8..16].try_into().unwrap_or([0; 8]))),
            info: h[16],
            rmid: h[17],
            kind: RecordKind::Other,
        };
        if self.capturing {
            rec.kind = self.captured_kind();
        }
        if let Overwrite::Expect { aborted } = self.overwrite {
            let found = match rec.kind {
                RecordKind::OverwriteContrecord { overwritten, .. } => Some(overwritten),
                _ => None,
            };
            if let Some(aborted) = aborted {
                if found != Some(Lsn(aborted)) {
                    return Err(WalError::OverwrittenLsn { at, expected: Lsn(aborted), found });
                }
            }
            self.overwrite = Overwrite::None;
        }
        self.records += 1;
        self.trusted = true;
        self.prev = Some(self.rec_start);
        self.validated = self.pos;
        self.phase = if rec.is_switch() && self.pos % self.seg() != 0 {
            Phase::SwitchPadding
        } else {
            match align_pad(self.pos) {
                0 => Phase::RecordStart,
                p => Phase::Align { remaining: p },
            }
        };
        on_record(&rec);
        Ok(())
    }

    /// XLogReaderValidatePageHeader, then what the page says about a record continuing onto it.
    fn page_header(&mut self, page: u64, h: &[u8]) -> Result<(), WalError> {
        let pl = Lsn(page);
        if h.iter().all(|&b| b == 0) {
            match self.phase {
                Phase::SwitchPadding => {
                    // PostgreSQL 11+ zeroes the headers of the pages after an XLOG_SWITCH record.
                    self.validated = self.pos;
                    return Ok(());
                }
                Phase::Start | Phase::RecordStart => {
                    // A zeroed page where a record would start: the end of the WAL written so far (a
                    // zero-filled segment at rest), like a zero xl_tot_len.
                    self.phase = Phase::EndOfWal { at: page };
                    return Ok(());
                }
                _ => {}
            }
        }
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        let magic = u16_at(0);
        if magic != self.cfg.page_magic {
            return Err(WalError::PageMagic { page: pl, expected: self.cfg.page_magic, found: magic });
        }
        let info = u16_at(2);
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(WalError::PageFlags { page: pl, found: info });
        }
        let seg_start = page % self.seg() == 0;
        if info & XLP_LONG_HEADER != 0 {
            if !seg_start {
                return Err(WalError::UnexpectedLongHeader { page: pl, found: info });
            }
            let sysid = u64_at(24);
            if let Some(expected) = self.cfg.system_id {
                if expected != 0 && sysid != expected {
                    return Err(WalError::SystemId { page: pl, expected, found: sysid });
                }
            }
            let seg_size = u32_at(32);
            if seg_size != self.cfg.segment_size {
                return Err(WalError::SegmentSize {
                    page: pl,
                    expected: self.cfg.segment_size,
                    found: seg_size,
                });
            }
            let blcksz = u32_at(36);
            if blcksz != XLOG_BLCKSZ {
                return Err(WalError::BlockSize { page: pl, expected: XLOG_BLCKSZ, found: blcksz });
            }
        } else if seg_start {
            return Err(WalError::LongHeaderMissing { page: pl, found: info });
        }
        let pageaddr = u64_at(8);
        if pageaddr != page {
            return Err(WalError::PageAddr { page: pl, found: Lsn(pageaddr) });
        }
        let tli = u32_at(4);
        if tli < self.latest_tli {
            return Err(WalError::TimelineBackwards { page: pl, previous: self.latest_tli, found: tli });
        }
        if tli > self.cfg.timeline {
            return Err(WalError::TimelineAhead { page: pl, configured: self.cfg.timeline, found: tli });
        }
        self.latest_tli = tli;
        let rem_len = u32_at(16);
        let contrec = info & XLP_FIRST_IS_CONTRECORD != 0;
        let overwrite = info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0;

        // What was expected to continue onto this page: (record start if known, bytes remaining).
        let continuing = match self.phase {
            Phase::Start => {
                if overwrite {
                    self.overwrite = Overwrite::Expect { aborted: None };
                }
                if contrec && !overwrite {
                    if rem_len == 0 {
                        return Err(WalError::ContrecordLength {
                            page: pl,
                            record: None,
                            expected: 1,
                            found: 0,
                        });
                    }
                    self.phase = Phase::SkipTail { remaining: rem_len };
                    self.trusted = false;
                    return Ok(());
                }
                None
            }
            Phase::SkipTail { remaining } => Some((None, remaining)),
            Phase::RecordHeader { got } => {
                Some((Some(self.rec_start), self.rec_tot_len.saturating_sub(u32::from(got))))
            }
            Phase::RecordBody { remaining } => Some((Some(self.rec_start), remaining)),
            Phase::RecordStart | Phase::Align { .. } | Phase::SwitchPadding | Phase::EndOfWal { .. } => {
                if overwrite {
                    return Err(WalError::UnexpectedOverwrite { page: pl });
                }
                None
            }
        };
        match continuing {
            Some((record, remaining)) => {
                if overwrite {
                    // The record was cut off (crash, or promotion mid-record) and abandoned; the first record
                    // on this page must say so. Restart at the page's first record, as XLogDecodeNextRecord does.
                    self.overwrite = Overwrite::Expect { aborted: record };
                    self.phase = Phase::RecordStart;
                    return Ok(());
                }
                if !contrec {
                    return Err(WalError::MissingContrecord {
                        page: pl,
                        record: record.map(Lsn),
                        found: info,
                    });
                }
                if rem_len != remaining {
                    return Err(WalError::ContrecordLength {
                        page: pl,
                        record: record.map(Lsn),
                        expected: remaining,
                        found: rem_len,
                    });
                }
            }
            None => {
                if contrec {
                    return Err(WalError::UnexpectedContrecord { page: pl, rem_len });
                }
                if rem_len != 0 {
                    return Err(WalError::RemLenWithoutContrecord { page: pl, found: rem_len });
                }
                if self.phase == Phase::Start {
                    self.phase = Phase::RecordStart;
                }
                if self.trusted {
                    self.validated = self.pos;
                }
            }
        }
        Ok(())
    }
}

/// Bytes of MAXALIGN (8) padding after a record ending at `pos`.
fn align_pad(pos: u64) -> u8 {
    ((8 - pos % 8) % 8) as u8
}

impl WalDecoder {
    /// Check a WAL file at rest (a segment, or a `.partial` one that is zero-filled past the data received):
    /// `data` holds the file from `cfg`'s segment start `start`. The zeros after the last non-zero byte may
    /// be padding rather than WAL, so a record they would complete is taken as cut off by the end of the
    /// received data, not as corrupt: the result then says [`StreamEnd::InsideRecord`] and
    /// `validated_up_to` is where valid records end. Any inconsistency in the non-zero part is an error.
    pub fn check_at_rest(cfg: DecoderConfig, start: Lsn, data: &[u8]) -> Result<DecodeStatus, WalError> {
        Self::check_at_rest_with(cfg, start, data, |_| {})
    }

    /// Like [`check_at_rest`](Self::check_at_rest), calling `on_record` for every valid record.
    pub fn check_at_rest_with<F: FnMut(&RecordInfo)>(
        cfg: DecoderConfig,
        start: Lsn,
        data: &[u8],
        mut on_record: F,
    ) -> Result<DecodeStatus, WalError> {
        let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let mut d = WalDecoder::new(cfg, start);
        d.feed_with(&data[..end], &mut on_record)?;
        let mut rest = d.clone();
        // The zeros may complete the last record (one whose data ends in zero bytes); after a record, zeros
        // read as the end of WAL, so `on_record` never sees a record of a feed that then fails.
        match rest.feed_with(&data[end..], &mut on_record) {
            Ok(()) => rest.status(),
            // Only zeros follow: the record in progress was not fully written.
            Err(_) => d.status(),
        }
    }
}

#[cfg(test)]
#[path = "decoder_tests.rs"]
mod tests;
