//! End-to-end comparison of walkeeper with pg_receivewal on the same PostgreSQL 15 server, in one run,
//! alternating the two tools (A B A B) so drift on a noisy machine hits both alike. Reports medians and
//! walkeeper/pg_receivewal ratios; asserts nothing (speed is reported, never a test failure).
//!
//! `cargo bench --bench e2e` — knobs (environment):
//!   E2E_WAL_MB        backlog size for the catch-up phase (default 1536)
//!   E2E_ROUNDS        rounds per measurement (default 3)
//!   E2E_PGBENCH_SECS  duration of each pgbench run (default 20)
//!   E2E_PHASES        comma list of catchup,sync,restore (default all three)
//!   E2E_RESTORE_MB    WAL replayed in the restore phase (default 512)
//!   E2E_OUT           also write the markdown report to this file

#[path = "../tests/support/mod.rs"]
mod support;

mod common;
use common::{benchmarking, env_u64, measure, median, publish_report, report_header, walkeeper_bin, Cost};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{pg_tool, Cluster};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    PgReceivewal,
    Walkeeper,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::PgReceivewal => "pg_receivewal",
            Tool::Walkeeper => "walkeeper",
        }
    }

    fn command(self, cluster: &Cluster) -> Command {
        let mut c = match self {
            Tool::PgReceivewal => Command::new(pg_tool("pg_receivewal")),
            Tool::Walkeeper => {
                let mut c = Command::new(walkeeper_bin());
                c.arg("receive");
                c
            }
        };
        c.args(["-h", cluster.host(), "-p", &cluster.port().to_string(), "-U", "postgres", "-w"]);
        c
    }
}

fn catchup(report: &mut String) {
    let wal_mb = env_u64("E2E_WAL_MB", 1536);
    let rounds = env_u64("E2E_ROUNDS", 3);
    let modes: [(&str, &[&str]); 3] =
        [("default", &[]), ("--synchronous", &["--synchronous"]), ("--no-sync", &["--no-sync"])];
    let cluster = Cluster::builder()
        .conf(&format!("wal_keep_size = '{}MB'", wal_mb * 2))
        .conf("max_replication_slots = 64")
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .start();
    // One slot per run, all reserved before the backlog is written, so every run starts at the same LSN.
    let tools = [Tool::PgReceivewal, Tool::Walkeeper];
    let mut slots = Vec::new();
    for (m, _) in modes.iter().enumerate() {
        for r in 0..rounds {
            for t in tools {
                let slot = format!("e2e_{}_{}_{}", m, r, t.name());
                cluster.psql(&format!("SELECT pg_create_physical_replication_slot('{slot}', true)"));
                slots.push(slot);
            }
        }
    }
    eprintln!("e2e: writing {wal_mb} MB of WAL");
    cluster.generate_wal(wal_mb);
    cluster.switch_wal();
    let end = support::format_lsn(cluster.current_lsn());
    // `-E` stops once WAL *beyond* the end position arrives: write some now, or the first run alone
    // would wait for background activity to produce it.
    cluster.switch_wal();
    eprintln!("e2e: backlog ready, streaming up to {end}");
    report.push_str(&format!(
        "\n### Catch-up: {wal_mb} MB of WAL backlog, `-n -E {end}`, {rounds} rounds A B A B\n\n\
         | mode | tool | wall s (median) | CPU s (median) | peak RSS MB (max) |\n|---|---|---|---|---|\n"
    ));
    let mut ratios = String::new();
    for (m, (mode, extra)) in modes.iter().enumerate() {
        let mut costs: Vec<Vec<Cost>> = vec![Vec::new(), Vec::new()];
        for r in 0..rounds {
            for (i, t) in tools.iter().enumerate() {
                let dir = tempfile::tempdir().expect("tempdir");
                let slot = format!("e2e_{}_{}_{}", m, r, t.name());
                let mut cmd = t.command(&cluster);
                cmd.args(["-D", &dir.path().to_string_lossy(), "-S", &slot, "-n", "-E", &end]).args(*extra);
                let cost = measure(&mut cmd, &[0]);
                eprintln!("e2e: {mode} {} round {r}: {:.2}s wall, {:.2}s cpu", t.name(), cost.wall, cost.cpu);
                costs[i].push(cost);
                cluster.psql(&format!("SELECT pg_drop_replication_slot('{slot}')"));
            }
        }
        let stat = |c: &Vec<Cost>| {
            (
                median(c.iter().map(|x| x.wall).collect()),
                median(c.iter().map(|x| x.cpu).collect()),
                c.iter().map(|x| x.max_rss_kb).max().unwrap_or(0) as f64 / 1024.0,
            )
        };
        let (pw, pc, pr) = stat(&costs[0]);
        let (ww, wc, wr) = stat(&costs[1]);
        report.push_str(&format!("| {mode} | pg_receivewal | {pw:.2} | {pc:.2} | {pr:.1} |\n"));
        report.push_str(&format!("| {mode} | walkeeper | {ww:.2} | {wc:.2} | {wr:.1} |\n"));
        ratios.push_str(&format!(
            "| {mode} | {:.2} | {:.2} | {:.2} |\n",
            ww / pw,
            wc / pc.max(1e-9),
            wr / pr.max(1e-9)
        ));
    }
    report.push_str(
        "\n| mode | wall ratio (walkeeper/pg_receivewal) | CPU ratio | RSS ratio |\n|---|---|---|---|\n",
    );
    report.push_str(&ratios);
}

