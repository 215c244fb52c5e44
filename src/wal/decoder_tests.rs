use super::*;
use crate::wal::encoder::{main_data, WalEncoder};
use proptest::prelude::*;

const SEG: u32 = 1 << 20;
const MAGIC: u16 = 0xD110;
const SYSID: u64 = 7_000_000_000_000_000_123;
const START: u64 = 16 * SEG as u64;

fn cfg() -> DecoderConfig {
    DecoderConfig { segment_size: SEG, page_magic: MAGIC, system_id: Some(SYSID), timeline: 1 }
}

fn enc() -> WalEncoder {
    WalEncoder::new(MAGIC, SEG, SYSID, 1, START)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Append records until the next record would start with `left` bytes left on its page.
fn fill_to_page_left(e: &mut WalEncoder, left: u64) {
    loop {
        let pos = e.pos();
        let in_page = pos % BLCKSZ;
        if in_page != 0 && BLCKSZ - in_page == left {
            return;
        }
        let pl = if in_page == 0 { BLCKSZ - SIZE_OF_SHORT_PHD as u64 } else { BLCKSZ - in_page };
        if pl >= left + 24 && !(in_page == 0 && pos % u64::from(SEG) == 0) {
            e.record(10, 0, 5, &vec![0xAB; (pl - left - 24) as usize]);
        } else {
            e.record(10, 0, 5, &data(100, 1));
        }
    }
}

/// Records of many shapes: small, page-spanning, segment-spanning, split headers, XLOG_SWITCH.
fn mixed() -> WalEncoder {
    let mut e = enc();
    for i in 0..20 {
        e.main_data_record(10, 0x10, 700 + i, &data(40 + i as usize * 13, i as u8));
    }
    e.record(10, 0, 701, &data(20_000, 3)); // spans 3 pages
    fill_to_page_left(&mut e, 16); // header split 16 / 8
    e.record(11, 0, 702, &data(300, 4));
    fill_to_page_left(&mut e, 8); // header split 8 / 16
    e.record(11, 0, 702, &data(5, 5));
    fill_to_page_left(&mut e, 8);
    e.record(0, 0, 0, &[]); // a bare 24-byte record split 8 / 16
    e.record(21, 0, 703, &data(1_500_000, 6)); // crosses a segment boundary
    e.record(1, 0, 703, &data(16, 7));
    kinds_sample(&mut e);
    e.switch();
    for i in 0..5 {
        e.record(10, 0, 800 + i, &data(3000, i as u8));
    }
    fill_to_page_left(&mut e, 64);
    e.record(10, 0, 900, &data(40, 1)); // ends exactly at a page end
    for i in 0..3 {
        e.record(10, 0, 901, &data(100, i));
    }
    e
}

fn commit_data(time: i64, len: usize) -> Vec<u8> {
    let mut c = time.to_le_bytes().to_vec();
    c.resize(len, 0x5A);
    c
}

fn checkpoint_data(redo: u64, tli: u32, unix_secs: i64) -> Vec<u8> {
    let mut c = vec![0u8; 88];
    c[0..8].copy_from_slice(&redo.to_le_bytes());
    c[8..12].copy_from_slice(&tli.to_le_bytes());
    c[64..72].copy_from_slice(&unix_secs.to_le_bytes());
    c
}

/// The record types whose data the decoder reads, placed so that their data is split in every way: a
/// commit, a commit whose header ends a page (its data on the next), a checkpoint whose data crosses a page,
/// a long commit (DATA_LONG) spanning pages, a backup end, an abort. Returns their kinds in order.
fn kinds_sample(e: &mut WalEncoder) -> Vec<(u64, RecordKind)> {
    use crate::wal::pgtime::PgTimestamp;
    use crate::wal::records::*;
    let mut out = Vec::new();
    let commit = |t: i64| RecordKind::Commit { time: PgTimestamp(t), prepared: false };
    out.push((e.main_data_record(RM_XACT_ID, XLOG_XACT_COMMIT, 9, &commit_data(11, 16)), commit(11)));
    fill_to_page_left(e, 24);
    out.push((e.main_data_record(RM_XACT_ID, XLOG_XACT_COMMIT, 9, &commit_data(12, 16)), commit(12)));
    fill_to_page_left(e, 64);
    let cp = checkpoint_data(0x1234_5678, 1, 1_700_000_000);
    let time = PgTimestamp::from_unix_seconds(1_700_000_000).unwrap();
    out.push((
        e.main_data_record(RM_XLOG_ID, XLOG_CHECKPOINT_ONLINE, 0, &cp),
        RecordKind::Checkpoint { redo: Lsn(0x1234_5678), timeline: 1, time, shutdown: false },
    ));
    fill_to_page_left(e, 40);
    out.push((
        e.main_data_record(RM_XACT_ID, XLOG_XACT_COMMIT | 0x80, 9, &commit_data(13, 20_000)),
        commit(13),
    ));
    out.push((
        e.main_data_record(RM_XLOG_ID, XLOG_BACKUP_END, 0, &0x1234_0028u64.to_le_bytes()),
        RecordKind::BackupEnd { start: Lsn(0x1234_0028) },
    ));
    out.push((
        e.main_data_record(RM_XACT_ID, XLOG_XACT_ABORT, 9, &commit_data(14, 8)),
        RecordKind::Abort { time: PgTimestamp(14), prepared: false },
    ));
    out
}

#[test]
fn reads_what_commit_checkpoint_and_backup_end_records_say() {
    let mut e = enc();
    e.record(10, 0, 1, &data(100, 1));
    let want = kinds_sample(&mut e);
    e.record(10, 0, 1, &data(100, 1));
    for chunk in [1, 7, 4096, usize::MAX] {
        let mut d = WalDecoder::new(cfg(), Lsn(START));
        let mut got = Vec::new();
        for c in e.bytes().chunks(chunk.min(e.bytes().len())) {
            d.feed_with(c, |r| {
                if r.kind != RecordKind::Other {
                    got.push((r.lsn.0, r.kind))
                }
            })
            .unwrap();
        }
        assert_eq!(got, want, "chunks of {chunk}");
    }
}

fn decode_all(bytes: &[u8]) -> (Result<(), WalError>, WalDecoder, Vec<RecordInfo>) {
    let mut d = WalDecoder::new(cfg(), Lsn(START));
    let mut recs = Vec::new();
    let r = d.feed_with(bytes, |r| recs.push(*r));
    (r, d, recs)
}

fn lsns(recs: &[RecordInfo]) -> Vec<u64> {
    recs.iter().map(|r| r.lsn.0).collect()
}

#[test]
fn magic_table() {
    assert_eq!(page_magic_for_major(15), Some(0xD110));
    assert_eq!(page_magic_for_major(12), None);
    for m in 13..=18 {
        assert_eq!(major_for_page_magic(page_magic_for_major(m).unwrap()), Some(m));
    }
}

#[test]
fn decodes_mixed_stream() {
    let e = mixed();
    let (r, d, recs) = decode_all(e.bytes());
    r.unwrap();
    assert_eq!(lsns(&recs), e.records);
    assert_eq!(d.records_seen(), e.records.len() as u64);
    assert_eq!(d.last_record(), e.records.last().map(|&l| Lsn(l)));
    assert_eq!(d.position(), Lsn(e.pos()));
    assert_eq!(d.validated_up_to(), Lsn(e.pos()));
    let st = d.status().unwrap();
    assert_eq!(st.end, StreamEnd::Boundary);
    assert!(recs.iter().any(|r| r.is_switch()));
    // The first record after the switch starts right after the next segment's long header.
    let sw = recs.iter().position(|r| r.is_switch()).unwrap();
    assert_eq!(recs[sw + 1].lsn.0 % u64::from(SEG), SIZE_OF_LONG_PHD as u64);
}

#[test]
fn byte_at_a_time_matches_one_feed() {
    let e = mixed();
    let (_, whole, recs) = decode_all(e.bytes());
    let mut d = WalDecoder::new(cfg(), Lsn(START));
    let mut got = Vec::new();
    let mut validated = Vec::new();
    for b in e.bytes().chunks(1) {
        d.feed_with(b, |r| got.push(*r)).unwrap();
        validated.push(d.validated_up_to());
    }
    assert_eq!(got, recs);
    assert_eq!(d.validated_up_to(), whole.validated_up_to());
    // validated_up_to never goes back and never passes the position.
    assert!(validated.windows(2).all(|w| w[0] <= w[1]));
    assert!(validated.iter().enumerate().all(|(i, v)| v.0 <= START + i as u64 + 1));
}

#[test]
fn validated_stops_before_an_incomplete_record() {
    let mut e = enc();
    let a = e.record(10, 0, 1, &data(100, 1));
    let b = e.record(10, 0, 1, &data(10_000, 1));
    let bytes = e.bytes();
    let cut = e.offset(b) + 5000;
    let mut d = WalDecoder::new(cfg(), Lsn(START));
    d.feed(&bytes[..cut]).unwrap();
    assert_eq!(d.validated_up_to(), Lsn(b)); // end of a, aligned
    assert_eq!(d.last_record(), Some(Lsn(a)));
    assert_eq!(d.status().unwrap().end, StreamEnd::InsideRecord { record: Some(Lsn(b)) });
    d.feed(&bytes[cut..]).unwrap();
    assert_eq!(d.validated_up_to(), Lsn(e.pos()));
}

fn expect_err(bytes: &[u8]) -> WalError {
    let (r, d, _) = decode_all(bytes);
    let e = r.expect_err("corruption not detected");
    // The decoder stays failed.
    let mut d2 = d.clone();
    assert_eq!(d2.feed(&[0]).unwrap_err(), e);
    assert_eq!(d.status().unwrap_err(), e);
    e
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Start LSN of a page (not a segment start) whose header has / lacks XLP_FIRST_IS_CONTRECORD.
fn find_page(e: &WalEncoder, contrec: bool) -> u64 {
    let b = e.bytes();
    (1..=(b.len() - SIZE_OF_SHORT_PHD) / BLCKSZ as usize)
        .map(|p| e.start() + p as u64 * BLCKSZ)
        .find(|&l| {
            let o = e.offset(l);
            let info = u16::from_le_bytes([b[o + 2], b[o + 3]]);
            l % u64::from(SEG) != 0 && b[o] != 0 && (info & XLP_FIRST_IS_CONTRECORD != 0) == contrec
        })
        .unwrap()
}

#[test]
fn page_header_checks() {
    let e = mixed();
    let seg2 = START + u64::from(SEG);
    let p = find_page(&e, false);
    let c = find_page(&e, true);
    let o = |l: u64| e.offset(l);
    let case = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = e.bytes().to_vec();
        f(&mut b);
        expect_err(&b)
    };
    assert_eq!(
        case(&|b| put_u16(b, o(p), 0xD10D)),
        WalError::PageMagic { page: Lsn(p), expected: MAGIC, found: 0xD10D }
    );
    assert_eq!(case(&|b| b[o(p) + 2] |= 0x10), WalError::PageFlags { page: Lsn(p), found: 0x10 });
    assert_eq!(case(&|b| b[o(seg2) + 2] &= !2), WalError::LongHeaderMissing { page: Lsn(seg2), found: 1 });
    assert_eq!(case(&|b| b[o(p) + 2] |= 2), WalError::UnexpectedLongHeader { page: Lsn(p), found: 2 });
    assert_eq!(
        case(&|b| put_u64(b, o(seg2) + 24, 99)),
        WalError::SystemId { page: Lsn(seg2), expected: SYSID, found: 99 }
    );
    assert_eq!(
        case(&|b| put_u32(b, o(seg2) + 32, SEG * 2)),
        WalError::SegmentSize { page: Lsn(seg2), expected: SEG, found: SEG * 2 }
    );
    assert_eq!(
        case(&|b| put_u32(b, o(START) + 36, 4096)),
        WalError::BlockSize { page: Lsn(START), expected: 8192, found: 4096 }
    );
    assert_eq!(
        case(&|b| put_u64(b, o(p) + 8, p + BLCKSZ)),
        WalError::PageAddr { page: Lsn(p), found: Lsn(p + BLCKSZ) }
    );
    assert_eq!(
        case(&|b| put_u32(b, o(p) + 4, 2)),
        WalError::TimelineAhead { page: Lsn(p), configured: 1, found: 2 }
    );
    assert_eq!(
        case(&|b| put_u32(b, o(c) + 16, 12)),
        WalError::ContrecordLength {
            page: Lsn(c),
            record: Some(Lsn(*e.records.iter().rev().find(|&&r| r < c).unwrap())),
            expected: u32::from_le_bytes(e.bytes()[o(c) + 16..o(c) + 20].try_into().unwrap()),
            found: 12
        }
    );
    assert!(
        matches!(case(&|b| b[o(c) + 2] &= !1), WalError::MissingContrecord { page, .. } if page == Lsn(c))
    );
    assert!(matches!(
        case(&|b| {
            b[o(p) + 2] |= 1;
            put_u32(b, o(p) + 16, 40);
        }),
        WalError::UnexpectedContrecord { page, rem_len: 40 } if page == Lsn(p)
    ));
    assert_eq!(
        case(&|b| put_u32(b, o(p) + 16, 40)),
        WalError::RemLenWithoutContrecord { page: Lsn(p), found: 40 }
    );
    assert_eq!(case(&|b| b[o(p) + 2] |= 8), WalError::UnexpectedOverwrite { page: Lsn(p) });

    // Unknown system identifier: not checked.
    let mut d = WalDecoder::new(DecoderConfig { system_id: None, ..cfg() }, Lsn(START));
    d.feed(e.bytes()).unwrap();
}

#[test]
fn timeline_checks() {
    let mut e = enc();
    for _ in 0..10 {
        e.record(10, 0, 1, &data(3000, 1));
    }
    e.timeline = 2;
    for _ in 0..10 {
        e.record(10, 0, 1, &data(3000, 2));
    }
    // Configured for timeline 1: the first page of timeline 2 is ahead.
    let (r, _, _) = decode_all(e.bytes());
    let first_tli2 = START + (e.bytes().len() as u64 / BLCKSZ / 2) * BLCKSZ;
    assert!(matches!(r, Err(WalError::TimelineAhead { found: 2, configured: 1, .. })), "{r:?}");
    let _ = first_tli2;
    // Following the switch with set_timeline: clean.
    let mut d = WalDecoder::new(DecoderConfig { timeline: 2, ..cfg() }, Lsn(START));
    d.feed(e.bytes()).unwrap();
    // Going back: a timeline 1 page after timeline 2 pages.
    let mut b = e.bytes().to_vec();
    let last = (b.len() / BLCKSZ as usize - 1) * BLCKSZ as usize;
    put_u32(&mut b, last + 4, 1);
    let mut d = WalDecoder::new(DecoderConfig { timeline: 2, ..cfg() }, Lsn(START));
    assert_eq!(
        d.feed(&b).unwrap_err(),
        WalError::TimelineBackwards { page: Lsn(START + last as u64), previous: 2, found: 1 }
    );
    let mut d = WalDecoder::new(DecoderConfig { timeline: 2, ..cfg() }, Lsn(START));
    d.set_timeline(3).unwrap();
    assert_eq!(d.timeline(), 3);
    assert!(matches!(
        d.set_timeline(2),
        Err(WalError::TimelineSetBackwards { current: 3, requested: 2, .. })
    ));
    assert!(d.feed(&[]).is_err());
}

#[test]
fn record_checks() {
    let e = mixed();
    let r1 = e.records[1];
    let big = e.records[20];
    let o = |l: u64| e.offset(l);
    let case = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = e.bytes().to_vec();
        f(&mut b);
        expect_err(&b)
    };
    assert_eq!(case(&|b| put_u32(b, o(r1), 5)), WalError::RecordTooShort { at: Lsn(r1), found: 5 });
    assert_eq!(
        case(&|b| put_u32(b, o(r1), XLOG_RECORD_MAX_SIZE + 1)),
        WalError::RecordTooLong { at: Lsn(r1), found: XLOG_RECORD_MAX_SIZE + 1 }
    );
    assert_eq!(
        case(&|b| b[o(r1) + 17] = 22),
        WalError::InvalidRmgr { at: Lsn(r1), allowed: "0..=21 or 128..=255", found: 22 }
    );
    assert_eq!(
        case(&|b| put_u64(b, o(r1) + 8, 0x1234)),
        WalError::PrevLink { at: Lsn(r1), expected: Lsn(e.records[0]), found: Lsn(0x1234) }
    );
    assert!(matches!(case(&|b| b[o(r1) + 30] ^= 1), WalError::Crc { at, .. } if at == Lsn(r1)));
    assert!(matches!(case(&|b| b[o(r1) + 4] ^= 0x80), WalError::Crc { at, .. } if at == Lsn(r1)));
    assert!(matches!(case(&|b| b[o(r1) + 18] ^= 1), WalError::Crc { at, .. } if at == Lsn(r1)));
    assert!(matches!(case(&|b| b[o(r1) + 21] ^= 1), WalError::Crc { at, .. } if at == Lsn(r1)));
    // A bit in the continuation of a page-spanning record.
    assert!(matches!(case(&|b| b[o(big) + 12_000] ^= 4), WalError::Crc { at, .. } if at == Lsn(big)));
    // The Display form is one line with the LSN, the check, expected and found.
    let msg = case(&|b| b[o(r1) + 30] ^= 1).to_string();
    assert!(!msg.contains('\n') && msg.contains(&Lsn(r1).to_string()) && msg.contains("expected"), "{msg}");
}

