//! One replication session on one connection: identify the server, decide where to start (the archive held
//! against the server's history, `resume`), create the slot if asked, fetch timeline history,
//! START_REPLICATION, then the CopyBoth loop that writes WAL, validates it, syncs it and reports positions —
//! following end-of-timeline to the next timeline on the same connection.

use crate::archive::local::{LocalWalDir as WalDir, SegmentWriter};
use crate::archive::scan::{find_start, ScanError};
use crate::archive::store::LocalStore;
use crate::archive::upload;
use crate::conn::connect::{server_role, ServerRole};
use crate::conn::{ConnError, Connection};
use crate::protocol::messages::Backend;
use crate::protocol::replication::{self as repl, StreamMessage, SystemIdentity};
use crate::protocol::sqlstate;
use crate::stream::failover::{DivergedTail, Refusal};
use crate::stream::feedback::Positions;
use crate::stream::liveness::{Due, Liveness};
use crate::stream::resume;
use crate::stream::slot::{create_if_missing, slot_start, SlotStart};
use crate::stream::state::{set_phase, Phase, StateSender};
use crate::stream::ReceiveConfig;
use crate::wal::decoder::{DecoderConfig, WalDecoder};
use crate::wal::segment::{history_file_name, SegmentId, TimeLineId};
use crate::wal::timeline::{parse_history_of, HistoryEntry};
use crate::wal::Lsn;
use bytes::Bytes;
use futures_util::FutureExt;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Write this much before giving the loop a chance to sync and report (bounds latency under a flood).
const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// How often `-v` prints a progress line when status updates are off (`-s 0`); else once per status interval.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Past `--endpos`, how long to keep reading so that a fully received segment gets validated and renamed
/// (the record crossing its end has to arrive whole) before stopping with it left `.partial`.
const ENDPOS_VALIDATION_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Conn(Box<ConnError>),
    #[error("{0}")]
    Archive(Box<crate::archive::error::WalDirError>),
    /// The archive gives no start position (a file that does not belong, another database system's WAL).
    #[error(transparent)]
    Scan(Box<ScanError>),
    #[error("{server}: {error}")]
    Replication { server: String, error: repl::ReplicationError },
    /// The stream failed validation: nothing at or after `lsn` was acknowledged.
    #[error("invalid WAL from {server} in {file}: {error}")]
    InvalidWal { server: String, file: String, lsn: Lsn, error: crate::wal::decoder::WalError },
    /// A condition that retrying cannot fix (wrong server, wrong directory, incompatible versions).
    #[error("{0}")]
    Fatal(String),
    /// The server cannot serve us yet (e.g. the slot is missing); retried unless `--no-loop`, as in
    /// pg_receivewal.
    #[error("{0}")]
    NotReady(String),
    #[error("{server}: {message}")]
    Protocol { server: String, message: String },
    /// The server ended streaming on its own (CommandComplete without CopyDone): a planned shutdown or a
    /// switchover. Not a failure; the reconnect loop logs it as information.
    #[error("{server}: server ended streaming (shutdown or switchover)")]
    ServerEnded { server: String },
    /// `--receive-timeout`: nothing at all from the server for that long, not even a keepalive.
    #[error(
        "{server}: nothing received from the server for {} seconds, not even a keepalive (--receive-timeout)",
        timeout.as_secs()
    )]
    ReceiveTimeout { server: String, timeout: Duration },
    /// The archive cannot continue on this server (`failover::reconcile`): another host may do, or this one
    /// later (a standby catching up).
    #[error("{server}: not streaming from this server: {refusal}")]
    Refused { server: String, refusal: Refusal },
    /// The server no longer has a WAL segment the archive needs next: only a copy from elsewhere helps.
    #[error(
        "{server}: the server no longer has WAL segment {segment}, which the archive needs next (removed or \
         recycled before walkeeper asked for it; after a failover see \"the slot-creation gap\" in \
         docs/failover.md). Nothing in the archive was changed. Copy that segment into the archive from \
         another copy (the old primary's or a standby's pg_wal), or start a new archive with a new base backup"
    )]
    WalGone { server: String, segment: String },
}

impl From<ConnError> for SessionError {
    fn from(e: ConnError) -> Self {
        SessionError::Conn(Box::new(e))
    }
}

impl From<crate::archive::error::WalDirError> for SessionError {
    fn from(e: crate::archive::error::WalDirError) -> Self {
        SessionError::Archive(Box::new(e))
    }
}

