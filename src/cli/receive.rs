//! `walkeeper receive`: pg_receivewal's command line, option for option, plus walkeeper's additions;
//! the same refusals and texts; then the receive loop.

use crate::archive::lock::ArchiveLock;
use crate::archive::upload::{self, Finished, Undone, UploadSettings, Uploader};
use crate::cli::compress::{parse_compress, CompressSpec};
use crate::cli::{
    connect_options, resolve_conn, resolve_conn_with_default_attrs, usage_error, ConnectionArgs, Exit, Prog,
};
use crate::conn::connect;
use crate::protocol::codec::os_error;
use crate::protocol::replication as repl;
use crate::protocol::sqlstate;
use crate::stream::feedback::ApplyReport;
use crate::stream::follow::receive;
use crate::stream::liveness::DEFAULT_RECEIVE_TIMEOUT;
use crate::stream::session::identify;
use crate::stream::ReceiveConfig;
use crate::wal::Lsn;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ReceiveArgs {
    /// receive write-ahead log files into this directory
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// exit after receiving the specified LSN
    #[arg(short = 'E', long = "endpos", value_name = "LSN")]
    pub endpos: Option<String>,
    /// do not error if slot already exists when creating a slot
    #[arg(long = "if-not-exists")]
    pub if_not_exists: bool,
    /// do not loop on connection lost
    #[arg(short = 'n', long = "no-loop")]
    pub no_loop: bool,
    /// do not wait for changes to be written safely to disk
    #[arg(long = "no-sync")]
    pub no_sync: bool,
    /// time between status packets sent to server (default: 10)
    #[arg(short = 's', long = "status-interval", value_name = "SECS", allow_negative_numbers = true)]
    pub status_interval: Option<String>,
    /// replication slot to use
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,
    /// flush write-ahead log immediately after writing
    #[arg(long = "synchronous")]
    pub synchronous: bool,
    /// compress as specified: none, gzip, lz4, zstd, with an optional level (METHOD[:DETAIL])
    #[arg(short = 'Z', long = "compress", value_name = "METHOD[:DETAIL]", allow_negative_numbers = true)]
    pub compress: Option<String>,
    /// create a new replication slot (for the slot's name see --slot)
    #[arg(long = "create-slot")]
    pub create_slot: bool,
    /// drop the replication slot (for the slot's name see --slot)
    #[arg(long = "drop-slot")]
    pub drop_slot: bool,
    /// do not validate page headers and record CRCs of the WAL received (walkeeper)
    #[arg(long = "no-validate")]
    pub no_validate: bool,
    /// report the flush position as the apply position too, so remote_apply commits return (walkeeper)
    #[arg(long = "report-apply")]
    pub report_apply: bool,
    /// drop a connection on which the server stayed silent this long, and reconnect (default: 60, 0: never)
    #[arg(long = "receive-timeout", value_name = "SECS", allow_negative_numbers = true)]
    pub receive_timeout: Option<String>,
    /// follow a failover among the connection string's hosts (walkeeper; see docs/failover.md)
    #[arg(long = "failover")]
    pub failover: bool,
    /// also upload the archive to this store: s3://BUCKET/PREFIX, or a directory (walkeeper)
    #[arg(long = "upload", value_name = "LOCATION")]
    pub upload: Option<String>,
    /// upload the open .partial this often when it changed (default: 60, 0: never) (walkeeper)
    #[arg(long = "upload-partial-interval", value_name = "SECS", allow_negative_numbers = true)]
    pub upload_partial_interval: Option<String>,
    /// at exit, wait this long for pending uploads (default: 60) (walkeeper)
    #[arg(long = "upload-wait", value_name = "SECS", allow_negative_numbers = true)]
    pub upload_wait: Option<String>,
    /// report WAL as flushed only once it is uploaded, so the slot keeps it on the server until then (walkeeper)
    #[arg(long = "slot-follows-upload")]
    pub slot_follows_upload: bool,
    /// delete segments from the directory once they are uploaded (walkeeper)
    #[arg(long = "remove-uploaded")]
    pub remove_uploaded: bool,
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// too many command-line arguments
    #[arg(hide = true)]
    pub extra: Vec<String>,
}

