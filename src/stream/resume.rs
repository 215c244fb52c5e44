//! Resuming a non-empty archive on a server (#12): what the archive holds — its newest timeline, where valid
//! WAL ends there, that timeline's history file and its segment files (`archive::fork`) — against what the
//! server says: system identifier, timeline, the history of that timeline (TIMELINE_HISTORY, when above 1)
//! and how far it has flushed. `failover::reconcile` decides: refuse the server, or where to start. And the
//! diverged tail starting a new timeline leaves in the archive, summarised for the warning and the state.

use crate::archive::catalog::{Catalog, SegmentSize};
use crate::archive::fork::{self, ForkPoint, TailReport};
use crate::archive::local::LocalWalDir;
use crate::archive::scan::ScanError;
use crate::archive::store::{LocalStore, Store, StoreError};
use crate::conn::Connection;
use crate::stream::failover::{
    reconcile, ArchiveState, DivergedTail, HeldSegment, Position, ServerState, Start,
};
use crate::stream::session::{timeline_history, ServerInfo, SessionError};
use crate::wal::segment::TimeLineId;

/// Where to resume the archive in `store` on this server; None when the archive holds no segment file to
/// resume from. A server the archive cannot continue on is [`SessionError::Refused`].
pub async fn reconcile_archive(
    conn: &mut Connection,
    store: &dyn Store,
    info: &ServerInfo,
) -> Result<Option<Start>, SessionError> {
    let Some(archive) = archive_state(store, info).map_err(store_error)? else { return Ok(None) };
    let server = server_state(conn, info).await?;
    reconcile(&archive, &server)
        .map(Some)
        .map_err(|refusal| SessionError::Refused { server: conn.server().to_string(), refusal })
}

/// The archive as `reconcile` sees it (module docs).
fn archive_state(store: &dyn Store, info: &ServerInfo) -> Result<Option<ArchiveState>, StoreError> {
    let catalog = Catalog::read(store, SegmentSize::Known(info.segment_size))?;
    let Some((timeline, lsn)) = fork::newest_end(store, &catalog)? else { return Ok(None) };
    // Only fresh, zero-filled files: nothing to disagree with.
    let system_id = catalog.system_id(store)?.map_or(info.identity.system_id, |(id, _)| id);
    let history = (timeline > 1).then(|| fork::history(store, &catalog, timeline)).flatten();
    let segments =
        catalog.segments().iter().map(|s| HeldSegment { id: s.id, name: s.file.clone() }).collect();
    Ok(Some(ArchiveState {
        system_id,
        segment_size: info.segment_size,
        newest: Position { timeline, lsn },
        history,
        segments,
    }))
}

/// What the server says about its timelines.
async fn server_state(conn: &mut Connection, info: &ServerInfo) -> Result<ServerState, SessionError> {
    let timeline = info.identity.timeline;
    let history = if timeline > 1 { timeline_history(conn, timeline).await?.1 } else { Vec::new() };
    Ok(ServerState { system_id: info.identity.system_id, timeline, history, flushed: info.identity.xlogpos })
}

fn store_error(e: StoreError) -> SessionError {
    SessionError::Scan(Box::new(ScanError::Store(e)))
}

/// Summarise the WAL `tail` (of the archive in `dir`) that starting `child` at the fork leaves behind, and
/// warn about it: the transactions the old primary committed that `server` never had. None when the tail
/// holds no valid record, or cannot be read (said in the warning: the tail is kept either way).
pub fn report_tail(
    dir: &LocalWalDir,
    segment_size: u32,
    tail: &DivergedTail,
    child: TimeLineId,
    server: &str,
) -> Option<TailReport> {
    let store = LocalStore::new(dir.path());
    let summarized = Catalog::read(&store, SegmentSize::Known(segment_size)).and_then(|catalog| {
        fork::summarize(&store, &catalog, tail.timeline, ForkPoint { at: tail.from, child })
    });
    match summarized {
        Ok(Some(report)) => {
            tracing::warn!(
                server,
                timeline = report.timeline,
                fork = %report.from,
                bytes = report.bytes,
                commits = report.commits,
                last_commit = report.last_commit.as_deref().unwrap_or(""),
                "{server}: the archive holds WAL this server never had, kept as it is (a diverged tail): {}",
                report.describe()
            );
            Some(report)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(
                "{server}: the archive holds WAL of timeline {} past {}, where timeline {child} forked from it, \
                 which this server never had; kept as it is, but it could not be summarised: {e}",
                tail.timeline,
                tail.from
            );
            None
        }
    }
}
