//! /metrics: every source's published state in the Prometheus text format (0.0.4), one series per metric
//! and source (`source` label), each present from startup (counters at 0, positions at 0 until known).
//! Built at each scrape from the state channels by a prometheus-client [`Collector`]; nothing is kept
//! between scrapes. LSNs are exported as byte positions (the LSN as a 64-bit number, what
//! `pg_current_wal_lsn() - '0/0'` gives in SQL), so differences are byte counts. The upload metrics are
//! the exception to "every source": only sources with `upload` have them (from startup), so that an
//! expression over them never matches a source that does not upload. docs/service.md documents each metric.

use crate::archive::upload::UploadState;
use crate::serve::{downstreams, Downstream};
use crate::stream::state::{Phase, SourceState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::time::SystemTime;

/// The Content-Type of what [`render`] returns.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One source at scrape time.
#[derive(Clone, Debug)]
pub struct Sample {
    pub source: String,
    pub state: SourceState,
    /// With `[source.serve]`: where its walsender listens and the standbys streaming from it.
    pub serve: Option<ServeSample>,
    /// The uploader's state, for a source with `upload`.
    pub upload: Option<UploadState>,
}

/// A source's walsender at scrape time.
#[derive(Clone, Debug)]
pub struct ServeSample {
    pub listen: String,
    pub downstreams: Vec<Downstream>,
    /// Why it stopped serving, when it did.
    pub error: Option<String>,
}

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

enum Value {
    Int(u64),
    Float(f64),
}

/// A metric: its name without unit and `_total` suffixes (the encoder adds them), help, unit, kind and
/// how to read it from a state (`S`: the source's or its uploader's).
struct Def<S = SourceState> {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: Kind,
    value: fn(&S) -> Value,
}

fn lsn(l: Option<crate::wal::Lsn>) -> Value {
    Value::Int(l.map_or(0, |l| l.0))
}

/// Seconds since the Unix epoch (`/status`'s reading); 0 for never.
fn unix_seconds(t: Option<SystemTime>) -> f64 {
    crate::service::status::unix(t).unwrap_or(0.0)
}

/// The server's end of WAL minus the flushed position: WAL the server has that is not safe here yet.
pub fn lag_bytes(s: &SourceState) -> u64 {
    match (s.server_end, s.flushed) {
        (Some(end), Some(flushed)) => end.0.saturating_sub(flushed.0),
        _ => 0,
    }
}

const DEFS: &[Def] = &[
    Def {
        name: "walkeeper_source_up",
        help: "1 while the source streams, 0 while it connects, retries or has stopped",
        unit: None,
        kind: Kind::Gauge,
        value: |s| Value::Int(u64::from(s.phase == Phase::Streaming)),
    },
    Def {
        name: "walkeeper_received_lsn",
        help: "End of the WAL written to the archive's files, as a byte position (0 until known)",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |s| lsn(s.received),
    },
    Def {
        name: "walkeeper_flushed_lsn",
        help: "End of the WAL that is fsynced and validated, as a byte position (0 until known)",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |s| lsn(s.flushed),
    },
    Def {
        name: "walkeeper_server_lsn",
        help: "The server's end of WAL as it last reported it, as a byte position (0 until known)",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |s| lsn(s.server_end),
    },
    Def {
        name: "walkeeper_lag",
        help: "Server end of WAL minus flushed position: WAL not yet safe in the archive (0 until both are known)",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |s| Value::Int(lag_bytes(s)),
    },
    Def {
        name: "walkeeper_timeline",
        help: "Timeline being streamed (0 until known)",
        unit: None,
        kind: Kind::Gauge,
        value: |s| Value::Int(s.timeline.map_or(0, u64::from)),
    },
    Def {
        name: "walkeeper_segments_completed",
        help: "Segments completed: fsynced, validated and renamed to their final name",
        unit: None,
        kind: Kind::Counter,
        value: |s| Value::Int(s.segments_completed),
    },
    Def {
        name: "walkeeper_received",
        help: "WAL bytes received (a segment streamed again after a reconnect counts again)",
        unit: Some(Unit::Bytes),
        kind: Kind::Counter,
        value: |s| Value::Int(s.received_bytes),
    },
    Def {
        name: "walkeeper_reconnects",
        help: "Sessions that failed and were retried",
        unit: None,
        kind: Kind::Counter,
        value: |s| Value::Int(s.reconnects),
    },
    Def {
        name: "walkeeper_invalid_wal",
        help: "Sessions that ended because the WAL received failed validation",
        unit: None,
        kind: Kind::Counter,
        value: |s| Value::Int(s.invalid_wal),
    },
    Def {
        name: "walkeeper_last_message_timestamp",
        help: "When the last message from the server arrived, seconds since the Unix epoch (0: never)",
        unit: Some(Unit::Seconds),
        kind: Kind::Gauge,
        value: |s| Value::Float(unix_seconds(s.last_message)),
    },
    Def {
        name: "walkeeper_retention_removed_segments",
        help: "Segment files removed by the source's retention (keep_backups); 0 without it",
        unit: None,
        kind: Kind::Counter,
        value: |s| Value::Int(s.retention.removed),
    },
    Def {
        name: "walkeeper_retention_failures",
        help: "Retention runs that failed (the error is in /status and the log)",
        unit: None,
        kind: Kind::Counter,
        value: |s| Value::Int(s.retention.failures),
    },
    Def {
        name: "walkeeper_retention_last_success_timestamp",
        help: "When the source's retention last ran without error, seconds since the Unix epoch (0: never)",
        unit: Some(Unit::Seconds),
        kind: Kind::Gauge,
        value: |s| Value::Float(unix_seconds(s.retention.last_success)),
    },
];

/// The uploader's metrics (sources with `upload` only), besides `walkeeper_uploads_total{result}`.
const UPLOAD_DEFS: &[Def<UploadState>] = &[
    Def {
        name: "walkeeper_upload_backlog_segments",
        help: "Complete segment and history files in the directory not yet in the upload store",
        unit: None,
        kind: Kind::Gauge,
        value: |u| Value::Int(u.backlog_files),
    },
    Def {
        name: "walkeeper_uploaded_lsn",
        help: "Every flushed WAL byte below this position is in the upload store, as a byte position (0 until the store answered once)",
        unit: Some(Unit::Bytes),
        kind: Kind::Gauge,
        value: |u| lsn(u.uploaded_through),
    },
];

#[derive(Debug)]
struct Sources(Vec<Sample>);

/// One family per definition, one series per (source, state) pair.
fn encode_defs<'a, S: 'a>(
    encoder: &mut DescriptorEncoder,
    defs: &[Def<S>],
    series: impl Iterator<Item = (&'a str, &'a S)> + Clone,
) -> Result<(), std::fmt::Error> {
    for def in defs {
        let metric_type = match def.kind {
            Kind::Gauge => ConstGauge::new(0i64).metric_type(),
            Kind::Counter => ConstCounter::new(0u64).metric_type(),
        };
        let mut metric = encoder.encode_descriptor(def.name, def.help, def.unit.as_ref(), metric_type)?;
        for (source, state) in series.clone() {
            let labels = [("source", source)];
            let family = metric.encode_family(&labels)?;
            match (def.kind, (def.value)(state)) {
                (Kind::Gauge, Value::Int(v)) => ConstGauge::new(v).encode(family)?,
                (Kind::Gauge, Value::Float(v)) => ConstGauge::new(v).encode(family)?,
                (Kind::Counter, Value::Int(v)) => ConstCounter::new(v).encode(family)?,
                (Kind::Counter, Value::Float(v)) => ConstCounter::new(v).encode(family)?,
            }
        }
    }
    Ok(())
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = Info::new([("version", env!("CARGO_PKG_VERSION"))]);
        info.encode(encoder.encode_descriptor(
            "walkeeper_build",
            "walkeeper's version; always 1",
            None,
            info.metric_type(),
        )?)?;
        encode_defs(&mut encoder, DEFS, self.0.iter().map(|s| (s.source.as_str(), &s.state)))?;
        let uploads = self.0.iter().filter_map(|s| Some((s.source.as_str(), s.upload.as_ref()?)));
        encode_defs(&mut encoder, UPLOAD_DEFS, uploads.clone())?;
        let mut metric = encoder.encode_descriptor(
            "walkeeper_uploads",
            "Files uploaded (result=ok, or found there identical), upload attempts that failed and are retried (failed), files whose name the store holds with other contents, never retried (conflict)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (source, u) in uploads {
            for (result, v) in [("ok", u.uploads_ok), ("failed", u.uploads_failed), ("conflict", u.conflicts)]
            {
                let labels = [("source", source), ("result", result)];
                ConstCounter::new(v).encode(metric.encode_family(&labels)?)?;
            }
        }
        encode_downstreams(&self.0, &mut encoder)
    }
}

