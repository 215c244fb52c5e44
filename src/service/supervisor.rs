//! The set of running sources: started from a validated configuration, changed by a reload, stopped at
//! shutdown.
//!
//! Order of a start or reload, so that a refused configuration changes nothing: the file is validated whole
//! (`config`), then every directory not already ours is asked whether another process writes to it (which
//! creates nothing), and only then are sources stopped, directories locked and sources started. A reload
//! keeps a source running untouched (same connection, same server backend) when its settings and directory
//! are the same and it has not ended; a changed one is stopped, then started again; a removed one stops
//! (syncs, reports, releases its directory).

use crate::archive::lock::{check_unlocked, ArchiveLock};
use crate::service::config::{ConfigError, ServiceConfig, Source};
use crate::service::runner::Runner;
use crate::service::shared::{Shared, View};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a reload or the shutdown waits for sources to stop: within systemd's and docker's default
/// 10 s stop timeout, after the runner's own grace period.
pub const STOP_WAIT: Duration = Duration::from_secs(8);

#[derive(Debug)]
pub struct Supervisor {
    config: ServiceConfig,
    /// One per source of `config`, in its order.
    runners: Vec<Runner>,
    shared: Arc<Shared>,
}

/// A directory that cannot be used, as a configuration error naming the source and its directory.
fn directory_error(config: &ServiceConfig, source: &Source, message: String) -> ConfigError {
    ConfigError {
        file: config.file.clone(),
        line: None,
        place: Some(format!("source \"{}\"", source.name)),
        key: Some("directory".into()),
        message,
    }
}

/// Ask every directory of `sources` whether another process writes to it, creating nothing.
fn check_directories<'a>(
    config: &ServiceConfig,
    sources: impl IntoIterator<Item = &'a Source>,
) -> Result<(), ConfigError> {
    for s in sources {
        check_unlocked(s.directory()).map_err(|e| directory_error(config, s, e.to_string()))?;
    }
    Ok(())
}

impl Supervisor {
    /// Lock every directory and start every source; on an error nothing runs and no lock is held.
    pub fn start(config: ServiceConfig, shared: Arc<Shared>) -> Result<Supervisor, ConfigError> {
        check_directories(&config, &config.sources)?;
        let mut locks = Vec::with_capacity(config.sources.len());
        for s in &config.sources {
            // Dropping `locks` on an error releases those taken so far.
            locks.push(
                ArchiveLock::acquire(s.directory())
                    .map_err(|e| directory_error(&config, s, e.to_string()))?,
            );
        }
        let runners = config.sources.iter().zip(locks).map(|(s, lock)| Runner::start(s, lock)).collect();
        let supervisor = Supervisor { config, runners, shared };
        supervisor.publish();
        tracing::info!(
            "started {} source(s) from {}",
            supervisor.runners.len(),
            supervisor.config.file.display()
        );
        Ok(supervisor)
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Tell the HTTP endpoints and the archive lister which sources run now.
    fn publish(&self) {
        let views = self
            .config
            .sources
            .iter()
            .zip(&self.runners)
            .map(|(s, r)| View {
                name: s.name.clone(),
                directory: s.directory().to_path_buf(),
                state: r.state(),
                serve: r.serve_view(),
                upload: r.upload(),
            })
            .collect();
        self.shared.set_views(views);
    }

    /// Switch to `new` (already validated): returns a one-line account of what changed, or the error that
    /// left everything as it was.
    pub async fn apply(&mut self, new: ServiceConfig) -> Result<String, ConfigError> {
        // For each new source, the old runner it keeps.
        let kept: Vec<Option<usize>> = new
            .sources
            .iter()
            .map(|s| {
                self.config
                    .sources
                    .iter()
                    .position(|o| o.name == s.name && o.unchanged(s))
                    .filter(|&i| !self.runners[i].ended())
            })
            .collect();
        let ours = |dir: &Path| self.config.sources.iter().any(|o| o.directory() == dir);
        let to_check: Vec<Source> = new.sources.iter().filter(|s| !ours(s.directory())).cloned().collect();
        // Off the main loop: a directory on a hung file system must not stall /health or the watchdog.
        let checked = new.clone();
        let check = tokio::task::spawn_blocking(move || check_directories(&checked, &to_check)).await;
        check.unwrap_or_else(|e| {
            Err(ConfigError {
                file: new.file.clone(),
                line: None,
                place: None,
                key: None,
                message: format!("internal error while checking directories: {e}"),
            })
        })?;

        // From here on the new configuration is applied: stop what goes, then start what comes.
        let mut old: Vec<Option<Runner>> = std::mem::take(&mut self.runners).into_iter().map(Some).collect();
        let leaving: Vec<usize> = (0..old.len()).filter(|i| !kept.contains(&Some(*i))).collect();
        for &i in &leaving {
            if let Some(r) = &old[i] {
                r.request_stop();
            }
        }
        let deadline = Instant::now() + STOP_WAIT;
        for &i in &leaving {
            if let Some(r) = old[i].as_mut() {
                if !r.wait(deadline.saturating_duration_since(Instant::now())).await {
                    tracing::error!("source {} did not stop in time; its directory stays locked", r.name());
                }
            }
        }
        let (mut started, mut restarted, mut unchanged) = (Vec::new(), Vec::new(), 0);
        let mut runners = Vec::with_capacity(new.sources.len());
        for (s, keep) in new.sources.iter().zip(&kept) {
            if let Some(runner) = keep.and_then(|i| old[i].take()) {
                unchanged += 1;
                runners.push(runner);
                continue;
            }
            if self.config.sources.iter().any(|o| o.name == s.name) {
                restarted.push(s.name.as_str());
            } else {
                started.push(s.name.as_str());
            }
            let runner = match ArchiveLock::acquire(s.directory()) {
                Ok(lock) => Runner::start(s, lock),
                Err(e) => Runner::failed(&s.name, e.to_string()),
            };
            runners.push(runner);
        }
        let stopped: Vec<&str> = self
            .config
            .sources
            .iter()
            .filter(|o| !new.sources.iter().any(|s| s.name == o.name))
            .map(|o| o.name.as_str())
            .collect();
        let account = format!(
            "{} source(s): started [{}], stopped [{}], restarted [{}], {unchanged} unchanged",
            runners.len(),
            started.join(", "),
            stopped.join(", "),
            restarted.join(", ")
        );
        self.runners = runners;
        self.config = new;
        self.publish();
        Ok(account)
    }

    /// Stop every source (each syncs what it has and reports it); the names of those that did not stop
    /// within [`STOP_WAIT`].
    pub async fn stop_all(&mut self) -> Vec<String> {
        for r in &self.runners {
            r.request_stop();
        }
        let deadline = Instant::now() + STOP_WAIT;
        let mut late = Vec::new();
        for r in &mut self.runners {
            if !r.wait(deadline.saturating_duration_since(Instant::now())).await {
                late.push(r.name().to_string());
            }
        }
        late
    }
}
