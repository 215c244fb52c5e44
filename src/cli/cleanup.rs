//! `walkeeper cleanup -D DIR|s3://BUCKET/PREFIX [-n] [-b] OLDEST_KEPT`: pg_archivecleanup for a walkeeper
//! archive (see [`crate::archive::cleanup`]; in a bucket only complete objects are removed);
//! `walkeeper cleanup -D DIR [-n] --keep-backups N [--keep-min-age AGE]`: retention by the base backups found
//! in the WAL, once (see [`crate::archive::retention`]). Exit codes as pg_archivecleanup's: 2 for an invalid
//! file name or a missing archive, 1 when a removal fails.
//!
//! Both remove files, so both take a directory's lock (not for a dry run; a bucket has none). A directory
//! that `walkeeper service` holds is refused with a pointer to the service's own retention (`keep_backups`).

use crate::archive::cleanup::{plan, remove, CleanupError};
use crate::archive::lock::{ArchiveLock, LockError};
use crate::archive::retention::{self, Policy};
use crate::archive::store;
use crate::cli::{Exit, Prog};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

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
    #[arg(short = 'b', long = "clean-backup-history", conflicts_with = "keep_backups")]
    pub clean_backup_history: bool,
    /// keep the WAL of the N newest base backups found in the WAL, remove older segments (instead of
    /// OLDEST_KEPT)
    #[arg(long = "keep-backups", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_backups: Option<u32>,
    /// with --keep-backups: keep segment files younger than AGE too (a number with s, m, h, d or w: 7d)
    #[arg(long = "keep-min-age", value_name = "AGE", value_parser = retention::parse_age)]
    pub keep_min_age: Option<Duration>,
    /// oldest WAL file to keep: a segment name (compression/.partial suffix allowed) or a .backup file name
    #[arg(
        value_name = "OLDEST_KEPT",
        required_unless_present = "keep_backups",
        conflicts_with = "keep_backups"
    )]
    pub oldest_kept: Option<String>,
}

pub fn run(args: CleanupArgs, prog: &Prog) -> Result<(), Exit> {
    if args.keep_min_age.is_some() && args.keep_backups.is_none() {
        // (clap's `requires` is not checked next to the optional positional)
        return Err(crate::cli::usage_error(
            prog,
            "--keep-min-age applies to --keep-backups, which is not given",
        ));
    }
    let fail =
        |e: CleanupError| Exit { code: e.exit_code(), message: format!("{}: error: {e}", prog.log_name()) };
    let store = store::open_path(&args.directory).map_err(|e| fail(e.into()))?;
    let store = &*store;
    // One writer per directory archive (a bucket has no lock). A dry run removes nothing and does not lock; a
    // missing archive is left to the planning to report (exit 2, as pg_archivecleanup).
    let _lock = match store.local_dir().is_some_and(|dir| !args.dry_run && dir.is_dir()) {
        true => Some(lock(&args, prog)?),
        false => None,
    };
    let files = match (args.keep_backups, &args.oldest_kept) {
        (Some(keep_backups), _) => {
            let policy =
                Policy { keep_backups, keep_min_age: args.keep_min_age.unwrap_or_default(), floor: None };
            let outcome = retention::run(store, &policy, args.dry_run, SystemTime::now()).map_err(fail)?;
            for w in &outcome.found.warnings {
                tracing::warn!("{w}");
            }
            match outcome.plan.keep_point {
                Some(_) => tracing::info!("{}", outcome.plan.summary()),
                None => tracing::warn!("{}", outcome.plan.summary()),
            }
            outcome.plan.remove
        }
        (None, Some(oldest_kept)) => {
            let plan = plan(store, oldest_kept, args.clean_backup_history).map_err(fail)?;
            for w in &plan.warnings {
                tracing::warn!("{w}");
            }
            if !args.dry_run {
                remove(store, &plan).map_err(fail)?;
            }
            plan.files
        }
        (None, None) => unreachable!("clap requires OLDEST_KEPT without --keep-backups"),
    };
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        for f in &files {
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(out, "{}", store.location_of(f));
        }
        return Ok(());
    }
    for f in &files {
        tracing::info!("removed \"{}\"", store.location_of(f));
    }
    Ok(())
}

/// The archive's lock; a directory held by `walkeeper service` is refused in the service's terms.
fn lock(args: &CleanupArgs, prog: &Prog) -> Result<ArchiveLock, Exit> {
    ArchiveLock::acquire(&args.directory).map_err(|e| match &e {
        LockError::InUse { holder, .. } if held_by_service(holder) => Exit::error(
            prog,
            &format!(
                "archive \"{}\" is held by walkeeper service ({holder}): the service removes old WAL there itself, set keep_backups (and keep_min_age) for this source in its configuration",
                args.directory.display()
            ),
        ),
        _ => Exit::error(prog, &e.to_string()),
    })
}

/// True when the holder named by the lock (`pid N: COMMAND LINE`, as `archive::lock` writes it) runs
/// `walkeeper service`: the first word after the program and its global options is `service`.
fn held_by_service(holder: &str) -> bool {
    let Some((_, command)) = holder.split_once(": ") else { return false };
    let mut words = command.split_whitespace().skip(1);
    while let Some(word) = words.next() {
        match word {
            "--log-format" => {
                words.next();
            }
            w if w.starts_with("--log-format=") || w == "--verbose" => {}
            w if w.len() > 1 && w.starts_with('-') && w[1..].bytes().all(|b| b == b'v') => {}
            w => return w == "service",
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_recognised_by_its_command() {
        for (holder, service) in [
            ("pid 12: walkeeper service --config /etc/walkeeper.toml", true),
            ("pid 12: walkeeper -v --log-format json service --config x", true),
            ("pid 12: walkeeper --log-format=json -vv service", true),
            ("pid 12: walkeeper receive -D /archive -h db", false),
            ("pid 12: pg_receivewal -D service", false),
            ("pid 12: walkeeper cleanup -D service 000000010000000000000001", false),
            ("pid 12", false),
            ("it has not recorded its process id yet", false),
        ] {
            assert_eq!(held_by_service(holder), service, "{holder}");
        }
    }
}
