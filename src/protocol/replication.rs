//! The replication protocol as text and bytes: commands for servers 13–18 in each version's syntax, their
//! result rows decoded, and the CopyBoth sub-messages (XLogData, primary keepalive, standby status update).

use crate::protocol::messages::quoted;
use crate::wal::segment::{valid_segment_size, TimeLineId};
use crate::wal::Lsn;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Oldest and newest server majors walkeeper speaks to.
pub const OLDEST_MAJOR: u32 = 13;
pub const NEWEST_MAJOR: u32 = 18;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub(crate) const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    #[error("invalid replication slot name {}: use only lower case letters, numbers and underscores, at most 63 characters", quoted(.0))]
    BadSlotName(String),
    #[error("unexpected result from {command}: {reason}")]
    BadResult { command: &'static str, reason: String },
    #[error("malformed {what} message in the replication stream: {reason}")]
    BadStreamMessage { what: &'static str, reason: &'static str },
}

fn bad(command: &'static str, reason: impl Into<String>) -> ReplicationError {
    ReplicationError::BadResult { command, reason: reason.into() }
}

/// Slot names as PostgreSQL accepts them (ReplicationSlotValidateName); checked before they go into a command.
pub fn validate_slot_name(name: &str) -> Result<(), ReplicationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ReplicationError::BadSlotName(name.to_string()))
    }
}

/// The server's major version from `server_version_num` (e.g. 150018 → 15).
pub fn major_of(version_num: u32) -> u32 {
    version_num / 10000
}

/// Parse the `server_version` parameter status ("15.18 (Debian 15.18-0+deb12u1)", "18beta1") into
/// a `server_version_num`-style integer.
pub fn parse_server_version(text: &str) -> Option<u32> {
    let digits_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let major_len = digits_end(text);
    let major: u32 = text[..major_len].parse().ok()?;
    let rest = &text[major_len..];
    let minor = match rest.strip_prefix('.') {
        Some(r) => r[..digits_end(r)].parse().unwrap_or(0),
        None => 0,
    };
    if major >= 10 {
        major.checked_mul(10000)?.checked_add(minor)
    } else {
        None
    }
}

pub fn identify_system() -> &'static str {
    "IDENTIFY_SYSTEM"
}

pub fn show(setting: &str) -> String {
    format!("SHOW {setting}")
}

pub fn timeline_history(tli: TimeLineId) -> String {
    format!("TIMELINE_HISTORY {tli}")
}

/// CREATE_REPLICATION_SLOT for a physical slot that reserves WAL at once, as pg_receivewal creates it.
pub fn create_physical_slot(major: u32, slot: &str, temporary: bool) -> Result<String, ReplicationError> {
    validate_slot_name(slot)?;
    let temp = if temporary { " TEMPORARY" } else { "" };
    Ok(if major >= 15 {
        format!("CREATE_REPLICATION_SLOT \"{slot}\"{temp} PHYSICAL (RESERVE_WAL)")
    } else {
        format!("CREATE_REPLICATION_SLOT \"{slot}\"{temp} PHYSICAL RESERVE_WAL")
    })
}

pub fn drop_slot(slot: &str, wait: bool) -> Result<String, ReplicationError> {
    validate_slot_name(slot)?;
    Ok(format!("DROP_REPLICATION_SLOT \"{slot}\"{}", if wait { " WAIT" } else { "" }))
}

/// READ_REPLICATION_SLOT exists from PostgreSQL 15 on.
pub fn read_slot(major: u32, slot: &str) -> Result<Option<String>, ReplicationError> {
    validate_slot_name(slot)?;
    Ok((major >= 15).then(|| format!("READ_REPLICATION_SLOT \"{slot}\"")))
}

pub fn start_replication(
    slot: Option<&str>,
    start: Lsn,
    tli: TimeLineId,
) -> Result<String, ReplicationError> {
    let slot_part = match slot {
        Some(s) => {
            validate_slot_name(s)?;
            format!("SLOT \"{s}\" ")
        }
        None => String::new(),
    };
    Ok(format!("START_REPLICATION {slot_part}PHYSICAL {start} TIMELINE {tli}"))
}

/// A text-format result set: column names and rows of optional text values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