#[test]
fn custom_rmgr_ids_depend_on_major() {
    let mut e = enc();
    e.record(10, 0, 1, &data(50, 1));
    e.record(200, 0, 1, &data(50, 2));
    let (r, _, _) = decode_all(e.bytes());
    r.unwrap();
    let mut e14 = WalEncoder::new(0xD10D, SEG, SYSID, 1, START);
    e14.record(10, 0, 1, &data(50, 1));
    let r = e14.record(200, 0, 1, &data(50, 2));
    let mut d = WalDecoder::new(DecoderConfig { page_magic: 0xD10D, ..cfg() }, Lsn(START));
    assert_eq!(
        d.feed(e14.bytes()).unwrap_err(),
        WalError::InvalidRmgr { at: Lsn(r), allowed: "0..=21", found: 200 }
    );
}

#[test]
fn switch_record_at_segment_end_and_padding_with_headers() {
    // Header split across the segment boundary: PostgreSQL then pads to the end of the *next* segment.
    let mut e = enc();
    while e.pos() + BLCKSZ < START + u64::from(SEG) {
        e.record(10, 0, 1, &data(4000, 1));
    }
    fill_to_page_left(&mut e, 16);
    assert_eq!(BLCKSZ - e.pos() % BLCKSZ, 16);
    let sw = e.switch();
    assert!(sw < START + u64::from(SEG));
    assert_eq!(e.pos(), START + 2 * u64::from(SEG));
    let after = e.record(10, 0, 1, &data(10, 1));
    let (r, d, recs) = decode_all(e.bytes());
    r.unwrap();
    assert_eq!(lsns(&recs), e.records);
    assert_eq!(d.last_record(), Some(Lsn(after)));

    // PostgreSQL < 11 kept page headers in the padding: accepted, and checked.
    let mut e = enc();
    e.switch_padding_headers = true;
    e.record(10, 0, 1, &data(100, 1));
    e.switch();
    e.record(10, 0, 1, &data(100, 1));
    let (r, _, _) = decode_all(e.bytes());
    r.unwrap();
    let mut b = e.bytes().to_vec();
    put_u64(&mut b, 5 * BLCKSZ as usize + 8, 1);
    assert_eq!(expect_err(&b), WalError::PageAddr { page: Lsn(START + 5 * BLCKSZ), found: Lsn(1) });
}