impl SessionError {
    /// Errors after which reconnecting is pointless.
    pub fn is_fatal(&self) -> bool {
        match self {
            SessionError::Fatal(_) | SessionError::WalGone { .. } => true,
            SessionError::Scan(e) => e.is_fatal(),
            _ => false,
        }
    }
}

/// `requested WAL segment … has already been removed` from the walsender, as [`SessionError::WalGone`].
fn wal_gone(e: SessionError) -> SessionError {
    let SessionError::Conn(c) = &e else { return e };
    let Some(se) = c.server_error() else { return e };
    let removed = se.message.contains("has already been removed") || se.has_code(sqlstate::UNDEFINED_FILE);
    let segment = se.message.split(|c: char| !c.is_ascii_hexdigit()).find(|w| w.len() == 24);
    match (removed, segment) {
        (true, Some(segment)) => {
            let server = match &**c {
                ConnError::Server { server, .. } => server.clone(),
                _ => String::new(),
            };
            SessionError::WalGone { server, segment: segment.to_string() }
        }
        _ => e,
    }
}

/// Why a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `--endpos` reached.
    EndPos,
    /// SIGINT / SIGTERM.
    Signal,
}

/// What the server told us when we connected.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub identity: SystemIdentity,
    pub segment_size: u32,
    pub file_mode: u32,
    pub major: u32,
}

/// IDENTIFY_SYSTEM, version check, segment size and file mode — what every command needs first.
pub async fn identify(conn: &mut Connection) -> Result<ServerInfo, SessionError> {
    let major = conn.major();
    if !(repl::OLDEST_MAJOR..=repl::NEWEST_MAJOR).contains(&major) {
        return Err(SessionError::Fatal(format!(
            "incompatible server version {}; walkeeper supports PostgreSQL {} to {}",
            conn.parameter("server_version").unwrap_or("?"),
            repl::OLDEST_MAJOR,
            repl::NEWEST_MAJOR
        )));
    }
    let server = conn.server().to_string();
    let rerr = |error| SessionError::Replication { server: server.clone(), error };
    let identity =
        repl::parse_identify_system(&conn.simple_query(repl::identify_system()).await?).map_err(rerr)?;
    let size_text =
        repl::parse_show(&conn.simple_query(&repl::show("wal_segment_size")).await?).map_err(rerr)?;
    let segment_size = repl::parse_segment_size(&size_text).map_err(rerr)?;
    let mode_text =
        repl::parse_show(&conn.simple_query(&repl::show("data_directory_mode")).await?).map_err(rerr)?;
    let file_mode = repl::file_mode_for_data_directory_mode(&mode_text).map_err(rerr)?;
    Ok(ServerInfo { identity, segment_size, file_mode, major })
}

/// A server identified and found fit to stream from, and where streaming starts there.
pub struct Plan {
    pub info: ServerInfo,
    pub role: ServerRole,
    pub start: Lsn,
    pub timeline: TimeLineId,
    /// Old-timeline WAL in the archive past the server's fork point, which starting here leaves behind.
    pub tail: Option<DivergedTail>,
}

/// Identify the server, read its role and decide where streaming would start: nothing is written to the
/// archive and nothing created on the server (hunting plans every candidate this way before choosing one).
pub async fn plan(conn: &mut Connection, cfg: &ReceiveConfig) -> Result<Plan, SessionError> {
    conn.set_reply_timeout(cfg.receive_timeout);
    let info = identify(conn).await?;
    let role = server_role(conn).await?;
    plan_start(conn, cfg, info, role).await
}

/// The rest of [`plan`], once the server is identified and its role known.
pub async fn plan_start(
    conn: &mut Connection,
    cfg: &ReceiveConfig,
    info: ServerInfo,
    role: ServerRole,
) -> Result<Plan, SessionError> {
    let dir = WalDir::open(&cfg.directory, cfg.dir_options(info.segment_size, info.file_mode))?;
    let (start, timeline, tail) = start_position(conn, cfg, &dir, &info).await?;
    Ok(Plan { info, role, start, timeline, tail })
}