impl ResultSet {
    fn single_row(
        &self,
        command: &'static str,
        min_columns: usize,
    ) -> Result<&[Option<Bytes>], ReplicationError> {
        match self.rows.as_slice() {
            [row] if row.len() >= min_columns => Ok(row),
            [row] => Err(bad(command, format!("{} columns, expected at least {min_columns}", row.len()))),
            rows => Err(bad(command, format!("{} rows, expected 1", rows.len()))),
        }
    }
}

fn text<'a>(
    command: &'static str,
    row: &'a [Option<Bytes>],
    i: usize,
) -> Result<Option<&'a str>, ReplicationError> {
    match row.get(i) {
        Some(Some(b)) => {
            std::str::from_utf8(b).map(Some).map_err(|_| bad(command, format!("column {i} is not UTF-8")))
        }
        Some(None) => Ok(None),
        None => Err(bad(command, format!("missing column {i}"))),
    }
}

fn required<'a>(
    command: &'static str,
    row: &'a [Option<Bytes>],
    i: usize,
) -> Result<&'a str, ReplicationError> {
    text(command, row, i)?.ok_or_else(|| bad(command, format!("column {i} is NULL")))
}

fn lsn(command: &'static str, s: &str) -> Result<Lsn, ReplicationError> {
    s.parse().map_err(|_| bad(command, format!("{} is not an LSN", quoted(s))))
}

fn timeline(command: &'static str, s: &str) -> Result<TimeLineId, ReplicationError> {
    match s.parse::<TimeLineId>() {
        Ok(t) if t > 0 => Ok(t),
        _ => Err(bad(command, format!("{} is not a timeline id", quoted(s)))),
    }
}

/// IDENTIFY_SYSTEM's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: u64,
    pub timeline: TimeLineId,
    pub xlogpos: Lsn,
}

pub fn parse_identify_system(rs: &ResultSet) -> Result<SystemIdentity, ReplicationError> {
    const C: &str = "IDENTIFY_SYSTEM";
    let row = rs.single_row(C, 3)?;
    let sysid = required(C, row, 0)?;
    Ok(SystemIdentity {
        system_id: sysid
            .parse()
            .map_err(|_| bad(C, format!("{} is not a system identifier", quoted(sysid))))?,
        timeline: timeline(C, required(C, row, 1)?)?,
        xlogpos: lsn(C, required(C, row, 2)?)?,
    })
}

/// The single value of a `SHOW` command.
pub fn parse_show(rs: &ResultSet) -> Result<String, ReplicationError> {
    const C: &str = "SHOW";
    Ok(required(C, rs.single_row(C, 1)?, 0)?.to_string())
}

/// `SHOW wal_segment_size` prints a size with a unit ("16MB", "1GB", "1024kB").
pub fn parse_segment_size(value: &str) -> Result<u32, ReplicationError> {
    const C: &str = "SHOW wal_segment_size";
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (num, unit) = value.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad(C, format!("{} is not a size", quoted(value))))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return Err(bad(C, format!("{} has an unknown unit", quoted(value)))),
    };
    let size = n.checked_mul(mult).ok_or_else(|| bad(C, format!("{} overflows", quoted(value))))?;
    if !valid_segment_size(size) {
        return Err(bad(
            C,
            format!("{} is not a valid WAL segment size (a power of two from 1MB to 1GB)", quoted(value)),
        ));
    }
    Ok(size as u32)
}

/// `SHOW data_directory_mode` ("0700" or "0750") → the mode pg_receivewal gives the files it creates.
pub fn file_mode_for_data_directory_mode(value: &str) -> Result<u32, ReplicationError> {
    let mode = u32::from_str_radix(value.trim(), 8)
        .map_err(|_| bad("SHOW data_directory_mode", format!("{} is not an octal mode", quoted(value))))?;
    Ok(if mode & 0o070 != 0 { 0o640 } else { 0o600 })
}

/// TIMELINE_HISTORY's row: the file name and its contents.
pub fn parse_timeline_history(rs: &ResultSet) -> Result<(String, Bytes), ReplicationError> {
    const C: &str = "TIMELINE_HISTORY";
    let row = rs.single_row(C, 2)?;
    let name = required(C, row, 0)?.to_string();
    let content = row[1].clone().ok_or_else(|| bad(C, "content is NULL"))?;
    Ok((name, content))
}

