//! `walkeeper service --config FILE`: run the archiving service (see `crate::service`); `--check` only
//! validates the file; `--health-check URL` is the container health check (GET, exit 0 on 200).

use crate::cli::{Exit, Prog};
use crate::conn::conninfo::process_env;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// the service's configuration file (TOML; see docs/service.md)
    #[arg(short = 'c', long = "config", value_name = "FILE", required_unless_present = "health_check")]
    pub config: Option<PathBuf>,
    /// validate the configuration file, print a summary and exit (0: valid, 1: not)
    #[arg(long = "check", requires = "config")]
    pub check: bool,
    /// GET this URL (e.g. http://127.0.0.1:9187/health) and exit 0 if the answer is 200, else 1
    #[arg(long = "health-check", value_name = "URL", conflicts_with_all = ["config", "check"])]
    pub health_check: Option<String>,
}

pub fn run(args: ServiceArgs, prog: &Prog) -> Result<(), Exit> {
    if let Some(url) = &args.health_check {
        return match crate::cli::block_on(crate::service::http::get(url)) {
            Ok((200, _)) => Ok(()),
            Ok((code, _)) => Err(Exit::error(prog, &format!("{url} answered {code}"))),
            Err(e) => Err(Exit::error(prog, &e)),
        };
    }
    let Some(file) = &args.config else {
        return Err(crate::cli::usage_error(prog, "missing required argument: -c/--config FILE"));
    };
    if args.check {
        let config = crate::service::config::load(file, &process_env)
            .map_err(|e| Exit::error(prog, &e.to_string()))?;
        config.log_warnings();
        crate::outln!(
            "{}: valid; {} source(s), listening on {}",
            file.display(),
            config.sources.len(),
            config.listen
        );
        for s in &config.sources {
            crate::outln!("  {}: {}", s.name, s.directory().display());
        }
        return Ok(());
    }
    crate::service::run(file).map_err(|e| Exit::error(prog, &e))
}