/// Stream from a planned server: say where, create the slot if asked to, report the diverged tail left
/// behind, then stream until stopped (endpos, signal: `shutdown` flips to true on SIGINT/SIGTERM) or an
/// error.
pub async fn run_planned(
    conn: &mut Connection,
    cfg: &ReceiveConfig,
    plan: Plan,
    shutdown: &mut watch::Receiver<bool>,
    validation_failures: &mut Option<(Lsn, u32)>,
    state: &StateSender,
) -> Result<Stopped, SessionError> {
    let info = plan.info;
    set_phase(state, Phase::Connecting);
    state.send_modify(|s| {
        s.server = Some(conn.server().to_string());
        s.server_role = Some(plan.role.name());
        s.server_version = conn.parameter("server_version").map(str::to_string);
        s.system_id = Some(info.identity.system_id);
        s.segment_size = Some(info.segment_size);
        s.server_end = Some(info.identity.xlogpos);
    });
    tracing::info!(
        server = conn.server(),
        role = plan.role.name(),
        server_version = conn.parameter("server_version").unwrap_or(""),
        timeline = info.identity.timeline,
        "connected to {} ({}, PostgreSQL {}, timeline {})",
        conn.server(),
        plan.role.name(),
        conn.parameter("server_version").unwrap_or("?"),
        info.identity.timeline
    );
    let dir = WalDir::open(&cfg.directory, cfg.dir_options(info.segment_size, info.file_mode))?;
    if let (Some(slot), true) = (&cfg.slot, cfg.create_slot) {
        if create_if_missing(conn, info.major, slot).await? {
            tracing::warn!(
                "{}: replication slot \"{slot}\" was missing; created it (physical, reserving WAL from the \
                 server's last checkpoint on)",
                conn.server()
            );
        }
    }
    if let Some(tail) = &plan.tail {
        let report = resume::report_tail(&dir, info.segment_size, tail, plan.timeline, conn.server());
        state.send_modify(|s| s.diverged_tail = report);
    }
    let (mut start, mut timeline) = (plan.start, plan.timeline);
    loop {
        start = start.segment_start(info.segment_size);
        if timeline != 1 && !dir.has_history(timeline)? {
            fetch_history(conn, &dir, timeline).await?;
        }
        tracing::info!("starting log streaming at {start} (timeline {timeline})");
        let cmd = repl::start_replication(cfg.slot.as_deref(), start, timeline)
            .map_err(|error| SessionError::Replication { server: conn.server().to_string(), error })?;
        conn.start_copy_both(&cmd).await.map_err(|e| wal_gone(e.into()))?;
        state.send_modify(|s| {
            // Positions are per timeline. On the same one they never go back (a `.partial` streamed again
            // keeps its durable bytes until the new stream passes them). On a new timeline nothing is in
            // its files yet: its first segment's copy of the old timeline's WAL arrives with the stream, and
            // the walsender reads the new timeline's files up to `flushed`.
            let same = s.timeline == Some(timeline);
            s.timeline = Some(timeline);
            s.received = Some(s.received.filter(|_| same).map_or(start, |r| r.max(start)));
            s.flushed = Some(s.flushed.filter(|_| same).map_or(start, |f| f.max(start)));
            s.last_error = None;
        });
        set_phase(state, Phase::Streaming);
        let mut copy = CopyLoop::new(conn, cfg, &dir, &info, start, timeline, state);
        let result = copy.run(shutdown).await;
        let end = copy.positions.received();
        copy.close().await;
        match result {
            Ok(CopyEnd::Stopped(s)) => return Ok(s),
            Ok(CopyEnd::EndOfTimeline) => {}
            Err(e) => {
                if let SessionError::InvalidWal { lsn, .. } = &e {
                    *validation_failures = match validation_failures.take() {
                        Some((l, n)) if l == *lsn => Some((l, n + 1)),
                        _ => Some((*lsn, 1)),
                    };
                }
                return Err(wal_gone(e));
            }
        }
        let (next_tli, next_start) = end_of_timeline(conn, timeline, end).await?;
        tracing::info!("switched to timeline {next_tli} at {next_start}");
        timeline = next_tli;
        start = next_start;
        if stop_at_endpos(cfg, start) {
            return Ok(Stopped::EndPos);
        }
    }
}

fn stop_at_endpos(cfg: &ReceiveConfig, pos: Lsn) -> bool {
    cfg.endpos.is_some_and(|e| e < pos)
}

