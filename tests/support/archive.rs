//! An archive directory as `walkeeper receive` running as the server user writes it, and that receiver:
//! for the tests that take base backups, recover from the archive or clean it (pitr, retention).
//!
//! ```ignore
//! let archive = ArchiveDir::new();
//! create_slot(&archive, &primary, "pitr");
//! let rx = Receiver::start(&archive, &primary, &["-S", "pitr"]);
//! let last = primary.switch_wal();
//! rx.wait_archived(&archive, &last);
//! backup.start_recovery(&[&archive.restore_command("")]);
//! ```

use super::{chown_to_server, run_as_server_user, wait_until, walkeeper, Cluster};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a receiver may take to start streaming or to complete a segment.
const WAIT: Duration = Duration::from_secs(60);

/// A temp dir holding `archive/` (owned by the server user, as an archive written by a `postgres`-run
/// receiver is) and the receiver's log.
pub struct ArchiveDir {
    root: tempfile::TempDir,
}

impl ArchiveDir {
    pub fn new() -> ArchiveDir {
        let root = tempfile::Builder::new().prefix("walkeeper-archive-").tempdir_in("/tmp").unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let archive = root.path().join("archive");
        fs::create_dir(&archive).unwrap();
        fs::set_permissions(&archive, fs::Permissions::from_mode(0o755)).unwrap();
        chown_to_server(root.path());
        chown_to_server(&archive);
        ArchiveDir { root }
    }

    pub fn path(&self) -> PathBuf {
        self.root.path().join("archive")
    }

    /// The directory holding `archive/`, also the server user's: for logs, and as its HOME.
    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    /// Every name in the archive, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// True when segment `name` is complete in the archive (any compression).
    pub fn has_complete(&self, name: &str) -> bool {
        ["", ".gz", ".lz4", ".zst"].iter().any(|sfx| self.path().join(format!("{name}{sfx}")).is_file())
    }

    pub fn restore_command(&self, extra: &str) -> String {
        format!("restore_command = '{} restore -D {} {extra} %f %p'", super::WALKEEPER, self.path().display())
    }
}

/// `walkeeper receive` running as the server user; killed on drop.
pub struct Receiver {
    child: Option<Child>,
    log: PathBuf,
}

fn receive_command(archive: &ArchiveDir, server: &Cluster, extra: &[&str]) -> Command {
    let mut cmd = walkeeper();
    cmd.arg("receive").arg("-D").arg(archive.path());
    cmd.args(["-h", server.host(), "-p", &server.port().to_string(), "-U", "postgres", "-w"]);
    cmd.args(extra);
    cmd.current_dir(archive.root.path()).env("HOME", archive.root.path());
    run_as_server_user(&mut cmd);
    cmd
}

impl Receiver {
    /// Start receiving from `server` (with `extra` arguments) and wait until streaming has begun.
    pub fn start(archive: &ArchiveDir, server: &Cluster, extra: &[&str]) -> Receiver {
        let log = archive.root.path().join(format!("receive-{}.log", server.port()));
        let mut cmd = receive_command(archive, server, extra);
        cmd.arg("-v").stdout(Stdio::null()).stderr(fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start walkeeper receive");
        let rx = Receiver { child: Some(child), log };
        // Streaming has begun once the first segment file is there.
        let started = wait_until(WAIT, || {
            fs::read_dir(archive.path())
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().contains(".partial"))
        });
        assert!(started, "walkeeper receive did not start streaming:\n{}", rx.log_text());
        rx
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait until segment `name` is complete in the archive.
    pub fn wait_archived(&self, archive: &ArchiveDir, name: &str) {
        let ok = wait_until(WAIT, || archive.has_complete(name));
        assert!(
            ok,
            "segment {name} did not reach the archive; files: {:?}\n{}",
            archive.files(),
            self.log_text()
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Create the physical slot `slot` on `server` with `walkeeper receive --create-slot`.
pub fn create_slot(archive: &ArchiveDir, server: &Cluster, slot: &str) {
    let out = receive_command(archive, server, &["--create-slot", "-S", slot]).output().unwrap();
    assert!(out.status.success(), "create slot: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `pitr` table of the recovery tests, created on `server` before its rows are written.
pub fn create_pitr_table(server: &Cluster) {
    server.psql("CREATE TABLE pitr (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())");
}

/// Rows `from..=to` into the `pitr` table, in one transaction.
pub fn insert_batch(server: &Cluster, from: u32, to: u32) {
    server.psql(&format!("INSERT INTO pitr (id) SELECT g FROM generate_series({from}, {to}) g"));
}

/// A time strictly between the commits before and after this call.
pub fn target_time(server: &Cluster) -> String {
    server.psql("SELECT pg_sleep(0.2)");
    let t = server.psql("SELECT clock_timestamp()");
    server.psql("SELECT pg_sleep(0.2)");
    t
}

/// The `pitr` table as `count min..max`, to compare a recovered server with what it should hold.
pub fn rows(server: &Cluster) -> String {
    server.psql("SELECT count(*) || ' ' || coalesce(min(id), 0) || '..' || coalesce(max(id), 0) FROM pitr")
}
