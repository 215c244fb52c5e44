//! One source, isolated: its receive loop (`stream::follow::receive`, exactly what `walkeeper receive`
//! runs) on an OS thread of its own with a single-threaded tokio runtime of its own. The loop writes and
//! fsyncs inline; on its own thread a slow disk, a stalled server or a flood of WAL holds up that source
//! only — never another source's network reads, fsyncs or acknowledgements, and never the HTTP endpoints
//! (docs/design.md, "The service"). The runner holds the archive's lock and releases it only after the loop
//! has ended, so a restarted source never overlaps its predecessor.
//!
//! A source with `keep_backups` also runs retention on that thread's runtime (its blocking pool), under the
//! same lock; it never removes what a standby streaming from the source still needs. A source with
//! `[source.serve]` runs its walsender (`serve`) on a second thread and runtime: standbys are served
//! whatever the receive loop is doing (fsyncing, retrying an upstream that is down, or stopped), and the
//! loop syncs every batch while they stream. A source with `upload` has an uploader (`archive::upload`, its
//! own thread, as `receive --upload` has): started with the source, it follows the loop's `SourceState`;
//! when the loop has stopped cleanly it gets up to `upload_wait` to finish, still under the lock
//! (`--remove-uploaded` deletes from the directory). Everything the rest of the service learns about the
//! source comes from its `SourceState` channel, its downstreams, its uploader's `UploadState` channel and
//! its log lines.

use crate::archive::lock::ArchiveLock;
use crate::archive::retention;
use crate::archive::store::LocalStore;
use crate::archive::upload::{Undone, UploadWatch, Uploader};
use crate::serve::{Downstreams, ServeConfig, WalSource, Walsender};
use crate::service::config::{Retention, Source};
use crate::service::shared::ServeView;
use crate::stream::follow::receive;
use crate::stream::state::{set_phase, LiveReaders, Phase, SourceState, StateSender};
use crate::stream::ReceiveConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

/// After being asked to stop, a source that has not finished by then is abandoned: the loop stops at once
/// when streaming (sync, report, CopyDone) or waiting to reconnect; only a connection attempt or a
/// replication command awaiting a silent server can take longer, and those have nothing to sync.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running (or ended) source.
#[derive(Debug)]
pub struct Runner {
    name: String,
    stop: watch::Sender<bool>,
    state: watch::Receiver<SourceState>,
    /// The uploader's state, for a source with `upload`.
    upload: Option<UploadWatch>,
    /// How long a clean stop waits for pending uploads (`upload_wait`; zero without `upload`).
    upload_wait: Duration,
    /// Resolves when the thread has ended (the lock is released by then).
    done: Option<oneshot::Receiver<()>>,
    /// The walsender's thread, with `[source.serve]`.
    serving: Option<Serving>,
}

/// A source's walsender thread.
#[derive(Debug)]
struct Serving {
    stop: watch::Sender<bool>,
    view: ServeView,
    /// Resolves when the thread has ended (the listening socket is closed by then).
    done: Option<oneshot::Receiver<()>>,
}

