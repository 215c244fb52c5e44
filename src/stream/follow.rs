//! The receive loop around sessions: connect, stream, and on failure reconnect with a bounded backoff
//! (unless `--no-loop`), stopping cleanly on SIGINT/SIGTERM or `--endpos`.

use crate::conn::connect;
use crate::stream::session::{run_session, SessionError, Stopped};
use crate::stream::state::{set_phase, Phase, StateSender};
use crate::stream::ReceiveConfig;
use crate::wal::Lsn;
use std::time::Duration;
use tokio::sync::watch;

/// Give up when the server sends the same invalid WAL this many times in a row.
const MAX_SAME_VALIDATION_FAILURES: u32 = 3;

/// A session that lasted this long counts as healthy: the reconnect backoff starts over after it.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Connect(#[from] crate::conn::ConnectError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(
        "the server sent the same invalid WAL at {lsn} {count} times in a row; stopping. Last error: {last}. \
         Nothing at or after {lsn} was acknowledged or renamed complete. Check the server's own copy \
         (pg_waldump on its pg_wal) and the network path; to archive the stream as sent anyway, use --no-validate"
    )]
    PersistentInvalidWal { lsn: Lsn, count: u32, last: SessionError },
}

/// Run `walkeeper receive` until it stops: Ok on endpos or signal, Err on a failure with `--no-loop`
/// or on one that retrying cannot fix. What happens is published on `state` (see `stream::state`).
pub async fn receive(
    cfg: &ReceiveConfig,
    shutdown: watch::Receiver<bool>,
    state: &StateSender,
) -> Result<Stopped, ReceiveError> {
    let result = receive_loop(cfg, shutdown, state).await;
    if let Err(e) = &result {
        state.send_modify(|s| s.last_error = Some(e.to_string()));
    }
    set_phase(state, Phase::Stopped);
    result
}

async fn receive_loop(
    cfg: &ReceiveConfig,
    mut shutdown: watch::Receiver<bool>,
    state: &StateSender,
) -> Result<Stopped, ReceiveError> {
    let mut failures = 0u32;
    let mut validation_failures: Option<(Lsn, u32)> = None;
    loop {
        let error: ReceiveError = match connect(&cfg.conn, &cfg.connect).await {
            Err(e) => e.into(),
            Ok(mut conn) => {
                let started = std::time::Instant::now();
                let result =
                    run_session(&mut conn, cfg, &mut shutdown, &mut validation_failures, state).await;
                conn.close().await;
                match result {
                    Ok(stopped) => return Ok(stopped),
                    Err(e) if e.is_fatal() => return Err(e.into()),
                    Err(e) => {
                        if let Some((lsn, count)) = validation_failures {
                            if count >= MAX_SAME_VALIDATION_FAILURES {
                                return Err(ReceiveError::PersistentInvalidWal { lsn, count, last: e });
                            }
                        }
                        if started.elapsed() >= HEALTHY_SESSION {
                            failures = 0;
                        }
                        e.into()
                    }
                }
            }
        };
        if cfg.no_loop {
            return Err(error);
        }
        state.send_modify(|s| {
            s.last_error = Some(error.to_string());
            s.reconnects += 1;
            if matches!(error, ReceiveError::Session(SessionError::InvalidWal { .. })) {
                s.invalid_wal += 1;
            }
        });
        set_phase(state, Phase::Retrying);
        let wait = backoff(failures);
        failures = failures.saturating_add(1);
        match &error {
            // A planned shutdown or switchover of the server: expected, not an error.
            ReceiveError::Session(SessionError::ServerEnded { server }) => {
                tracing::info!("{server}: server ended streaming; reconnecting")
            }
            other => tracing::error!("{other}"),
        }
        tracing::info!("disconnected; waiting {} seconds to try again", wait.as_secs());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(Stopped::Signal),
        }
        if *shutdown.borrow() {
            return Ok(Stopped::Signal);
        }
    }
}

/// How long to wait before reconnecting after `attempt` consecutive failures: 1 s doubling to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let waits: Vec<u64> = (0..8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }
}
