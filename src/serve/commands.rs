//! Answering replication commands from what the archive holds, as PostgreSQL's walsender answers them
//! (walsender.c's exec_replication_command and StartReplication) — pure: facts in, reply bytes out.
//!
//! - IDENTIFY_SYSTEM: the archive's system identifier, its newest timeline, the end of its durable WAL;
//! - TIMELINE_HISTORY: the archive's history files;
//! - START_REPLICATION: PostgreSQL's checks in its order (slot, timeline in the newest timeline's history,
//!   start not past the switch point, CopyBothResponse, start not past the end of durable WAL); at exactly
//!   a historic timeline's switch point, the next-timeline row at once without COPY;
//! - SHOW of the settings clients ask for; READ_REPLICATION_SLOT; temporary slots (walreceivers with
//!   `wal_receiver_create_temp_slot` make one per connection). Persistent slots are refused: walkeeper keeps
//!   no slot state; the WAL a connected standby still needs is protected without one.
//!
//! Every reply is shaped for the archive's major (`protocol::server::results`). A failing command drops
//! the session's temporary slots, as PostgreSQL's error cleanup does.

use crate::protocol::server::command::{self, Command, Statement};
use crate::protocol::server::{backend, errors, results};
use crate::protocol::ServerError;
use crate::wal::segment::TimeLineId;
use crate::wal::timeline::HistoryEntry;
use crate::wal::Lsn;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;

/// What the archive holds, as the commands need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The PostgreSQL major the archive's WAL was written by (from its page magic).
    pub major: u32,
    pub system_id: u64,
    pub segment_size: u32,
    /// The newest timeline.
    pub timeline: TimeLineId,
    /// End of the WAL that may be served on `timeline`: durable and validated.
    pub flush: Lsn,
    /// The newest timeline's history (empty for timeline 1); `None` when its history file is missing or
    /// invalid (then older timelines cannot be served).
    pub history: Option<Vec<HistoryEntry>>,
    /// The contents of every history file, by timeline.
    pub histories: BTreeMap<TimeLineId, Bytes>,
}

/// `server_version` as reported to clients for WAL of `major` (libpq reads it as major × 10000, and
/// clients pick their command syntax by it).
pub fn server_version(major: u32) -> String {
    format!("{major} (walkeeper {})", env!("CARGO_PKG_VERSION"))
}

impl Facts {
    /// Where timeline `tli` ends in the newest timeline's history and which timeline follows it: `Ok(None)`
    /// for the newest timeline itself (PostgreSQL's tliSwitchPoint).
    pub fn switch_point(&self, tli: TimeLineId) -> Result<Option<(Lsn, TimeLineId)>, ServerError> {
        if tli == self.timeline {
            return Ok(None);
        }
        let Some(history) = &self.history else {
            return Err(errors::timeline_history_missing(self.timeline));
        };
        let at = history
            .iter()
            .position(|e| e.timeline == tli)
            .ok_or_else(|| errors::timeline_not_in_history(tli))?;
        let next = history.get(at + 1).map_or(self.timeline, |e| e.timeline);
        Ok(Some((history[at].end, next)))
    }
}

/// The session's temporary replication slots.
#[derive(Clone, Debug, Default)]
pub struct Slots {
    slots: Vec<Slot>,
}

#[derive(Clone, Debug)]
struct Slot {
    name: String,
    /// Where the slot reserves WAL from (RESERVE_WAL; then the standby's flush reports move it).
    restart: Option<(Lsn, TimeLineId)>,
}

impl Slots {
    fn get(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// A standby streaming through slot `name` has flushed up to `lsn` on `timeline`.
    pub fn advance(&mut self, name: &str, lsn: Lsn, timeline: TimeLineId) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.name == name) {
            if s.restart.is_some_and(|(r, _)| r < lsn) {
                s.restart = Some((lsn, timeline));
            }
        }
    }
}

/// What to do after a query's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send ReadyForQuery and read the next query.
    Ready,
    /// The command failed with this error (already written): send ReadyForQuery.
    Failed(ServerError),
    /// CopyBothResponse has been written: stream WAL.
    Stream(StreamRequest),
}

/// An accepted START_REPLICATION.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRequest {
    pub start: Lsn,
    pub timeline: TimeLineId,
    /// For a historic timeline: its switch point (stream up to it, no further) and the next timeline.
    pub end_of_timeline: Option<(Lsn, TimeLineId)>,
    pub slot: Option<String>,
}

