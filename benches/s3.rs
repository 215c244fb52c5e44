//! What going off-site costs, measured against a real PostgreSQL 15 and a real SeaweedFS (tests/support/s3.rs)
//! on the same machine, alternating the variants (A B A B) so that drift hits both alike. Reports medians and
//! ratios; asserts nothing (speed is reported, never a test failure).
//!
//! 1. **Catch-up**: `walkeeper receive -n -E END` of a WAL backlog from a slot into an empty directory, without
//!    and with `--upload s3://…`: with `--upload-wait 0` (the receiver exits once it has received END, uploads
//!    still running: what uploading costs receiving) and with a long wait (its clean exit waits for the
//!    uploads: the time until the backlog is off-site, bound by the store's ingest rate).
//! 2. **Restore**: a real recovery of a base backup (`-X none`: every segment through restore_command) to the
//!    end of the archive, with `walkeeper restore -D DIR` against `walkeeper restore -D s3://…` holding the
//!    same segments (prefetch on, the default, in both).
//!
//! SeaweedFS runs on the same cores as PostgreSQL and walkeeper and does several times walkeeper's work per
//! byte (gateway, filer, two volume servers). One more variant of each phase runs every SeaweedFS thread at
//! nice 19, so the store takes mostly CPU nothing else wants — roughly what a store on another machine costs
//! this one. Both are reported; neither is the other.
//!
//! `cargo bench --bench s3` (release build; needs `weed`, see docs/s3.md) — knobs (environment):
//!   S3_WAL_MB       catch-up backlog (default 512)
//!   S3_RESTORE_MB   WAL replayed in the restore phase (default 512)
//!   S3_ROUNDS       rounds per variant (default 3)
//!   S3_COMPRESS     -Z for both phases (default none)
//!   S3_PHASES       comma list of catchup,restore (default both)
//!   S3_OUT          also write the markdown report to this file

#[path = "../tests/support/mod.rs"]
mod support;

mod common;
use common::{benchmarking, env_u64, measure, median, publish_report, walkeeper_bin, Cost};

use std::path::Path;
use std::process::Command;
use std::time::Instant;
use support::s3::S3Cluster;
use support::Cluster;

/// `walkeeper receive` against `cluster`, with the S3 cluster's environment.
fn receive(cluster: &Cluster, s3: &S3Cluster) -> Command {
    let mut c = Command::new(walkeeper_bin());
    c.arg("receive").args(["-h", cluster.host(), "-p", &cluster.port().to_string(), "-U", "postgres", "-w"]);
    c.envs(s3.env());
    c
}

fn compress_args() -> Vec<String> {
    match std::env::var("S3_COMPRESS") {
        Ok(m) if !m.is_empty() && m != "none" => vec!["-Z".into(), m],
        _ => Vec::new(),
    }
}