/// Where streaming starts, and the old-timeline tail that leaves behind. A non-empty archive continues
/// where it ends, held against the server's history (`resume`); its files are checked to be of this server's
/// database system first (`archive::scan`). An empty one starts at the slot's restart position, else the
/// server's current one, as pg_receivewal's.
async fn start_position(
    conn: &mut Connection,
    cfg: &ReceiveConfig,
    dir: &WalDir,
    info: &ServerInfo,
) -> Result<(Lsn, TimeLineId, Option<DivergedTail>), SessionError> {
    let store = LocalStore::new(dir.path());
    let mut found = match find_start(&store, info.segment_size, info.identity.system_id) {
        // Hunting: the server is the wrong one, not the archive.
        Err(ScanError::OtherSystem { found, expected, .. }) if cfg.failover => {
            let refusal = Refusal::SystemId { archive: found, server: expected };
            return Err(SessionError::Refused { server: conn.server().to_string(), refusal });
        }
        other => other.map_err(|e| SessionError::Scan(Box::new(e)))?,
    };
    if let Some(link) = cfg.upload.as_ref().filter(|l| l.settings.remove_uploaded) {
        // The spool gives uploaded segments up: the upload store's newest complete segment counts too.
        found = upload::resume_point(&link.settings, found, info.segment_size, info.identity.system_id)
            .map_err(|e| SessionError::Scan(Box::new(e)))?;
    }
    if let Some(found) = found {
        let Some(start) = resume::reconcile_archive(conn, &store, info).await? else {
            return Ok((found.lsn, found.timeline, None));
        };
        // pg_receivewal's rule restarts a trailing run of `.partial` files at its first, whose last record
        // was not validated yet; on that timeline, never start past it.
        let lsn = if found.timeline == start.timeline { start.lsn.min(found.lsn) } else { start.lsn };
        return Ok((lsn, start.timeline, start.tail));
    }
    if let Some(slot) = &cfg.slot {
        match slot_start(conn, cfg, info, slot).await? {
            SlotStart::At(lsn, tli) => return Ok((lsn, tli, None)),
            SlotStart::NoPosition => {}
            // Created before streaming starts, reserving WAL from before the server's current position.
            SlotStart::Missing if cfg.create_slot => {}
            SlotStart::Missing => {
                return Err(SessionError::NotReady(format!(
                    "replication slot \"{slot}\" does not exist; create it with `walkeeper receive --slot {slot} \
                     --create-slot` (in the service: create_slot = true)"
                )))
            }
        }
    }
    Ok((info.identity.xlogpos, info.identity.timeline, None))
}

/// TIMELINE_HISTORY for `timeline`, checked: the file name, and content that can be that timeline's
/// history (`parse_history_of`). Returns the file's bytes as sent and its entries.
pub async fn timeline_history(
    conn: &mut Connection,
    timeline: TimeLineId,
) -> Result<(Bytes, Vec<HistoryEntry>), SessionError> {
    let server = conn.server().to_string();
    let rs = conn.simple_query(&repl::timeline_history(timeline)).await?;
    let (name, content) = repl::parse_timeline_history(&rs)
        .map_err(|error| SessionError::Replication { server: server.clone(), error })?;
    if name != history_file_name(timeline) {
        return Err(SessionError::Protocol {
            server,
            message: format!("TIMELINE_HISTORY {timeline} returned a file named \"{}\"", name.escape_debug()),
        });
    }
    // The reason column is free text in the server's encoding; the fields checked are ASCII.
    match parse_history_of(timeline, &String::from_utf8_lossy(&content)) {
        Ok(entries) => Ok((content, entries)),
        Err(e) => Err(SessionError::Protocol {
            server,
            message: format!("TIMELINE_HISTORY {timeline} returned an invalid history file {name}: {e}"),
        }),
    }
}

/// Fetch and store the history file of `timeline`, checked before it is stored ([`timeline_history`]):
/// garbage from a server never lands in the archive, where restore would serve it to a recovering server.
async fn fetch_history(
    conn: &mut Connection,
    dir: &WalDir,
    timeline: TimeLineId,
) -> Result<(), SessionError> {
    let (content, _) = timeline_history(conn, timeline).await?;
    dir.write_history(timeline, &content)?;
    Ok(())
}

/// After the server's CopyDone: answer it, then read the next timeline and its start position.
async fn end_of_timeline(
    conn: &mut Connection,
    timeline: TimeLineId,
    stopped_at: Lsn,
) -> Result<(TimeLineId, Lsn), SessionError> {
    let server = conn.server().to_string();
    let rs = conn.finish_copy().await?;
    let (next, start) = repl::parse_end_of_timeline(&rs)
        .map_err(|error| SessionError::Replication { server: server.clone(), error })?;
    if next <= timeline {
        return Err(SessionError::Protocol {
            server,
            message: format!(
                "server reported unexpected next timeline {next}, following timeline {timeline}"
            ),
        });
    }
    if start > stopped_at {
        return Err(SessionError::Protocol {
            server,
            message: format!(
                "server stopped streaming timeline {timeline} at {stopped_at}, but reported next timeline {next} to begin at {start}"
            ),
        });
    }
    Ok((next, start))
}

