//! /status: one JSON object per source — where it is (phase, server, timeline), its positions as LSNs, its
//! counters, its last error, what its archive holds (from [`archives`](super::archives), listed off the
//! request path), and how its uploads stand (sources with `upload`).

use crate::archive::upload::UploadState;
use crate::serve::downstreams;
use crate::service::archives::ArchiveSummary;
use crate::service::metrics::{lag_bytes, Sample, ServeSample};
use serde::Serialize;
use std::path::Path;
use std::time::SystemTime;

#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub version: &'static str,
    pub config: String,
    pub sources: Vec<SourceStatus<'a>>,
}

#[derive(Debug, Serialize)]
pub struct SourceStatus<'a> {
    pub name: &'a str,
    pub directory: String,
    pub phase: &'static str,
    pub phase_since_unix: Option<f64>,
    /// `host:port` of the current (or last) server.
    pub server: Option<&'a str>,
    pub server_version: Option<&'a str>,
    /// A string: JSON readers lose digits of numbers above 2^53.
    pub system_identifier: Option<String>,
    pub timeline: Option<u32>,
    pub received_lsn: Option<String>,
    pub flushed_lsn: Option<String>,
    pub server_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub last_message_unix: Option<f64>,
    pub last_error: Option<&'a str>,
    pub segments_completed: u64,
    pub received_bytes: u64,
    pub reconnects: u64,
    pub invalid_wal: u64,
    /// Retention (`keep_backups`): segment files removed, failed runs, the last success, the last error.
    pub retention_removed_segments: u64,
    pub retention_failures: u64,
    pub retention_last_success_unix: Option<f64>,
    pub retention_last_error: Option<&'a str>,
    /// None until the archive was first listed.
    pub archive: Option<&'a ArchiveSummary>,
    /// With `[source.serve]`: the walsender and the standbys streaming from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve: Option<ServeStatus<'a>>,
    /// None without `upload`.
    pub upload: Option<UploadStatus<'a>>,
}

/// A source's walsender.
#[derive(Debug, Serialize)]
pub struct ServeStatus<'a> {
    pub listen: &'a str,
    /// Why the walsender stopped serving (its address taken, say); a reload starts it again.
    pub error: Option<&'a str>,
    /// The oldest WAL a connected standby still needs (retention keeps it), as an LSN.
    pub oldest_needed_lsn: Option<String>,
    pub downstreams: Vec<DownstreamStatus<'a>>,
}

/// One standby streaming from the walsender, as `pg_stat_replication` shows one.
#[derive(Debug, Serialize)]
pub struct DownstreamStatus<'a> {
    pub application_name: &'a str,
    pub client_addr: String,
    pub user: &'a str,
    /// `catchup` while behind the end of the archive, then `streaming`.
    pub state: &'static str,
    pub timeline: u32,
    pub start_lsn: String,
    pub sent_lsn: String,
    pub write_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// Its hot standby feedback (not passed to the primary).
    pub xmin: Option<u32>,
    pub connected_since_unix: Option<f64>,
    pub last_reply_unix: Option<f64>,
}

fn serve_status(s: &ServeSample) -> ServeStatus<'_> {
    let lsn = |l: Option<crate::wal::Lsn>| l.map(|l| l.to_string());
    ServeStatus {
        listen: &s.listen,
        error: s.error.as_deref(),
        oldest_needed_lsn: lsn(downstreams::oldest(&s.downstreams).map(|n| n.lsn)),
        downstreams: s
            .downstreams
            .iter()
            .map(|d| DownstreamStatus {
                application_name: &d.application_name,
                client_addr: d.client_addr.to_string(),
                user: &d.user,
                state: d.state.name(),
                timeline: d.timeline,
                start_lsn: d.start.to_string(),
                sent_lsn: d.sent.to_string(),
                write_lsn: lsn(d.write),
                flush_lsn: lsn(d.flush),
                replay_lsn: lsn(d.replay),
                xmin: d.xmin.filter(|&x| x != 0),
                connected_since_unix: unix(Some(d.connected_at)),
                last_reply_unix: unix(d.last_reply),
            })
            .collect(),
    }
}