impl Runner {
    /// Start streaming `source` on a new thread, holding `lock` (its directory's) until the loop ends.
    pub fn start(source: &Source, lock: ArchiveLock) -> Runner {
        let (stop, stop_rx) = watch::channel(false);
        let sender = StateSender::new(SourceState::default());
        let state = sender.subscribe();
        let (done_tx, done_rx) = oneshot::channel();
        let live_readers = LiveReaders::default();
        let mut cfg = ReceiveConfig { live_readers: live_readers.clone(), ..source.receive.clone() };
        // Opening the store makes no request: only a location that cannot be a store fails here (the
        // configuration has checked it already).
        let uploader = match &source.upload {
            // In the source's span, which the upload thread enters: its lines name the source too.
            Some(settings) => match source_span(&source.name)
                .in_scope(|| Uploader::start(settings, &cfg.directory, sender.subscribe()))
            {
                Ok(uploader) => Some(uploader),
                Err(e) => return Runner::failed(&source.name, format!("could not start uploading: {e}")),
            },
            None => None,
        };
        cfg.upload = uploader.as_ref().map(Uploader::link);
        let upload = uploader.as_ref().map(Uploader::state);
        let upload_wait = source.upload.as_ref().map_or(Duration::ZERO, |u| u.wait);
        let serving = source.serve.as_ref().map(|serve| {
            Serving::start(&source.name, serve.clone(), source.directory(), state.clone(), live_readers)
        });
        let retention = source.retention;
        let name = source.name.clone();
        let downstreams = serving.as_ref().map(|s| s.view.downstreams.clone());
        let spawned = std::thread::Builder::new().name(thread_name(&name)).spawn(move || {
            let uploader = uploader.map(|u| (u, upload_wait));
            run_thread(&name, &cfg, retention, downstreams, uploader, stop_rx, &sender);
            // The loop and the uploads have ended: no more writes. Now the next writer may have the directory.
            drop(lock);
            let _ = done_tx.send(());
        });
        match spawned {
            Ok(_) => Runner {
                name: source.name.clone(),
                stop,
                state,
                upload,
                upload_wait,
                done: Some(done_rx),
                serving,
            },
            Err(e) => {
                if let Some(s) = &serving {
                    let _ = s.stop.send(true);
                }
                Runner::failed(&source.name, format!("could not start a thread for the source: {e}"))
            }
        }
    }

    /// A source that could not start (its directory's lock, a thread): stopped, with `error` as its last
    /// error, for /health and /status to report.
    pub fn failed(name: &str, error: String) -> Runner {
        tracing::error!("source {name}: {error}");
        let sender = StateSender::new(SourceState::default());
        sender.send_modify(|s| s.last_error = Some(error));
        set_phase(&sender, Phase::Stopped);
        let (stop, _) = watch::channel(false);
        Runner {
            name: name.to_string(),
            stop,
            state: sender.subscribe(),
            upload: None,
            upload_wait: Duration::ZERO,
            done: None,
            serving: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A receiver of the source's state (the last value stays readable after the runner ends).
    pub fn state(&self) -> watch::Receiver<SourceState> {
        self.state.clone()
    }

    /// A receiver of the uploader's state, for a source with `upload`.
    pub fn upload(&self) -> Option<UploadWatch> {
        self.upload.clone()
    }

    /// Whether the loop has ended (a fatal error, or stopped), or its walsender has failed (its address
    /// taken, say): a reload starts such a source again.
    pub fn ended(&self) -> bool {
        self.state.borrow().phase == Phase::Stopped
            || self.serving.as_ref().is_some_and(|s| s.view.failed.get().is_some())
    }

    /// This source's walsender as the endpoints show it; None without `[source.serve]`.
    pub fn serve_view(&self) -> Option<ServeView> {
        self.serving.as_ref().map(|s| s.view.clone())
    }

    /// Ask the loop to stop: it syncs what it has, reports it to the server, and ends. The walsender ends
    /// its sessions and closes its socket.
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
        if let Some(s) = &self.serving {
            let _ = s.stop.send(true);
        }
    }

    /// Wait until the threads have ended (true), or `limit` (plus the source's `upload_wait`) has passed
    /// (false: one still runs; the loop holds its directory's lock, the walsender its listening socket).
    pub async fn wait(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit + self.upload_wait;
        let serving = self.serving.as_mut().and_then(|s| s.done.as_mut());
        for done in [self.done.as_mut(), serving].into_iter().flatten() {
            if tokio::time::timeout_at(deadline, &mut *done).await.is_err() {
                return false;
            }
        }
        self.done = None;
        if let Some(s) = &mut self.serving {
            s.done = None;
        }
        true
    }
}

impl Serving {
    /// Serve `directory` on a thread and runtime of its own, woken by the receive loop's `state`.
    fn start(
        name: &str,
        cfg: ServeConfig,
        directory: &Path,
        state: watch::Receiver<SourceState>,
        live_readers: LiveReaders,
    ) -> Serving {
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = oneshot::channel();
        let view = ServeView {
            listen: cfg.listen.clone(),
            downstreams: Downstreams::new(),
            failed: Arc::new(OnceLock::new()),
        };
        let (name2, dir, view2) = (name.to_string(), directory.to_path_buf(), view.clone());
        let spawned = std::thread::Builder::new().name(serve_thread_name(name)).spawn(move || {
            let ds = view2.downstreams.clone();
            if let Err(e) = serve_thread(&name2, cfg, dir, state, live_readers, ds, stop_rx) {
                fail(&name2, &view2, e);
            }
            let _ = done_tx.send(());
        });
        let done = match spawned {
            Ok(_) => Some(done_rx),
            Err(e) => {
                fail(name, &view, format!("could not start a thread for the walsender: {e}"));
                None
            }
        };
        Serving { stop, view, done }
    }
}

/// The walsender has stopped serving for good: say so in the log and in `/status`, and let a reload start
/// it again.
fn fail(name: &str, view: &ServeView, error: String) {
    tracing::error!("source {name}: {error}; standbys cannot stream from it until the service is reloaded");
    let _ = view.failed.set(error);
}

/// The walsender thread's body: bind, serve until stopped. An error ends the walsender only; the source
/// goes on archiving.
fn serve_thread(
    name: &str,
    cfg: ServeConfig,
    directory: PathBuf,
    state: watch::Receiver<SourceState>,
    live_readers: LiveReaders,
    downstreams: Downstreams,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("could not start a runtime for the walsender: {e}"))?;
    let span = source_span(name);
    let serve = async move {
        let store = Arc::new(LocalStore::new(&directory));
        let source = WalSource::new(store, Some(state)).with_live_readers(live_readers);
        let ws = Walsender::bind(cfg, Arc::new(source), downstreams).await.map_err(|e| e.to_string())?;
        ws.run(stop).await;
        Ok(())
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(serve.instrument(span))))
        .unwrap_or_else(|_| Err("internal error: the walsender panicked".into()))
}

