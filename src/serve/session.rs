//! One client of the walsender, from accept to close: the startup phase (`handshake`), then replication
//! commands answered from the archive (`commands`) until START_REPLICATION streams WAL (`sender`), and
//! back to commands when streaming ends with CopyDone (a historic timeline's end, or the client's).
//!
//! Outside of COPY the session reads messages as PostgreSQL's backend loop does: the extended query
//! protocol is refused and everything up to Sync ignored, stray COPY messages are ignored, Terminate ends
//! the session. Shutdown ends it with PostgreSQL's "terminating connection due to administrator command".

use super::commands::{self, Facts, Next, Slots, StreamRequest};
use super::conn::Conn;
use super::downstreams::{next_id, Downstream, DownstreamState, Downstreams};
use super::handshake::{self, Greeting};
use super::sender::{self, Ended, StreamContext};
use super::source::{Identity, WalSource};
use super::ServeConfig;
use crate::protocol::server::frontend::Frontend;
use crate::protocol::server::{backend, errors, results};
use crate::protocol::ServerError;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What every session of one walsender shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: ServeConfig,
    pub source: Arc<WalSource>,
    pub downstreams: Downstreams,
}

/// Serve one connection until it closes; `busy`: refuse it (too many clients) after its startup packet.
pub(crate) async fn run(
    sock: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    busy: bool,
) {
    let id = next_id();
    let process_id = i32::try_from(id % i32::MAX as u64).unwrap_or(1).max(1);
    let identity = match blocking(&shared.source, |s| s.identity()).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!("walsender: could not read the archive for a connection from {peer}: {e}");
            None
        }
    };
    let version = identity.map(|i| commands::server_version(i.major));
    let greeting = Greeting { server_version: version.as_deref(), process_id, busy };
    let session = tokio::select! {
        s = handshake::accept(sock, peer, &shared.cfg, &greeting) => s,
        _ = stopped(&mut shutdown) => return,
    };
    let session = match session {
        Ok(s) => s,
        Err(e) if e.is_auth_failure() => {
            tracing::warn!("walsender: connection from {peer}: {e}");
            return;
        }
        Err(handshake::HandshakeError::Closed) => return,
        Err(e) => {
            tracing::info!("walsender: connection from {peer}: {e}");
            return;
        }
    };
    let (Some(identity), conn) = (identity, session.conn) else { return };
    let startup = session.startup;
    let application_name = startup.application_name.clone().unwrap_or_default();
    let who = format!("standby \"{application_name}\" ({}@{peer})", startup.user);
    tracing::info!("walsender: replication connection authorized: user={} application_name={application_name} from {peer}", startup.user);
    let mut s = Session {
        shared: &shared,
        identity,
        id,
        conn: Some(conn),
        slots: Slots::default(),
        user: startup.user,
        application_name,
        who,
    };
    s.commands(&mut shutdown).await;
}

struct Session<'a> {
    shared: &'a Arc<Shared>,
    identity: Identity,
    id: u64,
    /// `None` once the connection is gone.
    conn: Option<Conn>,
    slots: Slots,
    user: String,
    application_name: String,
    who: String,
}