#[test]
fn switch_padding_is_validated_as_it_arrives() {
    let mut e = enc();
    e.record(10, 0, 1, &data(100, 1));
    e.switch();
    let mut d = WalDecoder::new(cfg(), Lsn(START));
    d.feed(&e.bytes()[..3 * BLCKSZ as usize + 100]).unwrap();
    assert_eq!(d.validated_up_to(), Lsn(START + 3 * BLCKSZ + 100));
    d.feed(&e.bytes()[3 * BLCKSZ as usize + 100..]).unwrap();
    assert_eq!(d.validated_up_to(), Lsn(START + u64::from(SEG)));
}

#[test]
fn starts_inside_a_record() {
    let mut e = enc();
    e.tail_of_unseen_record(20_000); // three pages of someone else's record
    let first = e.record(10, 0, 1, &data(100, 1));
    e.record(10, 0, 1, &data(100, 2));
    let mut d = WalDecoder::new(cfg(), Lsn(START));
    d.feed(&e.bytes()[..e.offset(first) + 10]).unwrap();
    assert_eq!(d.validated_up_to(), Lsn(START));
    assert_eq!(d.status().unwrap().end, StreamEnd::InsideRecord { record: Some(Lsn(first)) });
    let mut recs = Vec::new();
    d.feed_with(&e.bytes()[e.offset(first) + 10..], |r| recs.push(r.lsn.0)).unwrap();
    assert_eq!(recs, e.records);
    // The tail's continuation lengths are checked too.
    let mut b = e.bytes().to_vec();
    put_u32(&mut b, BLCKSZ as usize + 16, 3);
    assert!(matches!(expect_err(&b), WalError::ContrecordLength { record: None, found: 3, .. }));
    // The first record's prev-link is unknown: not checked.
    assert_eq!(d.records_seen(), 2);
}

