//! The replies a walsender sends for each replication command, shaped exactly as PostgreSQL's walsender.c
//! shapes them (column names, type OIDs, NULLs, CommandComplete tags), so that walreceivers, pg_receivewal
//! and psql read them as they read a server's. Each function writes everything up to, not including, the
//! ReadyForQuery that ends every command.
//!
//! | command                 | columns (type)                                                        |
//! |-------------------------|-----------------------------------------------------------------------|
//! | IDENTIFY_SYSTEM         | systemid (text), timeline (int8; int4 up to 15), xlogpos (text),        |
//! |                         | dbname (text)                                                         |
//! | TIMELINE_HISTORY        | filename (text), content (text; bytea in 13: the file's bytes as is)    |
//! | READ_REPLICATION_SLOT   | slot_type (text), restart_lsn (text), restart_tli (int8)               |
//! | SHOW name               | one text column named after the setting                               |
//! | CREATE_REPLICATION_SLOT | slot_name, consistent_point, snapshot_name, output_plugin (all text)   |
//! | end of a timeline       | next_tli (int8), next_tli_startpos (text)                              |
//!
//! LSNs are written `%X/%X` (see [`super::lsn_text`]). Where a shape changed between majors, the
//! function takes the major whose walsender to imitate (the archive's): checked against PostgreSQL 13–18
//! byte for byte by tests/serve_protocol.rs.

use super::backend::{self, Column, EncodeError};
use super::lsn_text;
use crate::wal::segment::{history_file_name, TimeLineId};
use crate::wal::Lsn;
use bytes::BytesMut;

