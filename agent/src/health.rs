//! `/healthz` (the process is alive), `/readyz` (probes attached and the
//! exporter running; with the synthetic probe's verdicts as detail) and
//! `/metrics` (the agent's counters and the RED metrics, Prometheus text or
//! OpenMetrics by the scraper's `Accept`).

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
    synthetic::Synthetic,
};

#[derive(Clone)]
pub struct Telemetry {
    pub stats: Arc<Stats>,
    pub metrics: Shared,
    pub synthetic: Option<Synthetic>,
}

pub async fn serve(addr: SocketAddr, telemetry: Telemetry) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .with_state(telemetry);
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
    let openmetrics = format == exposition::Format::OpenMetrics;
    let mut body = t.stats.render_prometheus(openmetrics);
    if let Some(s) = &t.synthetic {
        s.render_prometheus(openmetrics, &mut body);
    }
    exposition::render(&t.metrics.lock(), format, &mut body);
    ([(header::CONTENT_TYPE, format.content_type())], body)
}

/// The status says whether the agent is tracing; the synthetic probe's
/// verdicts are detail in the body, not the status: a collector outage
/// would otherwise mark every node's agent unready and stall a DaemonSet
/// rollout while nothing is wrong with the agents.
async fn ready(State(t): State<Telemetry>) -> (StatusCode, String) {
    let (status, mut body) = if t.stats.ready.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned())
    };
    if let Some(s) = &t.synthetic {
        body.push_str(&s.readiness());
    }
    (status, body)
}