#[test]
fn overwritten_contrecord() {
    let mut e = enc();
    let a = e.record(10, 0, 1, &data(100, 1));
    fill_to_page_left(&mut e, 200);
    let (aborted, ow) = e.cut_off_record(10, 0, &data(5000, 2));
    let after = e.record(10, 0, 1, &data(100, 3));
    assert_eq!(ow % BLCKSZ, SIZE_OF_SHORT_PHD as u64);
    let (r, d, recs) = decode_all(e.bytes());
    r.unwrap();
    assert!(!lsns(&recs).contains(&aborted));
    assert_eq!(lsns(&recs), e.records);
    assert_eq!(d.last_record(), Some(Lsn(after)));
    assert!(recs.iter().any(|r| r.lsn.0 == ow && r.info == XLOG_OVERWRITE_CONTRECORD));
    let _ = a;

    // The overwrite record must name the aborted record.
    let mut b = e.bytes().to_vec();
    let o = e.offset(ow);
    put_u64(&mut b, o + 26, aborted + 8);
    fix_crc(&mut b[o..o + 42]);
    assert_eq!(
        expect_err(&b),
        WalError::OverwrittenLsn { at: Lsn(ow), expected: Lsn(aborted), found: Some(Lsn(aborted + 8)) }
    );
    // And must be an XLOG_OVERWRITE_CONTRECORD record.
    let mut b = e.bytes().to_vec();
    b[o + 16] = 0x80;
    fix_crc(&mut b[o..o + 42]);
    assert_eq!(expect_err(&b), WalError::OverwriteRecord { at: Lsn(ow), rmid: 0, info: 0x80 });
    // Without the flag, the cut-off is caught as a missing continuation.
    let mut b = e.bytes().to_vec();
    b[o - SIZE_OF_SHORT_PHD + 2] &= !XLP_FIRST_IS_OVERWRITE_CONTRECORD as u8;
    assert!(
        matches!(expect_err(&b), WalError::MissingContrecord { record: Some(r), .. } if r == Lsn(aborted))
    );
}

