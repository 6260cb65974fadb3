//! `GET /metrics` (`--metrics-listen`) through the one HTTP stack: the exposition of
//! `net::metrics::Metrics`, with the gauges read at scrape time set first. Anything
//! else (another path, another method) is a 404. Plain HTTP, 16 connections, 5 s for
//! a request, 8 KiB of head: a scraper sends one small request at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::net::metrics::Metrics;

/// Metrics connections open at once.
const MAX_CONNECTIONS: usize = 16;

/// Binds `--metrics-listen`.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    super::http::bind(address).await
}

/// Serves `GET /metrics` on `listener` until the task is dropped; `refresh` sets the
/// gauges read at scrape time before each answer.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, refresh: Arc<dyn Fn() + Send + Sync>) {
    let scrape = move || {
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        async move {
            refresh();
            let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            ([(header::CONTENT_TYPE, kind)], metrics.encode()).into_response()
        }
    };
    let router =
        Router::new().route("/metrics", get(scrape)).method_not_allowed_fallback(not_found).fallback(not_found);
    let limits = super::http::Limits {
        what: "metrics",
        connections: MAX_CONNECTIONS,
        request_timeout: Duration::from_secs(5),
        max_head_bytes: 8 * 1024,
    };
    super::http::serve(listener, router, None, limits).await;
}

async fn not_found() -> Response {
    let body = "only GET /metrics is served here\n";
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}
