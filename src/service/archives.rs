//! What each source's archive holds, for /status: per timeline the first and last complete segment, the
//! open `.partial`, file count and size — from the archive's [`Catalog`] (one directory listing, no file
//! read once the segment size is known). Listing a big directory on a slow disk takes time, so it is done
//! on a thread of its own every [`REFRESH`] (and at once after a reload), never on a request; /status
//! shows the last result and when it was taken.

use crate::archive::catalog::{Catalog, SegmentSize};
use crate::archive::store::LocalStore;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often the archives are listed again.
const REFRESH: Duration = Duration::from_secs(10);

/// One archive, as last listed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// When it was listed (seconds since the Unix epoch).
    pub listed_at_unix: u64,
    pub timelines: Vec<TimelineRange>,
    /// Segment, history and backup history files.
    pub wal_files: usize,
    pub total_bytes: u64,
    /// Why it could not be listed (then the rest is empty).
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TimelineRange {
    pub timeline: u32,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub complete_segments: usize,
    /// The newest `.partial` of the timeline's trailing run: the segment being written.
    pub partial: Option<String>,
}

/// What to list: a directory, and its segment size when the source knows it (else read from headers).
pub type Target = (PathBuf, Option<u32>);

/// The latest summaries, by directory.
pub type Summaries = Arc<Mutex<HashMap<PathBuf, ArchiveSummary>>>;

/// List `dir` now.
fn summarize(dir: &std::path::Path, segment_size: Option<u32>) -> ArchiveSummary {
    let listed_at_unix =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let size = segment_size.map_or(SegmentSize::FromHeaders, SegmentSize::Known);
    let catalog = match Catalog::read(&LocalStore::new(dir), size) {
        Ok(c) => c,
        Err(e) => {
            return ArchiveSummary {
                listed_at_unix,
                timelines: Vec::new(),
                wal_files: 0,
                total_bytes: 0,
                error: Some(e.to_string()),
            }
        }
    };
    let timelines = catalog
        .timelines()
        .into_iter()
        .map(|(timeline, files)| {
            let complete: Vec<_> = files.iter().filter(|f| !f.partial).collect();
            TimelineRange {
                timeline,
                first_segment: complete.first().map(|f| f.segment_name().to_string()),
                last_segment: complete.last().map(|f| f.segment_name().to_string()),
                complete_segments: complete.len(),
                partial: catalog.trailing_partials(timeline).last().map(|f| f.file.clone()),
            }
        })
        .collect();
    let lens = catalog
        .segments()
        .iter()
        .map(|f| f.len)
        .chain(catalog.histories().values().map(|e| e.len))
        .chain(catalog.backup_histories().iter().map(|e| e.len));
    let (wal_files, total_bytes) = lens.fold((0, 0u64), |(n, b), len| (n + 1, b.saturating_add(len)));
    ArchiveSummary { listed_at_unix, timelines, wal_files, total_bytes, error: None }
}

/// Start the lister thread. `targets` says what to list each round; a message on the returned sender lists
/// at once; dropping it ends the thread.
pub fn spawn_lister(
    targets: impl Fn() -> Vec<Target> + Send + 'static,
    summaries: Summaries,
) -> std::io::Result<mpsc::Sender<()>> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::Builder::new().name("wk:archives".into()).spawn(move || loop {
        let targets = targets();
        let mut fresh = HashMap::with_capacity(targets.len());
        for (dir, segment_size) in targets {
            let summary = summarize(&dir, segment_size);
            fresh.insert(dir, summary);
        }
        if let Ok(mut s) = summaries.lock() {
            *s = fresh;
        }
        match rx.recv_timeout(REFRESH) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_per_timeline_and_the_open_partial() {
        let tmp = crate::archive::catalog::test_archive(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003.partial",
            "00000002.history",
            "000000020000000000000003.zst",
        ]);
        let s = summarize(tmp.path(), Some(16 << 20));
        assert_eq!(s.error, None);
        assert_eq!(s.wal_files, 5);
        assert_eq!(
            s.timelines,
            [
                TimelineRange {
                    timeline: 1,
                    first_segment: Some("000000010000000000000001".into()),
                    last_segment: Some("000000010000000000000002".into()),
                    complete_segments: 2,
                    partial: Some("000000010000000000000003.partial".into()),
                },
                TimelineRange {
                    timeline: 2,
                    first_segment: Some("000000020000000000000003".into()),
                    last_segment: Some("000000020000000000000003".into()),
                    complete_segments: 1,
                    partial: None,
                },
            ]
        );
        let missing = summarize(&tmp.path().join("gone"), None);
        assert!(missing.error.is_some_and(|e| e.contains("gone")));
    }
}