fn fix_crc(rec: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[24..]), &rec[..20]);
    rec[20..24].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn end_of_wal_in_zero_filled_files() {
    let mut e = enc();
    e.record(10, 0, 1, &data(100, 1));
    let last = e.record(10, 0, 1, &data(3000, 2));
    let end = e.pos();
    e.zeros_to(START + u64::from(SEG));
    let (r, d, _) = decode_all(e.bytes());
    r.unwrap();
    let st = d.status().unwrap();
    assert_eq!(st.end, StreamEnd::EndOfWal { at: Lsn(end) });
    assert_eq!(st.validated_up_to, Lsn(end));
    assert_eq!(st.last_record, Some(Lsn(last)));
    // Non-zero data after the end.
    let mut b = e.bytes().to_vec();
    let i = b.len() - 1000;
    b[i] = 1;
    assert_eq!(expect_err(&b), WalError::DataAfterEndOfWal { at: Lsn(START + i as u64), end: Lsn(end) });

    // Ending exactly at a page boundary: the next (zero) page header marks the end.
    let mut e = enc();
    fill_to_page_left(&mut e, 8 * 100);
    e.record(10, 0, 1, &data(800 - 24, 1));
    assert_eq!(e.pos() % BLCKSZ, 0);
    let end = e.pos();
    e.zeros_to(START + u64::from(SEG));
    let (r, d, _) = decode_all(e.bytes());
    r.unwrap();
    assert_eq!(d.status().unwrap().end, StreamEnd::EndOfWal { at: Lsn(end) });

    // An empty (all-zero) file.
    let st = WalDecoder::check_at_rest(cfg(), Lsn(START), &vec![0; SEG as usize]).unwrap();
    assert_eq!(st.end, StreamEnd::EndOfWal { at: Lsn(START) });
}