/// READ_REPLICATION_SLOT's row: `None` when the slot does not exist (all columns NULL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub slot_type: String,
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimeLineId>,
}

pub fn parse_read_slot(rs: &ResultSet) -> Result<Option<SlotInfo>, ReplicationError> {
    const C: &str = "READ_REPLICATION_SLOT";
    let row = rs.single_row(C, 3)?;
    let Some(slot_type) = text(C, row, 0)? else { return Ok(None) };
    Ok(Some(SlotInfo {
        slot_type: slot_type.to_string(),
        restart_lsn: text(C, row, 1)?.map(|s| lsn(C, s)).transpose()?,
        restart_tli: text(C, row, 2)?.map(|s| timeline(C, s)).transpose()?,
    }))
}

/// The result set a server sends after ending a timeline's stream: the next timeline and where it starts.
pub fn parse_end_of_timeline(rs: &ResultSet) -> Result<(TimeLineId, Lsn), ReplicationError> {
    const C: &str = "START_REPLICATION (end of timeline)";
    let row = rs.single_row(C, 2)?;
    Ok((timeline(C, required(C, row, 0)?)?, lsn(C, required(C, row, 1)?)?))
}

/// A message inside CopyData during streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamMessage {
    /// 'w': WAL bytes starting at `start`.
    XLogData { start: Lsn, wal_end: Lsn, send_time: i64, data: Bytes },
    /// 'k': the server's end of WAL, and whether it wants a status update at once.
    Keepalive { wal_end: Lsn, send_time: i64, reply_requested: bool },
}

pub fn parse_stream_message(mut buf: Bytes) -> Result<StreamMessage, ReplicationError> {
    let err = |what, reason| ReplicationError::BadStreamMessage { what, reason };
    if buf.is_empty() {
        return Err(err("CopyData", "empty message"));
    }
    match buf.get_u8() {
        b'w' => {
            if buf.remaining() < 24 {
                return Err(err("XLogData", "header truncated"));
            }
            let start = Lsn(buf.get_u64());
            let wal_end = Lsn(buf.get_u64());
            let send_time = buf.get_i64();
            if start.0.checked_add(buf.len() as u64).is_none() {
                return Err(err("XLogData", "data runs past the end of the LSN space"));
            }
            Ok(StreamMessage::XLogData { start, wal_end, send_time, data: buf })
        }
        b'k' => {
            if buf.remaining() < 17 {
                return Err(err("keepalive", "truncated"));
            }
            Ok(StreamMessage::Keepalive {
                wal_end: Lsn(buf.get_u64()),
                send_time: buf.get_i64(),
                reply_requested: buf.get_u8() != 0,
            })
        }
        _ => Err(err("CopyData", "unknown message type")),
    }
}

/// The standby status update ('r') body, to be wrapped in CopyData.
pub fn standby_status_update(write: Lsn, flush: Lsn, apply: Lsn, now_unix_us: i64, reply: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(34);
    b.put_u8(b'r');
    b.put_u64(write.0);
    b.put_u64(flush.0);
    b.put_u64(apply.0);
    b.put_i64(now_unix_us.saturating_sub(PG_EPOCH_OFFSET_US));
    b.put_u8(u8::from(reply));
    b.freeze()
}

