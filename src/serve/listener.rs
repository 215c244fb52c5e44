//! The walsender's listening socket: accept connections (TCP_NODELAY and keepalives on each, as
//! PostgreSQL sets them), run each as its own task, and on shutdown stop accepting, tell every session
//! to end, and wait for them (bounded).

use super::session::{self, Shared};
use super::source::WalSource;
use super::{Downstreams, ServeConfig, ServeError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// How long sessions get to end after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// After a failed accept (e.g. out of file descriptors), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Clients served at once (PostgreSQL's max_wal_senders is 10 by default). Up to as many more are told
/// "sorry, too many clients already"; beyond that, connections are closed at once.
pub const MAX_CLIENTS: usize = 64;

/// A bound walsender, ready to run.
#[derive(Debug)]
pub struct Walsender {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Walsender {
    /// Listen on `cfg.listen` for clients of `source`; connected standbys are published on `downstreams`.
    pub async fn bind(
        cfg: ServeConfig,
        source: Arc<WalSource>,
        downstreams: Downstreams,
    ) -> Result<Walsender, ServeError> {
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| ServeError::Listen { addr: cfg.listen.clone(), source })?;
        Ok(Walsender { listener, shared: Arc::new(Shared { cfg, source, downstreams }) })
    }

    /// The address actually listened on (the port, when the configuration gave port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        self.listener
            .local_addr()
            .map_err(|source| ServeError::Listen { addr: self.shared.cfg.listen.clone(), source })
    }

    /// Serve until `shutdown` turns true, then end every session.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let addr = self.local_addr().map_or_else(|_| self.shared.cfg.listen.clone(), |a| a.to_string());
        tracing::info!("walsender: listening on {addr}");
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((sock, peer)) => {
                        if sessions.len() >= 2 * MAX_CLIENTS {
                            tracing::warn!("walsender on {addr}: {} connections already; closing the one from {peer}", sessions.len());
                            continue;
                        }
                        let busy = sessions.len() >= MAX_CLIENTS;
                        // Both only tune the socket: a failure leaves it usable.
                        let _ = sock.set_nodelay(true);
                        let _ = socket2::SockRef::from(&sock).set_keepalive(true);
                        // In the listener's span (in the service, the source's): the session's lines name the source.
                        let session = session::run(sock, peer, self.shared.clone(), shutdown.clone(), busy);
                        sessions.spawn(session.instrument(tracing::Span::current()));
                    }
                    Err(e) => {
                        tracing::warn!("walsender on {addr}: could not accept a connection: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                // Reap finished sessions as they end, so the set does not grow.
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                _ = session::stopped(&mut shutdown) => break,
            }
        }
        drop(self.listener);
        let all_done = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, all_done).await.is_err() {
            sessions.shutdown().await;
        }
        tracing::info!("walsender on {addr}: stopped");
    }
}
