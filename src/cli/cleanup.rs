//! `walkeeper cleanup -D DIR|s3://BUCKET/PREFIX [-n] [-b] OLDEST_KEPT`: pg_archivecleanup for a walkeeper
//! archive (see [`crate::archive::cleanup`]; in a bucket only complete objects are removed, without a
//! lock). Exit codes as pg_archivecleanup's: 2 for an invalid file name or a missing archive, 1 when a
//! removal fails.

use crate::archive::cleanup::{plan, remove};
use crate::archive::lock::ArchiveLock;
use crate::archive::store;
use crate::cli::{Exit, Prog};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Exit code of a usage error, as pg_archivecleanup's.
pub const EXIT_USAGE: i32 = 2;

#[derive(Args, Debug, Clone)]
pub struct CleanupArgs {
    /// the walkeeper archive: a directory or s3://BUCKET/PREFIX
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,
    /// dry run: print the files that would be removed, remove nothing
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// also remove backup history files (as pg_archivecleanup -b)
    #[arg(short = 'b', long = "clean-backup-history")]
    pub clean_backup_history: bool,
    /// oldest WAL file to keep: a segment name (compression/.partial suffix allowed) or a .backup file name
    #[arg(value_name = "OLDEST_KEPT")]
    pub oldest_kept: String,
}

pub fn run(args: CleanupArgs, prog: &Prog) -> Result<(), Exit> {
    let fail = |e: crate::archive::cleanup::CleanupError| Exit {
        code: e.exit_code(),
        message: format!("{}: error: {e}", prog.log_name()),
    };
    let store = store::open_path(&args.directory).map_err(|e| fail(e.into()))?;
    // One writer per directory archive (a bucket has no lock). A dry run removes nothing and does not lock;
    // a missing archive is left to `plan` to report (exit 2, as pg_archivecleanup).
    let _lock = match store.local_dir().filter(|dir| !args.dry_run && dir.is_dir()) {
        Some(dir) => Some(ArchiveLock::acquire(dir).map_err(|e| Exit::error(prog, &e.to_string()))?),
        None => None,
    };
    let plan = plan(&*store, &args.oldest_kept, args.clean_backup_history).map_err(fail)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        for f in &plan.files {
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(out, "{}", store.location_of(f));
        }
        return Ok(());
    }
    remove(&*store, &plan).map_err(fail)?;
    for f in &plan.files {
        tracing::info!("removed \"{}\"", store.location_of(f));
    }
    Ok(())
}