enum CopyEnd {
    Stopped(Stopped),
    /// The server ended the timeline (CopyDone received, ours sent).
    EndOfTimeline,
}

/// The CopyBoth loop for one timeline.
struct CopyLoop<'a> {
    conn: &'a mut Connection,
    cfg: &'a ReceiveConfig,
    dir: &'a WalDir,
    segment_size: u32,
    timeline: TimeLineId,
    positions: Positions,
    /// The segment being written.
    current: Option<SegmentWriter>,
    /// Segments fully written but not yet renamed: waiting for sync and validation to reach their end.
    pending: Vec<SegmentWriter>,
    decoder: Option<WalDecoder>,
    last_status: Option<Instant>,
    /// When `-v` prints the next progress line (a clock apart from status updates, which `--synchronous`
    /// and keepalive replies send far more often).
    next_progress: Instant,
    /// Whether the server is still there (`--receive-timeout`).
    liveness: Liveness,
    copy_done_sent: bool,
    /// The server's end of WAL, as last reported in XLogData or keepalive messages; None until it reports.
    server_end: Option<Lsn>,
    /// When the received position first went past `--endpos`.
    endpos_passed_at: Option<Instant>,
    /// Where the loop publishes its positions and counters.
    state: &'a StateSender,
    /// WAL bytes received since the last publication.
    unpublished_bytes: u64,
}

