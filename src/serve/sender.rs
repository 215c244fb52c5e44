//! Streaming WAL to one standby: the CopyBoth phase of START_REPLICATION, as PostgreSQL's walsender runs it
//! (walsender.c's WalSndLoop and XLogSendPhysical).
//!
//! - **What may be sent.** Up to a limit: the end of durable WAL on the newest timeline (the receive
//!   loop's `flushed` while it streams, else the valid end of the files at rest — see `source`), or for a
//!   historic timeline its switch point. Every byte also passes the walsender's own WAL decoder (page
//!   headers, prev-links, record CRCs) before it goes out: what a corrupt file holds past its last valid
//!   record is never sent, and the stream ends with an error naming the LSN.
//! - **How.** Segment files are read in 1 MiB steps off the async threads, from the start of the segment
//!   holding the start position (the decoder needs whole records); XLogData carries at most 128 kB and ends
//!   at a page boundary unless it ends at the limit (walreceivers rely on records never being split
//!   otherwise). The segment holding a historic timeline's switch point is read from the new timeline's
//!   file, as PostgreSQL does.
//! - **Live.** Caught up, the sender sleeps until the receive loop publishes a new state (no polling), a
//!   standby message arrives, or a keepalive is due. When the newest timeline moves on (the receiver
//!   followed a failover), the timeline being sent becomes historic: it is sent up to its switch point and
//!   ended with CopyDone, and the session answers with the next timeline.
//! - **Liveness.** A keepalive after 10 seconds without a message; one asking for a reply when the standby
//!   has been silent for half of [`SENDER_TIMEOUT`] (PostgreSQL's `wal_sender_timeout`), and the session
//!   ends after all of it. A standby's reply request is answered at once.

use super::commands::{Slots, StreamRequest};
use super::conn::{Incoming, Reader, Socket};
use super::downstreams::{DownstreamState, Registration};
use super::reader::{ReadError, WalReader};
use super::source::{streaming, Identity, WalSource};
use crate::protocol::server::frontend::Frontend;
use crate::protocol::server::stream::{self as copy, StandbyMessage, MAX_SEND_SIZE};
use crate::protocol::server::{backend, errors};
use crate::protocol::ServerError;
use crate::stream::state::SourceState;
use crate::wal::decoder::{DecoderConfig, WalDecoder, XLOG_BLCKSZ};
use crate::wal::segment::TimeLineId;
use crate::wal::Lsn;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;

/// PostgreSQL's `wal_sender_timeout` default: a standby silent this long is given up.
pub const SENDER_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle this long, the sender sends a keepalive (the standby sees the end of WAL, and that we are here).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// WAL read from the archive per step.
const READ_CHUNK: usize = 1 << 20;

/// Write out what is buffered once it reaches this much.
const WRITE_BATCH: usize = 1 << 20;

/// How often the sent position is published while catching up.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// How streaming ended.
pub(crate) enum Ended {
    /// Both sides sent CopyDone: answer with the end of START_REPLICATION (the next timeline after a
    /// historic one).
    CopyDone { next: Option<(TimeLineId, Lsn)> },
    /// The connection is over (the client left, an error was sent, a timeout, shutdown).
    Closed,
}

/// Why the stream stops, internally.
enum Stop {
    Ended(Ended),
    /// Send this error and close.
    Error(ServerError),
}

impl From<Ended> for Stop {
    fn from(e: Ended) -> Stop {
        Stop::Ended(e)
    }
}

/// What a stream works with, from the session.
pub(crate) struct StreamContext<'a> {
    pub source: &'a Arc<WalSource>,
    pub identity: Identity,
    pub registration: &'a Registration,
    pub slots: &'a mut Slots,
    pub shutdown: &'a mut watch::Receiver<bool>,
    /// The initial limit: the end of durable WAL when START_REPLICATION was accepted.
    pub flush: Lsn,
    /// For the log.
    pub who: &'a str,
}