/// `walkeeper receive`, or the whole command line of `pg_receivewal`: the receive options plus
/// pg_receivewal's own `-?` and `-V`.
#[derive(Args, Debug, Clone)]
pub struct ReceiveCommand {
    #[command(flatten)]
    pub args: ReceiveArgs,
    /// show this help, then exit
    #[arg(short = '?', long = "help")]
    pub help: bool,
    /// output version information, then exit
    #[arg(short = 'V', long = "version")]
    pub version: bool,
}

/// Print the help or the version when asked for, else stream.
pub fn run_command(cmd: ReceiveCommand, prog: &Prog) -> Result<(), Exit> {
    if cmd.help {
        crate::cli::print_stdout(&help_text(prog));
        return Ok(());
    }
    if cmd.version {
        crate::cli::print_stdout(&format!("{}\n", crate::cli::version_line(prog)));
        return Ok(());
    }
    crate::cli::block_on(run(cmd.args, prog))
}

/// The help text, laid out as pg_receivewal's (clap's generated one is used for the other commands).
pub fn help_text(prog: &Prog) -> String {
    let name = prog.display();
    format!(
        "{name} receives PostgreSQL streaming write-ahead logs.

Usage:
  {name} [OPTION]...

Options:
  -D, --directory=DIR    receive write-ahead log files into this directory
  -E, --endpos=LSN       exit after receiving the specified LSN
      --if-not-exists    do not error if slot already exists when creating a slot
  -n, --no-loop          do not loop on connection lost
      --no-sync          do not wait for changes to be written safely to disk
  -s, --status-interval=SECS
                         time between status packets sent to server (default: 10)
  -S, --slot=SLOTNAME    replication slot to use
      --synchronous      flush write-ahead log immediately after writing
  -v, --verbose          output verbose messages
  -V, --version          output version information, then exit
  -Z, --compress=METHOD[:DETAIL]
                         compress as specified (none, gzip, lz4, zstd)
  -?, --help             show this help, then exit

walkeeper options:
      --no-validate      do not check page headers and record CRCs on the way in
      --report-apply     report the flush position as applied (for remote_apply)
      --receive-timeout=SECS
                         reconnect when the server stays silent this long (default: 60, 0 disables)
      --failover         follow a failover: hunt among the hosts of -d for the server to stream from,
                         create the slot there when missing (see docs/failover.md)
      --log-format=FMT   text (default) or json

Upload (walkeeper):
      --upload=LOCATION  also upload the archive to s3://BUCKET/PREFIX (or a directory)
      --upload-partial-interval=SECS
                         upload the open .partial this often (default: 60, 0 disables)
      --upload-wait=SECS wait this long for pending uploads at exit (default: 60)
      --slot-follows-upload
                         report WAL as flushed only once it is uploaded
      --remove-uploaded  delete uploaded segments from the directory

Connection options:
  -d, --dbname=CONNSTR   connection string
  -h, --host=HOSTNAME    database server host or socket directory
  -p, --port=PORT        database server port number
  -U, --username=NAME    connect as specified database user
  -w, --no-password      never prompt for password
  -W, --password         force password prompt (should happen automatically)

Optional actions:
      --create-slot      create a new replication slot (for the slot's name see --slot)
      --drop-slot        drop the replication slot (for the slot's name see --slot)

Exit status: 0 stopped cleanly (--endpos, a signal); 1 an error; with --upload, {EXIT_UPLOAD_CONFLICT} when a file
conflicted with a different object of its name in the store, {EXIT_UPLOADS_PENDING} when uploads were still pending
after --upload-wait (the directory keeps them; the next start uploads them).

walkeeper is a drop-in replacement for pg_receivewal; see its README for the differences.
"
    )
}

/// Exit code of a clean stop after which a file is not uploaded because the store holds another object
/// of its name (see docs/s3.md).
pub const EXIT_UPLOAD_CONFLICT: i32 = 3;
/// Exit code of a clean stop with uploads still pending after `--upload-wait`.
pub const EXIT_UPLOADS_PENDING: i32 = 4;

/// Validated options, before anything touches the network.
struct Plan {
    cfg: ReceiveConfig,
    action: Action,
    upload: Option<UploadSettings>,
}

/// A number of seconds in 0..2147483 (pg_receivewal's range for -s); 0 is `None`.
fn seconds(value: &str, option: &str, prog: &Prog) -> Result<Option<Duration>, Exit> {
    match value.trim().parse::<i64>() {
        Ok(0) => Ok(None),
        Ok(n) if (1..=2_147_483).contains(&n) => Ok(Some(Duration::from_secs(n.unsigned_abs()))),
        _ => Err(Exit::error(prog, &format!("{option} must be in range 0..2147483"))),
    }
}

/// `--upload` and the options that go with it.
fn upload_settings(args: &ReceiveArgs, prog: &Prog) -> Result<Option<UploadSettings>, Exit> {
    let Some(location) = &args.upload else {
        let needs = [
            (args.upload_partial_interval.is_some(), "--upload-partial-interval"),
            (args.upload_wait.is_some(), "--upload-wait"),
            (args.slot_follows_upload, "--slot-follows-upload"),
            (args.remove_uploaded, "--remove-uploaded"),
        ];
        return match needs.iter().find(|(given, _)| *given) {
            Some((_, option)) => Err(usage_error(prog, &format!("{option} needs --upload"))),
            None => Ok(None),
        };
    };
    let mut settings = UploadSettings::new(location);
    if let Some(v) = &args.upload_partial_interval {
        settings.partial_interval = seconds(v, "--upload-partial-interval", prog)?;
    }
    if let Some(v) = &args.upload_wait {
        settings.wait = seconds(v, "--upload-wait", prog)?.unwrap_or_default();
    }
    if args.slot_follows_upload && args.slot.is_none() && !args.synchronous {
        return Err(usage_error(
            prog,
            "--slot-follows-upload needs a slot (--slot) or --synchronous: without either no flush position is reported",
        ));
    }
    settings.slot_follows = args.slot_follows_upload;
    settings.remove_uploaded = args.remove_uploaded;
    if let Some(dir) = &args.directory {
        upload::check_location(&settings, dir).map_err(|e| Exit::error(prog, &e))?;
    }
    Ok(Some(settings))
}

enum Action {
    Stream,
    CreateSlot { if_not_exists: bool },
    DropSlot,
}

fn plan(args: &ReceiveArgs, prog: &Prog) -> Result<Plan, Exit> {
    if let Some(first) = args.extra.first() {
        return Err(usage_error(prog, &format!("too many command-line arguments (first is \"{first}\")")));
    }
    let status_interval = match &args.status_interval {
        None => Some(Duration::from_secs(10)),
        Some(s) => match s.parse::<i64>() {
            Ok(0) => None,
            Ok(n) if (1..=2_147_483).contains(&n) => Some(Duration::from_secs(n as u64)),
            _ => return Err(Exit::error(prog, "-s/--status-interval must be in range 0..2147483")),
        },
    };
    let receive_timeout = match &args.receive_timeout {
        None => Some(DEFAULT_RECEIVE_TIMEOUT),
        Some(s) => seconds(s, "--receive-timeout", prog)?,
    };
    let endpos = match &args.endpos {
        None => None,
        Some(s) => Some(
            s.parse::<Lsn>()
                .map_err(|_| Exit::error(prog, &format!("could not parse end position \"{s}\"")))?,
        ),
    };
    let compress = match &args.compress {
        None => CompressSpec { method: crate::wal::segment::Compression::None, level: None },
        Some(z) => parse_compress(z).map_err(|e| Exit::error(prog, &e))?,
    };
    if args.create_slot && args.drop_slot {
        return Err(usage_error(prog, "cannot use --create-slot together with --drop-slot"));
    }
    if args.slot.is_none() {
        if args.create_slot {
            return Err(usage_error(prog, "--create-slot needs a slot to be specified using --slot"));
        }
        if args.drop_slot {
            return Err(usage_error(prog, "--drop-slot needs a slot to be specified using --slot"));
        }
    }
    if args.failover && (args.create_slot || args.drop_slot) {
        let action = if args.create_slot { "--create-slot" } else { "--drop-slot" };
        return Err(usage_error(prog, &format!("cannot use --failover together with {action}")));
    }
    if args.synchronous && args.no_sync {
        return Err(usage_error(prog, "cannot use --synchronous together with --no-sync"));
    }
    if args.directory.is_none() && !args.drop_slot && !args.create_slot {
        return Err(usage_error(prog, "no target directory specified"));
    }
    if let Some(slot) = &args.slot {
        repl::validate_slot_name(slot).map_err(|e| Exit::error(prog, &e.to_string()))?;
    }
    let action = if args.create_slot {
        Action::CreateSlot { if_not_exists: args.if_not_exists }
    } else if args.drop_slot {
        Action::DropSlot
    } else {
        Action::Stream
    };
    let upload = upload_settings(args, prog)?;
    let conn = if args.failover {
        resolve_conn_with_default_attrs(&args.conn, prog, "read-write")?
    } else {
        resolve_conn(&args.conn, prog)?
    };
    let cfg = ReceiveConfig {
        conn,
        connect: connect_options(&args.conn),
        directory: args.directory.clone().unwrap_or_default(),
        slot: args.slot.clone(),
        endpos,
        status_interval,
        receive_timeout,
        synchronous: args.synchronous,
        fsync: !args.no_sync,
        compression: compress.method,
        compression_level: compress.level,
        no_loop: args.no_loop,
        validate: !args.no_validate,
        apply_report: if args.report_apply { ApplyReport::Flush } else { ApplyReport::Invalid },
        live_readers: Default::default(),
        failover: args.failover,
        create_slot: args.failover && args.slot.is_some(),
        upload: None,
    };
    Ok(Plan { cfg, action, upload })
}

/// Check the target directory before connecting, as pg_receivewal does.
fn check_directory(dir: &std::path::Path, prog: &Prog) -> Result<(), Exit> {
    match std::fs::read_dir(dir) {
        Ok(_) => Ok(()),
        Err(e) => Err(Exit::error(
            prog,
            &format!("could not open directory \"{}\": {}", dir.display(), os_error(&e)),
        )),
    }
}

pub async fn run(args: ReceiveArgs, prog: &Prog) -> Result<(), Exit> {
    let plan = plan(&args, prog)?;
    let mut cfg = plan.cfg;
    if matches!(plan.action, Action::Stream | Action::CreateSlot { .. }) && args.directory.is_some() {
        check_directory(&cfg.directory, prog)?;
    }
    match plan.action {
        Action::CreateSlot { if_not_exists } => create_slot(&cfg, if_not_exists, prog).await,
        Action::DropSlot => drop_slot(&cfg, prog).await,
        Action::Stream => {
            // One writer per archive, decided before any server is contacted; held until we return.
            let _lock =
                ArchiveLock::acquire(&cfg.directory).map_err(|e| Exit::error(prog, &e.to_string()))?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(crate::cli::forward_signals(tx));
            let state = crate::stream::state::unobserved();
            let uploader = match &plan.upload {
                Some(settings) => Some(
                    Uploader::start(settings, &cfg.directory, state.subscribe())
                        .map_err(|e| Exit::error(prog, &e.to_string()))?,
                ),
                None => None,
            };
            cfg.upload = uploader.as_ref().map(Uploader::link);
            let received =
                receive(&cfg, rx, &state).await.map(drop).map_err(|e| Exit::error(prog, &e.to_string()));
            let Some(uploader) = uploader else { return received };
            // A clean stop waits for the uploads; after an error the next start uploads what is left.
            let wait = match &received {
                Ok(()) => plan.upload.map(|u| u.wait).unwrap_or_default(),
                Err(_) => Duration::ZERO,
            };
            let finished = tokio::task::spawn_blocking(move || uploader.finish(wait))
                .await
                .map_err(|e| Exit::error(prog, &format!("the uploader ended abnormally: {e}")))?;
            if received.is_err() && finished.pending_files > 0 {
                tracing::warn!(
                    "{} files wait in \"{}\" for their upload to \"{}\"; the next start uploads them",
                    finished.pending_files,
                    cfg.directory.display(),
                    finished.location
                );
            }
            received?;
            upload_exit(&finished, &cfg.directory, wait, prog)
        }
    }
}

/// A clean stop's exit, from how the uploads stood (the exit codes are documented in the help and docs/s3.md).
fn upload_exit(f: &Finished, spool: &std::path::Path, wait: Duration, prog: &Prog) -> Result<(), Exit> {
    match f.undone(spool, "--upload-wait", wait) {
        None => Ok(()),
        Some(Undone::Conflicts(message)) => {
            Err(Exit { code: EXIT_UPLOAD_CONFLICT, ..Exit::error(prog, &message) })
        }
        Some(Undone::Pending(message)) => {
            Err(Exit { code: EXIT_UPLOADS_PENDING, ..Exit::error(prog, &message) })
        }
    }
}

async fn create_slot(cfg: &ReceiveConfig, if_not_exists: bool, prog: &Prog) -> Result<(), Exit> {
    let slot = cfg.slot.as_deref().unwrap_or_default();
    let mut conn = connect(&cfg.conn, &cfg.connect).await.map_err(|e| Exit::error(prog, &e.to_string()))?;
    conn.set_reply_timeout(cfg.receive_timeout);
    identify(&mut conn).await.map_err(|e| Exit::error(prog, &e.to_string()))?;
    tracing::info!("creating replication slot \"{slot}\"");
    // As pg_receivewal: no RESERVE_WAL, so the new slot's restart_lsn stays NULL until streaming starts.
    repl::validate_slot_name(slot).map_err(|e| Exit::error(prog, &e.to_string()))?;
    let cmd = format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL");
    match conn.simple_query(&cmd).await {
        Ok(_) => Ok(()),
        Err(e)
            if if_not_exists && e.server_error().is_some_and(|s| s.has_code(sqlstate::DUPLICATE_OBJECT)) =>
        {
            tracing::info!("replication slot \"{slot}\" already exists");
            Ok(())
        }
        Err(e) => Err(Exit::error(prog, &e.to_string())),
    }
}

async fn drop_slot(cfg: &ReceiveConfig, prog: &Prog) -> Result<(), Exit> {
    let slot = cfg.slot.as_deref().unwrap_or_default();
    let mut conn = connect(&cfg.conn, &cfg.connect).await.map_err(|e| Exit::error(prog, &e.to_string()))?;
    conn.set_reply_timeout(cfg.receive_timeout);
    identify(&mut conn).await.map_err(|e| Exit::error(prog, &e.to_string()))?;
    tracing::info!("dropping replication slot \"{slot}\"");
    let cmd = repl::drop_slot(slot, false).map_err(|e| Exit::error(prog, &e.to_string()))?;
    conn.simple_query(&cmd).await.map(|_| ()).map_err(|e| Exit::error(prog, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::conn::TargetSessionAttrs;
    use clap::Parser;

    fn planned(args: &[&str]) -> Result<Plan, Exit> {
        let cli = Cli::try_parse_from([&["walkeeper", "receive", "-D", "/tmp"], args].concat()).unwrap();
        let Command::Receive(cmd) = cli.command else { panic!("not receive") };
        plan(&cmd.args, &Prog::Walkeeper { command: "receive" })
    }

    #[test]
    fn failover_defaults_to_read_write_and_creating_the_slot() {
        let p = planned(&["--failover", "-S", "arch", "-d", "host=a,b user=u"]).unwrap();
        assert!(p.cfg.failover && p.cfg.create_slot);
        assert_eq!(p.cfg.conn.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(p.cfg.conn.endpoints.len(), 2);
        // What the connection string says wins.
        let p =
            planned(&["--failover", "-d", "host=a,b user=u target_session_attrs=prefer-standby"]).unwrap();
        assert_eq!(p.cfg.conn.target_session_attrs, TargetSessionAttrs::PreferStandby);
        assert!(!p.cfg.create_slot, "no slot named");
        // Without --failover: pg_receivewal's.
        let p = planned(&["-S", "arch", "-d", "host=a,b user=u"]).unwrap();
        assert!(!p.cfg.failover && !p.cfg.create_slot);
        assert_eq!(p.cfg.conn.target_session_attrs, TargetSessionAttrs::Any);
        let e = planned(&["--failover", "-S", "arch", "--create-slot", "-d", "user=u"]).err().unwrap();
        assert!(
            e.message.starts_with("walkeeper: error: cannot use --failover together with --create-slot\n"),
            "{}",
            e.message
        );
    }
}