#[test]
fn check_at_rest_with_a_record_cut_by_the_end_of_received_data() {
    let mut e = enc();
    let a = e.record(10, 0, 1, &data(100, 1));
    let b = e.record(10, 0, 1, &data(20_000, 2));
    let mut bytes = e.bytes().to_vec();
    // Received only up to the middle of b's second page, zero-filled after that.
    let cut = e.offset(b) + 10_000;
    bytes.truncate(cut);
    bytes.resize(SEG as usize, 0);
    let st = WalDecoder::check_at_rest(cfg(), Lsn(START), &bytes).unwrap();
    assert_eq!(st.end, StreamEnd::InsideRecord { record: Some(Lsn(b)) });
    assert_eq!(st.validated_up_to, Lsn(b));
    assert_eq!(st.last_record, Some(Lsn(a)));
    // A complete record whose last bytes are zeros is still complete.
    let mut e = enc();
    let mut body = data(300, 1);
    body.extend_from_slice(&[0; 64]);
    let z = e.record(10, 0, 1, &body);
    let end = e.pos();
    e.zeros_to(START + u64::from(SEG));
    let st = WalDecoder::check_at_rest(cfg(), Lsn(START), e.bytes()).unwrap();
    assert_eq!(st.last_record, Some(Lsn(z)));
    assert_eq!(st.end, StreamEnd::EndOfWal { at: Lsn(end) });
    // A corrupt last record followed by zeros cannot be told from one cut off by the end of the data
    // received: either way it is not validated.
    let mut b = e.bytes().to_vec();
    b[e.offset(z) + 30] ^= 1;
    let st = WalDecoder::check_at_rest(cfg(), Lsn(START), &b).unwrap();
    assert_eq!((st.last_record, st.validated_up_to), (None, Lsn(z)));
    // Corruption in an earlier record is an error.
    let mut e = enc();
    let y = e.record(10, 0, 1, &data(300, 1));
    e.record(10, 0, 1, &body);
    e.zeros_to(START + u64::from(SEG));
    let mut b = e.bytes().to_vec();
    b[e.offset(y) + 30] ^= 1;
    assert!(matches!(WalDecoder::check_at_rest(cfg(), Lsn(START), &b), Err(WalError::Crc { .. })));
}