/// The span a source's log lines are written in, naming it (`walkeeper: [main] error: …`). At ERROR level so
/// that it is enabled at every verbosity: an INFO span is filtered out without `-v`, and its name with it.
fn source_span(name: &str) -> tracing::Span {
    tracing::error_span!("source", source = %name)
}

/// Linux keeps 15 bytes of a thread's name: `wk:` and the start of the source's.
fn thread_name(source: &str) -> String {
    fit_thread_name(format!("wk:{source}"))
}

/// The walsender's thread: `ws:` and the start of the source's name.
fn serve_thread_name(source: &str) -> String {
    fit_thread_name(format!("ws:{source}"))
}

fn fit_thread_name(mut name: String) -> String {
    name.truncate((0..=15.min(name.len())).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0));
    name
}

/// The thread's body: a runtime of its own, the receive loop in a `source` span (log lines carry its name),
/// then the uploads' end, and a published error if anything escapes (a runtime that cannot be built, a
/// panic).
fn run_thread(
    name: &str,
    cfg: &ReceiveConfig,
    retention: Option<Retention>,
    downstreams: Option<Downstreams>,
    uploader: Option<(Uploader, Duration)>,
    stop: watch::Receiver<bool>,
    state: &StateSender,
) {
    let span = source_span(name);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return give_up(state, format!("could not start a runtime for the source: {e}")),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(run(cfg, retention, downstreams, stop, state).instrument(span.clone()))
    }));
    // Dropping the runtime waits for a retention run still removing files: the lock outlives it.
    drop(runtime);
    if let Some((uploader, upload_wait)) = uploader {
        // As `receive`: a clean stop waits for the uploads; after an error the next start does what is left.
        let wait = if result.as_ref().is_ok_and(|clean| *clean) { upload_wait } else { Duration::ZERO };
        span.in_scope(|| finish_uploads(uploader, wait, &cfg.directory));
    }
    if result.is_err() {
        give_up(
            state,
            "internal error: the receive loop panicked; reload the service to start it again".into(),
        );
    }
}