/// A source's uploads: how far the store's copy reaches, what waits, and whether the store is failing.
#[derive(Debug, Serialize)]
pub struct UploadStatus<'a> {
    pub location: &'a str,
    pub uploaded_lsn: Option<String>,
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    pub uploads_ok: u64,
    pub uploads_failed: u64,
    pub conflicts: u64,
    pub conflicted: &'a [String],
    pub partial_uploads: u64,
    /// Upload rounds fail (the store is down, unreachable or refuses); receiving goes on.
    pub failing: bool,
    pub last_error: Option<&'a str>,
    pub failing_since_unix: Option<f64>,
    pub last_upload_unix: Option<f64>,
}

fn upload_status(u: &UploadState) -> UploadStatus<'_> {
    UploadStatus {
        location: &u.location,
        uploaded_lsn: u.uploaded_through.map(|l| l.to_string()),
        backlog_files: u.backlog_files,
        backlog_bytes: u.backlog_bytes,
        uploads_ok: u.uploads_ok,
        uploads_failed: u.uploads_failed,
        conflicts: u.conflicts,
        conflicted: &u.conflicted,
        partial_uploads: u.partial_uploads,
        failing: u.last_error.is_some(),
        last_error: u.last_error.as_deref(),
        failing_since_unix: unix(u.failing_since),
        last_upload_unix: unix(u.last_upload),
    }
}

/// Seconds since the Unix epoch; `None` for never (or a time before 1970).
pub(crate) fn unix(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64())
}

