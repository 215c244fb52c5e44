//! The `walkeeper` binary: parse the command line (as `walkeeper <command>`, or as `pg_receivewal` when
//! invoked under that name), run, map errors to exit codes.

use clap::{CommandFactory, FromArgMatches, Parser};
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

/// The arguments that are not options (nor --log-format's value): the subcommand's name first.
fn positionals() -> Vec<String> {
    let mut found = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--log-format" {
            args.next();
        } else if !a.starts_with('-') {
            found.push(a);
        }
    }
    found
}

/// clap's own outcomes: help and version on stdout (exit 0), usage errors as pg_receivewal-style lines
/// with the command's usage exit code.
fn clap_exit(e: clap::Error, prog: &Prog, command: &clap::Command) -> Exit {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            cli::print_stdout(&e.to_string());
            Exit { code: 0, message: String::new() }
        }
        // Bare `walkeeper`: the usage, on stderr, as a usage error.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let text = e.to_string();
            let code = cli::usage_error(prog, "").code;
            Exit { code, message: text.trim_end().to_string() }
        }
        ErrorKind::MissingRequiredArgument => cli::usage_error(prog, &missing_arguments(&e, prog, command)),
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
            cli::usage_error(prog, &first)
        }
    }
}

/// "missing required argument: -D/--directory DIR" — clap puts the names on further lines, which a one-line
/// error would drop.
fn missing_arguments(e: &clap::Error, prog: &Prog, command: &clap::Command) -> String {
    use clap::error::{ContextKind, ContextValue};
    let specs = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::Strings(specs)) => specs.clone(),
        Some(ContextValue::String(spec)) => vec![spec.clone()],
        _ => Vec::new(),
    };
    let sub = match prog {
        Prog::Walkeeper { command: name } => command.find_subcommand(name).unwrap_or(command),
        Prog::PgReceivewal => command,
    };
    let names: Vec<String> = specs.iter().map(|spec| argument_name(sub, spec)).collect();
    match names.len() {
        0 => "missing a required argument".to_string(),
        1 => format!("missing required argument: {}", names[0]),
        _ => format!("missing required arguments: {}", names.join(", ")),
    }
}

/// clap's `--directory <DIR>` as `-D/--directory DIR`; a positional `<FILE>` as `FILE`.
fn argument_name(command: &clap::Command, spec: &str) -> String {
    let long = spec.strip_prefix("--").and_then(|s| s.split(' ').next());
    let arg = long.and_then(|long| command.get_arguments().find(|a| a.get_long() == Some(long)));
    match arg {
        Some(arg) => {
            let short = arg.get_short().map(|c| format!("-{c}/")).unwrap_or_default();
            let value = arg.get_value_names().and_then(|v| v.first()).map(|v| format!(" {v}"));
            format!("{short}--{}{}", long.unwrap_or_default(), value.unwrap_or_default())
        }
        None => spec.replace(['<', '>'], ""),
    }
}

/// `walkeeper <command> ...` parsed, or the way out clap's outcome calls for (help, version, usage error).
fn parse_walkeeper() -> Result<Cli, Exit> {
    let positionals = positionals();
    let invoked = positionals.first().map(String::as_str);
    // `walkeeper help receive` shows what `walkeeper receive --help` shows: pg_receivewal's layout.
    if invoked == Some("help") && positionals.get(1).map(String::as_str) == Some("receive") {
        cli::print_stdout(&receive::help_text(&Prog::Walkeeper { command: "receive" }));
        return Err(Exit { code: 0, message: String::new() });
    }
    let mut command = Cli::command();
    if std::env::args().any(|a| a == "--prefetch-worker") {
        // restore's background worker, started by restore itself, serves no %f and %p.
        command = command.mut_subcommand("restore", |r| {
            r.mut_arg("file", |a| a.required(false)).mut_arg("path", |a| a.required(false))
        });
    }
    let name = cli::SUBCOMMANDS.iter().find(|c| invoked == Some(**c)).copied().unwrap_or("");
    let prog = Prog::Walkeeper { command: name };
    command
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(|e| clap_exit(e, &prog, &command))
}

fn run() -> Result<(), Exit> {
    if invoked_as_pg_receivewal() {
        let prog = Prog::PgReceivewal;
        let parsed =
            PgReceivewalCli::try_parse().map_err(|e| clap_exit(e, &prog, &PgReceivewalCli::command()))?;
        logging::init(prog.log_name(), parsed.log_format, parsed.verbose);
        return receive::run_command(parsed.receive, &prog);
    }
    let cli = parse_walkeeper()?;
    let prog = Prog::Walkeeper { command: cli.command.name() };
    logging::init(prog.log_name(), cli.log_format, cli.verbose);
    match cli.command {
        Command::Receive(cmd) => receive::run_command(*cmd, &prog),
        Command::Check(args) => cli::block_on(cli::check::run(args, &prog)),
        Command::Demo(args) => cli::block_on(cli::demo::run(args, &prog)),
        Command::Restore(args) => cli::restore::run(args, &prog),
        Command::Status(args) => cli::status::run(args, &prog),
        Command::Cleanup(args) => cli::cleanup::run(args, &prog),
        Command::Verify(args) => cli::verify::run(args, &prog),
        Command::Service(args) => cli::service::run(args, &prog),
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