#[test]
fn config_errors() {
    let mut d = WalDecoder::new(DecoderConfig { segment_size: 3 << 20, ..cfg() }, Lsn(START));
    assert!(matches!(d.feed(&[1]), Err(WalError::Config { .. })));
    let mut d = WalDecoder::new(cfg(), Lsn(START + 8192));
    assert!(matches!(d.feed(&[1]), Err(WalError::Config { .. })));
    let mut d = WalDecoder::new(cfg(), Lsn(u64::MAX - u64::from(SEG) + 1));
    assert!(matches!(d.feed(&vec![0; SEG as usize + 1]), Err(WalError::LsnOverflow { .. })));
}

#[test]
fn memory_is_bounded() {
    // The decoder owns no heap memory at all: a record declaring 1 GB costs nothing.
    assert!(std::mem::size_of::<WalDecoder>() < 512);
    let mut e = enc();
    e.record(10, 0, 1, &data(100, 1));
    let mut b = e.bytes().to_vec();
    let o = b.len();
    let rec = e.record_bytes(10, 0, 1, &[]);
    b.extend_from_slice(&rec);
    put_u32(&mut b, o, XLOG_RECORD_MAX_SIZE);
    b.resize(b.len() + 4000, 0x55);
    let mut d = WalDecoder::new(cfg(), Lsn(START));
    d.feed(&b).unwrap();
    assert_eq!(d.status().unwrap().end, StreamEnd::InsideRecord { record: Some(Lsn(START + o as u64)) });
}

/// Byte ranges whose corruption must be detected: record bytes, and page header fields (not the padding
/// in bytes 20..24, which PostgreSQL never reads either).
fn must_detect(recs: &[RecordInfo], start: u64, len: usize) -> Vec<bool> {
    let mut m = vec![false; len];
    for r in recs {
        for l in r.lsn.0..r.end.0 {
            m[(l - start) as usize] = true;
        }
    }
    for p in (0..len).step_by(BLCKSZ as usize) {
        let lsn = start + p as u64;
        let hl = if lsn % u64::from(SEG) == 0 { SIZE_OF_LONG_PHD } else { SIZE_OF_SHORT_PHD };
        let real_header =
            recs.iter().any(|r| r.lsn.0 < lsn && r.end.0 > lsn) || recs.iter().any(|r| r.lsn.0 >= lsn);
        for i in 0..hl.min(len - p) {
            m[p + i] =
                real_header && !(20..24).contains(&i) && (i < SIZE_OF_SHORT_PHD || lsn % u64::from(SEG) == 0);
        }
    }
    m
}

