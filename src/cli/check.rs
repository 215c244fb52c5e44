//! `walkeeper check`: connect as a replication client and report, one line each, what an operator must know
//! before streaming. Exit 0 when streaming can start, 1 with the reason otherwise.

use crate::cli::{connect_options, resolve_conn, ConnectionArgs, Exit, Prog};
use crate::conn::connect;
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
