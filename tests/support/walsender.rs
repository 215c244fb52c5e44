//! walkeeper's receive loop and walsender inside the test process, wired as the service wires them: the
//! receive loop ([`Receiver`]) archives a real server into a directory and publishes its state; the
//! walsender ([`Walsender`]) serves that directory to real standbys, woken by that state. Both stop on drop.
//!
//! ```ignore
//! let receiver = Receiver::start(&primary, archive.path(), ReceiverOptions::default());
//! let ws = Walsender::start(archive.path(), Some(receiver.subscribe()), &[("standby", "secret")], None);
//! standby.start_standby(&[&ws.primary_conninfo("standby", "secret", "dr")]);
//! ```

use super::{Cluster, TIMEOUT};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::watch;
use walkeeper::conn::conninfo::{self, Sources};
use walkeeper::conn::ConnectOptions;
use walkeeper::serve::{Downstreams, ServeConfig, WalSource};
use walkeeper::stream::feedback::ApplyReport;
use walkeeper::stream::state::{LiveReaders, SourceState};
use walkeeper::stream::ReceiveConfig;
use walkeeper::wal::segment::Compression;
use walkeeper::wal::Lsn;

/// How the in-process receive loop runs.
#[derive(Clone, Debug)]
pub struct ReceiverOptions {
    /// `--synchronous`: fsync and report every batch (for synchronous_standby_names).
    pub synchronous: bool,
    pub compression: Compression,
    /// A physical slot on the server (created by the test).
    pub slot: Option<String>,
    /// Reported to the server as application_name.
    pub application_name: String,
    /// `--status-interval` (None: `-s 0`, files synced only when a segment is complete, or for standbys
    /// streaming from the walsender).
    pub status_interval: Option<std::time::Duration>,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            synchronous: false,
            compression: Compression::None,
            slot: None,
            application_name: "walkeeper".into(),
            status_interval: Some(std::time::Duration::from_secs(1)),
        }
    }
}

/// `walkeeper receive` on a thread of its own, publishing its state.
pub struct Receiver {
    state: watch::Receiver<SourceState>,
    live_readers: LiveReaders,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Receiver {
    /// Archive `server` into `dir`, following it through outages (and, with several hosts in
    /// `conninfo`, to whichever is primary).
    pub fn start(server: &Cluster, dir: &Path, opts: ReceiverOptions) -> Receiver {
        let conninfo = format!(
            "host={} port={} user=postgres application_name={}",
            server.host(),
            server.port(),
            opts.application_name
        );
        Receiver::start_conninfo(&conninfo, dir, opts)
    }

    pub fn start_conninfo(conninfo: &str, dir: &Path, opts: ReceiverOptions) -> Receiver {
        let sources = Sources { conninfo: Some(conninfo), ..Sources::default() };
        let live_readers = LiveReaders::default();
        let cfg = ReceiveConfig {
            conn: conninfo::resolve(&sources, &|_| None).unwrap(),
            connect: ConnectOptions::default(),
            directory: dir.to_path_buf(),
            slot: opts.slot,
            endpos: None,
            status_interval: opts.status_interval,
            receive_timeout: Some(std::time::Duration::from_secs(60)),
            synchronous: opts.synchronous,
            fsync: true,
            compression: opts.compression,
            compression_level: None,
            no_loop: false,
            validate: true,
            apply_report: ApplyReport::Invalid,
            live_readers: live_readers.clone(),
            failover: false,
            create_slot: false,
            upload: None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let state_tx = walkeeper::stream::state::unobserved();
        let state = state_tx.subscribe();
        let thread = std::thread::spawn(move || {
            walkeeper::cli::block_on(walkeeper::stream::follow::receive(&cfg, stop_rx, &state_tx))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        Receiver { state, live_readers, stop, thread: Some(thread) }
    }

    /// The state as last published.
    pub fn state(&self) -> SourceState {
        self.state.borrow().clone()
    }

    /// What the walsender needs from the receive loop: its state channel and the live readers count.
    pub fn feed(&self) -> Feed {
        Feed { state: self.state.clone(), live_readers: self.live_readers.clone() }
    }

    /// Waits until the flushed position reaches `lsn`; false after [`TIMEOUT`].
    pub fn wait_flushed(&self, lsn: u64) -> bool {
        super::wait_until(TIMEOUT, || self.state().flushed.is_some_and(|f| f.0 >= lsn))
    }

    /// Stops the loop (as SIGTERM does) and returns how it ended.
    pub fn stop(mut self) -> Result<(), String> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), String> {
        let _ = self.stop.send(true);
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err("the receive loop panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// What a walsender gets from a receive loop filling its archive.
#[derive(Clone)]
pub struct Feed {
    pub state: watch::Receiver<SourceState>,
    pub live_readers: LiveReaders,
}

/// The walsender on a runtime of its own.
pub struct Walsender {
    rt: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
    pub downstreams: Downstreams,
    pub source: Arc<WalSource>,
    stop: watch::Sender<bool>,
}

impl Walsender {
    /// Serve the archive in `dir` (fed by a receive loop, or at rest) to `users`, with TLS when a
    /// certificate and key are given.
    pub fn start(
        dir: &Path,
        feed: Option<Feed>,
        users: &[(&str, &str)],
        tls: Option<(PathBuf, PathBuf)>,
    ) -> Walsender {
        // walkeeper's log goes with the test's output (shown when it fails).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("walkeeper=info")),
            )
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut section = walkeeper::serve::ServeSection {
            listen: "127.0.0.1:1".into(),
            users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            tls_cert: None,
            tls_key: None,
        };
        if let Some((cert, key)) = tls {
            section.tls_cert = Some(cert);
            section.tls_key = Some(key);
        }
        let mut cfg = ServeConfig::from_section(&section).unwrap_or_else(|e| panic!("{e}"));
        cfg.listen = "127.0.0.1:0".into();
        let store: Arc<dyn walkeeper::archive::store::Store> =
            Arc::new(walkeeper::archive::store::LocalStore::new(dir));
        let source = match feed {
            Some(f) => WalSource::new(store, Some(f.state)).with_live_readers(f.live_readers),
            None => WalSource::new(store, None),
        };
        let source = Arc::new(source);
        let downstreams = Downstreams::new();
        let ws = rt
            .block_on(walkeeper::serve::Walsender::bind(cfg, source.clone(), downstreams.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = ws.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        rt.spawn(ws.run(stop_rx));
        Walsender { rt: Some(rt), addr, downstreams, source, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A libpq connection string to the walsender.
    pub fn conninfo(&self, user: &str, password: &str) -> String {
        let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
        format!("host=127.0.0.1 port={} user={user} password='{quoted}'", self.port())
    }

    /// The `primary_conninfo` line of a standby streaming from the walsender.
    pub fn primary_conninfo(&self, user: &str, password: &str, application_name: &str) -> String {
        let conninfo = format!("{} application_name={application_name}", self.conninfo(user, password));
        format!("primary_conninfo = {}", super::conf_literal(&conninfo))
    }

    /// The flushed position the standby named `application_name` last reported, if connected.
    pub fn downstream_flush(&self, application_name: &str) -> Option<Lsn> {
        self.downstreams.list().into_iter().find(|d| d.application_name == application_name)?.flush
    }
}

impl Drop for Walsender {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(10));
        }
    }
}
