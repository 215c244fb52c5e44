//! Where a replication slot says streaming should start. PostgreSQL 15+ answers READ_REPLICATION_SLOT on the
//! replication connection. PostgreSQL 13 and 14 lack that command, and pg_receivewal then starts at the
//! server's current position — silently skipping the WAL the slot was keeping. walkeeper instead reads the
//! slot's `restart_lsn` from `pg_replication_slots` over a short normal session (same host, user and
//! password; database `postgres` unless the connection string names one), and falls back to pg_receivewal's
//! behaviour, with a warning, only when that session is refused.
//!
//! Creating a missing slot (`create_slot`: `receive --failover`, after a promotion the slot usually exists
//! on the old primary only) is here too: physical, reserving WAL at once — from the server's last
//! checkpoint's redo pointer, which after a fresh promotion can lie past the segment the archive needs
//! (docs/failover.md, "the slot-creation gap").

use crate::conn::{connect, ConnParams, ConnectOptions, Connection, PasswordPrompt};
use crate::protocol::replication::{self as repl, ResultSet, SlotInfo};
use crate::protocol::sqlstate;
use crate::stream::session::{timeline_history, ServerInfo, SessionError};
use crate::stream::ReceiveConfig;
use crate::wal::segment::TimeLineId;
use crate::wal::timeline::timeline_of;
use crate::wal::Lsn;

/// What the slot says: where to start, nothing (no position reserved yet, or not readable on 13/14), or
/// that it does not exist.
pub enum SlotStart {
    At(Lsn, TimeLineId),
    NoPosition,
    Missing,
}

/// What the server knows of a slot, as `receive` and `check` both read it.
pub enum SlotState {
    Missing,
    /// The slot exists (type, restart LSN and, on 15+, its timeline).
    Found(SlotInfo),
    /// PostgreSQL 13/14 and the normal session to read `pg_replication_slots` was refused: why.
    Unknown(String),
}

/// Read a slot: READ_REPLICATION_SLOT on 15+, else `pg_replication_slots` over a normal session with the
/// same connection settings.
pub async fn inspect(
    conn: &mut Connection,
    params: &ConnParams,
    connect_options: &ConnectOptions,
    major: u32,
    slot: &str,
) -> Result<SlotState, SessionError> {
    let server = conn.server().to_string();
    let rerr = |error| SessionError::Replication { server: server.clone(), error };
    let Some(cmd) = repl::read_slot(major, slot).map_err(rerr)? else {
        // The same server as `conn`, whichever host of several it is.
        let mut params = params.clone();
        if let Some(endpoint) = conn.endpoint() {
            params.endpoints = vec![endpoint.clone()];
        }
        return Ok(match read_slot_via_sql(&params, connect_options, slot).await {
            Ok(Some((slot_type, restart_lsn))) => {
                SlotState::Found(SlotInfo { slot_type, restart_lsn, restart_tli: None })
            }
            Ok(None) => SlotState::Missing,
            Err(why) => SlotState::Unknown(why),
        });
    };
    match conn.simple_query(&cmd).await {
        Ok(rs) => Ok(match repl::parse_read_slot(&rs).map_err(rerr)? {
            Some(info) => SlotState::Found(info),
            None => SlotState::Missing,
        }),
        // The server refuses READ_REPLICATION_SLOT on a logical slot (feature_not_supported).
        Err(e)
            if e.server_error().is_some_and(|se| {
                se.has_code(sqlstate::FEATURE_NOT_SUPPORTED)
                    && se.message.contains("logical replication slot")
            }) =>
        {
            Ok(SlotState::Found(SlotInfo {
                slot_type: "logical".into(),
                restart_lsn: None,
                restart_tli: None,
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// The slot's start position; an error when it is not physical.
pub async fn slot_start(
    conn: &mut Connection,
    cfg: &ReceiveConfig,
    info: &ServerInfo,
    slot: &str,
) -> Result<SlotStart, SessionError> {
    let found = match inspect(conn, &cfg.conn, &cfg.connect, info.major, slot).await? {
        SlotState::Found(found) => found,
        SlotState::Missing => return Ok(SlotStart::Missing),
        SlotState::Unknown(why) => {
            tracing::warn!(
                "could not read the position of replication slot \"{slot}\" ({why}); starting at the \
                 server's current position, as pg_receivewal does on PostgreSQL {}",
                info.major
            );
            return Ok(SlotStart::NoPosition);
        }
    };
    if found.slot_type != "physical" {
        return Err(SessionError::Fatal(format!(
            "{}: replication slot \"{slot}\" is a {} slot, walkeeper needs a physical one",
            conn.server(),
            found.slot_type
        )));
    }
    let Some(lsn) = found.restart_lsn else { return Ok(SlotStart::NoPosition) };
    let timeline = match found.restart_tli {
        Some(tli) => tli,
        None => timeline_for(conn, info, lsn).await?,
    };
    Ok(SlotStart::At(lsn, timeline))
}

/// Create `slot` (physical, reserving WAL) unless it exists; true when it was created.
pub async fn create_if_missing(conn: &mut Connection, major: u32, slot: &str) -> Result<bool, SessionError> {
    let cmd = repl::create_physical_slot(major, slot, false)
        .map_err(|error| SessionError::Replication { server: conn.server().to_string(), error })?;
    match conn.simple_query(&cmd).await {
        Ok(_) => Ok(true),
        Err(e) if e.server_error().is_some_and(|s| s.has_code(sqlstate::DUPLICATE_OBJECT)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `(slot_type, restart_lsn)` from `pg_replication_slots` over a normal session with the same settings (database
/// `postgres` unless they name one); None when there is no such slot; Err(reason) when the session cannot be had.
async fn read_slot_via_sql(
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
    conn: &mut Connection,
    info: &ServerInfo,
    lsn: Lsn,
) -> Result<TimeLineId, SessionError> {
    let current = info.identity.timeline;
    if current == 1 {
        return Ok(1);
    }
    let (_, history) = timeline_history(conn, current).await?;
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
