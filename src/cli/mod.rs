//! Command-line interface: clap definitions and the glue from arguments to the library. Errors become one
//! line on stderr (`walkeeper: error: ...`, or `pg_receivewal: error: ...` under that name); a usage error
//! adds a hint line and exits with the code of [`usage_exit_code`].

pub mod check;
pub mod cleanup;
pub mod compress;
pub mod demo;
pub mod logging;
pub mod receive;
pub mod restore;
pub mod service;
pub mod status;
pub mod verify;

use crate::conn::conninfo::{self, Sources};
use crate::conn::{ConnParams, ConnectOptions, PasswordPrompt};
use clap::{Args, Parser, Subcommand};

/// How the program was invoked: as `walkeeper <command>` or under pg_receivewal's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prog {
    Walkeeper { command: &'static str },
    PgReceivewal,
}

impl Prog {
    /// The name used in messages and help.
    pub fn display(&self) -> String {
        match self {
            Prog::Walkeeper { command: "" } => "walkeeper".into(),
            Prog::Walkeeper { command } => format!("walkeeper {command}"),
            Prog::PgReceivewal => "pg_receivewal".into(),
        }
    }

    /// The name that prefixes log and error lines.
    pub fn log_name(&self) -> &'static str {
        match self {
            Prog::Walkeeper { .. } => "walkeeper",
            Prog::PgReceivewal => "pg_receivewal",
        }
    }

    pub fn application_name(&self) -> &'static str {
        self.log_name()
    }
}

/// A way out of the program: text for stderr (may be empty) and an exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    pub fn error(prog: &Prog, msg: &str) -> Exit {
        Exit { code: 1, message: format!("{}: error: {msg}", prog.log_name()) }
    }
}

/// The exit code of a usage error (unknown or missing option, bad value) of each command. Commands whose
/// other exit codes mean something to a caller keep usage errors apart from those: `verify` (1: the archive
/// is not whole), `restore` (1: not in the archive, which ends recovery), `cleanup` (pg_archivecleanup's 2).
/// Everything else exits 1, as pg_receivewal does.
pub fn usage_exit_code(command: &str) -> i32 {
    match command {
        "verify" => verify::EXIT_CANNOT_VERIFY,
        "restore" => crate::archive::restore::EXIT_USAGE,
        "cleanup" => cleanup::EXIT_USAGE,
        _ => 1,
    }
}

/// An option error: the message plus pg_receivewal's hint line.
pub fn usage_error(prog: &Prog, msg: &str) -> Exit {
    let command = match prog {
        Prog::Walkeeper { command } => command,
        Prog::PgReceivewal => "receive",
    };
    Exit {
        code: usage_exit_code(command),
        message: format!(
            "{0}: error: {msg}\n{0}: hint: Try \"{1} --help\" for more information.",
            prog.log_name(),
            prog.display()
        ),
    }
}

/// libpq-style connection options shared by every command that talks to a server.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// connection string
    #[arg(short = 'd', long = "dbname", value_name = "CONNSTR")]
    pub dbname: Option<String>,
    /// database server host or socket directory
    #[arg(short = 'h', long = "host", value_name = "HOSTNAME")]
    pub host: Option<String>,
    /// database server port number
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<String>,
    /// connect as specified database user
    #[arg(short = 'U', long = "username", value_name = "NAME")]
    pub username: Option<String>,
    /// never prompt for password
    #[arg(short = 'w', long = "no-password")]
    pub no_password: bool,
    /// force password prompt (should happen automatically)
    #[arg(short = 'W', long = "password")]
    pub password: bool,
}

/// Merge conninfo, options and environment into connection parameters.
pub fn resolve_conn(args: &ConnectionArgs, prog: &Prog) -> Result<ConnParams, Exit> {
    resolve_conn_env(args, prog, &conninfo::process_env)
}

/// [`resolve_conn`] with `target_session_attrs` defaulting to `attrs` when neither the connection string nor
/// `PGTARGETSESSIONATTRS` sets it (`receive --failover` streams from a read-write server unless told otherwise).
pub fn resolve_conn_with_default_attrs(
    args: &ConnectionArgs,
    prog: &Prog,
    attrs: &str,
) -> Result<ConnParams, Exit> {
    resolve_conn_env(args, prog, &conninfo::with_default_target_session_attrs(&conninfo::process_env, attrs))
}