/// Answer one query into `out` (everything up to, not including, ReadyForQuery).
pub fn answer(query: &[u8], facts: &Facts, slots: &mut Slots, out: &mut BytesMut) -> Next {
    let start = out.len();
    match reply(query, facts, slots, out) {
        Ok(next) => next,
        Err(e) => {
            // PostgreSQL's walsender drops the session's temporary slots when a command fails. Whatever was
            // written before the error (notices, a CopyBothResponse) stays, as PostgreSQL sends it first.
            slots.slots.clear();
            if backend::error_response(&e, out).is_err() {
                out.truncate(start);
                let _ = backend::error_response(
                    &errors::error(errors::INTERNAL_ERROR, "could not encode an error"),
                    out,
                );
            }
            Next::Failed(e)
        }
    }
}

fn reply(query: &[u8], facts: &Facts, slots: &mut Slots, out: &mut BytesMut) -> Result<Next, ServerError> {
    let parsed = command::parse(query)?;
    for n in &parsed.notices {
        backend::notice_response(n, out).map_err(encode)?;
    }
    let Statement::Command(cmd) = parsed.statement else { return Err(errors::sql_not_supported()) };
    if let Some(e) = cmd.refusal() {
        return Err(e);
    }
    match cmd {
        Command::IdentifySystem => {
            results::identify_system(facts.major, facts.system_id, facts.timeline, facts.flush, None, out)
        }
        Command::Show { name } => {
            let (canonical, value) =
                setting(&name, facts).ok_or_else(|| errors::unrecognized_configuration_parameter(&name))?;
            results::show(canonical, &value, out)
        }
        Command::TimelineHistory { timeline } => match facts.histories.get(&timeline) {
            Some(content) => results::timeline_history(facts.major, timeline, content, out),
            None => return Err(errors::timeline_history_missing(timeline)),
        },
        Command::StartReplication { slot, start, timeline } => {
            return start_replication(slot, start, timeline, facts, slots, out)
        }
        Command::ReadReplicationSlot { slot } => {
            let position = slots.get(&slot).map(|s| results::SlotPosition {
                restart_lsn: s.restart.map(|(lsn, _)| lsn),
                restart_tli: s.restart.map_or(facts.timeline, |(_, tli)| tli),
            });
            results::read_replication_slot(position, out)
        }
        Command::CreatePhysicalSlot { slot, temporary, reserve_wal } => {
            if slots.get(&slot).is_some() {
                return Err(errors::slot_already_exists(&slot));
            }
            if !temporary {
                return Err(errors::persistent_slot_not_kept(&slot));
            }
            results::create_physical_slot(&slot, out).map_err(encode)?;
            let restart = reserve_wal.then_some((facts.flush, facts.timeline));
            slots.slots.push(Slot { name: slot, restart });
            Ok(())
        }
        Command::DropReplicationSlot { slot, .. } => {
            if slots.get(&slot).is_none() {
                return Err(errors::slot_does_not_exist(&slot));
            }
            slots.slots.retain(|s| s.name != slot);
            results::drop_replication_slot(out)
        }
        other => return Err(errors::not_served(other.tag())),
    }
    .map_err(encode)?;
    Ok(Next::Ready)
}

/// An encoder's failure (a bug, not input), as the error the client gets.
fn encode(e: backend::EncodeError) -> ServerError {
    errors::error(errors::INTERNAL_ERROR, e.to_string())
}

/// START_REPLICATION, checked in PostgreSQL's order.
fn start_replication(
    slot: Option<String>,
    start: Lsn,
    timeline: Option<TimeLineId>,
    facts: &Facts,
    slots: &Slots,
    out: &mut BytesMut,
) -> Result<Next, ServerError> {
    if let Some(s) = &slot {
        if slots.get(s).is_none() {
            return Err(errors::slot_does_not_exist(s));
        }
    }
    let timeline = timeline.unwrap_or(facts.timeline);
    let end_of_timeline = facts.switch_point(timeline)?;
    if let Some((switch, next)) = end_of_timeline {
        // Loose on purpose, as PostgreSQL: a start before the timeline began is refused later, by the
        // segment not being there.
        if switch < start {
            return Err(errors::start_not_in_history(start, timeline, switch));
        }
        if start == switch {
            // Nothing to stream: the next timeline at once, without COPY.
            results::end_of_streaming(Some((next, switch)), out).map_err(encode)?;
            return Ok(Next::Ready);
        }
    }
    backend::copy_both_response(out);
    if facts.flush < start {
        return Err(errors::start_ahead_of_flush(start, facts.flush));
    }
    Ok(Next::Stream(StreamRequest { start, timeline, end_of_timeline, slot }))
}

