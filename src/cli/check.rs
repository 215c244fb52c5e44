//! `walkeeper check`: connect as a replication client and report, one line each, what an operator must know
//! before streaming. Exit 0 when streaming can start, 1 with the reason otherwise. With several hosts
//! (`host=a,b,c`), one line per host instead: reachable or not, primary or standby, timeline, system
//! identifier, the slot present or not — and which host streaming would start from (libpq's order and
//! `target_session_attrs`; `receive --failover` prefers the newest timeline among those that qualify).

use crate::cli::{connect_options, resolve_conn, ConnectionArgs, Exit, Prog};
use crate::conn::connect::{passes, server_role};
use crate::conn::{connect, ConnParams, ConnectOptions, Connection, TargetSessionAttrs};
use crate::protocol::replication as repl;
use crate::stream::liveness::DEFAULT_RECEIVE_TIMEOUT;
use crate::stream::session::identify;
use crate::stream::slot::{inspect, SlotState};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// replication slot that streaming will use
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// show this help, then exit
    #[arg(long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Run the checks, printing a line per fact to stdout.
pub async fn run(args: CheckArgs, prog: &Prog) -> Result<(), Exit> {
    let params = resolve_conn(&args.conn, prog)?;
    let fail = |msg: String| Exit::error(prog, &msg);
    if let Some(slot) = &args.slot {
        repl::validate_slot_name(slot).map_err(|e| fail(e.to_string()))?;
    }
    if params.endpoints.len() > 1 {
        return check_hosts(&params, &connect_options(&args.conn), args.slot.as_deref(), prog).await;
    }
    let mut conn = connect(&params, &connect_options(&args.conn)).await.map_err(|e| fail(e.to_string()))?;
    // A server that stops answering commands is reported, not waited for forever.
    conn.set_reply_timeout(Some(DEFAULT_RECEIVE_TIMEOUT));
    crate::outln!("server:            {}", conn.server());
    crate::outln!("server version:    {}", conn.parameter("server_version").unwrap_or("?"));
    crate::outln!("tls:               {}", if conn.is_tls() { "yes" } else { "no" });
    // A role without REPLICATION is refused at connection time by the server, so reaching here means it can
    // replicate; IDENTIFY_SYSTEM proves the walsender accepts commands from it.
    let info = identify(&mut conn).await.map_err(|e| fail(e.to_string()))?;
    crate::outln!("replication role:  yes");
    crate::outln!("system identifier: {}", info.identity.system_id);
    crate::outln!("timeline:          {}", info.identity.timeline);
    crate::outln!("current LSN:       {}", info.identity.xlogpos);
    crate::outln!("segment size:      {} MB", info.segment_size >> 20);
    if let Some(slot) = &args.slot {
        let state = inspect(&mut conn, &params, &connect_options(&args.conn), info.major, slot)
            .await
            .map_err(|e| fail(e.to_string()))?;
        match state {
            SlotState::Found(s) if s.slot_type != "physical" => {
                crate::outln!("slot:              \"{slot}\" exists but is a {} slot", s.slot_type);
                return Err(fail(format!("replication slot \"{slot}\" is not a physical slot")));
            }
            SlotState::Found(s) => {
                let restart = s.restart_lsn.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
                crate::outln!("slot:              \"{slot}\" exists, restart LSN {restart}");
            }
            SlotState::Missing => {
                crate::outln!("slot:              \"{slot}\" does not exist");
                return Err(fail(format!(
                    "replication slot \"{slot}\" does not exist; create it with `walkeeper receive --slot {slot} --create-slot`"
                )));
            }
            SlotState::Unknown(why) => crate::outln!(
                "slot:              \"{slot}\" (not inspected: PostgreSQL {} has no READ_REPLICATION_SLOT and a normal session failed: {why})",
                info.major
            ),
        }
    }
    conn.close().await;
    crate::outln!("ready to stream:   yes");
    Ok(())
}

/// What one host of several is, for its line.
struct Host {
    /// The line after `server N:`.
    line: String,
    /// Its role as target_session_attrs sees it, when it could be streamed from (reachable, slot usable).
    role: Option<crate::conn::connect::ServerRole>,
    /// Why it cannot be streamed from, when it cannot.
    problem: Option<String>,
}

