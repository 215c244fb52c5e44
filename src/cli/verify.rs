//! `walkeeper verify -D DIR|s3://BUCKET/PREFIX [--json]`: prove that a WAL archive at rest is whole (see
//! `archive::verify`).
//!
//! Exit status: 0 when the archive is whole; 1 when a problem was found (each printed with file, LSN and
//! cause); 2 when verification could not be done (usage error, unreadable directory or file).

use crate::archive::store;
use crate::archive::verify::verify;
use crate::cli::{Exit, Prog};
use clap::Args;
use std::path::PathBuf;

/// Exit status for usage and I/O errors (the archive could not be verified).
pub const EXIT_CANNOT_VERIFY: i32 = 2;

#[derive(Args, Debug, Clone)]
#[command(after_help = "Exit status: 0 when the archive is whole, 1 when a problem was found, \
                        2 on a usage error or when a file or the directory cannot be read.")]
pub struct VerifyArgs {
    /// WAL archive to verify: a directory or s3://BUCKET/PREFIX (segments of any compression, .partial files,
    /// history files)
    #[arg(short = 'D', long = "directory", value_name = "DIR", required = true)]
    pub directory: PathBuf,
    /// print one JSON document (summary and problems) instead of text
    #[arg(long = "json")]
    pub json: bool,
}

pub fn run(args: VerifyArgs, prog: &Prog) -> Result<(), Exit> {
    let report = match store::open_path(&args.directory).and_then(|store| verify(&*store)) {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                let doc = serde_json::json!({
                    "whole": false,
                    "error": e.to_string(),
                    "summary": null,
                    "problems": [],
                });
                crate::outln!("{doc}");
            }
            return Err(Exit {
                code: EXIT_CANNOT_VERIFY,
                message: format!("{}: error: {e}", prog.log_name()),
            });
        }
    };
    if args.json {
        let doc = serde_json::to_string_pretty(&report)
            .map_err(|e| Exit { code: EXIT_CANNOT_VERIFY, message: format!("walkeeper: error: {e}") })?;
        crate::outln!("{doc}");
    } else {
        crate::cli::print_stdout(&report.to_text());
    }
    match report.exit_code() {
        0 => Ok(()),
        code => Err(Exit { code, message: String::new() }),
    }
}