/// The settings SHOW answers (canonical name, value as SHOW prints it): what pg_receivewal, pg_basebackup
/// and walkeeper's own receiver ask a walsender for, and a few more clients read.
fn setting(name: &str, facts: &Facts) -> Option<(&'static str, String)> {
    const NAMES: [&str; 10] = [
        "wal_segment_size",
        "data_directory_mode",
        "server_version",
        "server_version_num",
        "server_encoding",
        "client_encoding",
        "integer_datetimes",
        "block_size",
        "wal_block_size",
        "max_identifier_length",
    ];
    let canonical = NAMES.into_iter().find(|n| n.eq_ignore_ascii_case(name))?;
    let value = match canonical {
        "wal_segment_size" => size_text(facts.segment_size),
        "data_directory_mode" => "0700".to_string(),
        "server_version" => server_version(facts.major),
        "server_version_num" => (facts.major * 10_000).to_string(),
        "server_encoding" | "client_encoding" => "UTF8".to_string(),
        "integer_datetimes" => "on".to_string(),
        "block_size" | "wal_block_size" => "8192".to_string(),
        _ => "63".to_string(),
    };
    Some((canonical, value))
}

/// A byte size as SHOW prints a memory setting: the largest unit that divides it (`16MB`, `1GB`).
fn size_text(bytes: u32) -> String {
    const UNITS: [(u32, &str); 3] = [(1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "kB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::BackendCodec;
    use crate::protocol::messages::{self, Backend};
    use tokio_util::codec::Decoder;

    fn facts() -> Facts {
        Facts {
            major: 15,
            system_id: 7_000_000_000_000_000_001,
            segment_size: 16 << 20,
            timeline: 3,
            flush: Lsn(0x900_0000),
            history: Some(vec![
                HistoryEntry { timeline: 1, end: Lsn(0x300_0158) },
                HistoryEntry { timeline: 2, end: Lsn(0x500_00A0) },
            ]),
            histories: BTreeMap::from([
                (2, Bytes::from_static(b"1\t0/3000158\tx\n")),
                (3, Bytes::from_static(b"1\t0/3000158\tx\n2\t0/50000A0\ty\n")),
            ]),
        }
    }

    fn run(query: &str, facts: &Facts, slots: &mut Slots) -> (Next, Vec<Backend>) {
        let mut out = BytesMut::new();
        let next = answer(query.as_bytes(), facts, slots, &mut out);
        let mut codec = BackendCodec::default();
        let mut msgs = Vec::new();
        while let Some(f) = codec.decode(&mut out).unwrap() {
            msgs.push(messages::decode(f).unwrap());
        }
        (next, msgs)
    }

    fn error_of(msgs: &[Backend]) -> &ServerError {
        match msgs.last() {
            Some(Backend::Error(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn start_replication_follows_postgresql_s_checks() {
        let f = facts();
        let mut slots = Slots::default();
        // The newest timeline: COPY, then streaming.
        let (next, msgs) = run("START_REPLICATION 0/8000000 TIMELINE 3", &f, &mut slots);
        assert!(matches!(msgs[..], [Backend::CopyBothResponse]), "{msgs:?}");
        assert_eq!(
            next,
            Next::Stream(StreamRequest {
                start: Lsn(0x800_0000),
                timeline: 3,
                end_of_timeline: None,
                slot: None
            })
        );
        // No timeline: the newest.
        let (next, _) = run("START_REPLICATION 0/8000000", &f, &mut slots);
        assert!(matches!(next, Next::Stream(StreamRequest { timeline: 3, .. })));
        // A historic timeline: up to its switch point, then timeline 3.
        let (next, _) = run("START_REPLICATION 0/4000000 TIMELINE 2", &f, &mut slots);
        assert_eq!(
            next,
            Next::Stream(StreamRequest {
                start: Lsn(0x400_0000),
                timeline: 2,
                end_of_timeline: Some((Lsn(0x500_00A0), 3)),
                slot: None
            })
        );
        // At the switch point: the next timeline at once, no COPY.
        let (next, msgs) = run("START_REPLICATION 0/3000158 TIMELINE 1", &f, &mut slots);
        assert_eq!(next, Next::Ready);
        assert!(matches!(msgs[0], Backend::RowDescription { .. }), "{msgs:?}");
        // Past it, on a timeline not in the history, ahead of the end.
        let (_, msgs) = run("START_REPLICATION 0/3000200 TIMELINE 1", &f, &mut slots);
        assert_eq!(
            error_of(&msgs).message,
            "requested starting point 0/3000200 on timeline 1 is not in this server's history"
        );
        let (_, msgs) = run("START_REPLICATION 0/3000000 TIMELINE 4", &f, &mut slots);
        assert_eq!(error_of(&msgs).message, "requested timeline 4 is not in this server's history");
        let (next, msgs) = run("START_REPLICATION 0/A000000 TIMELINE 3", &f, &mut slots);
        assert!(matches!(next, Next::Failed(_)));
        assert!(matches!(msgs[0], Backend::CopyBothResponse), "COPY first, then the error");
        assert!(error_of(&msgs)
            .message
            .ends_with("ahead of the WAL flush position of this server 0/9000000"));
        // Without the newest timeline's history, only the newest timeline is served.
        let no_history = Facts { history: None, ..facts() };
        let (_, msgs) = run("START_REPLICATION 0/4000000 TIMELINE 2", &no_history, &mut slots);
        assert_eq!(error_of(&msgs).code, "58P01");
    }

    #[test]
    fn slots_are_temporary_and_per_session() {
        let f = facts();
        let mut slots = Slots::default();
        let (_, msgs) = run("START_REPLICATION SLOT s 0/8000000", &f, &mut slots);
        assert_eq!(error_of(&msgs).message, "replication slot \"s\" does not exist");
        let (_, msgs) = run("CREATE_REPLICATION_SLOT kept PHYSICAL", &f, &mut slots);
        assert!(error_of(&msgs).message.contains("walkeeper keeps no replication slots"), "{msgs:?}");
        run("CREATE_REPLICATION_SLOT \"pg_walreceiver_7\" TEMPORARY PHYSICAL (RESERVE_WAL)", &f, &mut slots);
        let (next, _) =
            run("START_REPLICATION SLOT pg_walreceiver_7 PHYSICAL 0/8000000 TIMELINE 3", &f, &mut slots);
        assert!(matches!(next, Next::Stream(StreamRequest { slot: Some(_), .. })));
        slots.advance("pg_walreceiver_7", Lsn(0x900_0000), 3);
        let (_, msgs) = run("READ_REPLICATION_SLOT pg_walreceiver_7", &f, &mut slots);
        let Backend::DataRow { values } = &msgs[1] else { panic!("{msgs:?}") };
        assert_eq!(values[1].as_deref(), Some(&b"0/9000000"[..]));
        // A failing command drops them.
        run("TIMELINE_HISTORY 9", &f, &mut slots);
        let (_, msgs) = run("DROP_REPLICATION_SLOT pg_walreceiver_7", &f, &mut slots);
        assert_eq!(error_of(&msgs).code, "42704");
    }

    #[test]
    fn identify_show_and_history() {
        let f = facts();
        let mut slots = Slots::default();
        let (_, msgs) = run("IDENTIFY_SYSTEM", &f, &mut slots);
        let Backend::DataRow { values } = &msgs[1] else { panic!("{msgs:?}") };
        assert_eq!(values[0].as_deref(), Some(&b"7000000000000000001"[..]));
        assert_eq!(values[1].as_deref(), Some(&b"3"[..]));
        assert_eq!(values[2].as_deref(), Some(&b"0/9000000"[..]));
        for (q, want) in [
            ("SHOW wal_segment_size", "16MB"),
            ("SHOW data_directory_mode", "0700"),
            ("SHOW server_version_num", "150000"),
            ("SHOW \"Server_Encoding\"", "UTF8"),
        ] {
            let (_, msgs) = run(q, &f, &mut slots);
            let Backend::DataRow { values } = &msgs[1] else { panic!("{q}: {msgs:?}") };
            assert_eq!(values[0].as_deref(), Some(want.as_bytes()), "{q}");
        }
        let (_, msgs) = run("SHOW shared_buffers", &f, &mut slots);
        assert_eq!(error_of(&msgs).message, "unrecognized configuration parameter \"shared_buffers\"");
        let (_, msgs) = run("TIMELINE_HISTORY 2", &f, &mut slots);
        let Backend::DataRow { values } = &msgs[1] else { panic!("{msgs:?}") };
        assert_eq!(values[1].as_deref(), Some(&b"1\t0/3000158\tx\n"[..]));
        let (_, msgs) = run("BASE_BACKUP", &f, &mut slots);
        assert!(error_of(&msgs).message.contains("walkeeper does not serve BASE_BACKUP"));
        assert_eq!(size_text(1 << 30), "1GB");
        assert_eq!(size_text(64 << 20), "64MB");
        assert!(server_version(15).starts_with("15 (walkeeper "));
    }
}