impl<'a> CopyLoop<'a> {
    fn new(
        conn: &'a mut Connection,
        cfg: &'a ReceiveConfig,
        dir: &'a WalDir,
        info: &ServerInfo,
        start: Lsn,
        timeline: TimeLineId,
        state: &'a StateSender,
    ) -> CopyLoop<'a> {
        let decoder = cfg.validate.then(|| {
            WalDecoder::new(
                DecoderConfig {
                    segment_size: info.segment_size,
                    page_magic: crate::wal::decoder::page_magic_for_major(info.major).unwrap_or(0),
                    system_id: Some(info.identity.system_id),
                    timeline,
                },
                start,
            )
        });
        CopyLoop {
            conn,
            cfg,
            dir,
            segment_size: info.segment_size,
            timeline,
            positions: Positions::new(start, cfg.validate, cfg.reports_flush(), cfg.apply_report),
            current: None,
            pending: Vec::new(),
            decoder,
            last_status: None,
            next_progress: Instant::now(),
            liveness: Liveness::new(cfg.receive_timeout, Instant::now()),
            copy_done_sent: false,
            server_end: None,
            endpos_passed_at: None,
            state,
            unpublished_bytes: 0,
        }
    }

    /// Publish the positions and what arrived since the last publication.
    fn publish(&mut self) {
        let (received, flushed, server_end) =
            (self.positions.received(), self.positions.safe(), self.server_end);
        let bytes = std::mem::take(&mut self.unpublished_bytes);
        self.state.send_modify(|s| {
            s.received = Some(received);
            s.flushed = Some(flushed);
            s.server_end = s.server_end.max(server_end);
            s.received_bytes += bytes;
            s.last_message = Some(std::time::SystemTime::now());
        });
    }

    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<CopyEnd, SessionError> {
        loop {
            if *shutdown.borrow() {
                tracing::info!("received interrupt signal, exiting");
                self.stop().await?;
                return Ok(CopyEnd::Stopped(Stopped::Signal));
            }
            let deadline = self.next_status_deadline();
            let grace_end = self.endpos_passed_at.map(|t| t + ENDPOS_VALIDATION_GRACE);
            let progress_at = Some(self.next_progress);
            let alive_until = self.liveness.deadline();
            let msg = tokio::select! {
                biased;
                _ = shutdown.changed() => continue,
                msg = self.conn.recv() => Some(msg?),
                _ = sleep_until_opt(deadline) => {
                    self.status_tick().await?;
                    continue;
                }
                _ = sleep_until_opt(progress_at) => {
                    self.progress_due();
                    continue;
                }
                _ = sleep_until_opt(alive_until) => {
                    self.check_liveness().await?;
                    continue;
                }
                _ = sleep_until_opt(grace_end) => None,
            };
            let heard = msg.is_some();
            if let Some(msg) = msg {
                self.liveness.heard(Instant::now());
                if let Some(end) = self.handle(msg).await? {
                    return Ok(end);
                }
                // Drain whatever else is already here, then sync/report once for the whole batch. Stop
                // draining once past --endpos: pg_receivewal stops at the first message beyond it.
                let mut batch = 0u64;
                while batch < MAX_BATCH_BYTES && !stop_at_endpos(self.cfg, self.positions.received()) {
                    let Some(next) = self.conn.recv().now_or_never() else { break };
                    let before = self.positions.received();
                    if let Some(end) = self.handle(next?).await? {
                        return Ok(end);
                    }
                    batch += self.positions.received().0.saturating_sub(before.0);
                }
            }
            self.complete_validated_segments()?;
            if self.cfg.synchronous && self.positions.needs_sync() {
                self.sync()?;
                self.send_status(false).await?;
            } else if self.cfg.live_readers.any() && self.positions.needs_sync() {
                // Standbys stream from the archive: make the batch durable now, so the walsender may send
                // it, rather than at the next status interval.
                self.sync()?;
                self.complete_validated_segments()?;
            }
            if heard {
                self.publish();
            }
            // Under a continuous flood `recv` is always ready: keep the status interval anyway.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.status_tick().await?;
            }
            self.progress_due();
            // A segment that is fully received but still waits for the record crossing its end to be
            // validated would stay `.partial` where pg_receivewal renames it: read on until it is renamed,
            // for a bounded time (a standby's WAL can end inside a record whose rest is not coming).
            if self.endpos_stop_due() {
                tracing::info!(
                    "stopped log streaming at {} (timeline {})",
                    self.positions.received(),
                    self.timeline
                );
                self.stop().await?;
                return Ok(CopyEnd::Stopped(Stopped::EndPos));
            }
        }
    }

    /// Past `--endpos`, with every fully received segment renamed (or the grace period over).
    fn endpos_stop_due(&mut self) -> bool {
        if !stop_at_endpos(self.cfg, self.positions.received()) {
            return false;
        }
        let passed = *self.endpos_passed_at.get_or_insert_with(Instant::now);
        self.pending.is_empty() || passed.elapsed() >= ENDPOS_VALIDATION_GRACE
    }

    /// `--receive-timeout`: ask a silent server for a reply at half the timeout; give up at all of it.
    async fn check_liveness(&mut self) -> Result<(), SessionError> {
        match self.liveness.due(Instant::now()) {
            Some(Due::Ping) => {
                tracing::debug!("nothing from the server for half of --receive-timeout; asking for a reply");
                self.send_status(true).await
            }
            Some(Due::Dead) => Err(SessionError::ReceiveTimeout {
                server: self.conn.server().to_string(),
                timeout: self.cfg.receive_timeout.unwrap_or_default(),
            }),
            None => Ok(()),
        }
    }

    fn next_status_deadline(&self) -> Option<Instant> {
        let interval = self.cfg.status_interval?;
        Some(match self.last_status {
            Some(t) => t + interval,
            None => Instant::now(),
        })
    }

    /// Periodic status: sync what is written (cheap once per interval, lets the server advance the slot)
    /// and report.
    async fn status_tick(&mut self) -> Result<(), SessionError> {
        if self.positions.needs_sync() {
            self.sync()?;
            self.complete_validated_segments()?;
        }
        self.send_status(false).await
    }

    /// The `-v` progress line, once per status interval (or [`PROGRESS_INTERVAL`] with `-s 0`), however
    /// often status updates go out. The lag is shown only once the server has said where its WAL ends.
    fn progress_due(&mut self) {
        let now = Instant::now();
        if now < self.next_progress {
            return;
        }
        self.next_progress = now + self.cfg.status_interval.unwrap_or(PROGRESS_INTERVAL);
        let (received, safe, tli) = (self.positions.received(), self.positions.safe(), self.timeline);
        match self.server_end {
            Some(end) => {
                let lag = end.0.saturating_sub(received.0);
                tracing::info!(
                    received = %received,
                    flushed = %safe,
                    server_end = %end,
                    lag_bytes = lag,
                    "received {received}, flushed {safe}, server at {end} (lag {lag} bytes, timeline {tli})"
                );
            }
            None => tracing::info!(
                received = %received,
                flushed = %safe,
                "received {received}, flushed {safe} (server position not reported yet, timeline {tli})"
            ),
        }
    }

    async fn handle(&mut self, msg: Backend) -> Result<Option<CopyEnd>, SessionError> {
        match msg {
            Backend::CopyData(data) => {
                let parsed = repl::parse_stream_message(data);
                match parsed.map_err(|error| SessionError::Replication {
                    server: self.conn.server().to_string(),
                    error,
                })? {
                    StreamMessage::XLogData { start, data, wal_end, .. } => {
                        self.server_end = self.server_end.max(Some(wal_end));
                        self.receive_wal(start, &data)?
                    }
                    StreamMessage::Keepalive { reply_requested, wal_end, .. } => {
                        self.server_end = self.server_end.max(Some(wal_end));
                        if reply_requested {
                            // The server may be waiting on us (shutdown, synchronous commit): make what we
                            // have durable first so the reply carries the best flush position.
                            if self.cfg.reports_flush() && self.positions.needs_sync() {
                                self.sync()?;
                                self.complete_validated_segments()?;
                            }
                            self.send_status(false).await?;
                        }
                    }
                }
                Ok(None)
            }
            Backend::CopyDone => {
                // End of this timeline: close what we have (kept as .partial if incomplete), answer CopyDone.
                self.finish_files()?;
                if !self.copy_done_sent {
                    self.conn.send_copy_done().await?;
                    self.copy_done_sent = true;
                }
                Ok(Some(CopyEnd::EndOfTimeline))
            }
            // A walsender that is shutting down and has sent everything ends the command without CopyDone.
            Backend::CommandComplete { .. } => {
                Err(SessionError::ServerEnded { server: self.conn.server().to_string() })
            }
            other => Err(self.conn.unexpected(&other, "during streaming").into()),
        }
    }

    /// Write one XLogData payload, splitting it at segment boundaries.
    fn receive_wal(&mut self, start: Lsn, mut data: &[u8]) -> Result<(), SessionError> {
        let expected = self.positions.received();
        if start != expected {
            return Err(SessionError::Protocol {
                server: self.conn.server().to_string(),
                message: format!("received WAL at {start}, expected {expected} (timeline {})", self.timeline),
            });
        }
        let mut pos = start;
        while !data.is_empty() {
            let offset = pos.segment_offset(self.segment_size);
            let room = u64::from(self.segment_size) - offset;
            let n = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            let (chunk, rest) = data.split_at(n);
            if self.current.is_none() {
                if offset != 0 {
                    return Err(SessionError::Protocol {
                        server: self.conn.server().to_string(),
                        message: format!(
                            "received WAL at {pos} (segment offset {offset:#x}) with no segment open"
                        ),
                    });
                }
                let id = SegmentId::containing(self.timeline, pos, self.segment_size);
                self.current = Some(self.dir.open_segment(id)?);
            }
            let writer = self.current.as_mut().expect("opened above");
            writer.write_at(offset, chunk)?;
            if let Some(d) = &mut self.decoder {
                if let Err(error) = d.feed(chunk) {
                    let file = writer.path().display().to_string();
                    return Err(SessionError::InvalidWal {
                        server: self.conn.server().to_string(),
                        file,
                        lsn: error.lsn(),
                        error,
                    });
                }
            }
            pos = Lsn(pos.0 + n as u64);
            self.unpublished_bytes += n as u64;
            self.positions.set_received(pos);
            if let Some(d) = &self.decoder {
                self.positions.set_validated(d.validated_up_to());
            }
            if pos.segment_offset(self.segment_size) == 0 {
                self.pending.extend(self.current.take());
            }
            data = rest;
        }
        Ok(())
    }

    /// fsync everything written (pending segments and the current one). A writer may hold back part of
    /// what it wrote (a re-stream whose old `.partial` differs from the new WAL): the synced position stops
    /// there.
    fn sync(&mut self) -> Result<(), SessionError> {
        let checked = self.checked();
        let mut synced = self.positions.received();
        for w in self.pending.iter_mut().chain(self.current.as_mut()) {
            let written = w.written_lsn();
            let safe = w.sync(checked)?;
            if safe < written {
                synced = synced.min(safe);
            }
        }
        self.positions.set_synced(synced);
        let flushed = self.positions.safe();
        self.state.send_if_modified(|s| {
            let changed = s.flushed != Some(flushed);
            s.flushed = Some(flushed);
            changed
        });
        Ok(())
    }

    /// The end of what validation has passed (everything received when nothing validates).
    fn checked(&self) -> Lsn {
        self.decoder.as_ref().map_or(self.positions.received(), WalDecoder::validated_up_to)
    }

    /// Rename fully written segments whose every byte is durable and validated.
    fn complete_validated_segments(&mut self) -> Result<(), SessionError> {
        while let Some(first) = self.pending.first() {
            let end = first.segment().end_lsn(self.segment_size).unwrap_or(Lsn(u64::MAX));
            let validated = self.decoder.as_ref().is_none_or(|d| d.validated_up_to() >= end);
            if !validated {
                break;
            }
            let w = self.pending.remove(0);
            w.close()?; // fsync + rename + directory fsync
            self.state.send_modify(|s| s.segments_completed += 1);
            tracing::info!("finished segment at {end} (timeline {})", self.timeline);
        }
        Ok(())
    }

    async fn send_status(&mut self, reply: bool) -> Result<(), SessionError> {
        // The write position claims the received bytes are in the file: write out any staged ones (a
        // compressor may still hold some, as pg_receivewal's does).
        for w in self.pending.iter_mut().chain(self.current.as_mut()) {
            w.write_out_staged()?;
        }
        if let Some(link) = self.cfg.upload.as_ref().filter(|l| l.settings.slot_follows) {
            self.positions.set_offsite(link.state.borrow().uploaded_through);
        }
        let r = self.positions.report();
        let msg = repl::standby_status_update(r.write, r.flush, r.apply, repl::now_unix_us(), reply);
        self.conn.send_copy_data(msg).await?;
        self.last_status = Some(Instant::now());
        tracing::debug!(write = %r.write, flush = %r.flush, "sent status update");
        Ok(())
    }

    /// Leave streaming on our side: make what we have durable, report it, send CopyDone.
    async fn stop(&mut self) -> Result<(), SessionError> {
        self.finish_files()?;
        self.send_status(false).await?;
        self.conn.send_copy_done().await?;
        self.copy_done_sent = true;
        Ok(())
    }

    /// Sync and close everything: complete segments get their final names, the open one stays `.partial`.
    fn finish_files(&mut self) -> Result<(), SessionError> {
        self.sync()?;
        self.complete_validated_segments()?;
        // What is left is incomplete or not yet validated: it stays `.partial`, and the next start streams
        // it again from its beginning. A compressed stream is ended, so the `.partial` is a valid
        // compressed file, as pg_receivewal leaves it.
        let checked = self.checked();
        for w in self.pending.drain(..).chain(self.current.take()) {
            tracing::info!("not renaming \"{}\", segment is not complete", w.path().display());
            w.close_partial(checked)?;
        }
        Ok(())
    }

    /// Best-effort cleanup when the loop ends for any reason (files already closed on the normal paths).
    async fn close(&mut self) {
        if let Err(e) = self.finish_files() {
            tracing::warn!("closing segment files: {e}");
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::ServerError;

    fn server_error(code: &str, message: &str) -> SessionError {
        let error = ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        };
        ConnError::Server { server: "db2:5432".into(), error }.into()
    }

    #[test]
    fn a_removed_segment_is_named_and_fatal() {
        let e = wal_gone(server_error(
            sqlstate::UNDEFINED_FILE,
            "requested WAL segment 000000020000000000000005 has already been removed",
        ));
        assert!(
            matches!(&e, SessionError::WalGone { server, segment } if server == "db2:5432" && segment == "000000020000000000000005"),
            "{e:?}"
        );
        assert!(e.is_fatal());
        let text = e.to_string();
        assert!(
            text.starts_with("db2:5432: the server no longer has WAL segment 000000020000000000000005, "),
            "{text}"
        );
        assert!(!text.contains('\n'));
        // Other errors stay what they are.
        let other =
            wal_gone(server_error("XX000", "could not read from log segment 000000020000000000000005"));
        assert!(matches!(other, SessionError::Conn(_)), "{other:?}");
        let refused = SessionError::Refused {
            server: "db1:5432".into(),
            refusal: Refusal::OlderTimeline { archive: 2, server: 1 },
        };
        assert!(!refused.is_fatal());
        assert_eq!(
            refused.to_string(),
            "db1:5432: not streaming from this server: timeline 1 is older than the archive's newest timeline 2"
        );
    }
}