/// `walkeeper_downstreams` and the oldest WAL they still need for every source (0 without a walsender or a
/// standby), and each connected standby's flushed position. Standbys sharing an application_name share a series: the lowest position (the one behind).
fn encode_downstreams(samples: &[Sample], encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(0i64).metric_type();
    let mut count = encoder.encode_descriptor(
        "walkeeper_downstreams",
        "Standbys streaming from the source's walsender ([source.serve]; 0 without one)",
        None,
        gauge,
    )?;
    for sample in samples {
        let n = sample.serve.as_ref().map_or(0, |s| s.downstreams.len() as u64);
        ConstGauge::new(n).encode(count.encode_family(&[("source", sample.source.as_str())])?)?;
    }
    let mut oldest = encoder.encode_descriptor(
        "walkeeper_downstream_oldest_needed_lsn",
        "The oldest WAL a standby streaming from the walsender still needs (retention keeps it), as a byte position; 0 with none connected",
        Some(&Unit::Bytes),
        gauge,
    )?;
    for sample in samples {
        let needed = sample.serve.as_ref().and_then(|s| downstreams::oldest(&s.downstreams));
        let at = needed.map_or(0, |n| n.lsn.0);
        ConstGauge::new(at).encode(oldest.encode_family(&[("source", sample.source.as_str())])?)?;
    }
    let mut flushed = encoder.encode_descriptor(
        "walkeeper_downstream_flushed_lsn",
        "What a standby streaming from the walsender reported as flushed, as a byte position (0 before its first report); one series per application_name, the lowest when several share it",
        Some(&Unit::Bytes),
        gauge,
    )?;
    for sample in samples {
        let mut lowest: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for d in sample.serve.iter().flat_map(|s| &s.downstreams) {
            let at = d.flush.map_or(0, |l| l.0);
            let e = lowest.entry(d.application_name.as_str()).or_insert(at);
            *e = (*e).min(at);
        }
        for (name, at) in lowest {
            let labels = [("source", sample.source.as_str()), ("application_name", name)];
            ConstGauge::new(at).encode(flushed.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// The text of a scrape.
pub fn render(samples: Vec<Sample>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Sources(samples)));
    let mut out = String::new();
    // Writing into a String cannot fail, and every value encodes.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Lsn;
    use std::time::Duration;

    /// `name{source="x"}` → value, from a scrape.
    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .to_string()
    }

    #[test]
    fn every_series_of_every_source_from_the_start() {
        let text = render(vec![
            Sample { source: "a".into(), state: SourceState::default(), serve: None, upload: None },
            Sample { source: "b".into(), state: SourceState::default(), serve: None, upload: None },
        ]);
        for name in [
            "walkeeper_source_up",
            "walkeeper_received_lsn_bytes",
            "walkeeper_flushed_lsn_bytes",
            "walkeeper_server_lsn_bytes",
            "walkeeper_lag_bytes",
            "walkeeper_timeline",
            "walkeeper_segments_completed_total",
            "walkeeper_received_bytes_total",
            "walkeeper_reconnects_total",
            "walkeeper_invalid_wal_total",
            "walkeeper_last_message_timestamp_seconds",
            "walkeeper_retention_removed_segments_total",
            "walkeeper_retention_failures_total",
            "walkeeper_retention_last_success_timestamp_seconds",
        ] {
            for source in ["a", "b"] {
                let v: f64 = value(&text, &format!("{name}{{source=\"{source}\"}}")).parse().unwrap();
                assert_eq!(v, 0.0, "{name}");
            }
        }
        assert!(text.contains("# TYPE walkeeper_reconnects_total counter\n"), "{text}");
        assert!(text.contains("# TYPE walkeeper_lag_bytes gauge\n"), "{text}");
        assert!(text.contains("# HELP walkeeper_lag_bytes "), "{text}");
        assert_eq!(
            value(&text, &format!("walkeeper_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
            "1"
        );
    }

    #[test]
    fn values_come_from_the_state() {
        let state = SourceState {
            phase: Phase::Streaming,
            timeline: Some(3),
            received: Some(Lsn(0x1_0000_2000)),
            flushed: Some(Lsn(0x1_0000_1000)),
            server_end: Some(Lsn(0x1_0000_3000)),
            segments_completed: 7,
            received_bytes: 123,
            reconnects: 2,
            invalid_wal: 1,
            last_message: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)),
            retention: crate::stream::state::RetentionState {
                removed: 12,
                failures: 1,
                last_success: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100)),
                last_error: None,
            },
            ..SourceState::default()
        };
        let text = render(vec![Sample { source: "db".into(), state, serve: None, upload: None }]);
        let v = |name: &str| value(&text, &format!("{name}{{source=\"db\"}}"));
        assert_eq!(v("walkeeper_source_up"), "1");
        assert_eq!(v("walkeeper_timeline"), "3");
        assert_eq!(v("walkeeper_received_lsn_bytes"), "4294975488");
        assert_eq!(v("walkeeper_flushed_lsn_bytes"), "4294971392");
        assert_eq!(v("walkeeper_server_lsn_bytes"), "4294979584");
        assert_eq!(v("walkeeper_lag_bytes"), "8192");
        assert_eq!(v("walkeeper_segments_completed_total"), "7");
        assert_eq!(v("walkeeper_received_bytes_total"), "123");
        assert_eq!(v("walkeeper_reconnects_total"), "2");
        assert_eq!(v("walkeeper_invalid_wal_total"), "1");
        assert_eq!(v("walkeeper_last_message_timestamp_seconds"), "1700000000.5");
        assert_eq!(v("walkeeper_retention_removed_segments_total"), "12");
        assert_eq!(v("walkeeper_retention_failures_total"), "1");
        assert_eq!(v("walkeeper_retention_last_success_timestamp_seconds"), "1700000100.0");
    }

    #[test]
    fn every_metric_is_documented_and_the_alert_rules_are_the_docs_ones() {
        let docs = include_str!("../../docs/service.md");
        let text = render(vec![Sample {
            source: "x".into(),
            state: SourceState::default(),
            serve: None,
            upload: Some(UploadState::default()),
        }]);
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                docs.contains(&format!("| `{name}` |")),
                "{name} is not in docs/service.md's metrics table"
            );
        }
        let rules = include_str!("../../docker/alerts.yml");
        assert!(docs.contains(rules), "docs/service.md does not show docker/alerts.yml as it is");
    }

    #[test]
    fn downstreams_per_source_and_per_application_name() {
        use crate::serve::{Downstream, DownstreamState};
        let standby = |id, name: &str, start, flush| Downstream {
            id,
            application_name: name.into(),
            user: "standby".into(),
            client_addr: "127.0.0.1:5000".parse().unwrap(),
            state: DownstreamState::Streaming,
            timeline: 1,
            start: Lsn(start),
            sent: Lsn(start),
            write: None,
            flush,
            replay: None,
            xmin: None,
            connected_at: SystemTime::UNIX_EPOCH,
            last_reply: None,
        };
        let downstreams = vec![
            standby(1, "dr", 0x100, Some(Lsn(0x900))),
            standby(2, "dr", 0x100, Some(Lsn(0x500))),
            standby(3, "late", 0x300, None),
        ];
        let serve = Some(ServeSample { listen: "127.0.0.1:5499".into(), downstreams, error: None });
        let text = render(vec![
            Sample { source: "db".into(), state: SourceState::default(), serve, upload: None },
            Sample { source: "plain".into(), state: SourceState::default(), serve: None, upload: None },
        ]);
        assert_eq!(value(&text, "walkeeper_downstreams{source=\"db\"}"), "3");
        assert_eq!(value(&text, "walkeeper_downstreams{source=\"plain\"}"), "0");
        // The standby that has flushed nothing yet needs everything from where it started.
        assert_eq!(value(&text, "walkeeper_downstream_oldest_needed_lsn_bytes{source=\"db\"}"), "768");
        assert_eq!(value(&text, "walkeeper_downstream_oldest_needed_lsn_bytes{source=\"plain\"}"), "0");
        let flushed = |name: &str| {
            value(
                &text,
                &format!(
                    "walkeeper_downstream_flushed_lsn_bytes{{source=\"db\",application_name=\"{name}\"}}"
                ),
            )
        };
        assert_eq!((flushed("dr"), flushed("late")), ("1280".to_string(), "0".to_string()));
    }

    #[test]
    fn upload_series_only_for_sources_that_upload() {
        let upload = UploadState {
            uploaded_through: Some(Lsn(0x2_0000_0000)),
            backlog_files: 3,
            uploads_ok: 10,
            uploads_failed: 2,
            conflicts: 1,
            ..UploadState::default()
        };
        let text = render(vec![
            Sample { source: "up".into(), state: SourceState::default(), serve: None, upload: Some(upload) },
            Sample {
                source: "fresh".into(),
                state: SourceState::default(),
                serve: None,
                upload: Some(UploadState::default()),
            },
            Sample { source: "plain".into(), state: SourceState::default(), serve: None, upload: None },
        ]);
        let v = |series: &str| value(&text, series);
        assert_eq!(v("walkeeper_upload_backlog_segments{source=\"up\"}"), "3");
        assert_eq!(v("walkeeper_uploaded_lsn_bytes{source=\"up\"}"), "8589934592");
        assert_eq!(v("walkeeper_uploads_total{source=\"up\",result=\"ok\"}"), "10");
        assert_eq!(v("walkeeper_uploads_total{source=\"up\",result=\"failed\"}"), "2");
        assert_eq!(v("walkeeper_uploads_total{source=\"up\",result=\"conflict\"}"), "1");
        // From the start: zeros until the uploader knows better.
        assert_eq!(v("walkeeper_uploaded_lsn_bytes{source=\"fresh\"}"), "0");
        for result in ["ok", "failed", "conflict"] {
            assert_eq!(v(&format!("walkeeper_uploads_total{{source=\"fresh\",result=\"{result}\"}}")), "0");
        }
        assert!(
            !text.lines().any(|l| l.starts_with("walkeeper_upload") && l.contains("\"plain\"")),
            "{text}"
        );
        assert!(text.contains("walkeeper_flushed_lsn_bytes{source=\"plain\"} 0\n"), "{text}");
        assert!(text.contains("# TYPE walkeeper_uploads_total counter\n"), "{text}");
    }

    #[test]
    fn lag_is_never_negative() {
        let s = SourceState { server_end: Some(Lsn(10)), flushed: Some(Lsn(20)), ..SourceState::default() };
        assert_eq!(lag_bytes(&s), 0);
    }
}