/// Stream WAL for `req` until it ends; `reader` and `wr` are the connection's halves. Errors are sent to
/// the client and logged here.
pub(crate) async fn stream(
    req: StreamRequest,
    reader: &mut Reader,
    wr: &mut WriteHalf<Socket>,
    ctx: StreamContext<'_>,
) -> Ended {
    let segment_start = req.start.segment_start(ctx.identity.segment_size);
    let cfg = DecoderConfig {
        segment_size: ctx.identity.segment_size,
        page_magic: ctx.identity.page_magic,
        system_id: Some(ctx.identity.system_id),
        timeline: req.timeline,
    };
    let mut s = Sender {
        source: ctx.source.clone(),
        state: ctx.source.state(),
        segment_size: ctx.identity.segment_size,
        timeline: req.timeline,
        end_of_timeline: req.end_of_timeline,
        limit: req.end_of_timeline.map_or(ctx.flush, |(switch, _)| switch),
        reader: Some(WalReader::new(ctx.source.store().clone(), ctx.identity.segment_size)),
        decoder: WalDecoder::new(cfg, segment_start),
        window: BytesMut::new(),
        sent: req.start,
        out: BytesMut::new(),
        last_sent: Instant::now(),
        last_reply: Instant::now(),
        last_published: Instant::now(),
        ping_sent: false,
        done_sending: false,
        caught_up: false,
        slot: req.slot.clone(),
        registration: ctx.registration,
        slots: ctx.slots,
        who: ctx.who,
    };
    let _live = ctx.source.live_reader();
    match s.run(reader, wr, ctx.shutdown).await {
        Ok(()) => Ended::Closed,
        Err(Stop::Ended(e)) => e,
        Err(Stop::Error(e)) => {
            if e.severity == errors::FATAL || e.code == errors::ADMIN_SHUTDOWN {
                tracing::info!("{}: {}", s.who, e.message);
            } else {
                tracing::error!("{}: {}", s.who, e.message);
            }
            let mut b = BytesMut::new();
            if backend::error_response(&e, &mut b).is_ok() {
                // The client may be gone: nothing else to do either way.
                let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&b)).await;
                let _ = wr.flush().await;
            }
            Ended::Closed
        }
    }
}

struct Sender<'a> {
    source: Arc<WalSource>,
    state: Option<watch::Receiver<SourceState>>,
    segment_size: u32,
    timeline: TimeLineId,
    /// A historic timeline's switch point and the timeline after it.
    end_of_timeline: Option<(Lsn, TimeLineId)>,
    /// How far WAL may be read and sent now.
    limit: Lsn,
    /// `None` only while a read runs off the async threads.
    reader: Option<WalReader>,
    /// Checks every byte read; its position is the end of what was read.
    decoder: WalDecoder,
    /// The bytes read and not sent yet: from `sent` (or later, at the start) to the decoder's position.
    window: BytesMut,
    sent: Lsn,
    out: BytesMut,
    last_sent: Instant,
    last_reply: Instant,
    last_published: Instant,
    ping_sent: bool,
    done_sending: bool,
    caught_up: bool,
    slot: Option<String>,
    registration: &'a Registration,
    slots: &'a mut Slots,
    who: &'a str,
}