/// Let the uploader finish within `wait` and log what it left undone (the next start uploads what is
/// pending; a conflict needs a person).
fn finish_uploads(uploader: Uploader, wait: Duration, directory: &Path) {
    let finished = uploader.finish(wait);
    match finished.undone(directory, "upload_wait", wait) {
        None => tracing::info!("uploads to \"{}\" are complete", finished.location),
        Some(Undone::Conflicts(message)) => tracing::error!("{message}"),
        Some(Undone::Pending(message)) => tracing::warn!("{message}"),
    }
}

fn give_up(state: &StateSender, error: String) {
    tracing::error!("{error}");
    state.send_modify(|s| s.last_error = Some(error));
    set_phase(state, Phase::Stopped);
}

/// The receive loop until it ends, or until [`STOP_GRACE`] after a stop request; beside it, retention when
/// the source has `keep_backups`. True when the loop stopped cleanly (asked to).
async fn run(
    cfg: &ReceiveConfig,
    retention: Option<Retention>,
    downstreams: Option<Downstreams>,
    stop: watch::Receiver<bool>,
    state: &StateSender,
) -> bool {
    let mut asked = stop.clone();
    let abandon = async {
        // A dropped sender means the service is gone: stop as well.
        let _ = asked.wait_for(|stop| *stop).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        result = receive(cfg, stop, state) => match result {
            Ok(_) => {
                tracing::info!("stopped");
                true
            }
            Err(e) => {
                tracing::error!("{e}; the source stays stopped until the service is reloaded");
                false
            }
        },
        () = abandon => {
            give_up(
                state,
                format!("did not stop within {} seconds of being asked; abandoned", STOP_GRACE.as_secs()),
            );
            false
        }
        () = retain(&cfg.directory, retention, downstreams, state) => false,
    }
}

/// Apply retention every `interval` (the first time one interval after the start), forever. Each run
/// lists the archive, finds its base backups and removes what the policy lets go
/// (`archive::retention::run`), on the runtime's blocking pool: this source's own loop keeps streaming
/// meanwhile, and the runner holds the directory's lock throughout. With a walsender, nothing a connected
/// standby still needs is removed (the policy's floor).
async fn retain(
    directory: &Path,
    retention: Option<Retention>,
    downstreams: Option<Downstreams>,
    state: &StateSender,
) {
    let Some(Retention { policy, interval }) = retention else {
        return std::future::pending().await;
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let floor = downstreams.as_ref().and_then(Downstreams::oldest_needed).map(|n| n.lsn);
        let policy = retention::Policy { floor, ..policy };
        let dir = directory.to_path_buf();
        let run = tokio::task::spawn_blocking(move || {
            retention::run(&LocalStore::new(&dir), &policy, false, SystemTime::now())
        });
        let failed = match run.await {
            Ok(Ok(outcome)) => {
                tracing::info!("retention: {}", outcome.plan.summary());
                let removed = if outcome.removed { outcome.plan.remove.len() as u64 } else { 0 };
                state.send_modify(|s| {
                    s.retention.removed += removed;
                    s.retention.last_success = Some(SystemTime::now());
                    s.retention.last_error = None;
                });
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("internal error: {e}"),
        };
        tracing::error!("retention: {failed}");
        state.send_modify(|s| {
            s.retention.failures += 1;
            s.retention.last_error = Some(failed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_fit_linux_s_limit() {
        assert_eq!(thread_name("main"), "wk:main");
        assert_eq!(thread_name("a-very-long-source-name"), "wk:a-very-long-");
        assert_eq!(thread_name("a-very-long-source-name").len(), 15);
    }

    #[test]
    fn a_failed_runner_reports_its_error_and_has_ended() {
        let mut r = Runner::failed("db", "archive \"/x\" is in use".into());
        assert!(r.ended());
        let s = r.state().borrow().clone();
        assert_eq!(s.phase, Phase::Stopped);
        assert_eq!(s.last_error.as_deref(), Some("archive \"/x\" is in use"));
        assert!(crate::cli::block_on(r.wait(Duration::ZERO)));
    }
}