/// Microseconds since the Unix epoch, for status updates.
pub fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rs(row: &[Option<&str>]) -> ResultSet {
        ResultSet {
            columns: vec![],
            rows: vec![row.iter().map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes()))).collect()],
        }
    }

    #[test]
    fn commands_per_version() {
        assert_eq!(
            create_physical_slot(15, "arch", false).unwrap(),
            "CREATE_REPLICATION_SLOT \"arch\" PHYSICAL (RESERVE_WAL)"
        );
        assert_eq!(
            create_physical_slot(13, "arch", true).unwrap(),
            "CREATE_REPLICATION_SLOT \"arch\" TEMPORARY PHYSICAL RESERVE_WAL"
        );
        assert_eq!(read_slot(14, "a").unwrap(), None);
        assert_eq!(read_slot(16, "a").unwrap().unwrap(), "READ_REPLICATION_SLOT \"a\"");
        assert_eq!(
            start_replication(Some("s1"), Lsn(0x1_0200_0000), 3).unwrap(),
            "START_REPLICATION SLOT \"s1\" PHYSICAL 1/02000000 TIMELINE 3"
        );
        assert_eq!(
            start_replication(None, Lsn(0), 1).unwrap(),
            "START_REPLICATION PHYSICAL 0/00000000 TIMELINE 1"
        );
        assert!(matches!(drop_slot("Bad\"; DROP", false), Err(ReplicationError::BadSlotName(_))));
        assert!(validate_slot_name(&"a".repeat(64)).is_err());
        assert!(validate_slot_name("").is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_server_version("15.18 (Debian 15.18-0+deb12u1)"), Some(150018));
        assert_eq!(parse_server_version("18beta1"), Some(180000));
        assert_eq!(parse_server_version("13.23"), Some(130023));
        assert_eq!(parse_server_version("9.6.1"), None);
        assert_eq!(parse_server_version("x"), None);
        assert_eq!(major_of(170010), 17);
    }

    #[test]
    fn results() {
        let id =
            parse_identify_system(&rs(&[Some("7312345678901234567"), Some("2"), Some("0/3000148"), None]))
                .unwrap();
        assert_eq!(
            id,
            SystemIdentity { system_id: 7312345678901234567, timeline: 2, xlogpos: Lsn(0x3000148) }
        );
        assert!(parse_identify_system(&rs(&[Some("x"), Some("1"), Some("0/1")])).is_err());
        assert!(parse_identify_system(&rs(&[Some("1"), Some("0"), Some("0/1")])).is_err());
        assert!(parse_identify_system(&ResultSet::default()).is_err());
        assert_eq!(parse_segment_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_segment_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_segment_size("1024kB").unwrap(), 1 << 20);
        assert!(parse_segment_size("3MB").is_err());
        assert!(parse_segment_size("99999999999999GB").is_err());
        assert_eq!(file_mode_for_data_directory_mode("0750").unwrap(), 0o640);
        assert_eq!(file_mode_for_data_directory_mode("0700").unwrap(), 0o600);
        assert_eq!(parse_read_slot(&rs(&[None, None, None])).unwrap(), None);
        assert_eq!(
            parse_read_slot(&rs(&[Some("physical"), Some("0/2000000"), Some("1")])).unwrap(),
            Some(SlotInfo {
                slot_type: "physical".into(),
                restart_lsn: Some(Lsn(0x2000000)),
                restart_tli: Some(1)
            })
        );
        assert_eq!(parse_end_of_timeline(&rs(&[Some("2"), Some("0/3000158")])).unwrap(), (2, Lsn(0x3000158)));
    }

    #[test]
    fn stream_messages() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x100);
        w.put_u64(0x200);
        w.put_i64(5);
        w.put_slice(b"wal");
        assert_eq!(
            parse_stream_message(w.freeze()).unwrap(),
            StreamMessage::XLogData {
                start: Lsn(0x100),
                wal_end: Lsn(0x200),
                send_time: 5,
                data: Bytes::from_static(b"wal")
            }
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x300);
        k.put_i64(7);
        k.put_u8(1);
        assert_eq!(
            parse_stream_message(k.freeze()).unwrap(),
            StreamMessage::Keepalive { wal_end: Lsn(0x300), send_time: 7, reply_requested: true }
        );
        let mut overflow = BytesMut::new();
        overflow.put_u8(b'w');
        overflow.put_u64(u64::MAX);
        overflow.put_u64(0);
        overflow.put_i64(0);
        overflow.put_slice(b"xx");
        assert!(parse_stream_message(overflow.freeze()).is_err());
        let r = standby_status_update(Lsn(1), Lsn(2), Lsn(3), PG_EPOCH_OFFSET_US + 9, true);
        assert_eq!(r.len(), 34);
        assert_eq!(r[0], b'r');
        assert_eq!(&r[25..33], &9i64.to_be_bytes());
        assert_eq!(r[33], 1);
    }

    proptest! {
        #[test]
        fn stream_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_stream_message(Bytes::from(body));
        }

        #[test]
        fn version_parser_never_panics(s in ".{0,30}") {
            let _ = parse_server_version(&s);
            let _ = parse_segment_size(&s);
        }
    }
}