/// One source's status.
pub fn source_status<'a>(
    sample: &'a Sample,
    directory: &Path,
    archive: Option<&'a ArchiveSummary>,
) -> SourceStatus<'a> {
    let s = &sample.state;
    SourceStatus {
        name: &sample.source,
        directory: directory.display().to_string(),
        phase: s.phase.name(),
        phase_since_unix: unix(s.phase_since),
        server: s.server.as_deref(),
        server_version: s.server_version.as_deref(),
        system_identifier: s.system_id.map(|id| id.to_string()),
        timeline: s.timeline,
        received_lsn: s.received.map(|l| l.to_string()),
        flushed_lsn: s.flushed.map(|l| l.to_string()),
        server_lsn: s.server_end.map(|l| l.to_string()),
        lag_bytes: (s.server_end.is_some() && s.flushed.is_some()).then(|| lag_bytes(s)),
        last_message_unix: unix(s.last_message),
        last_error: s.last_error.as_deref(),
        segments_completed: s.segments_completed,
        received_bytes: s.received_bytes,
        reconnects: s.reconnects,
        invalid_wal: s.invalid_wal,
        retention_removed_segments: s.retention.removed,
        retention_failures: s.retention.failures,
        retention_last_success_unix: unix(s.retention.last_success),
        retention_last_error: s.retention.last_error.as_deref(),
        archive,
        serve: sample.serve.as_ref().map(serve_status),
        upload: sample.upload.as_ref().map(upload_status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::state::{Phase, SourceState};
    use crate::wal::Lsn;

    #[test]
    fn positions_are_lsns_and_unknowns_are_null() {
        let state = SourceState {
            phase: Phase::Streaming,
            system_id: Some(7_400_000_000_000_000_001),
            flushed: Some(Lsn(0x1_0000_0000)),
            server_end: Some(Lsn(0x1_0000_0100)),
            ..SourceState::default()
        };
        let sample = Sample { source: "db".into(), state, serve: None, upload: None };
        let json = serde_json::to_value(source_status(&sample, Path::new("/a"), None)).unwrap();
        assert_eq!(json["phase"], "streaming");
        assert_eq!(json["flushed_lsn"], "1/00000000");
        assert_eq!(json["received_lsn"], serde_json::Value::Null);
        assert_eq!(json["lag_bytes"], 256);
        assert_eq!(json["system_identifier"], "7400000000000000001");
        assert_eq!(json["directory"], "/a");
        assert_eq!(json["archive"], serde_json::Value::Null);
        assert!(json.get("serve").is_none(), "no walsender, no serve object");
        assert_eq!(json["upload"], serde_json::Value::Null);
        assert_eq!(
            (json["retention_removed_segments"].as_u64(), json["retention_failures"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(json["retention_last_success_unix"], serde_json::Value::Null);
    }

    #[test]
    fn a_failing_retention_shows_its_error() {
        let state = SourceState {
            retention: crate::stream::state::RetentionState {
                removed: 5,
                failures: 2,
                last_success: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
                last_error: Some(
                    "could not remove \"/a/000000010000000000000003\": Permission denied".into(),
                ),
            },
            ..SourceState::default()
        };
        let sample = Sample { source: "db".into(), state, serve: None, upload: None };
        let json = serde_json::to_value(source_status(&sample, Path::new("/a"), None)).unwrap();
        assert_eq!(
            (json["retention_removed_segments"].as_u64(), json["retention_failures"].as_u64()),
            (Some(5), Some(2))
        );
        assert_eq!(json["retention_last_success_unix"], 1_700_000_000.0);
        assert!(json["retention_last_error"].as_str().unwrap().contains("Permission denied"));
    }

    #[test]
    fn downstreams_as_pg_stat_replication_shows_them() {
        use crate::serve::{Downstream, DownstreamState, Downstreams};
        let d = Downstreams::new();
        let standby = Downstream {
            id: 1,
            application_name: "dr1".into(),
            user: "standby".into(),
            client_addr: "10.1.2.4:51234".parse().unwrap(),
            state: DownstreamState::Streaming,
            timeline: 1,
            start: Lsn(0x5A00_0000),
            sent: Lsn(0x5A00_01C8),
            write: Some(Lsn(0x5A00_01C8)),
            flush: Some(Lsn(0x5A00_0100)),
            replay: None,
            xmin: Some(0),
            connected_at: SystemTime::UNIX_EPOCH,
            last_reply: None,
        };
        let _held = d.register(standby);
        let serve = Some(ServeSample { listen: "0.0.0.0:5499".into(), downstreams: d.list(), error: None });
        let sample = Sample { source: "db".into(), state: SourceState::default(), serve, upload: None };
        let json = serde_json::to_value(source_status(&sample, Path::new("/a"), None)).unwrap();
        let serve = &json["serve"];
        assert_eq!(serve["listen"], "0.0.0.0:5499");
        assert_eq!(serve["oldest_needed_lsn"], "0/5A000100");
        let one = &serve["downstreams"][0];
        assert_eq!(
            (one["application_name"].as_str(), one["state"].as_str()),
            (Some("dr1"), Some("streaming"))
        );
        assert_eq!(one["flush_lsn"], "0/5A000100");
        assert_eq!(one["replay_lsn"], serde_json::Value::Null);
        assert_eq!(one["xmin"], serde_json::Value::Null);
        assert_eq!(one["client_addr"], "10.1.2.4:51234");
    }

    #[test]
    fn uploads_show_the_store_failing() {
        let upload = UploadState {
            location: "s3://wal/main".into(),
            uploaded_through: Some(Lsn(0x3_0000_0000)),
            backlog_files: 4,
            uploads_failed: 2,
            last_error: Some("could not create \"s3://wal/main/x\": connection refused".into()),
            failing_since: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
            ..UploadState::default()
        };
        let sample =
            Sample { source: "db".into(), state: SourceState::default(), serve: None, upload: Some(upload) };
        let json = serde_json::to_value(source_status(&sample, Path::new("/a"), None)).unwrap();
        let u = &json["upload"];
        assert_eq!(u["location"], "s3://wal/main");
        assert_eq!(u["uploaded_lsn"], "3/00000000");
        assert_eq!((u["backlog_files"].as_u64(), u["uploads_failed"].as_u64()), (Some(4), Some(2)));
        assert_eq!(u["failing"], true);
        assert_eq!(u["failing_since_unix"], 1_700_000_000.0);
        assert!(u["last_error"].as_str().unwrap().contains("connection refused"));
        assert_eq!(u["conflicted"], serde_json::json!([]));
    }
}
