//! What the off-site tests (tests/s3_*.rs) share: `walkeeper receive --upload` running in the background
//! against a real server and the SeaweedFS of `support::s3`, walkeeper commands with the cluster's AWS
//! environment, and a plain S3 client to look at (and tamper with) the bucket behind walkeeper's back.

#![allow(dead_code)] // each test binary uses its own part

use crate::support::s3::S3Cluster;
use crate::support::{walkeeper, Cluster, Run};
use object_store::aws::AmazonS3;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long the tests wait for uploads and exits: SeaweedFS and PostgreSQL share two busy cores.
pub const WAIT: Duration = Duration::from_secs(180);

/// `walkeeper` with the cluster's endpoint and credentials in the standard AWS variables.
pub fn walkeeper_s3(s3: &S3Cluster) -> Command {
    let mut cmd = walkeeper();
    cmd.envs(s3.env());
    cmd
}

/// `walkeeper ARGS` with the AWS environment, run to completion (at most [`WAIT`]).
pub fn run_s3(s3: &S3Cluster, args: &[&str]) -> Run {
    Run::within(walkeeper_s3(s3).args(args), WAIT)
}

/// Polls `cond` until it holds, or panics with `what` and `context()` after [`WAIT`].
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) {
    if !crate::support::wait_until(WAIT, &mut cond) {
        panic!("timed out after {WAIT:?} waiting for {what}\n{}", context());
    }
}

/// An object in the bucket, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub size: u64,
    pub e_tag: Option<String>,
    pub modified: String,
}

/// A plain S3 client on the cluster's bucket: walkeeper's objects seen without walkeeper.
pub struct Bucket {
    client: AmazonS3,
    runtime: tokio::runtime::Runtime,
}

impl Bucket {
    pub fn new(s3: &S3Cluster) -> Bucket {
        let client = s3.raw_client();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Bucket { client, runtime }
    }

    fn key(prefix: &str, name: &str) -> ObjectPath {
        ObjectPath::parse(format!("{prefix}/{name}")).unwrap()
    }

    /// The objects directly under `prefix`, by name; an unreachable store lists nothing.
    pub fn list(&self, prefix: &str) -> BTreeMap<String, Object> {
        let prefix_path = ObjectPath::parse(prefix).unwrap();
        let listing = self.runtime.block_on(self.client.list_with_delimiter(Some(&prefix_path)));
        let Ok(listing) = listing else { return BTreeMap::new() };
        listing
            .objects
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                let object = Object { size: m.size, e_tag: m.e_tag, modified: m.last_modified.to_rfc3339() };
                Some((name, object))
            })
            .collect()
    }

    pub fn names(&self, prefix: &str) -> Vec<String> {
        self.list(prefix).into_keys().collect()
    }

    pub fn get(&self, prefix: &str, name: &str) -> Vec<u8> {
        let key = Bucket::key(prefix, name);
        self.runtime.block_on(async { self.client.get(&key).await.unwrap().bytes().await.unwrap().to_vec() })
    }

    /// Creates or replaces the object, as another tool would.
    pub fn put(&self, prefix: &str, name: &str, data: &[u8]) {
        let key = Bucket::key(prefix, name);
        self.runtime.block_on(self.client.put(&key, PutPayload::from(data.to_vec()))).unwrap();
    }
}

/// Complete segment files among `names` (any compression, no `.partial`).
pub fn complete_segments(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            let (stem, suffix) = n.split_at(n.len().min(24));
            stem.len() == 24
                && stem.bytes().all(|b| b.is_ascii_hexdigit())
                && ["", ".gz", ".lz4", ".zst"].contains(&suffix)
        })
        .cloned()
        .collect()
}

/// The file names in a spool directory, sorted (the lock file left out).
pub fn spool_names(dir: &Path) -> Vec<String> {
    crate::support::names(dir)
}

/// `walkeeper receive -v -D SPOOL ARGS` against `server`, with the AWS environment, in the background;
/// killed on drop.
pub struct Receiver {
    child: Option<Child>,
    log: PathBuf,
    pub spool: PathBuf,
}

impl Receiver {
    pub fn start(s3: &S3Cluster, server: &Cluster, spool: &Path, args: &[&str]) -> Receiver {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let name = spool.file_name().unwrap().to_string_lossy();
        let log = spool.parent().unwrap().join(format!("receive-{name}-{n}.log"));
        let mut cmd = walkeeper_s3(s3);
        cmd.arg("receive")
            .arg("-v")
            .arg("-D")
            .arg(spool)
            .args(["-d", &server.conninfo("postgres")])
            .args(args);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        Receiver { child: Some(child), log, spool: spool.to_path_buf() }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// SIGTERM, then the exit code once it has exited (uploads drained).
    pub fn stop(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits until it exits by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let mut status = None;
        let exited = crate::support::wait_until(WAIT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!("walkeeper receive did not exit:\n{}", self.log());
        }
        status.unwrap().code()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What most off-site tests start with: SeaweedFS, a client on its bucket, a primary with 1 MB segments and a
/// slot reserving its WAL, an empty spool directory, and the upload location `s3://walkeeper/wal`.
pub struct Rig {
    pub s3: S3Cluster,
    pub bucket: Bucket,
    pub primary: Cluster,
    pub spool: PathBuf,
    pub url: String,
    /// Holds the spool (and the receivers' logs): keep it bound (`dir: _dir`) for the test's length.
    pub dir: tempfile::TempDir,
}

impl Rig {
    /// `None` (after `cannot_run`) when SeaweedFS is not installed.
    pub fn start(slot: &str) -> Option<Rig> {
        let s3 = S3Cluster::start()?;
        let bucket = Bucket::new(&s3);
        let primary = Cluster::builder().segment_size_mb(1).start();
        primary.psql(&format!("SELECT pg_create_physical_replication_slot('{slot}', true)"));
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("spool");
        fs::create_dir(&spool).unwrap();
        let url = s3.url("wal");
        Some(Rig { s3, bucket, primary, spool, url, dir: tmp })
    }

    /// `walkeeper receive` into the spool.
    pub fn receive(&self, args: &[&str]) -> Receiver {
        Receiver::start(&self.s3, &self.primary, &self.spool, args)
    }
}