/// `check` with several hosts (module docs).
async fn check_hosts(
    params: &ConnParams,
    opts: &ConnectOptions,
    slot: Option<&str>,
    prog: &Prog,
) -> Result<(), Exit> {
    let mut hosts = Vec::new();
    for (i, endpoint) in params.endpoints.iter().enumerate() {
        let label = format!("{}:{}", endpoint.host_for_display(), endpoint.port());
        let one = ConnParams {
            endpoints: vec![endpoint.clone()],
            target_session_attrs: TargetSessionAttrs::Any,
            ..params.clone()
        };
        let host = match connect(&one, opts).await {
            Err(e) => {
                let cause = e.failures.last().map_or_else(|| e.to_string(), |f| f.cause.clone());
                Host { line: format!("{label}, not reachable: {cause}"), role: None, problem: Some(cause) }
            }
            Ok(mut conn) => {
                let host = look_at(&mut conn, params, opts, slot).await;
                conn.close().await;
                host
            }
        };
        crate::outln!("{:<19}{}", format!("server {}:", i + 1), host.line);
        hosts.push(host);
    }
    let attrs = params.target_session_attrs;
    let ready = passes(attrs).into_iter().find_map(|w| {
        hosts.iter().position(|h| h.problem.is_none() && h.role.is_some_and(|r| r.refusal(w).is_none()))
    });
    match ready {
        Some(i) => {
            let name = hosts[i].line.split(", ").next().unwrap_or_default();
            crate::outln!("ready to stream:   yes, from server {} ({name})", i + 1);
            Ok(())
        }
        None => {
            let why: Vec<String> = hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let reason = h.problem.clone().or_else(|| {
                        h.role
                            .and_then(|r| passes(attrs).iter().find_map(|&w| r.refusal(w)))
                            .map(|r| format!("{r} (target_session_attrs={})", attrs.name()))
                    });
                    format!("server {}: {}", i + 1, reason.unwrap_or_default())
                })
                .collect();
            Err(Exit::error(prog, &format!("no server to stream from: {}", why.join("; "))))
        }
    }
}

/// Role, timeline, system identifier and the slot of a connected host.
async fn look_at(
    conn: &mut Connection,
    params: &ConnParams,
    opts: &ConnectOptions,
    slot: Option<&str>,
) -> Host {
    conn.set_reply_timeout(Some(DEFAULT_RECEIVE_TIMEOUT));
    let server = conn.server().to_string();
    let failed = |what: String| Host { line: format!("{server}, {what}"), role: None, problem: Some(what) };
    let info = match identify(conn).await {
        Ok(info) => info,
        Err(e) => return failed(format!("IDENTIFY_SYSTEM failed: {e}")),
    };
    let role = match server_role(conn).await {
        Ok(role) => role,
        Err(e) => return failed(format!("its role could not be read: {e}")),
    };
    let mut line = format!(
        "{server}, {}, timeline {}, system identifier {}, PostgreSQL {}",
        role.name(),
        info.identity.timeline,
        info.identity.system_id,
        conn.parameter("server_version").unwrap_or("?")
    );
    let mut problem = None;
    if let Some(slot) = slot {
        let (text, trouble) = match inspect(conn, params, opts, info.major, slot).await {
            Ok(SlotState::Found(s)) if s.slot_type != "physical" => (
                format!("slot \"{slot}\" is a {} slot", s.slot_type),
                Some("not a physical slot".to_string()),
            ),
            Ok(SlotState::Found(s)) => {
                let restart = s.restart_lsn.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
                (format!("slot \"{slot}\" present, restart LSN {restart}"), None)
            }
            Ok(SlotState::Missing) => (
                format!("slot \"{slot}\" missing"),
                Some(format!("replication slot \"{slot}\" does not exist")),
            ),
            Ok(SlotState::Unknown(why)) => (format!("slot \"{slot}\" not inspected ({why})"), None),
            Err(e) => (format!("slot \"{slot}\" not inspected ({e})"), None),
        };
        line = format!("{line}, {text}");
        problem = trouble;
    }
    Host { line, role: Some(role), problem }
}