/// Parse pgbench's "tps = N" and "latency average = N ms".
fn pgbench_numbers(out: &str) -> (f64, f64) {
    let find = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (find("tps = "), find("latency average = "))
}

/// The receiver of one synchronous-standby run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncReceiver {
    None,
    Tool(Tool),
    /// A replication client (walkeeper's protocol library, in this process) that acknowledges every byte
    /// as flushed the moment it arrives, writing nothing: unsafe, and the ceiling any receiver can reach.
    AckOnly,
}

impl SyncReceiver {
    fn application_name(self) -> &'static str {
        match self {
            SyncReceiver::None => "",
            SyncReceiver::Tool(t) => t.name(),
            SyncReceiver::AckOnly => "ack_only",
        }
    }
}

/// The ack-only receiver: streams from the server's current position and reports write = flush = received
/// after each batch, until `stop` fires.
fn ack_only_receiver(port: u16, stop: tokio::sync::oneshot::Receiver<()>) -> std::thread::JoinHandle<()> {
    use walkeeper::conn::{connect, ConnParams, ConnectOptions, Endpoint, PasswordPrompt};
    use walkeeper::protocol::messages::Backend;
    use walkeeper::protocol::replication::{self as repl, StreamMessage};
    use walkeeper::wal::Lsn;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let params = ConnParams {
                endpoints: vec![Endpoint::Tcp { host: "127.0.0.1".into(), hostaddr: None, port }],
                user: "postgres".into(),
                application_name: Some("ack_only".into()),
                ..ConnParams::default()
            };
            let opts = ConnectOptions {
                prompt: PasswordPrompt::Never,
                replication: true,
                ..ConnectOptions::default()
            };
            let mut conn = connect(&params, &opts).await.expect("ack-only receiver connects");
            let info = walkeeper::stream::session::identify(&mut conn).await.expect("IDENTIFY_SYSTEM");
            let (id, start) = (&info.identity, info.identity.xlogpos.segment_start(info.segment_size));
            conn.start_copy_both(&repl::start_replication(None, start, id.timeline).unwrap()).await.unwrap();
            let mut received = start;
            let mut stop = stop;
            loop {
                let msg = tokio::select! {
                    _ = &mut stop => break,
                    m = conn.recv() => m.expect("streaming"),
                };
                let mut reply = false;
                let mut next = Some(msg);
                while let Some(msg) = next.take() {
                    if let Backend::CopyData(data) = msg {
                        match repl::parse_stream_message(data).expect("stream message") {
                            StreamMessage::XLogData { start, data, .. } => {
                                received = Lsn(start.0 + data.len() as u64);
                                reply = true;
                            }
                            StreamMessage::Keepalive { reply_requested, .. } => reply |= reply_requested,
                        }
                    }
                    next = futures_util::FutureExt::now_or_never(conn.recv()).map(|m| m.expect("streaming"));
                }
                if reply {
                    let status =
                        repl::standby_status_update(received, received, Lsn(0), repl::now_unix_us(), false);
                    conn.send_copy_data(status).await.expect("status update");
                }
            }
        })
    })
}

