//! Where a replication slot says streaming should start. PostgreSQL 15+ answers READ_REPLICATION_SLOT on the
//! replication connection. PostgreSQL 13 and 14 lack that command, and pg_receivewal then starts at the
//! server's current position — silently skipping the WAL the slot was keeping. walkeeper instead reads the
//! slot's `restart_lsn` from `pg_replication_slots` over a short normal session (same host, user and
//! password; database `postgres` unless the connection string names one), and falls back to pg_receivewal's
//! behaviour, with a warning, only when that session is refused.

use crate::conn::{connect, ConnParams, ConnectOptions, PasswordPrompt};
use crate::protocol::replication::{self as repl, ResultSet};
use crate::stream::session::{ServerInfo, SessionError};
use crate::stream::ReceiveConfig;
use crate::wal::segment::TimeLineId;
use crate::wal::timeline::{parse_history, timeline_of};
use crate::wal::Lsn;

/// What the slot says: where to start, nothing (no position reserved yet), or that it does not exist.
pub enum SlotStart {
    At(Lsn, TimeLineId),
    NoPosition,
}

/// The slot's start position; an error when it does not exist or is not physical.
pub async fn slot_start(
    conn: &mut crate::conn::Connection,
    cfg: &ReceiveConfig,
    info: &ServerInfo,
    slot: &str,
) -> Result<SlotStart, SessionError> {
    let server = conn.server().to_string();
    let rerr = |error| SessionError::Replication { server: server.clone(), error };
    let (slot_type, restart_lsn, restart_tli) = match repl::read_slot(info.major, slot).map_err(rerr)? {
        Some(cmd) => match repl::parse_read_slot(&conn.simple_query(&cmd).await?).map_err(rerr)? {
            Some(s) => (s.slot_type, s.restart_lsn, s.restart_tli),
            None => return Err(missing(slot)),
        },
        None => match read_slot_via_sql(&cfg.conn, &cfg.connect, slot).await {
            Ok(Some((slot_type, lsn))) => (slot_type, lsn, None),
            Ok(None) => return Err(missing(slot)),
            Err(why) => {
                tracing::warn!(
                    "could not read the position of replication slot \"{slot}\" ({why}); starting at the \
                     server's current position, as pg_receivewal does on PostgreSQL {}",
                    info.major
                );
                return Ok(SlotStart::NoPosition);
            }
        },
    };
    if slot_type != "physical" {
        return Err(SessionError::Fatal(format!(
            "{server}: replication slot \"{slot}\" is a {slot_type} slot, walkeeper needs a physical one"
        )));
    }
    let Some(lsn) = restart_lsn else { return Ok(SlotStart::NoPosition) };
    let timeline = match restart_tli {
        Some(tli) => tli,
        None => timeline_for(conn, info, lsn).await?,
    };
    Ok(SlotStart::At(lsn, timeline))
}

fn missing(slot: &str) -> SessionError {
    SessionError::NotReady(format!(
        "replication slot \"{slot}\" does not exist (create it with --create-slot)"
    ))
}

/// `(slot_type, restart_lsn)` from `pg_replication_slots` over a normal session with the same settings (database
/// `postgres` unless they name one); None when there is no such slot; Err(reason) when the session cannot be had.
pub async fn read_slot_via_sql(
    conn: &ConnParams,
    connect_options: &ConnectOptions,
    slot: &str,
) -> Result<Option<(String, Option<Lsn>)>, String> {
    repl::validate_slot_name(slot).map_err(|e| e.to_string())?;
    let mut params = conn.clone();
    if params.dbname.as_deref().is_none_or(|d| d == "replication") {
        params.dbname = Some("postgres".into());
    }
    let opts =
        ConnectOptions { replication: false, prompt: PasswordPrompt::Never, ..connect_options.clone() };
    let mut sql = connect(&params, &opts).await.map_err(|e| e.to_string())?;
    let query = format!(
        "SELECT slot_type, restart_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let rs = sql.simple_query(&query).await.map_err(|e| e.to_string());
    sql.close().await;
    parse_slot_row(&rs?)
}

fn parse_slot_row(rs: &ResultSet) -> Result<Option<(String, Option<Lsn>)>, String> {
    let Some(row) = rs.rows.first() else { return Ok(None) };
    let text = |i: usize| row.get(i).cloned().flatten().map(|b| String::from_utf8_lossy(&b).into_owned());
    let slot_type = text(0).ok_or("pg_replication_slots: slot_type is NULL")?;
    let lsn = match text(1) {
        Some(t) => Some(t.parse::<Lsn>().map_err(|e| format!("pg_replication_slots: {e}"))?),
        None => None,
    };
    Ok(Some((slot_type, lsn)))
}

/// The timeline that holds `lsn`: the current one, or an ancestor named in its history file.
async fn timeline_for(
    conn: &mut crate::conn::Connection,
    info: &ServerInfo,
    lsn: Lsn,
) -> Result<TimeLineId, SessionError> {
    let current = info.identity.timeline;
    if current == 1 {
        return Ok(1);
    }
    let server = conn.server().to_string();
    let rs = conn.simple_query(&repl::timeline_history(current)).await?;
    let (_, content) = repl::parse_timeline_history(&rs)
        .map_err(|error| SessionError::Replication { server: server.clone(), error })?;
    let history = parse_history(&String::from_utf8_lossy(&content)).map_err(|e| SessionError::Protocol {
        server,
        message: format!("history file of timeline {current}: {e}"),
    })?;
    Ok(timeline_of(&history, current, lsn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rs(row: Option<[Option<&str>; 2]>) -> ResultSet {
        ResultSet {
            columns: vec![],
            rows: row
                .into_iter()
                .map(|r| r.iter().map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes()))).collect())
                .collect(),
        }
    }

    #[test]
    fn slot_rows() {
        assert_eq!(parse_slot_row(&rs(None)).unwrap(), None);
        assert_eq!(
            parse_slot_row(&rs(Some([Some("physical"), Some("0/8CDCF8")]))).unwrap(),
            Some(("physical".into(), Some(Lsn(0x8CDCF8))))
        );
        assert_eq!(
            parse_slot_row(&rs(Some([Some("physical"), None]))).unwrap(),
            Some(("physical".into(), None))
        );
        assert!(parse_slot_row(&rs(Some([Some("physical"), Some("bogus")]))).is_err());
        assert!(parse_slot_row(&rs(Some([None, None]))).is_err());
    }
}
