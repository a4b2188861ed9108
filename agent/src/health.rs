//! `/healthz` (the process is alive), `/readyz` (probes attached and the
//! exporter running) and `/metrics` (the agent's counters, Prometheus text).

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{extract::State, http::StatusCode, routing::get, Router};

use crate::stats::Stats;

pub async fn serve(addr: SocketAddr, stats: Arc<Stats>) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|State(s): State<Arc<Stats>>| async move { s.render_prometheus() }),
        )
        .with_state(stats);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --health-listen {addr}"))?;
    tracing::info!(%addr, "health endpoint listening");
    axum::serve(listener, app)
        .await
        .context("health endpoint failed")
}

async fn ready(State(s): State<Arc<Stats>>) -> (StatusCode, &'static str) {
    if s.ready.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
