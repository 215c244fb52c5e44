//! What the HTTP endpoints and the archive lister read: the running sources (name, directory, state
//! channel), replaced whole by the supervisor at start and at each reload, and the latest archive listings.

use crate::archive::upload::UploadWatch;
use crate::serve::Downstreams;
use crate::service::archives::{ArchiveSummary, Summaries, Target};
use crate::service::metrics::{Sample, ServeSample};
use crate::stream::state::SourceState;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use tokio::sync::watch;

/// One running source, as seen from outside it.
#[derive(Clone, Debug)]
pub struct View {
    pub name: String,
    pub directory: PathBuf,
    pub state: watch::Receiver<SourceState>,
    /// With `[source.serve]`: its walsender.
    pub serve: Option<ServeView>,
    /// The uploader's state, for a source with `upload`.
    pub upload: Option<UploadWatch>,
}

/// A source's walsender, as seen from outside it.
#[derive(Clone, Debug)]
pub struct ServeView {
    pub listen: String,
    /// The standbys streaming from it.
    pub downstreams: Downstreams,
    /// Why it stopped serving for good (its address taken, say), until a reload starts it again.
    pub failed: Arc<OnceLock<String>>,
}

#[derive(Debug, Default)]
pub struct Shared {
    pub config_file: PathBuf,
    views: RwLock<Vec<View>>,
    pub archives: Summaries,
}

impl Shared {
    pub fn new(config_file: PathBuf) -> Arc<Shared> {
        Arc::new(Shared { config_file, ..Shared::default() })
    }

    /// The sources from now on, in the configuration's order.
    pub fn set_views(&self, views: Vec<View>) {
        if let Ok(mut v) = self.views.write() {
            *v = views;
        }
    }

    fn views(&self) -> Vec<View> {
        self.views.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// Every source's current state, with its directory.
    pub fn samples(&self) -> Vec<(Sample, PathBuf)> {
        self.views()
            .into_iter()
            .map(|v| {
                let serve = v.serve.map(|s| ServeSample {
                    listen: s.listen,
                    downstreams: s.downstreams.list(),
                    error: s.failed.get().cloned(),
                });
                let upload = v.upload.as_ref().map(|u| u.borrow().clone());
                (Sample { source: v.name, state: v.state.borrow().clone(), serve, upload }, v.directory)
            })
            .collect()
    }

    /// What the archive lister lists: each directory, with the segment size its server reported.
    pub fn targets(&self) -> Vec<Target> {
        self.views().into_iter().map(|v| (v.directory, v.state.borrow().segment_size)).collect()
    }

    /// The last listing of `directory`.
    pub fn archive(&self, directory: &std::path::Path) -> Option<ArchiveSummary> {
        self.archives.lock().ok().and_then(|a| a.get(directory).cloned())
    }
}