fn sync_standby(report: &mut String) {
    let secs = env_u64("E2E_PGBENCH_SECS", 20);
    let rounds = env_u64("E2E_ROUNDS", 3);
    let cluster = Cluster::builder().fsync(true).conf("max_wal_size = '4GB'").start();
    let port = cluster.port().to_string();
    let status = Command::new(pg_tool("pgbench"))
        .args(["-i", "-s", "10", "-q", "-h", cluster.host(), "-p", &port, "-U", "postgres", "postgres"])
        .output()
        .expect("pgbench -i");
    assert!(status.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&status.stderr));
    let variants: [(&str, SyncReceiver); 4] = [
        ("no standby", SyncReceiver::None),
        ("pg_receivewal --synchronous", SyncReceiver::Tool(Tool::PgReceivewal)),
        ("walkeeper --synchronous", SyncReceiver::Tool(Tool::Walkeeper)),
        ("ack-only receiver (writes nothing; the ceiling)", SyncReceiver::AckOnly),
    ];
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
    for r in 0..rounds {
        for (i, (label, receiver)) in variants.iter().enumerate() {
            let dir = tempfile::tempdir().expect("tempdir");
            let name = receiver.application_name();
            cluster.psql(&format!("ALTER SYSTEM SET synchronous_standby_names = '{name}'"));
            cluster.psql("SELECT pg_reload_conf()");
            let mut child = None;
            let mut ack_only = None;
            match receiver {
                SyncReceiver::None => {}
                SyncReceiver::Tool(t) => {
                    let mut cmd = t.command(&cluster);
                    cmd.args(["-D", &dir.path().to_string_lossy(), "--synchronous"]);
                    child = Some(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("receiver"));
                }
                SyncReceiver::AckOnly => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    ack_only = Some((tx, ack_only_receiver(cluster.port(), rx)));
                }
            }
            if *receiver != SyncReceiver::None {
                assert!(
                    support::wait_until(Duration::from_secs(30), || {
                        cluster
                            .psql(&format!(
                                "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' AND sync_state = 'sync'"
                            ))
                            .trim()
                            == "1"
                    }),
                    "{name} never became the synchronous standby"
                );
            }
            let out = Command::new(pg_tool("pgbench"))
                .args(["-n", "-N", "-c", "8", "-j", "2", "-T", &secs.to_string()])
                .args(["-h", cluster.host(), "-p", &port, "-U", "postgres", "postgres"])
                .output()
                .expect("pgbench");
            let text = String::from_utf8_lossy(&out.stdout);
            let numbers = pgbench_numbers(&text);
            eprintln!("e2e: {label} round {r}: {:.0} tps, {:.2} ms", numbers.0, numbers.1);
            results[i].push(numbers);
            if let Some(child) = child.as_mut() {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let _ = child.wait();
            }
            if let Some((tx, thread)) = ack_only {
                let _ = tx.send(());
                thread.join().expect("ack-only receiver");
            }
            cluster.psql("ALTER SYSTEM RESET synchronous_standby_names");
            cluster.psql("SELECT pg_reload_conf()");
        }
    }
    report.push_str(&format!(
        "\n### Synchronous standby: `pgbench -N -c 8 -j 2 -T {secs}` (scale 10, primary fsync on), {rounds} rounds\n\n\
         | receiver | tps (median) | latency ms (median) | tps / no standby |\n|---|---|---|---|\n"
    ));
    let med: Vec<(f64, f64)> = results
        .iter()
        .map(|v| (median(v.iter().map(|x| x.0).collect()), median(v.iter().map(|x| x.1).collect())))
        .collect();
    for ((label, _), (tps, lat)) in variants.iter().zip(&med) {
        report.push_str(&format!("| {label} | {tps:.0} | {lat:.2} | {:.2} |\n", tps / med[0].0));
    }
    report.push_str(&format!(
        "\nwalkeeper / pg_receivewal tps: **{:.2}**; walkeeper / no standby: **{:.2}**; ack-only ceiling / \
         pg_receivewal: {:.2}\n",
        med[2].0 / med[1].0,
        med[2].0 / med[0].0,
        med[3].0 / med[1].0
    ));
}