fn catchup(s3: &S3Cluster, report: &mut String) {
    let wal_mb = env_u64("S3_WAL_MB", 512);
    let rounds = env_u64("S3_ROUNDS", 3);
    let cluster = Cluster::builder()
        .conf(&format!("wal_keep_size = '{}MB'", wal_mb * 2))
        .conf("max_replication_slots = 64")
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .start();
    let variants = [
        "without upload",
        "`--upload`, exit at END",
        "`--upload`, exit at END, store at nice 19",
        "`--upload`, exit once all is uploaded",
    ];
    // The variant whose store runs at the lowest CPU priority (module docs).
    let niced = 2;
    // One slot per run, all reserved before the backlog is written, so every run starts at the same LSN.
    let slot = |r: u64, v: usize| format!("s3_{r}_{v}");
    for r in 0..rounds {
        for v in 0..variants.len() {
            cluster.psql(&format!("SELECT pg_create_physical_replication_slot('{}', true)", slot(r, v)));
        }
    }
    eprintln!("s3 bench: writing {wal_mb} MB of WAL");
    cluster.generate_wal(wal_mb);
    cluster.switch_wal();
    let end = support::format_lsn(cluster.current_lsn());
    // `-E` stops once WAL *beyond* the end position arrives.
    cluster.switch_wal();
    Command::new("sync").status().expect("sync");
    let mut times: Vec<Vec<Cost>> = vec![Vec::new(); variants.len()];
    let mut store_cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for r in 0..rounds {
        for k in 0..variants.len() {
            let v = (k + r as usize) % variants.len();
            let dir = tempfile::tempdir().expect("tempdir");
            let mut cmd = receive(&cluster, s3);
            cmd.arg("-D").arg(dir.path()).args(["-S", &slot(r, v), "-n", "-E", &end]).args(compress_args());
            let wait = if v == 3 { "600" } else { "0" };
            if v > 0 {
                cmd.args(["--upload", &s3.url(&format!("catchup-{r}-{v}")), "--upload-wait", wait]);
            }
            s3.set_nice(if v == niced { 19 } else { 0 });
            let store_before = s3.cpu_seconds();
            // Exiting at END with uploads pending is exit 4: that run measures receiving alone.
            let cost = measure(&mut cmd, if v == 1 || v == niced { &[0, 4] } else { &[0] });
            let store = s3.cpu_seconds() - store_before;
            s3.set_nice(0);
            eprintln!(
                "s3 bench: catch-up {} round {r}: {:.2}s wall, {:.2}s cpu, store {store:.2}s cpu",
                variants[v], cost.wall, cost.cpu
            );
            times[v].push(cost);
            store_cpu[v].push(store);
            cluster.psql(&format!("SELECT pg_drop_replication_slot('{}')", slot(r, v)));
        }
    }
    let walls: Vec<f64> = times.iter().map(|t| median(t.iter().map(|c| c.wall).collect())).collect();
    let cpus: Vec<f64> = times.iter().map(|t| median(t.iter().map(|c| c.cpu).collect())).collect();
    report.push_str(&format!(
        "\n### Catch-up of {wal_mb} MB of WAL, `-n -E END`{}, {rounds} rounds\n\n\
         | receive | wall s (median) | MB/s | wall ratio to without upload | walkeeper CPU s (median) | \
         SeaweedFS CPU s (median, while receive ran) |\n\
         |---|---|---|---|---|---|\n",
        compress_label()
    ));
    for (v, label) in variants.iter().enumerate() {
        report.push_str(&format!(
            "| {label} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
            walls[v],
            wal_mb as f64 / walls[v],
            walls[v] / walls[0],
            cpus[v],
            median(store_cpu[v].clone())
        ));
    }
}

fn compress_label() -> String {
    let args = compress_args();
    if args.is_empty() {
        String::new()
    } else {
        format!(", `{}`", args.join(" "))
    }
}

/// Make a directory tree readable by the server account (archives written by root with mode 0600).
fn open_to_all(dir: &Path) {
    let status = Command::new("chmod").args(["-R", "a+rX"]).arg(dir).status().expect("chmod");
    assert!(status.success(), "chmod -R a+rX {}", dir.display());
}

