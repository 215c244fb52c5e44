//! `walkeeper status -D DIR|s3://BUCKET/PREFIX [--json]`: what the archive holds (see
//! [`crate::archive::status`]).

use crate::archive::status::{render_text, status};
use crate::archive::store;
use crate::cli::{Exit, Prog};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// the walkeeper archive: a directory or s3://BUCKET/PREFIX
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,
    /// print one JSON object instead of text
    #[arg(long = "json")]
    pub json: bool,
}

pub fn run(args: StatusArgs, prog: &Prog) -> Result<(), Exit> {
    let s = store::open_path(&args.directory)
        .and_then(|store| status(&*store))
        .map_err(|e| Exit::error(prog, &e.to_string()))?;
    let text = if args.json {
        let json = serde_json::to_string_pretty(&s).map_err(|e| Exit::error(prog, &e.to_string()))?;
        format!("{json}\n")
    } else {
        render_text(&s)
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    Ok(())
}
