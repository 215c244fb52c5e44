//! What a few WAL record types say, read from the first bytes of their data, which the decoder captures as
//! they pass ([`CAPTURE_LEN`] at most, only for the types [`is_read`] accepts): transaction commits and
//! aborts (their time), the end of a base backup (its start LSN), checkpoints (redo pointer, timeline,
//! time) and XLOG_OVERWRITE_CONTRECORD (the record it abandons). Pure: no I/O, never panics.
//!
//! Layout of a record's data (xlogrecord.h, `XLogRecordAssemble`): after the 24-byte header come the block
//! headers (ids 0..=32), then an origin (id 253, 2 bytes) and, since 14, a top-level XID (id 252, 4 bytes)
//! if set, then the main-data header — `XLR_BLOCK_ID_DATA_SHORT` (255) and a 1-byte length, or
//! `XLR_BLOCK_ID_DATA_LONG` (254) and a 4-byte length — and after all block data, the main data.
//!
//! The types read here never carry block references in PostgreSQL 13–18: each is written with
//! `XLogRegisterData` alone, never `XLogRegisterBuffer`/`XLogRegisterBlock` — commit and abort in
//! `XactLogCommitRecord`/`XactLogAbortRecord` (xact.c, which may add the origin, and for a subtransaction's
//! abort under `wal_level = logical` the top-level XID), the backup end in `do_pg_backup_stop`
//! (`do_pg_stop_backup` in 13/14), checkpoints in `CreateCheckPoint`, the overwrite record in
//! `CreateOverwriteContrecordRecord` (xlog.c). So their main data starts right after the origin/XID and
//! main-data headers, within the captured bytes, and its first bytes are the structs read below. A record of
//! these types that does not look like that (a block header, a short main data) is [`RecordKind::Unreadable`]
//! rather than guessed at. The struct layouts did not change from 13 to 18 where they are read: `xact_time`
//! leads `xl_xact_commit` and `xl_xact_abort`; `CheckPoint` has `redo` at 0, `ThisTimeLineID` at 8 and
//! `time` (a `pg_time_t`, seconds since 1970) at 64 (the `wal_level` field recent majors added sits in the
//! padding after `fullPageWrites` and moves nothing); `xl_overwrite_contrecord` is `overwritten_lsn`,
//! `overwrite_time`. tests/wal_records.rs checks them on real WAL of every major.

use crate::wal::pgtime::PgTimestamp;
use crate::wal::Lsn;

/// Resource manager IDs (rmgrlist.h).
pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;
/// The bits of `xl_info` a resource manager owns (the rest are XLR_* flags).
pub const XLR_RMGR_INFO_MASK: u8 = 0xF0;

/// RM_XLOG_ID record types (pg_control.h).
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub const XLOG_SWITCH: u8 = 0x40;
pub const XLOG_BACKUP_END: u8 = 0x50;
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

/// RM_XACT_ID record types (xact.h): the operation is `info & XLOG_XACT_OPMASK`; bit 0x80
/// (XLOG_XACT_HAS_INFO) says optional parts follow `xact_time`.
const XLOG_XACT_OPMASK: u8 = 0x70;
pub const XLOG_XACT_COMMIT: u8 = 0x00;
pub const XLOG_XACT_ABORT: u8 = 0x20;
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

/// Block ids of the data headers (xlogrecord.h; block references use 0..=32, XLR_MAX_BLOCK_ID).
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// `CheckPoint` up to and including `time`: what is read of it.
const CHECKPOINT_READ_LEN: usize = 72;

/// How many bytes of a record's data (after the fixed header) the decoder keeps for [`RecordKind::of`]:
/// the longest header prefix (origin 3 + top-level XID 5 + long main-data header 5) plus the longest struct
/// prefix read (a checkpoint's 72), rounded up.
pub const CAPTURE_LEN: usize = 96;

/// Whether [`RecordKind::of`] tells records of this resource manager and `xl_info` apart: the decoder then
/// keeps their first data bytes and classifies them. Every other record is `RecordKind::Other`, at the cost
/// of this one check per record.
#[inline]
pub fn is_read(rmid: u8, info: u8) -> bool {
    // Bit n set: the type whose info is n << 4 is read. Most records are neither RM_XLOG_ID nor RM_XACT_ID
    // and cost one comparison.
    const fn bits(ops: &[u8]) -> u16 {
        let mut b = 0u16;
        let mut i = 0;
        while i < ops.len() {
            b |= 1 << (ops[i] >> 4);
            i += 1;
        }
        b
    }
    const XLOG: u16 = bits(&[
        XLOG_CHECKPOINT_SHUTDOWN,
        XLOG_CHECKPOINT_ONLINE,
        XLOG_SWITCH,
        XLOG_BACKUP_END,
        XLOG_OVERWRITE_CONTRECORD,
    ]);
    // The xact operation is info & XLOG_XACT_OPMASK: with and without the XLOG_XACT_HAS_INFO bit.
    const XACT_OPS: u16 =
        bits(&[XLOG_XACT_COMMIT, XLOG_XACT_ABORT, XLOG_XACT_COMMIT_PREPARED, XLOG_XACT_ABORT_PREPARED]);
    const READ: [u16; 2] = [XLOG, XACT_OPS | XACT_OPS << 8];
    rmid <= RM_XACT_ID && READ[usize::from(rmid)] >> (info >> 4) & 1 == 1
}