fn resolve_conn_env(
    args: &ConnectionArgs,
    prog: &Prog,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ConnParams, Exit> {
    let sources = Sources {
        conninfo: args.dbname.as_deref(),
        host: args.host.as_deref(),
        port: args.port.as_deref(),
        user: args.username.as_deref(),
        fallback_application_name: Some(prog.application_name()),
    };
    conninfo::resolve(&sources, env).map_err(|e| Exit::error(prog, &e.to_string()))
}

pub fn connect_options(args: &ConnectionArgs) -> ConnectOptions {
    let prompt = if args.no_password {
        PasswordPrompt::Never
    } else if args.password {
        PasswordPrompt::Always
    } else {
        PasswordPrompt::IfNeeded
    };
    ConnectOptions { prompt, ..ConnectOptions::default() }
}

/// Turn SIGINT/SIGTERM into `true` on the channel. The handlers are installed at the call, not when the
/// returned future first runs: a signal right after start (before the first connection) stops cleanly too.
pub fn forward_signals(tx: tokio::sync::watch::Sender<bool>) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "walkeeper",
    version,
    arg_required_else_help = true,
    about = "PostgreSQL WAL receiver and WAL archive",
    long_about = "walkeeper streams WAL from a PostgreSQL server over a replication connection, validates it, \
                  keeps it durable on disk as pg_receivewal does, and serves it back for recovery."
)]
pub struct Cli {
    /// log lines as text (default) or JSON objects, one per line
    #[arg(long = "log-format", global = true, value_name = "FMT", default_value = "text")]
    pub log_format: logging::LogFormat,
    /// output verbose messages (repeat for debug output)
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream WAL into a directory: pg_receivewal's job, with its options (see `walkeeper receive -?`)
    #[command(disable_help_flag = true, disable_version_flag = true)]
    Receive(Box<receive::ReceiveCommand>),
    /// Connect as a replication client and report whether streaming can start
    #[command(disable_help_flag = true)]
    Check(check::CheckArgs),
    /// Run walkeeper against a throwaway local PostgreSQL and show the archive it makes
    Demo(demo::DemoArgs),
    /// Serve a file of the archive to PostgreSQL: restore_command = 'walkeeper restore -D DIR %f %p'
    Restore(restore::RestoreArgs),
    /// Show what the archive holds: timelines, segments, gaps, the open .partial, age of the newest WAL, base
    /// backups
    Status(status::StatusArgs),
    /// Remove segments older than a given one (pg_archivecleanup semantics) or than the N newest base backups
    Cleanup(cleanup::CleanupArgs),
    /// Check that a WAL archive directory is whole: continuity, timelines, every record's CRC
    Verify(verify::VerifyArgs),
    /// Archive many servers in one long-running process, with /metrics, /health and /status (see --config)
    Service(service::ServiceArgs),
}

/// The subcommand names, for `Prog` before a command line has parsed (usage-error hints).
pub const SUBCOMMANDS: [&str; 8] =
    ["receive", "check", "demo", "restore", "status", "cleanup", "verify", "service"];

impl Command {
    /// The name it is invoked by.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Receive(_) => "receive",
            Command::Check(_) => "check",
            Command::Demo(_) => "demo",
            Command::Restore(_) => "restore",
            Command::Status(_) => "status",
            Command::Cleanup(_) => "cleanup",
            Command::Verify(_) => "verify",
            Command::Service(_) => "service",
        }
    }
}

/// Write to stdout, ignoring a closed pipe (`walkeeper --help | head` must not panic).
pub fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `println!` that ignores a closed pipe.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Run a future on a single-threaded runtime: one replication connection needs no more.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime: the OS refused an epoll instance or a timer")
        .block_on(future)
}

/// pg_receivewal's `--version` line; scripts that parse "(PostgreSQL) NN" keep working.
pub fn version_line(prog: &Prog) -> String {
    format!(
        "{} (PostgreSQL) {} (walkeeper {})",
        prog.log_name(),
        crate::protocol::replication::NEWEST_MAJOR,
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn subcommand_names_are_clap_s() {
        let clap_names: Vec<String> =
            Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
        assert_eq!(clap_names, SUBCOMMANDS);
    }
}
