//! `walkeeper check`: connect as a replication client and report, one line each, what an operator must know
//! before streaming. Exit 0 when streaming can start, 1 with the reason otherwise.

use crate::cli::{connect_options, resolve_conn, ConnectionArgs, Exit, Prog};
use crate::conn::connect;
use crate::protocol::replication as repl;
use crate::stream::session::identify;
use crate::stream::slot::read_slot_via_sql;
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
    let mut conn = connect(&params, &connect_options(&args.conn)).await.map_err(|e| fail(e.to_string()))?;
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
        let not_physical = |slot_type: &str| {
            crate::outln!("slot:              \"{slot}\" exists but is a {slot_type} slot");
            fail(format!("replication slot \"{slot}\" is not a physical slot"))
        };
        let missing = || {
            crate::outln!("slot:              \"{slot}\" does not exist");
            fail(format!(
                "replication slot \"{slot}\" does not exist; create it with `walkeeper receive --slot {slot} --create-slot`"
            ))
        };
        match repl::read_slot(info.major, slot).map_err(|e| fail(e.to_string()))? {
            Some(cmd) => {
                let rs = match conn.simple_query(&cmd).await {
                    Ok(rs) => rs,
                    // The server refuses READ_REPLICATION_SLOT on a logical slot (feature_not_supported).
                    Err(e)
                        if e.server_error().is_some_and(|se| {
                            se.code == "0A000" && se.message.contains("logical replication slot")
                        }) =>
                    {
                        return Err(not_physical("logical"));
                    }
                    Err(e) => return Err(fail(e.to_string())),
                };
                match repl::parse_read_slot(&rs).map_err(|e| fail(e.to_string()))? {
                    Some(s) if s.slot_type != "physical" => return Err(not_physical(&s.slot_type)),
                    Some(s) => {
                        let restart = s.restart_lsn.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
                        crate::outln!("slot:              \"{slot}\" exists, restart LSN {restart}");
                    }
                    None => return Err(missing()),
                }
            }
            // 13 and 14 have no READ_REPLICATION_SLOT: ask pg_replication_slots, as `receive` does.
            None => match read_slot_via_sql(&params, &connect_options(&args.conn), slot).await {
                Ok(Some((slot_type, _))) if slot_type != "physical" => return Err(not_physical(&slot_type)),
                Ok(Some((_, restart))) => {
                    let restart = restart.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
                    crate::outln!("slot:              \"{slot}\" exists, restart LSN {restart}");
                }
                Ok(None) => return Err(missing()),
                Err(why) => crate::outln!(
                    "slot:              \"{slot}\" (not inspected: PostgreSQL {} has no READ_REPLICATION_SLOT and a normal session failed: {why})",
                    info.major
                ),
            },
        }
    }
    conn.close().await;
    crate::outln!("ready to stream:   yes");
    Ok(())
}
