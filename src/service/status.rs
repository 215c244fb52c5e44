//! /status: one JSON object per source — where it is (phase, server, timeline), its positions as LSNs, its
//! counters, its last error, and what its archive holds (from [`archives`](super::archives), listed off the
//! request path).

use crate::service::archives::ArchiveSummary;
use crate::service::metrics::{lag_bytes, Sample};
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
    /// None until the archive was first listed.
    pub archive: Option<&'a ArchiveSummary>,
}

fn unix(t: Option<SystemTime>) -> Option<f64> {
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
        archive,
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
        let sample = Sample { source: "db".into(), state };
        let json = serde_json::to_value(source_status(&sample, Path::new("/a"), None)).unwrap();
        assert_eq!(json["phase"], "streaming");
        assert_eq!(json["flushed_lsn"], "1/00000000");
        assert_eq!(json["received_lsn"], serde_json::Value::Null);
        assert_eq!(json["lag_bytes"], 256);
        assert_eq!(json["system_identifier"], "7400000000000000001");
        assert_eq!(json["directory"], "/a");
        assert_eq!(json["archive"], serde_json::Value::Null);
    }
}
