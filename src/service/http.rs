//! The HTTP endpoints (axum, on the service's main runtime — never on a source's thread): `/metrics`
//! (Prometheus text format), `/health` (200 or 503 with JSON), `/status` (JSON), `/` (their list). And a
//! client, [`get`]: a plain HTTP/1.1 GET, for container health checks and the demo.

use crate::service::shared::Shared;
use crate::service::{health, metrics, status};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JSON: &str = "application/json";

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", routing::get(index))
        .route("/metrics", routing::get(metrics_page))
        .route("/health", routing::get(health_page))
        .route("/status", routing::get(status_page))
        .with_state(shared)
}

async fn index() -> &'static str {
    "walkeeper service\n/metrics  Prometheus metrics\n/health   200 when every source streams, else 503\n/status   JSON status of every source\n"
}

async fn metrics_page(State(shared): State<Arc<Shared>>) -> Response {
    let samples = shared.samples().into_iter().map(|(s, _)| s).collect();
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render(samples)).into_response()
}

async fn health_page(State(shared): State<Arc<Shared>>) -> Response {
    let samples: Vec<_> = shared.samples().into_iter().map(|(s, _)| s).collect();
    let verdict = health::health(&samples);
    let code = if verdict.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, JSON)], json(&verdict)).into_response()
}

async fn status_page(State(shared): State<Arc<Shared>>) -> Response {
    let samples = shared.samples();
    let archives: Vec<_> = samples.iter().map(|(_, dir)| shared.archive(dir)).collect();
    let sources = samples
        .iter()
        .zip(&archives)
        .map(|((sample, dir), archive)| status::source_status(sample, dir, archive.as_ref()))
        .collect();
    let body = status::Status {
        version: env!("CARGO_PKG_VERSION"),
        config: shared.config_file.display().to_string(),
        sources,
    };
    ([(header::CONTENT_TYPE, JSON)], json(&body)).into_response()
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Plain structs of strings and numbers: serialization cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// How long [`get`] waits for the whole answer.
const GET_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers are read up to this many bytes (a /metrics page of a thousand sources fits).
const MAX_ANSWER: u64 = 16 << 20;

/// GET `url` (`http://HOST:PORT/PATH`, HTTP/1.1, `Connection: close`): the status code and the body. A
/// client without curl for container health checks (`walkeeper service --health-check URL`) and the demo.
pub async fn get(url: &str) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("\"{url}\" is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(format!("\"{url}\" has no usable host and port"));
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(GET_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {} seconds", GET_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{url}: {}", crate::protocol::codec::os_error(&e)))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .lines()
        .next()
        .filter(|l| l.starts_with("HTTP/1."))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    Ok((code, body.to_string()))
}