/// What a record is, for the types walkeeper reads; every other record is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Other,
    /// XLOG_SWITCH: the rest of the segment is padding.
    Switch,
    /// A transaction commit (XLOG_XACT_COMMIT, or XLOG_XACT_COMMIT_PREPARED for a prepared one).
    Commit {
        time: PgTimestamp,
        prepared: bool,
    },
    /// A transaction (or subtransaction) abort (XLOG_XACT_ABORT, XLOG_XACT_ABORT_PREPARED).
    Abort {
        time: PgTimestamp,
        prepared: bool,
    },
    /// XLOG_BACKUP_END, written when a base backup taken from a primary ends: `start` is the backup's start
    /// (its checkpoint's redo pointer, "START WAL LOCATION" in backup_label).
    BackupEnd {
        start: Lsn,
    },
    /// XLOG_CHECKPOINT_SHUTDOWN or XLOG_CHECKPOINT_ONLINE.
    Checkpoint {
        redo: Lsn,
        timeline: u32,
        time: PgTimestamp,
        shutdown: bool,
    },
    /// XLOG_OVERWRITE_CONTRECORD: the record cut off at `overwritten` is abandoned.
    OverwriteContrecord {
        overwritten: Lsn,
        time: PgTimestamp,
    },
    /// One of the types above whose data is not laid out as PostgreSQL 13–18 write it.
    Unreadable {
        rmid: u8,
        info: u8,
    },
}

impl RecordKind {
    /// Classify a record from its header fields and the first bytes of its data (what the decoder captured:
    /// up to [`CAPTURE_LEN`] bytes for the types [`is_read`] accepts, nothing for the others).
    pub fn of(rmid: u8, info: u8, data: &[u8]) -> RecordKind {
        let unreadable = RecordKind::Unreadable { rmid, info };
        match rmid {
            RM_XLOG_ID => {
                let op = info & XLR_RMGR_INFO_MASK;
                if !is_read(rmid, info) {
                    return RecordKind::Other;
                }
                if op == XLOG_SWITCH {
                    return RecordKind::Switch;
                }
                let Some(main) = main_data(data) else { return unreadable };
                let parsed = match op {
                    XLOG_BACKUP_END => lsn_at(main, 0).map(|start| RecordKind::BackupEnd { start }),
                    XLOG_OVERWRITE_CONTRECORD => lsn_at(main, 0)
                        .zip(time_at(main, 8))
                        .map(|(overwritten, time)| RecordKind::OverwriteContrecord { overwritten, time }),
                    _ => checkpoint(main, op == XLOG_CHECKPOINT_SHUTDOWN),
                };
                parsed.unwrap_or(unreadable)
            }
            RM_XACT_ID if is_read(rmid, info) => {
                let op = info & XLOG_XACT_OPMASK;
                let prepared = matches!(op, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED);
                let commit = matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
                match main_data(data).and_then(|m| time_at(m, 0)) {
                    Some(time) if commit => RecordKind::Commit { time, prepared },
                    Some(time) => RecordKind::Abort { time, prepared },
                    None => unreadable,
                }
            }
            _ => RecordKind::Other,
        }
    }
}

