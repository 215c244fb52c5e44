//! `walkeeper restore -D DIR %f %p`: PostgreSQL's `restore_command`, served from a walkeeper archive.
//!
//! Exit codes: 0 served; 1 not in the archive, nothing printed (the end of archive recovery); 2 an error,
//! reported on stderr (missing archive or destination directory, read error, corrupt or truncated file), or
//! 126 with `--fatal-errors`; 3 invalid invocation (options, a `%f` that is not a WAL, history or backup
//! history file name). See
//! [`crate::archive::restore`] for the checks and [`crate::archive::prefetch`] for the prefetch worker.

use crate::archive::prefetch::{self, Spool};
use crate::archive::restore::{self, parse_request, Request, RestoreError, RestoreOptions};
use crate::cli::{Exit, Prog};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// the walkeeper archive directory (where `walkeeper receive -D` writes)
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,
    /// serve a segment that exists only as the newest .partial of its timeline (disaster recovery)
    #[arg(long = "partial")]
    pub partial: bool,
    /// segments to fetch and decompress ahead in the background (0: no prefetch)
    #[arg(long = "prefetch", value_name = "N", default_value_t = prefetch::DEFAULT_DEPTH)]
    pub prefetch: usize,
    /// spool directory for prefetched segments (default: .walkeeper-prefetch next to %p, in pg_wal)
    #[arg(long = "spool", value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// exit with 126 instead of 2 on errors: PostgreSQL then stops recovery (FATAL) instead of taking the
    /// error for the end of the archive
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

fn fail(prog: &Prog, e: &RestoreError) -> Exit {
    match e {
        RestoreError::NotFound(_) => Exit { code: e.exit_code(), message: String::new() },
        _ => Exit { code: e.exit_code(), message: format!("{}: error: {e}", prog.log_name()) },
    }
}

fn usage(prog: &Prog, msg: &str) -> Exit {
    crate::cli::usage_error(prog, msg)
}

pub fn run(args: RestoreArgs, prog: &Prog) -> Result<(), Exit> {
    let fatal = args.fatal_errors;
    serve(args, prog).map_err(|mut e| {
        if fatal && e.code == restore::EXIT_ERROR {
            e.code = restore::EXIT_FATAL;
        }
        e
    })
}

fn serve(args: RestoreArgs, prog: &Prog) -> Result<(), Exit> {
    if args.prefetch_worker {
        let Some(spool_dir) = &args.spool else { return Err(usage(prog, "--prefetch-worker needs --spool")) };
        let spool = Spool::open(spool_dir, &args.directory)
            .map_err(|e| Exit { code: 2, message: format!("{}: error: spool: {e}", prog.log_name()) })?;
        let idle = Duration::from_millis(args.prefetch_idle_ms);
        return prefetch::run_worker(&spool, args.prefetch.max(1), idle).map_err(|e| fail(prog, &e));
    }
    let (Some(file), Some(dest)) = (args.file.as_deref(), args.path.as_deref()) else {
        return Err(usage(prog, "needs the file name (%f) and the destination path (%p)"));
    };
    let request = parse_request(file).map_err(|e| fail(prog, &e))?;
    restore::check_archive(&args.directory).map_err(|e| fail(prog, &e))?;
    restore::check_destination(dest).map_err(|e| fail(prog, &e))?;
    let Request::Segment { name } = &request else {
        let opts = RestoreOptions { partial: args.partial };
        return restore::restore(&args.directory, file, dest, &opts).map(drop).map_err(|e| fail(prog, &e));
    };
    let spool = (args.prefetch > 0)
        .then(|| {
            let dir = args.spool.clone().unwrap_or_else(|| prefetch::default_spool(dest));
            Spool::open(&dir, &args.directory).ok()
        })
        .flatten();
    let served = match spool.as_ref().and_then(|s| s.take(name, dest)) {
        Some(r) => {
            tracing::info!("restored \"{name}\" from the prefetch spool");
            r
        }
        None => {
            let opts = RestoreOptions { partial: args.partial };
            let r = restore::restore(&args.directory, file, dest, &opts).map_err(|e| fail(prog, &e))?;
            tracing::info!("restored \"{name}\" from \"{}\"", r.source.display());
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
