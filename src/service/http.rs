//! The HTTP endpoints (axum, on the service's main runtime — never on a source's thread): `/metrics`
//! (Prometheus text format), `/health` (200 or 503 with JSON), `/status` (JSON), `/` (their list). And the
//! client side of `/health` for container health checks: [`probe`], a plain HTTP/1.1 GET.

use crate::service::shared::Shared;
use crate::service::{health, metrics, status};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JSON: &str = "application/json";

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics_page))
        .route("/health", get(health_page))
        .route("/status", get(status_page))
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

/// How long [`probe`] waits for the whole answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// GET `url` (`http://HOST:PORT/PATH`) and return the status code: a health check without curl.
pub async fn probe(url: &str) -> Result<u16, String> {
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
        // The status line is all we need; read a bounded amount.
        let mut head = vec![0u8; 512];
        let mut len = 0;
        while len < head.len() && !head[..len].contains(&b'\n') {
            match stream.read(&mut head[len..]).await? {
                0 => break,
                n => len += n,
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..len]).into_owned())
    };
    let head = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {} seconds", PROBE_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{url}: {}", crate::protocol::codec::os_error(&e)))?;
    let code = head
        .lines()
        .next()
        .filter(|l| l.starts_with("HTTP/1."))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    code.ok_or_else(|| format!("{url}: not an HTTP answer"))
}