/// The main data within the captured bytes (cut at the end of what was captured), when the record has no
/// block references; `None` when it has some, or its headers are malformed or not all captured.
fn main_data(data: &[u8]) -> Option<&[u8]> {
    let mut i = 0usize;
    loop {
        let id = *data.get(i)?;
        i += 1;
        let len = match id {
            XLR_BLOCK_ID_ORIGIN => {
                i += 2;
                continue;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                i += 4;
                continue;
            }
            XLR_BLOCK_ID_DATA_SHORT => {
                let l = usize::from(*data.get(i)?);
                i += 1;
                l
            }
            XLR_BLOCK_ID_DATA_LONG => {
                let l = u32::from_le_bytes(data.get(i..i + 4)?.try_into().ok()?);
                i += 4;
                usize::try_from(l).ok()?
            }
            // A block reference (0..=32) never occurs in the types read here (see the module
            // documentation); ids from 33 to below XLR_BLOCK_ID_TOPLEVEL_XID are invalid.
            _ => return None,
        };
        let rest = data.get(i..)?;
        return Some(&rest[..len.min(rest.len())]);
    }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn lsn_at(b: &[u8], at: usize) -> Option<Lsn> {
    u64_at(b, at).map(Lsn)
}

fn time_at(b: &[u8], at: usize) -> Option<PgTimestamp> {
    u64_at(b, at).map(|v| PgTimestamp(v as i64))
}

fn checkpoint(main: &[u8], shutdown: bool) -> Option<RecordKind> {
    if main.len() < CHECKPOINT_READ_LEN {
        return None;
    }
    let redo = lsn_at(main, 0)?;
    let timeline = u32::from_le_bytes(main.get(8..12)?.try_into().ok()?);
    let time = PgTimestamp::from_unix_seconds(u64_at(main, 64)? as i64)?;
    Some(RecordKind::Checkpoint { redo, timeline, time, shutdown })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::encoder::main_data as with_main_data;
    use proptest::prelude::*;

    fn checkpoint_struct(redo: u64, tli: u32, unix_secs: i64) -> Vec<u8> {
        let mut c = vec![0u8; 88]; // sizeof(CheckPoint) in 13–18
        c[0..8].copy_from_slice(&redo.to_le_bytes());
        c[8..12].copy_from_slice(&tli.to_le_bytes());
        c[12..16].copy_from_slice(&tli.to_le_bytes());
        c[16] = 1; // fullPageWrites
        c[24..32].copy_from_slice(&0x1_0000_02E7u64.to_le_bytes()); // nextXid
        c[64..72].copy_from_slice(&unix_secs.to_le_bytes());
        c
    }

    fn of(rmid: u8, info: u8, body: &[u8]) -> RecordKind {
        RecordKind::of(rmid, info, &body[..body.len().min(CAPTURE_LEN)])
    }

    #[test]
    fn commit_and_abort_times() {
        let t = PgTimestamp(825_000_000_123_456);
        let mut commit = t.0.to_le_bytes().to_vec();
        commit.extend_from_slice(&[0xAA; 40]); // xinfo and the rest
        let body = with_main_data(&commit);
        assert_eq!(of(1, 0x00, &body), RecordKind::Commit { time: t, prepared: false });
        assert_eq!(of(1, 0x80, &body), RecordKind::Commit { time: t, prepared: false }); // XLOG_XACT_HAS_INFO
        assert_eq!(of(1, 0x30, &body), RecordKind::Commit { time: t, prepared: true });
        assert_eq!(of(1, 0x20, &body), RecordKind::Abort { time: t, prepared: false });
        assert_eq!(of(1, 0xC0, &body), RecordKind::Abort { time: t, prepared: true });
        // PREPARE, ASSIGNMENT and INVALIDATIONS records are not read.
        for info in [0x10, 0x50, 0x60] {
            assert!(!is_read(1, info));
            assert_eq!(of(1, info, &body), RecordKind::Other);
        }
        // With an origin and a top-level XID ahead of the main data, and a long main-data header.
        let mut hdrs = vec![XLR_BLOCK_ID_ORIGIN, 7, 0, XLR_BLOCK_ID_TOPLEVEL_XID, 1, 2, 3, 4];
        let mut long = commit.clone();
        long.resize(300, 0);
        hdrs.extend_from_slice(&with_main_data(&long));
        assert_eq!(hdrs[8], XLR_BLOCK_ID_DATA_LONG);
        assert_eq!(of(1, 0x00, &hdrs), RecordKind::Commit { time: t, prepared: false });
    }

    #[test]
    fn backup_end_checkpoint_and_overwrite() {
        let body = with_main_data(&0x1_2300_0028u64.to_le_bytes());
        assert_eq!(of(0, XLOG_BACKUP_END, &body), RecordKind::BackupEnd { start: Lsn(0x1_2300_0028) });
        let when = 1_772_600_767;
        let body = with_main_data(&checkpoint_struct(0x5000_0060, 3, when));
        let time = PgTimestamp::from_unix_seconds(when).unwrap();
        assert_eq!(
            of(0, XLOG_CHECKPOINT_ONLINE, &body),
            RecordKind::Checkpoint { redo: Lsn(0x5000_0060), timeline: 3, time, shutdown: false }
        );
        assert_eq!(
            of(0, XLOG_CHECKPOINT_SHUTDOWN, &body),
            RecordKind::Checkpoint { redo: Lsn(0x5000_0060), timeline: 3, time, shutdown: true }
        );
        let mut ow = 0x3FF_E000u64.to_le_bytes().to_vec();
        ow.extend_from_slice(&99i64.to_le_bytes());
        assert_eq!(
            of(0, XLOG_OVERWRITE_CONTRECORD, &with_main_data(&ow)),
            RecordKind::OverwriteContrecord { overwritten: Lsn(0x3FF_E000), time: PgTimestamp(99) }
        );
        assert_eq!(of(0, XLOG_SWITCH, &[]), RecordKind::Switch);
        assert_eq!(of(0, XLOG_SWITCH | 0x01, &[]), RecordKind::Switch); // an XLR_* flag bit
        assert_eq!(of(0, 0x20, &body), RecordKind::Other); // XLOG_NOOP
        assert_eq!(of(10, 0x00, &body), RecordKind::Other); // heap insert
    }

    #[test]
    fn is_read_accepts_exactly_the_types_read() {
        for rmid in 0..=255u8 {
            for info in 0..=255u8 {
                let reference = match rmid {
                    RM_XLOG_ID => matches!(info & 0xF0, 0x00 | 0x10 | 0x40 | 0x50 | 0xD0),
                    RM_XACT_ID => matches!(info & 0x70, 0x00 | 0x20 | 0x30 | 0x40),
                    _ => false,
                };
                assert_eq!(is_read(rmid, info), reference, "rmid {rmid}, info {info:02X}");
                assert_eq!(RecordKind::of(rmid, info, &[]) == RecordKind::Other, !reference);
            }
        }
    }

    #[test]
    fn malformed_data_is_unreadable_not_guessed() {
        let commit = with_main_data(&7i64.to_le_bytes());
        let unreadable = RecordKind::Unreadable { rmid: 1, info: 0 };
        assert_eq!(of(1, 0, &[]), unreadable);
        assert_eq!(of(1, 0, &commit[..commit.len() - 1]), unreadable, "main data cut short");
        assert_eq!(of(1, 0, &with_main_data(&[1, 2, 3])), unreadable, "main data shorter than xact_time");
        let mut block = vec![0u8, 0, 0, 0];
        block.extend_from_slice(&commit);
        assert_eq!(of(1, 0, &block), unreadable, "a block reference");
        assert_eq!(of(1, 0, &[100, 1, 2]), unreadable, "an invalid block id");
        // A checkpoint shorter than the fields read, or with a time past TimestampTz's range.
        let cp = checkpoint_struct(1, 1, 0);
        assert_eq!(
            of(0, XLOG_CHECKPOINT_ONLINE, &with_main_data(&cp[..71])),
            RecordKind::Unreadable { rmid: 0, info: XLOG_CHECKPOINT_ONLINE }
        );
        assert_eq!(
            of(0, XLOG_CHECKPOINT_ONLINE, &with_main_data(&checkpoint_struct(1, 1, i64::MAX))),
            RecordKind::Unreadable { rmid: 0, info: XLOG_CHECKPOINT_ONLINE }
        );
    }

    #[test]
    fn capture_covers_the_longest_prefix_read() {
        let mut body =
            vec![XLR_BLOCK_ID_ORIGIN, 7, 0, XLR_BLOCK_ID_TOPLEVEL_XID, 1, 2, 3, 4, XLR_BLOCK_ID_DATA_LONG];
        body.extend_from_slice(&88u32.to_le_bytes());
        body.extend_from_slice(&checkpoint_struct(0x100, 1, 5));
        assert!(body.len() - (88 - CHECKPOINT_READ_LEN) <= CAPTURE_LEN);
        assert!(matches!(
            of(0, XLOG_CHECKPOINT_ONLINE, &body),
            RecordKind::Checkpoint { redo: Lsn(0x100), .. }
        ));
    }

    proptest! {
        #[test]
        fn never_panics(rmid: u8, info: u8, data in proptest::collection::vec(any::<u8>(), 0..CAPTURE_LEN)) {
            let _ = RecordKind::of(rmid, info, &data);
        }

        #[test]
        fn main_data_round_trips(main in proptest::collection::vec(any::<u8>(), 8..400), origin: bool) {
            let mut body = if origin { vec![XLR_BLOCK_ID_ORIGIN, 1, 0] } else { vec![] };
            body.extend_from_slice(&with_main_data(&main));
            let time = PgTimestamp(i64::from_le_bytes(main[..8].try_into().unwrap()));
            prop_assert_eq!(of(1, 0, &body), RecordKind::Commit { time, prepared: false });
        }
    }
}
