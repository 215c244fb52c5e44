//! The `walkeeper` binary: parse the command line (as `walkeeper <command>`, or as `pg_receivewal` when
//! invoked under that name), run, map errors to exit codes.

use clap::Parser;
use walkeeper::cli::{self, logging, receive, Cli, Command, Exit, Prog};

/// pg_receivewal's argument parser: the receive options at top level.
#[derive(Parser, Debug)]
#[command(name = "pg_receivewal", disable_help_flag = true, disable_version_flag = true)]
struct PgReceivewalCli {
    #[command(flatten)]
    receive: receive::ReceiveCommand,
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    #[arg(long = "log-format", value_name = "FMT", default_value = "text")]
    log_format: logging::LogFormat,
}

fn invoked_as_pg_receivewal() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
        .is_some_and(|name| name == "pg_receivewal")
}

/// The first argument that is not an option (or --log-format's value): the subcommand's name.
fn invoked_subcommand() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--log-format" {
            args.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// clap's own errors become pg_receivewal-style lines with exit code 1.
fn clap_exit(e: clap::Error, prog: &Prog) -> Exit {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            cli::print_stdout(&e.to_string());
            Exit { code: 0, message: String::new() }
        }
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
            cli::usage_error(prog, &first)
        }
    }
}

fn run() -> Result<(), Exit> {
    if invoked_as_pg_receivewal() {
        let prog = Prog::PgReceivewal;
        let parsed = PgReceivewalCli::try_parse().map_err(|e| clap_exit(e, &prog))?;
        logging::init(prog.log_name(), parsed.log_format, parsed.verbose);
        return receive::run_command(parsed.receive, &prog);
    }
    let cli = Cli::try_parse().map_err(|e| {
        let invoked = invoked_subcommand();
        let command =
            cli::SUBCOMMANDS.iter().find(|c| invoked.as_deref() == Some(**c)).copied().unwrap_or("");
        let mut exit = clap_exit(e, &Prog::Walkeeper { command });
        match invoked.as_deref() {
            Some("verify") if exit.code != 0 => {
                exit.code = cli::verify::EXIT_CANNOT_VERIFY; // verify: 1 means "not whole", usage errors are 2
            }
            // For restore, 1 means "not in the archive": a bad restore_command must not look like that.
            Some("restore") if exit.code != 0 => exit.code = walkeeper::archive::restore::EXIT_USAGE,
            _ => {}
        }
        exit
    })?;
    let prog = Prog::Walkeeper { command: cli.command.name() };
    logging::init(prog.log_name(), cli.log_format, cli.verbose);
    match cli.command {
        Command::Receive(cmd) => receive::run_command(cmd, &prog),
        Command::Check(args) => cli::block_on(cli::check::run(args, &prog)),
        Command::Demo(args) => cli::block_on(cli::demo::run(args, &prog)),
        Command::Restore(args) => cli::restore::run(args, &prog),
        Command::Status(args) => cli::status::run(args, &prog),
        Command::Cleanup(args) => cli::cleanup::run(args, &prog),
        Command::Verify(args) => cli::verify::run(args, &prog),
    }
}

fn main() {
    match run() {
        Ok(()) => {}
        Err(exit) => {
            if !exit.message.is_empty() {
                eprintln!("{}", exit.message);
            }
            std::process::exit(exit.code);
        }
    }
}