#[test]
fn every_sampled_bit_flip_is_caught() {
    let mut e = enc();
    for i in 0..12 {
        e.main_data_record(10, 0, i, &data(90 * i as usize + 7, i as u8));
    }
    e.record(10, 0, 1, &data(9000, 9));
    fill_to_page_left(&mut e, 8);
    e.record(10, 0, 1, &data(30, 9));
    let (r, _, recs) = decode_all(e.bytes());
    r.unwrap();
    let m = must_detect(&recs, START, e.bytes().len());
    for (i, _) in m.iter().enumerate().filter(|(i, &x)| x && i % 3 == 0) {
        let mut b = e.bytes().to_vec();
        let bit = 1u8 << (i % 8);
        if i % BLCKSZ as usize == 2 && u16::from(bit) == XLP_BKP_REMOVABLE {
            continue; // a valid flag: PostgreSQL accepts either value
        }
        b[i] ^= bit;
        let mut d = WalDecoder::new(cfg(), Lsn(START));
        if d.feed(&b).is_ok() {
            assert!(d.validated_up_to().0 <= START + i as u64, "flip at byte {i} went unnoticed");
        }
    }
}

fn chunked_decode(bytes: &[u8], cuts: &[usize]) -> (Result<(), WalError>, Vec<RecordInfo>, Lsn) {
    let mut d = WalDecoder::new(cfg(), Lsn(START));
    let mut recs = Vec::new();
    let mut pos = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    for c in cuts {
        if let Err(e) = d.feed_with(&bytes[pos..c], |r| recs.push(*r)) {
            return (Err(e), recs, d.validated_up_to());
        }
        pos = c;
    }
    (Ok(()), recs, d.validated_up_to())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
                                   cuts in proptest::collection::vec(any::<usize>(), 0..8),
                                   magic_from_data in any::<bool>()) {
        let mut bytes = bytes;
        if magic_from_data && bytes.len() > 40 {
            // Make the first header plausible so the record paths are reached.
            bytes[..40].copy_from_slice(&enc().record_bytes(0, 0, 0, &[0; 16])[..40]);
            bytes[0..2].copy_from_slice(&MAGIC.to_le_bytes());
            bytes[2] = 2;
            bytes[8..16].copy_from_slice(&START.to_le_bytes());
            bytes[32..36].copy_from_slice(&SEG.to_le_bytes());
            bytes[36..40].copy_from_slice(&XLOG_BLCKSZ.to_le_bytes());
        }
        let _ = chunked_decode(&bytes, &cuts);
        let _ = WalDecoder::check_at_rest(cfg(), Lsn(START), &bytes);
    }

    #[test]
    fn chunking_never_changes_the_result(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        let e = mixed();
        let (r, recs, v) = chunked_decode(e.bytes(), &cuts);
        prop_assert!(r.is_ok());
        let (_, whole, whole_recs) = decode_all(e.bytes());
        prop_assert_eq!(recs, whole_recs);
        prop_assert_eq!(v, whole.validated_up_to());
    }

    #[test]
    fn corruption_is_caught_or_harmless(at in any::<usize>(), xor in 1u8.., cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let e = mixed();
        let (_, _, recs) = decode_all(e.bytes());
        let m = must_detect(&recs, START, e.bytes().len());
        let mut b = e.bytes().to_vec();
        let i = at % b.len();
        let xor = if i % BLCKSZ as usize == 2 { xor & !(XLP_BKP_REMOVABLE as u8) } else { xor };
        b[i] ^= xor;
        let (r, _, v) = chunked_decode(&b, &cuts);
        if m[i] && r.is_ok() {
            prop_assert!(v.0 <= START + i as u64, "corruption at {} validated", i);
        }
    }

    #[test]
    fn main_data_round_trips_through_overwrite_parser(lsn in any::<u64>(), long in any::<bool>()) {
        let mut main = lsn.to_le_bytes().to_vec();
        main.extend_from_slice(&[0; 8]);
        if long { main.resize(300, 0); }
        let body = main_data(&main);
        let kind = RecordKind::of(RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD, &body[..CAPTURE_LEN.min(body.len())]);
        prop_assert_eq!(kind, RecordKind::OverwriteContrecord { overwritten: Lsn(lsn), time: crate::wal::pgtime::PgTimestamp(0) });
    }
}