/// One-row result: RowDescription, DataRow, CommandComplete. On error the buffer is left as it was.
fn one_row(
    columns: &[Column<'_>],
    values: &[Option<&[u8]>],
    tag: &str,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = buf.len();
    let result = backend::row_description(columns, buf)
        .and_then(|()| backend::data_row(values, buf))
        .and_then(|()| backend::command_complete(tag, buf));
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// IDENTIFY_SYSTEM: the system identifier, the current timeline, the flush position, and the database
/// (NULL on a physical replication connection). The timeline is an int8 from PostgreSQL 16 on.
pub fn identify_system(
    server_major: u32,
    system_id: u64,
    timeline: TimeLineId,
    xlogpos: Lsn,
    dbname: Option<&str>,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let tli_column = if server_major >= 16 { Column::int8("timeline") } else { Column::int4("timeline") };
    let columns = [Column::text("systemid"), tli_column, Column::text("xlogpos"), Column::text("dbname")];
    let (sysid, tli, pos) = (system_id.to_string(), timeline.to_string(), lsn_text(xlogpos));
    let values =
        [Some(sysid.as_bytes()), Some(tli.as_bytes()), Some(pos.as_bytes()), dbname.map(str::as_bytes)];
    one_row(&columns, &values, "IDENTIFY_SYSTEM", buf)
}

/// TIMELINE_HISTORY: the history file's name (`0000000N.history`) and its bytes, sent as they are. Up to
/// PostgreSQL 15 the columns were described by hand (typmod 0), and in 13 the content was a bytea.
pub fn timeline_history(
    server_major: u32,
    timeline: TimeLineId,
    content: &[u8],
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let name = history_file_name(timeline);
    let columns = match server_major {
        ..=13 => [Column::text("filename").with_type_mod(0), Column::bytea("content").with_type_mod(0)],
        14..=15 => [Column::text("filename").with_type_mod(0), Column::text("content").with_type_mod(0)],
        _ => [Column::text("filename"), Column::text("content")],
    };
    one_row(&columns, &[Some(name.as_bytes()), Some(content)], "TIMELINE_HISTORY", buf)
}

/// What READ_REPLICATION_SLOT reports of an existing physical slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPosition {
    /// `None` while the slot reserves no WAL.
    pub restart_lsn: Option<Lsn>,
    /// The timeline `restart_lsn` belongs to (given whenever `restart_lsn` is).
    pub restart_tli: TimeLineId,
}

/// READ_REPLICATION_SLOT: a row of NULLs when the slot does not exist (that is not an error).
pub fn read_replication_slot(slot: Option<SlotPosition>, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let columns = [Column::text("slot_type"), Column::text("restart_lsn"), Column::int8("restart_tli")];
    let lsn = slot.and_then(|s| s.restart_lsn).map(lsn_text);
    let tli = slot.filter(|s| s.restart_lsn.is_some()).map(|s| s.restart_tli.to_string());
    let values = [
        slot.map(|_| &b"physical"[..]),
        lsn.as_deref().map(str::as_bytes),
        tli.as_deref().map(str::as_bytes),
    ];
    one_row(&columns, &values, "READ_REPLICATION_SLOT", buf)
}

/// SHOW: one text column named with the setting's canonical spelling (e.g. `wal_segment_size`), holding
/// the value as `SHOW` prints it (`16MB`, `0700`).
pub fn show(canonical_name: &str, value: &str, buf: &mut BytesMut) -> Result<(), EncodeError> {
    one_row(&[Column::text(canonical_name)], &[Some(value.as_bytes())], "SHOW", buf)
}

/// CREATE_REPLICATION_SLOT of a physical slot: its name and `0/0` as the consistent point (a physical slot
/// has none), no snapshot, no plugin. (A walsender drops a session's temporary slots when any of its
/// commands fails, as PostgreSQL does: a later DROP of one then finds no such slot.)
pub fn create_physical_slot(slot: &str, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let columns = [
        Column::text("slot_name"),
        Column::text("consistent_point"),
        Column::text("snapshot_name"),
        Column::text("output_plugin"),
    ];
    one_row(&columns, &[Some(slot.as_bytes()), Some(b"0/0"), None, None], "CREATE_REPLICATION_SLOT", buf)
}

/// DROP_REPLICATION_SLOT answers with its CommandComplete only.
pub fn drop_replication_slot(buf: &mut BytesMut) -> Result<(), EncodeError> {
    backend::command_complete("DROP_REPLICATION_SLOT", buf)
}

/// The end of START_REPLICATION, after both sides have sent CopyDone (or at once, without COPY, when a
/// historic timeline has nothing to send from the requested point): for a historic timeline the row naming
/// the next timeline and where it starts, then CommandComplete "START_STREAMING" and "START_REPLICATION"
/// (PostgreSQL sends both; walreceivers wait for the second).
pub fn end_of_streaming(next: Option<(TimeLineId, Lsn)>, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let start = buf.len();
    let result = match next {
        Some((tli, lsn)) => {
            let (tli, lsn) = (tli.to_string(), lsn_text(lsn));
            one_row(
                &[Column::int8("next_tli"), Column::text("next_tli_startpos")],
                &[Some(tli.as_bytes()), Some(lsn.as_bytes())],
                "START_STREAMING",
                buf,
            )
        }
        None => backend::command_complete("START_STREAMING", buf),
    }
    .and_then(|()| backend::command_complete("START_REPLICATION", buf));
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::BackendCodec;
    use crate::protocol::messages::{self, Backend};
    use crate::protocol::replication::{self, ResultSet, SlotInfo, SystemIdentity};
    use bytes::Bytes;
    use tokio_util::codec::Decoder;

    /// Reads the reply with the client side, as walkeeper's own receiver does.
    fn client_view(mut buf: BytesMut) -> (ResultSet, Vec<String>) {
        let mut codec = BackendCodec::default();
        let (mut rs, mut tags) = (ResultSet::default(), Vec::new());
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            match messages::decode(frame).unwrap() {
                Backend::RowDescription { columns } => rs.columns = columns,
                Backend::DataRow { values } => rs.rows.push(values),
                Backend::CommandComplete { tag } => tags.push(tag),
                other => panic!("unexpected {other:?}"),
            }
        }
        (rs, tags)
    }

    #[test]
    fn identify_system_reads_back() {
        let mut b = BytesMut::new();
        identify_system(18, 7312345678901234567, 2, Lsn(0x3000148), None, &mut b).unwrap();
        let (rs, tags) = client_view(b);
        assert_eq!(rs.columns, ["systemid", "timeline", "xlogpos", "dbname"]);
        assert_eq!(rs.rows[0][2].as_deref(), Some(&b"0/3000148"[..]));
        assert_eq!(rs.rows[0][3], None);
        assert_eq!(tags, ["IDENTIFY_SYSTEM"]);
        assert_eq!(
            replication::parse_identify_system(&rs).unwrap(),
            SystemIdentity { system_id: 7312345678901234567, timeline: 2, xlogpos: Lsn(0x3000148) }
        );
    }

    #[test]
    fn other_results_read_back() {
        let history = b"1\t0/3000148\tno recovery target specified\n";
        let mut b = BytesMut::new();
        timeline_history(18, 2, history, &mut b).unwrap();
        let (rs, _) = client_view(b);
        assert_eq!(
            replication::parse_timeline_history(&rs).unwrap(),
            ("00000002.history".to_string(), Bytes::from_static(history))
        );

        let mut b = BytesMut::new();
        read_replication_slot(
            Some(SlotPosition { restart_lsn: Some(Lsn(0x2000000)), restart_tli: 1 }),
            &mut b,
        )
        .unwrap();
        read_replication_slot(None, &mut b).unwrap();
        read_replication_slot(Some(SlotPosition { restart_lsn: None, restart_tli: 1 }), &mut b).unwrap();
        let (rs, tags) = client_view(b);
        assert_eq!(rs.columns, ["slot_type", "restart_lsn", "restart_tli"]);
        assert_eq!(tags, ["READ_REPLICATION_SLOT"; 3]);
        let one = |i: usize| ResultSet { columns: vec![], rows: vec![rs.rows[i].clone()] };
        assert_eq!(
            replication::parse_read_slot(&one(0)).unwrap(),
            Some(SlotInfo {
                slot_type: "physical".into(),
                restart_lsn: Some(Lsn(0x2000000)),
                restart_tli: Some(1)
            })
        );
        assert_eq!(replication::parse_read_slot(&one(1)).unwrap(), None);
        assert_eq!(rs.rows[2], vec![Some(Bytes::from_static(b"physical")), None, None]);

        let mut b = BytesMut::new();
        show("wal_segment_size", "16MB", &mut b).unwrap();
        let (rs, tags) = client_view(b);
        assert_eq!((rs.columns, tags), (vec!["wal_segment_size".to_string()], vec!["SHOW".to_string()]));
        assert_eq!(
            replication::parse_segment_size(
                &replication::parse_show(&ResultSet { columns: vec![], rows: rs.rows }).unwrap()
            )
            .unwrap(),
            16 << 20
        );

        let mut b = BytesMut::new();
        create_physical_slot("pg_walreceiver_9", &mut b).unwrap();
        drop_replication_slot(&mut b).unwrap();
        let (rs, tags) = client_view(b);
        assert_eq!(
            rs.rows[0],
            vec![Some(Bytes::from_static(b"pg_walreceiver_9")), Some(Bytes::from_static(b"0/0")), None, None]
        );
        assert_eq!(tags, ["CREATE_REPLICATION_SLOT", "DROP_REPLICATION_SLOT"]);
    }

    #[test]
    fn shapes_of_older_majors() {
        let description = |b: BytesMut| {
            let mut b = b;
            BackendCodec::default().decode(&mut b).unwrap().unwrap().body
        };
        let mut old = BytesMut::new();
        identify_system(15, 1, 1, Lsn(1), None, &mut old).unwrap();
        let mut new = BytesMut::new();
        identify_system(16, 1, 1, Lsn(1), None, &mut new).unwrap();
        let (old, new) = (description(old), description(new));
        // "timeline\0", table OID, column number, then the type OID: int4 (23) before 16, int8 (20) after.
        let at = |d: &Bytes| {
            let i = d.windows(9).position(|w| w == b"timeline\0").unwrap() + 9 + 6;
            (d[i + 3], d[i + 5])
        };
        assert_eq!((at(&old), at(&new)), ((23, 4), (20, 8)));
        let mut b13 = BytesMut::new();
        timeline_history(13, 2, b"x", &mut b13).unwrap();
        let d = description(b13);
        assert!(
            d.ends_with(&[0, 0, 0, 17, 0xff, 0xff, 0, 0, 0, 0, 0, 0]),
            "content is a bytea with typmod 0"
        );
    }

    #[test]
    fn end_of_timeline_reads_back() {
        let mut b = BytesMut::new();
        end_of_streaming(Some((2, Lsn(0x3000158))), &mut b).unwrap();
        let (rs, tags) = client_view(b);
        assert_eq!(rs.columns, ["next_tli", "next_tli_startpos"]);
        assert_eq!(replication::parse_end_of_timeline(&rs).unwrap(), (2, Lsn(0x3000158)));
        assert_eq!(tags, ["START_STREAMING", "START_REPLICATION"]);
        let mut b = BytesMut::new();
        end_of_streaming(None, &mut b).unwrap();
        let (rs, tags) = client_view(b);
        assert!(rs.rows.is_empty());
        assert_eq!(tags, ["START_STREAMING", "START_REPLICATION"]);
    }

    #[test]
    fn failures_leave_the_buffer_alone() {
        let mut b = BytesMut::from(&b"x"[..]);
        assert!(show("bad\0name", "v", &mut b).is_err());
        assert!(end_of_streaming(Some((1, Lsn(1))), &mut b).is_ok());
        b.truncate(1);
        assert_eq!(&b[..], b"x");
    }
}
