//! `walkeeper restore -D DIR|s3://BUCKET/PREFIX %f %p`: PostgreSQL's `restore_command`, served from a
//! walkeeper archive (a directory, or a bucket: credentials from the AWS environment, see docs/s3.md).
//!
//! Exit codes: 0 served; 1 not in the archive, nothing printed (the end of archive recovery); an error is
//! one line on stderr and exits 126 in archive recovery (`recovery.signal` in the working directory, which
//! is the data directory), 1 in standby mode (`standby.signal`), 2 run by hand, 126 with `--fatal-errors`;
//! 3 invalid invocation. See [`crate::archive::restore`] for the checks and the exit code rule, and
//! [`crate::archive::prefetch`] for the prefetch worker.

use crate::archive::prefetch::{self, Spool};
use crate::archive::restore::{self, parse_request, Mode, Request, RestoreError, RestoreOptions};
use crate::archive::store;
use crate::cli::{Exit, Prog};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The exit codes, for `restore --help`.
const EXIT_CODES: &str = "Exit codes: 0 served; 1 not in the archive (nothing printed). An error (missing \
archive, unreadable, damaged or foreign file: every segment is checked record by record before it is served) \
prints one line and exits 126 in archive recovery (recovery.signal in the working directory, the data \
directory PostgreSQL runs restore_command in), which stops recovery instead of ending it early; 1 in standby \
mode (standby.signal), so the standby retries and can fall back to streaming; 2 when run by hand; 126 with \
--fatal-errors. 3: invalid invocation.";

#[derive(Args, Debug, Clone)]
#[command(after_help = EXIT_CODES)]
pub struct RestoreArgs {
    /// the walkeeper archive: the directory `walkeeper receive -D` writes, or s3://BUCKET/PREFIX it uploads to
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,
    /// also serve the .partial files at the end of a timeline (after a disaster: every byte received)
    #[arg(long = "partial")]
    pub partial: bool,
    /// segments to fetch and decompress ahead in the background (0: no prefetch)
    #[arg(long = "prefetch", value_name = "N", default_value_t = prefetch::DEFAULT_DEPTH)]
    pub prefetch: usize,
    /// spool directory for prefetched segments (default: .walkeeper-prefetch next to %p, in pg_wal)
    #[arg(long = "spool", value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// exit with 126 on every error, also in standby mode and run by hand: PostgreSQL then stops (FATAL)
    #[arg(long = "fatal-errors")]
    pub fatal_errors: bool,
    /// the prefetch worker exits after this many milliseconds without a new segment served
    #[arg(long = "prefetch-idle-ms", value_name = "MS", default_value_t = 30_000, hide = true)]
    pub prefetch_idle_ms: u64,
    /// run as the background prefetch worker (started by restore itself)
    #[arg(long = "prefetch-worker", hide = true)]
    pub prefetch_worker: bool,
    /// the file PostgreSQL asks for (%f)
    #[arg(value_name = "FILE", required = true)]
    pub file: Option<String>,
    /// where to put it (%p)
    #[arg(value_name = "PATH", required = true)]
    pub path: Option<PathBuf>,
}

/// How errors exit (see [`restore::exit_code`]).
#[derive(Clone, Copy)]
struct Failing<'a> {
    prog: &'a Prog,
    mode: Mode,
    fatal_errors: bool,
}

impl Failing<'_> {
    fn exit(&self, e: RestoreError) -> Exit {
        let code = restore::exit_code(&e, self.mode, self.fatal_errors);
        match e {
            RestoreError::NotFound(_) => Exit { code, message: String::new() },
            _ => Exit { code, message: format!("{}: error: {e}", self.prog.log_name()) },
        }
    }
}

fn usage(prog: &Prog, msg: &str) -> Exit {
    crate::cli::usage_error(prog, msg)
}

pub fn run(args: RestoreArgs, prog: &Prog) -> Result<(), Exit> {
    // PostgreSQL runs restore_command in the data directory.
    let data_dir = Path::new(".");
    let mode = Mode::of_data_directory(data_dir);
    let failing = Failing { prog, mode, fatal_errors: args.fatal_errors };
    let store = store::open_path(&args.directory).map_err(|e| failing.exit(RestoreError::Store(e)))?;
    let store = &*store;
    if args.prefetch_worker {
        let Some(spool_dir) = &args.spool else { return Err(usage(prog, "--prefetch-worker needs --spool")) };
        let spool = Spool::open(spool_dir, store)
            .map_err(|e| Exit { code: 2, message: format!("{}: error: spool: {e}", prog.log_name()) })?;
        let idle = Duration::from_millis(args.prefetch_idle_ms);
        return prefetch::run_worker(&spool, store, args.prefetch.max(1), idle).map_err(|e| failing.exit(e));
    }
    let (Some(file), Some(dest)) = (args.file.as_deref(), args.path.as_deref()) else {
        return Err(usage(prog, "needs the file name (%f) and the destination path (%p)"));
    };
    let request = parse_request(file).map_err(|e| failing.exit(e))?;
    restore::check_archive(store).map_err(|e| failing.exit(e))?;
    restore::check_destination(dest).map_err(|e| failing.exit(e))?;
    let opts = RestoreOptions {
        partial: args.partial,
        system_id: (mode != Mode::ByHand).then(|| restore::data_directory_system_id(data_dir)).flatten(),
    };
    let Request::Segment { name } = &request else {
        return restore::restore(store, file, dest, &opts).map(drop).map_err(|e| failing.exit(e));
    };
    let spool = (args.prefetch > 0)
        .then(|| {
            let dir = args.spool.clone().unwrap_or_else(|| prefetch::default_spool(dest));
            Spool::open(&dir, store).ok()
        })
        .flatten();
    if let Some(spool) = &spool {
        spool.wait_for_fetch(name, prefetch::WAIT_FOR_FETCH);
    }
    let served = match spool.as_ref().and_then(|s| s.take(store, name, dest, opts.system_id)) {
        Some(r) => {
            tracing::info!("restored \"{name}\" from the prefetch spool");
            r
        }
        None => {
            let r = restore::restore(store, file, dest, &opts).map_err(|e| failing.exit(e))?;
            tracing::info!("restored \"{name}\" from \"{}\"", r.source);
            r
        }
    };
    if let (Some(spool), Some(size), false) = (&spool, served.segment_size, served.partial) {
        start_prefetch(spool, name, size, args.prefetch, Duration::from_millis(args.prefetch_idle_ms));
    }
    Ok(())
}

/// Tell the worker what was served and make sure one runs. Failures only cost speed: ignored.
fn start_prefetch(spool: &Spool, name: &str, segment_size: u32, depth: usize, idle: Duration) {
    if spool.request(name, segment_size).is_err() {
        return;
    }
    if let Ok(exe) = std::env::current_exe() {
        let _ = spool.ensure_worker(Path::new(&exe), depth, idle);
    }
}
