//! `walkeeper service --config FILE`: one long-running process archives many servers.
//!
//! - `config`: the TOML file, validated whole before anything touches the file system.
//! - `supervisor`: the set of sources — start, reload (SIGHUP), stop (SIGTERM/SIGINT).
//! - `runner`: one source on its own OS thread and runtime, running `walkeeper receive`'s loop.
//! - `http`: `/metrics` (`metrics`), `/health` (`health`), `/status` (`status`, with `archives`, listed on a
//!   thread of their own), all reading the sources' state channels through `shared`.
//! - `notify`: systemd's READY/STATUS/WATCHDOG notifications.
//!
//! This module is the main loop: the HTTP server, the signals and the watchdog on one single-threaded
//! runtime that no source's I/O ever runs on.

mod archives;
pub mod config;
mod health;
pub mod http;
mod metrics;
mod notify;
mod runner;
mod shared;
mod status;
mod supervisor;

use crate::conn::conninfo::process_env;
use crate::protocol::codec::os_error;
use config::{ConfigError, ServiceConfig};
use shared::Shared;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use supervisor::Supervisor;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How often systemd's STATUS= line is refreshed (when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How long open HTTP connections (a scraper's keep-alive) may delay the exit.
const HTTP_DRAIN: Duration = Duration::from_secs(1);

/// Run the service until SIGTERM or SIGINT. Err is one line: a configuration error, an address in use, a
/// source that did not stop in time.
pub fn run(config_file: &Path) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("could not start the service's runtime: {e}"))?;
    runtime.block_on(serve(config_file))
}

async fn serve(file: &Path) -> Result<(), String> {
    // Handlers first: from here on SIGHUP and SIGTERM are ours (their default action ends the process).
    let install = |kind| signal(kind).map_err(|e| format!("could not install a signal handler: {e}"));
    let (mut hup, mut term, mut int) = (
        install(SignalKind::hangup())?,
        install(SignalKind::terminate())?,
        install(SignalKind::interrupt())?,
    );
    let config = config::load(file, &process_env).map_err(|e| e.to_string())?;
    config.log_warnings();
    let shared = Shared::new(config.file.clone());
    let mut http = HttpServer::bind(&config, shared.clone()).map_err(|e| e.to_string())?;
    let mut supervisor = Supervisor::start(config, shared.clone()).map_err(|e| e.to_string())?;
    let lister = {
        let (shared, summaries) = (shared.clone(), shared.archives.clone());
        archives::spawn_lister(move || shared.targets(), summaries)
    }
    .map_err(|e| format!("could not start the archive lister: {e}"))?;
    tracing::info!("listening on http://{}/ (/metrics, /health, /status)", http.addr);
    let summary = || notify::summary(&shared.samples().into_iter().map(|(s, _)| s).collect::<Vec<_>>());
    let mut last_status = summary();
    notify::ready(&last_status);
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify::reloading();
                reload(&mut supervisor, &mut http, &shared).await;
                let _ = lister.send(());
                last_status = summary();
                notify::ready(&last_status);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick(&mut watchdog) => notify::watchdog(),
            _ = status_tick.tick() => {
                let now = summary();
                if now != last_status {
                    notify::status(&now);
                    last_status = now;
                }
            }
        }
    }
    tracing::info!("stopping every source");
    notify::stopping();
    let late = supervisor.stop_all().await;
    http.shutdown().await;
    drop(lister);
    if late.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "source(s) {} did not stop within {} seconds",
            late.join(", "),
            supervisor::STOP_WAIT.as_secs()
        ))
    }
}

/// The watchdog's next tick, or never when the unit has no watchdog.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// SIGHUP: read the file again and apply it; any error leaves the running configuration as it was.
async fn reload(supervisor: &mut Supervisor, http: &mut HttpServer, shared: &Arc<Shared>) {
    let file = supervisor.config().file.clone();
    let path = file.clone();
    let loaded = tokio::task::spawn_blocking(move || config::load(&path, &process_env)).await;
    let refused = |e: &dyn std::fmt::Display| {
        tracing::error!("reload refused; the running configuration stays: {e}");
    };
    let new = match loaded {
        Ok(Ok(c)) => {
            c.log_warnings();
            c
        }
        Ok(Err(e)) => return refused(&e),
        Err(e) => return refused(&e),
    };
    // A new address is bound before anything else changes: if it is taken, nothing changes.
    let moved = if new.listen == http.addr {
        None
    } else {
        match HttpServer::bind(&new, shared.clone()) {
            Ok(server) => Some(server),
            Err(e) => return refused(&e),
        }
    };
    match supervisor.apply(new).await {
        Ok(account) => {
            tracing::info!("reloaded {}: {account}", file.display());
            if let Some(server) = moved {
                std::mem::replace(http, server).shutdown().await;
                tracing::info!("listening on http://{}/", http.addr);
            }
        }
        Err(e) => {
            refused(&e);
            if let Some(server) = moved {
                server.shutdown().await;
            }
        }
    }
}

/// The HTTP endpoints on one address.
struct HttpServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Bind `[service] listen` and serve; the error names the key.
    fn bind(config: &ServiceConfig, shared: Arc<Shared>) -> Result<HttpServer, ConfigError> {
        let addr = config.listen;
        let error = |e: std::io::Error| ConfigError {
            file: config.file.clone(),
            line: None,
            place: Some("[service]".into()),
            key: Some("listen".into()),
            message: format!("could not listen on {addr}: {}", os_error(&e)),
        };
        let listener = std::net::TcpListener::bind(addr).map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(error)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = http::router(shared);
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = server.await {
                tracing::error!("HTTP server on {addr}: {e}");
            }
        });
        Ok(HttpServer { addr, stop, task })
    }

    /// Stop accepting; give open connections [`HTTP_DRAIN`] to finish, then drop them.
    async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(HTTP_DRAIN, &mut task).await.is_err() {
            task.abort();
        }
    }
}