/// Make a directory tree readable by the server account (archives written by root with mode 0600).
fn open_to_all(dir: &Path) {
    let status = Command::new("chmod").args(["-R", "a+rX"]).arg(dir).status().expect("chmod");
    assert!(status.success(), "chmod -R a+rX {}", dir.display());
}

/// How a restore variant fetches a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// `cp ARCHIVE/%f %p`: what most setups run.
    Cp,
    /// `walkeeper restore` with prefetch (the default).
    Walkeeper,
    /// `mv STAGED/%f %p` from a copy of the archive staged on the same file system before the run: a
    /// restore_command that costs almost nothing, i.e. the floor any restore_command can reach.
    MvFloor,
}

/// Replay of the same archive by a real recovery (base backup + restore_command, no target: replay to the end
/// of the archive, then promote), with `cp`, with `walkeeper restore` (prefetch) on plain and zstd copies,
/// and with the `mv` floor; with the recovering server at `fsync = on` (production) and `fsync = off`.
fn restore(report: &mut String) {
    let wal_mb = env_u64("E2E_RESTORE_MB", 512);
    let rounds = env_u64("E2E_ROUNDS", 3);
    let cluster = Cluster::builder()
        .conf(&format!("wal_keep_size = '{}MB'", wal_mb * 2))
        .conf("max_wal_size = '8GB'")
        .conf("checkpoint_timeout = '1h'")
        .start();
    for slot in ["e2e_plain", "e2e_zstd"] {
        cluster.psql(&format!("SELECT pg_create_physical_replication_slot('{slot}', true)"));
    }
    let variants: [(&str, &str, Fetch); 4] = [
        ("cp (plain)", "plain", Fetch::Cp),
        ("walkeeper restore (plain)", "plain", Fetch::Walkeeper),
        ("walkeeper restore (zstd)", "zstd", Fetch::Walkeeper),
        ("mv of a staged copy (floor)", "plain", Fetch::MvFloor),
    ];
    let fsync_modes = ["on", "off"];
    // One base backup per run, all before the WAL they will replay.
    let runs = rounds as usize * variants.len() * fsync_modes.len();
    let mut backups: Vec<Cluster> = (0..runs).map(|_| cluster.base_backup()).collect();
    eprintln!("e2e: writing {wal_mb} MB of WAL to replay");
    cluster.generate_wal(wal_mb);
    cluster.switch_wal();
    let end = support::format_lsn(cluster.current_lsn());
    cluster.switch_wal();
    let archives = tempfile::Builder::new().prefix("e2e-archive").tempdir_in("/tmp").expect("tempdir");
    for (slot, kind, extra) in [("e2e_plain", "plain", &[][..]), ("e2e_zstd", "zstd", &["-Z", "zstd"][..])] {
        let dir = archives.path().join(kind);
        std::fs::create_dir(&dir).expect("archive dir");
        let mut cmd = Tool::Walkeeper.command(&cluster);
        cmd.args(["-D", &dir.to_string_lossy(), "-S", slot, "-n", "-E", &end]).args(extra);
        measure(&mut cmd, &[0]);
    }
    open_to_all(archives.path());
    // Let the writeback of the WAL just written finish, so that it does not slow down the first run only.
    Command::new("sync").status().expect("sync");
    let walkeeper = walkeeper_bin();
    let staged = archives.path().join("staged");
    // times[fsync mode][variant]
    let mut times: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); variants.len()]; fsync_modes.len()];
    for r in 0..rounds {
        for (m, fsync) in fsync_modes.iter().enumerate() {
            // Rotate the order every round: no variant always runs first (or right after another).
            for k in 0..variants.len() {
                let i = (k + r as usize) % variants.len();
                let (label, kind, fetch) = &variants[i];
                let dir = archives.path().join(kind);
                let command = match fetch {
                    Fetch::Cp => format!("restore_command = 'cp {}/%f %p'", dir.display()),
                    Fetch::Walkeeper => format!(
                        "restore_command = '{} restore -D {} %f %p'",
                        walkeeper.display(),
                        dir.display()
                    ),
                    Fetch::MvFloor => {
                        let _ = std::fs::remove_dir_all(&staged);
                        let status =
                            Command::new("cp").arg("-a").arg(&dir).arg(&staged).status().expect("cp -a");
                        assert!(status.success(), "staging a copy of the archive");
                        // Owned by the server account (mv needs to unlink), and on disk like the archive.
                        let status = Command::new("chown")
                            .args(["-R", "postgres"])
                            .arg(&staged)
                            .status()
                            .expect("chown");
                        assert!(status.success(), "chown the staged archive");
                        Command::new("sync").status().expect("sync");
                        format!("restore_command = 'mv {}/%f %p'", staged.display())
                    }
                };
                let mut backup = backups.pop().expect("one backup per run");
                let fsync_line = format!("fsync = {fsync}");
                let started = Instant::now();
                backup.start_recovery(&[&command, &fsync_line]);
                backup.wait_promoted();
                let secs = started.elapsed().as_secs_f64();
                eprintln!("e2e: replay with {label}, fsync {fsync}, round {r}: {secs:.2}s");
                times[m][i].push(secs);
            }
        }
    }
    report.push_str(&format!(
        "\n### Restore: recovery of a base backup replaying {wal_mb} MB of WAL through restore_command, {rounds} rounds\n\n\
         Time from starting the recovering server to the end of recovery (promoted).\n\n\
         | restore_command | fsync = on: replay s | ratio to cp | fsync = off: replay s | ratio to cp |\n\
         |---|---|---|---|---|\n"
    ));
    let medians: Vec<Vec<f64>> =
        times.iter().map(|per_mode| per_mode.iter().map(|t| median(t.clone())).collect()).collect();
    for (i, (label, _, _)) in variants.iter().enumerate() {
        let (on, off) = (medians[0][i], medians[1][i]);
        report.push_str(&format!(
            "| {label} | {on:.2} | {:.2} | {off:.2} | {:.2} |\n",
            on / medians[0][0],
            off / medians[1][0]
        ));
    }
}

fn main() {
    if !benchmarking("e2e") {
        return;
    }
    let phases = std::env::var("E2E_PHASES").unwrap_or_else(|_| "catchup,sync,restore".into());
    let mut report = report_header("walkeeper vs pg_receivewal, end to end");
    if phases.contains("catchup") {
        catchup(&mut report);
    }
    if phases.contains("sync") {
        sync_standby(&mut report);
    }
    if phases.contains("restore") {
        restore(&mut report);
    }
    publish_report(&report, "E2E_OUT");
}
