//! /health: 200 when every source streams, else 503 with a JSON body naming each source that does not and
//! why (its last error, or what it is doing). A lost connection shows at once (the source retries); a
//! server that hangs without closing the connection shows after the source's `receive_timeout`.

use crate::service::metrics::Sample;
use crate::stream::state::Phase;
use serde::Serialize;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub sources: usize,
    pub failing: Vec<Failing>,
}

/// A source that does not stream.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Failing {
    pub source: String,
    pub phase: &'static str,
    pub reason: String,
}

/// The verdict over every source.
pub fn health(samples: &[Sample]) -> Health {
    let failing: Vec<Failing> = samples
        .iter()
        .filter(|s| s.state.phase != Phase::Streaming)
        .map(|s| Failing {
            source: s.source.clone(),
            phase: s.state.phase.name(),
            reason: s.state.last_error.clone().unwrap_or_else(|| {
                match s.state.phase {
                    Phase::Starting => "not connected yet",
                    Phase::Connecting => "connecting",
                    Phase::Retrying => "waiting to reconnect",
                    Phase::Stopped => "stopped",
                    Phase::Streaming => "streaming",
                }
                .to_string()
            }),
        })
        .collect();
    Health { healthy: failing.is_empty(), sources: samples.len(), failing }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::state::SourceState;

    fn sample(source: &str, phase: Phase, error: Option<&str>) -> Sample {
        let state = SourceState { phase, last_error: error.map(str::to_string), ..SourceState::default() };
        Sample { source: source.into(), state, serve: None, upload: None }
    }

    #[test]
    fn healthy_only_when_every_source_streams() {
        let h = health(&[sample("a", Phase::Streaming, None), sample("b", Phase::Streaming, None)]);
        assert_eq!(h, Health { healthy: true, sources: 2, failing: vec![] });
        let h = health(&[
            sample("a", Phase::Streaming, None),
            sample("b", Phase::Retrying, Some("could not connect to server: Connection refused")),
            sample("c", Phase::Connecting, None),
        ]);
        assert!(!h.healthy);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            r#"{"healthy":false,"sources":3,"failing":[{"source":"b","phase":"retrying","reason":"could not connect to server: Connection refused"},{"source":"c","phase":"connecting","reason":"connecting"}]}"#
        );
    }
}