fn restore(s3: &S3Cluster, report: &mut String) {
    let wal_mb = env_u64("S3_RESTORE_MB", 512);
    let rounds = env_u64("S3_ROUNDS", 3);
    let cluster = Cluster::builder()
        .conf(&format!("wal_keep_size = '{}MB'", wal_mb * 2))
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .start();
    cluster.psql("SELECT pg_create_physical_replication_slot('s3_restore', true)");
    let variants = [
        "walkeeper restore -D DIR",
        "walkeeper restore -D s3://…",
        "walkeeper restore -D s3://…, store at nice 19",
    ];
    let niced = 2;
    // One more round first, not counted: the first recoveries after the WAL was written ran slower whatever
    // their variant (the server's and the store's caches warming up).
    let mut backups: Vec<Cluster> =
        (0..(rounds as usize + 1) * variants.len()).map(|_| cluster.base_backup()).collect();
    eprintln!("s3 bench: writing {wal_mb} MB of WAL to replay");
    cluster.generate_wal(wal_mb);
    cluster.switch_wal();
    let end = support::format_lsn(cluster.current_lsn());
    cluster.switch_wal();
    let archive = tempfile::Builder::new().prefix("s3-bench-archive").tempdir_in("/tmp").expect("tempdir");
    let url = s3.url("restore");
    let mut cmd = receive(&cluster, s3);
    cmd.arg("-D").arg(archive.path()).args(["-S", "s3_restore", "-n", "-E", &end, "--upload", &url]);
    cmd.args(["--upload-wait", "600"]).args(compress_args());
    measure(&mut cmd, &[0]);
    open_to_all(archive.path());
    Command::new("sync").status().expect("sync");
    let walkeeper = walkeeper_bin();
    let env: Vec<String> = s3.env().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut times = vec![Vec::new(); variants.len()];
    let mut store_cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for r in 0..=rounds {
        for k in 0..variants.len() {
            let v = (k + r as usize) % variants.len();
            let command = match v {
                0 => format!(
                    "restore_command = '{} restore -D {} %f %p'",
                    walkeeper.display(),
                    archive.path().display()
                ),
                _ => format!(
                    "restore_command = 'env {} {} restore -D {url} %f %p'",
                    env.join(" "),
                    walkeeper.display()
                ),
            };
            let mut backup = backups.pop().expect("one backup per run");
            s3.set_nice(if v == niced { 19 } else { 0 });
            let store_before = s3.cpu_seconds();
            let started = Instant::now();
            backup.start_recovery(&[&command]);
            backup.wait_promoted();
            let secs = started.elapsed().as_secs_f64();
            let store = s3.cpu_seconds() - store_before;
            s3.set_nice(0);
            if std::env::var("S3_DEBUG").is_ok() {
                eprintln!("{}", backup.server_log());
            }
            let warm_up = if r == 0 { " (warm-up, not counted)" } else { "" };
            eprintln!(
                "s3 bench: replay with {} round {r}{warm_up}: {secs:.2}s, store {store:.2}s cpu",
                variants[v]
            );
            if r > 0 {
                times[v].push(secs);
                store_cpu[v].push(store);
            }
        }
    }
    let medians: Vec<f64> = times.iter().map(|t| median(t.clone())).collect();
    report.push_str(&format!(
        "\n### Point-in-time recovery replaying {wal_mb} MB of WAL{}, {rounds} rounds\n\n\
         Time from starting the recovering server (a base backup without WAL) to the end of recovery.\n\n\
         | restore_command | replay s (median) | ratio to the local archive | SeaweedFS CPU s (median) |\n\
         |---|---|---|---|\n",
        compress_label(),
    ));
    for (v, label) in variants.iter().enumerate() {
        let store = median(store_cpu[v].clone());
        report.push_str(&format!(
            "| `{label}` | {:.2} | {:.2} | {store:.2} |\n",
            medians[v],
            medians[v] / medians[0]
        ));
    }
}

fn main() {
    if !benchmarking("s3") {
        return;
    }
    let Some(s3) = S3Cluster::start() else { return };
    let phases = std::env::var("S3_PHASES").unwrap_or_else(|_| "catchup,restore".into());
    let mut report = format!(
        "## Off-site: walkeeper with and without S3 upload\n\nMachine: {} cores, PostgreSQL 15 (Debian), SeaweedFS \
         (master, 2 volume servers, replication 001, filer with S3) on the same machine, walkeeper {} release build.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        env!("CARGO_PKG_VERSION")
    );
    if phases.contains("catchup") {
        catchup(&s3, &mut report);
    }
    if phases.contains("restore") {
        restore(&s3, &mut report);
    }
    publish_report(&report, "S3_OUT");
}
