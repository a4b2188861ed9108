//! `/healthz` (the process is alive), `/readyz` (probes attached and the
//! exporter running) and `/metrics` (the agent's counters and the RED
//! metrics, Prometheus text or OpenMetrics by the scraper's `Accept`).

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    routing::get,
    Router,
};

use crate::{
    metrics::{exposition, Shared},
    stats::Stats,
};

#[derive(Clone)]
struct Telemetry {
    stats: Arc<Stats>,
    metrics: Shared,
}

pub async fn serve(addr: SocketAddr, stats: Arc<Stats>, metrics: Shared) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .with_state(Telemetry { stats, metrics });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --health-listen {addr}"))?;
    tracing::info!(%addr, "health endpoint listening");
    axum::serve(listener, app)
        .await
        .context("health endpoint failed")
}

async fn scrape(
    State(t): State<Telemetry>,
    headers: HeaderMap,
) -> impl axum::response::IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = exposition::Format::negotiate(accept);
    let mut body = t
        .stats
        .render_prometheus(format == exposition::Format::OpenMetrics);
    exposition::render(&t.metrics.lock(), format, &mut body);
    ([(header::CONTENT_TYPE, format.content_type())], body)
}

async fn ready(State(t): State<Telemetry>) -> (StatusCode, &'static str) {
    if t.stats.ready.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