impl Session<'_> {
    /// Answer queries until the client leaves.
    async fn commands(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let mut skip_to_sync = false;
        loop {
            let Some(conn) = self.conn.as_mut() else { return };
            let msg = tokio::select! {
                m = conn.next() => m,
                _ = stopped(shutdown) => {
                    self.send_error(&errors::admin_shutdown()).await;
                    return;
                }
            };
            let mut out = BytesMut::new();
            match msg {
                Ok(Some(Frontend::Query(q))) if !skip_to_sync => match self.facts().await {
                    Ok(facts) => match commands::answer(&q, &facts, &mut self.slots, &mut out) {
                        Next::Ready => backend::ready_for_query(&mut out),
                        Next::Failed(e) => {
                            tracing::info!("{}: {}: {}", self.who, String::from_utf8_lossy(&q), e.message);
                            backend::ready_for_query(&mut out);
                        }
                        Next::Stream(req) => {
                            if !self.send(&out).await {
                                return;
                            }
                            out.clear();
                            let Some(next) = self.stream(req, &facts, shutdown).await else { return };
                            if results::end_of_streaming(next, &mut out).is_err() {
                                return;
                            }
                            backend::ready_for_query(&mut out);
                        }
                    },
                    Err(e) => {
                        let fatal = e.severity == errors::FATAL;
                        self.send_error(&e).await;
                        if fatal {
                            return;
                        }
                        backend::ready_for_query(&mut out);
                    }
                },
                Ok(Some(Frontend::ExtendedQuery(_) | Frontend::FunctionCall)) if !skip_to_sync => {
                    skip_to_sync = true;
                    let _ = backend::error_response(&errors::extended_query_not_supported(), &mut out);
                }
                Ok(Some(Frontend::Sync)) => {
                    skip_to_sync = false;
                    backend::ready_for_query(&mut out);
                }
                Ok(Some(Frontend::Terminate) | None) => return,
                Ok(Some(Frontend::Password(_))) if !skip_to_sync => {
                    self.send_error(&errors::invalid_frontend_message_type(b'p')).await;
                    return;
                }
                // Flush, stray COPY messages (PostgreSQL ignores them outside COPY), anything before Sync.
                Ok(Some(_)) => {}
                Err(e) => {
                    if let Some(report) = e.report() {
                        self.send_error(&report).await;
                    }
                    return;
                }
            }
            if !out.is_empty() && !self.send(&out).await {
                return;
            }
        }
    }

    /// What the archive holds now; a FATAL error when it holds no WAL, an ERROR when it cannot be read.
    async fn facts(&self) -> Result<Facts, ServerError> {
        match blocking(&self.shared.source, |s| s.facts()).await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(errors::no_wal_yet()),
            Err(e) => {
                tracing::error!("{}: could not read the archive: {e}", self.who);
                Err(errors::archived_wal_unusable(&e.to_string()))
            }
        }
    }

    /// Stream for `req`; the end-of-streaming answer (next timeline) when both sides ended COPY, `None`
    /// when the connection is over.
    async fn stream(
        &mut self,
        req: StreamRequest,
        facts: &Facts,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Option<(crate::wal::segment::TimeLineId, crate::wal::Lsn)>> {
        let registration = self.shared.downstreams.register(Downstream {
            id: self.id,
            application_name: self.application_name.clone(),
            user: self.user.clone(),
            client_addr: self.conn.as_ref()?.peer,
            state: DownstreamState::Catchup,
            timeline: req.timeline,
            start: req.start,
            sent: req.start,
            write: None,
            flush: None,
            replay: None,
            xmin: None,
            connected_at: SystemTime::now(),
            last_reply: None,
        });
        tracing::info!("{}: streaming from {} on timeline {}", self.who, req.start, req.timeline);
        let (mut reader, mut wr) = self.conn.take()?.split();
        let ctx = StreamContext {
            source: &self.shared.source,
            identity: self.identity,
            registration: &registration,
            slots: &mut self.slots,
            shutdown,
            flush: facts.flush,
            who: &self.who,
        };
        let ended = sender::stream(req, &mut reader, &mut wr, ctx).await;
        drop(registration);
        match ended {
            Ended::Closed => None,
            Ended::CopyDone { next } => {
                self.conn = Conn::unsplit(reader, wr).await;
                self.conn.as_ref()?;
                Some(next)
            }
        }
    }

    async fn send(&mut self, out: &[u8]) -> bool {
        let Some(conn) = self.conn.as_mut() else { return false };
        match conn.send(out).await {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("{}: could not send data to client: {e}", self.who);
                self.conn = None;
                false
            }
        }
    }

    async fn send_error(&mut self, e: &ServerError) {
        let mut b = BytesMut::new();
        if backend::error_response(e, &mut b).is_ok() {
            self.send(&b).await;
        }
    }
}

/// Wait until `shutdown` turns true (forever if its sender is gone without saying so).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Run a blocking read of the archive off the async threads.
async fn blocking<T: Send + 'static, E: Send + 'static + std::fmt::Display>(
    source: &Arc<WalSource>,
    f: impl FnOnce(&WalSource) -> Result<T, E> + Send + 'static,
) -> Result<T, String> {
    let source = source.clone();
    match tokio::task::spawn_blocking(move || f(&source)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("archive read task failed: {e}")),
    }
}