impl Sender<'_> {
    async fn run(
        &mut self,
        reader: &mut Reader,
        wr: &mut WriteHalf<Socket>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        loop {
            while let Ok(msg) = reader.rx.try_recv() {
                self.incoming(msg, wr).await?;
            }
            if *shutdown.borrow() {
                return Err(Stop::Error(errors::admin_shutdown()));
            }
            if let Some((switch, _)) = self.end_of_timeline {
                if self.sent >= switch && !self.done_sending {
                    tracing::info!("{}: reached the end of timeline {} at {switch}", self.who, self.timeline);
                    backend::copy_done(&mut self.out);
                    self.write_out(wr).await?;
                    self.done_sending = true;
                }
            }
            if !self.done_sending && self.step(wr).await? {
                continue;
            }
            if !self.caught_up && !self.done_sending {
                self.caught_up = true;
                tracing::info!("{}: caught up at {} (timeline {})", self.who, self.sent, self.timeline);
                self.registration.update(|d| {
                    d.state = DownstreamState::Streaming;
                    d.sent = self.sent;
                });
            }
            let timer = self.next_timer();
            tokio::select! {
                msg = reader.rx.recv() => match msg {
                    Some(msg) => self.incoming(msg, wr).await?,
                    None => return Err(Ended::Closed.into()),
                },
                changed = changed(&mut self.state) => {
                    if !changed {
                        self.state = None;
                    }
                    self.refresh_limit().await?;
                }
                _ = tokio::time::sleep_until(timer) => {
                    self.timer(wr).await?;
                    // Without a receive loop in this process nothing announces new WAL: look again at
                    // each keepalive (an archive written by another process, served at rest).
                    if self.state.is_none() {
                        self.refresh_limit().await?;
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Read or send one step; false when there is nothing to do until the limit moves.
    async fn step(&mut self, wr: &mut WriteHalf<Socket>) -> Result<bool, Stop> {
        let sendable = self.sendable();
        if sendable > self.sent {
            self.send_up_to(sendable, wr).await?;
            return Ok(true);
        }
        if let Some(e) = self.decoder.error() {
            return Err(Stop::Error(errors::archived_wal_unusable(&e.to_string())));
        }
        if self.decoder.position() < self.limit {
            self.read_more().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The end of what may go out now: read, validated, within the limit.
    fn sendable(&self) -> Lsn {
        let mut end = self.decoder.validated_up_to().min(self.limit);
        if let Some((switch, _)) = self.end_of_timeline {
            // A switch point is where the new timeline's history says the old one ends: a record end,
            // which the decoder has validated once it has read up to it — unless the record ending there
            // is the tail of one that began before the segment the stream started in (never checked).
            if self.decoder.error().is_none() && self.decoder.position() >= switch {
                end = switch;
            }
        }
        end
    }

    /// Read the next piece of WAL (up to the limit, within one segment) and check it.
    async fn read_more(&mut self) -> Result<(), Stop> {
        let from = self.decoder.position();
        let seg = u64::from(self.segment_size);
        let seg_end = Lsn(from.0 - from.segment_offset(self.segment_size) + seg);
        let to = self.limit.min(seg_end).min(Lsn(from.0.saturating_add(READ_CHUNK as u64)));
        let len = usize::try_from(to.0 - from.0).unwrap_or(READ_CHUNK);
        let timelines = self.timelines_for(from);
        let Some(mut reader) = self.reader.take() else { return Err(Ended::Closed.into()) };
        let joined = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            let result = reader.read(&timelines, from, &mut buf).map(|n| {
                buf.truncate(n);
                buf
            });
            (reader, result)
        })
        .await;
        let (reader, result) =
            joined.map_err(|e| Stop::Error(errors::error(errors::INTERNAL_ERROR, e.to_string())))?;
        self.reader = Some(reader);
        let data = result.map_err(|e| match e {
            ReadError::Missing(name) => Stop::Error(errors::segment_removed(&name)),
            ReadError::Store(e) => Stop::Error(errors::archived_wal_unusable(&e.to_string())),
        })?;
        if data.is_empty() {
            return Err(Stop::Error(errors::archived_wal_unusable(&format!(
                "the file of segment {} holds no WAL at {from}, though WAL up to {} is durable",
                crate::wal::segment::SegmentId::containing(self.timeline, from, self.segment_size)
                    .file_name(self.segment_size),
                self.limit
            ))));
        }
        // Feed the decoder; after an error it keeps where valid WAL ended, and what is valid still goes out.
        let _ = self.decoder.feed(&data);
        let keep_from =
            usize::try_from(self.sent.0.saturating_sub(from.0)).unwrap_or(usize::MAX).min(data.len());
        self.window.extend_from_slice(&data[keep_from..]);
        Ok(())
    }

    /// The timelines whose file may serve the segment holding `lsn`: the segment of a historic timeline's
    /// switch point comes from the next timeline's file (falling back to the old timeline's copy).
    fn timelines_for(&self, lsn: Lsn) -> Vec<TimeLineId> {
        match self.end_of_timeline {
            Some((switch, next))
                if lsn.segment_number(self.segment_size) == switch.segment_number(self.segment_size) =>
            {
                vec![next, self.timeline]
            }
            _ => vec![self.timeline],
        }
    }

    /// Send `[sent, end)` from the window, in XLogData messages of at most 128 kB that end at a page
    /// boundary unless they end at `end`.
    async fn send_up_to(&mut self, end: Lsn, wr: &mut WriteHalf<Socket>) -> Result<(), Stop> {
        while self.sent < end {
            let mut to = self.sent.0.saturating_add(MAX_SEND_SIZE as u64);
            if to >= end.0 {
                to = end.0;
            } else {
                to -= to % u64::from(XLOG_BLCKSZ);
            }
            let n = usize::try_from(to - self.sent.0).unwrap_or(0).min(self.window.len());
            if n == 0 {
                break;
            }
            let data = self.window.split_to(n);
            copy::xlog_data(self.sent, self.limit, copy::pg_now(), &data, &mut self.out)
                .map_err(|e| Stop::Error(errors::error(errors::INTERNAL_ERROR, e.to_string())))?;
            self.sent = Lsn(self.sent.0 + n as u64);
            if self.out.len() >= WRITE_BATCH {
                self.write_out(wr).await?;
            }
        }
        self.write_out(wr).await?;
        if self.last_published.elapsed() >= PUBLISH_INTERVAL {
            self.last_published = Instant::now();
            let sent = self.sent;
            self.registration.update(|d| d.sent = sent);
        }
        Ok(())
    }

    async fn write_out(&mut self, wr: &mut WriteHalf<Socket>) -> Result<(), Stop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = self.out.split();
        let write = async {
            wr.write_all(&out).await?;
            wr.flush().await
        };
        match tokio::time::timeout(SENDER_TIMEOUT, write).await {
            Ok(Ok(())) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::info!("{}: could not send data to client: {e}", self.who);
                Err(Ended::Closed.into())
            }
            Err(_) => {
                tracing::warn!(
                    "{}: terminating walsender: the standby read nothing for {} seconds",
                    self.who,
                    SENDER_TIMEOUT.as_secs()
                );
                Err(Ended::Closed.into())
            }
        }
    }

    /// A message from the standby.
    async fn incoming(&mut self, msg: Incoming, wr: &mut WriteHalf<Socket>) -> Result<(), Stop> {
        match msg {
            Ok(Some(Frontend::CopyData(body))) => {
                self.last_reply = Instant::now();
                self.ping_sent = false;
                match copy::parse_standby_message(&body).map_err(Stop::Error)? {
                    StandbyMessage::StatusUpdate(u) => {
                        let now = SystemTime::now();
                        self.registration.update(|d| {
                            d.write = Some(u.write);
                            d.flush = Some(u.flush);
                            d.replay = Some(u.apply);
                            d.last_reply = Some(now);
                        });
                        if let Some(slot) = &self.slot {
                            self.slots.advance(slot, u.flush, self.timeline);
                        }
                        if u.reply_requested {
                            self.keepalive(false, wr).await?;
                        }
                    }
                    StandbyMessage::HotStandbyFeedback(h) => {
                        let now = SystemTime::now();
                        self.registration.update(|d| {
                            d.xmin = Some(h.xmin);
                            d.last_reply = Some(now);
                        });
                    }
                }
                Ok(())
            }
            Ok(Some(Frontend::CopyDone)) => {
                // The standby ends streaming: answer CopyDone if we have not already.
                if !self.done_sending {
                    backend::copy_done(&mut self.out);
                    self.write_out(wr).await?;
                }
                let next = self.end_of_timeline.map(|(switch, next)| (next, switch));
                Err(Ended::CopyDone { next }.into())
            }
            Ok(Some(Frontend::Terminate)) => Err(Ended::Closed.into()),
            Ok(None) => {
                tracing::info!("{}: disconnected", self.who);
                Err(Ended::Closed.into())
            }
            Ok(Some(other)) => {
                let tag = match other {
                    Frontend::CopyFail(_) => 'f',
                    Frontend::Query(_) => 'Q',
                    _ => '?',
                };
                Err(Stop::Error(errors::fatal(
                    errors::PROTOCOL_VIOLATION,
                    format!("invalid standby message type \"{tag}\""),
                )))
            }
            Err(e) => {
                if let Some(report) = e.report() {
                    return Err(Stop::Error(report));
                }
                tracing::info!("{}: {e}", self.who);
                Err(Ended::Closed.into())
            }
        }
    }

    /// The receive loop published a new state (or the channel closed): how far may WAL go now? While it
    /// streams our timeline, its flushed position; otherwise ask the archive, which may also say that our
    /// timeline has become historic.
    async fn refresh_limit(&mut self) -> Result<(), Stop> {
        if self.end_of_timeline.is_some() {
            return Ok(());
        }
        if let Some(state) = &self.state {
            let s = state.borrow();
            if streaming(Some(&s), self.timeline) {
                self.limit = self.limit.max(s.flushed.unwrap_or_default());
                return Ok(());
            }
        }
        let source = self.source.clone();
        let facts = match tokio::task::spawn_blocking(move || source.facts()).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => {
                tracing::warn!("{}: could not read the archive, will try again: {e}", self.who);
                return Ok(());
            }
            Err(e) => return Err(Stop::Error(errors::error(errors::INTERNAL_ERROR, e.to_string()))),
        };
        if facts.timeline == self.timeline {
            self.limit = self.limit.max(facts.flush);
            return Ok(());
        }
        match facts.switch_point(self.timeline) {
            Ok(Some((switch, next))) => {
                tracing::info!(
                    "{}: timeline {} became historic at {switch} (the archive follows timeline {})",
                    self.who,
                    self.timeline,
                    facts.timeline
                );
                self.end_of_timeline = Some((switch, next));
                self.limit = switch;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(Stop::Error(e)),
        }
    }

    fn next_timer(&self) -> Instant {
        let mut t = (self.last_sent + KEEPALIVE_INTERVAL).min(self.last_reply + SENDER_TIMEOUT);
        if !self.ping_sent {
            t = t.min(self.last_reply + SENDER_TIMEOUT / 2);
        }
        t
    }

    async fn timer(&mut self, wr: &mut WriteHalf<Socket>) -> Result<(), Stop> {
        let now = Instant::now();
        if now >= self.last_reply + SENDER_TIMEOUT {
            tracing::warn!("{}: terminating walsender due to replication timeout", self.who);
            return Err(Ended::Closed.into());
        }
        if !self.ping_sent && now >= self.last_reply + SENDER_TIMEOUT / 2 {
            self.ping_sent = true;
            return self.keepalive(true, wr).await;
        }
        if now >= self.last_sent + KEEPALIVE_INTERVAL {
            return self.keepalive(false, wr).await;
        }
        Ok(())
    }

    async fn keepalive(&mut self, reply_requested: bool, wr: &mut WriteHalf<Socket>) -> Result<(), Stop> {
        copy::keepalive(self.limit, copy::pg_now(), reply_requested, &mut self.out);
        self.write_out(wr).await
    }
}

/// Wait for the next state change: false when the receive loop's channel is gone (then never again).
async fn changed(state: &mut Option<watch::Receiver<SourceState>>) -> bool {
    match state {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}
