//! OTLP metrics: the registry's cumulative state is sent every export
//! interval (`OTEL_METRIC_EXPORT_INTERVAL`) and once more at shutdown.
//! A failed export is logged and counted, not retried: the next one
//! carries the same cumulative counts.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use prost::Message;
use tokio::sync::oneshot;

use super::{transport::Transport, ExportConfig, Signal};
use crate::{
    clock::unix_now_ns,
    metrics::{otlp, Shared},
    stats::{self, Stats},
};

/// Runs until `stop` fires (or its sender is dropped), then exports once more.
pub async fn export_metrics(
    cfg: ExportConfig,
    interval: Duration,
    registry: Shared,
    stats: Arc<Stats>,
    mut stop: oneshot::Receiver<()>,
) -> Result<()> {
    let Some(endpoint) = cfg.endpoint.clone() else {
        return Ok(());
    };
    let mut transport = Transport::new(&endpoint, &cfg, Signal::Metrics)?;
    tracing::info!(%endpoint, protocol = %cfg.protocol, ?interval, "exporting metrics over OTLP");
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = &mut stop => true,
        };
        export_once(&mut transport, &registry, &stats).await;
        if last {
            return Ok(());
        }
    }
}

async fn export_once(transport: &mut Transport, registry: &Shared, stats: &Stats) {
    let Some(request) = otlp::request(&registry.lock(), unix_now_ns()) else {
        return;
    };
    match transport.send(&request.encode_to_vec().into()).await {
        // The transport logs partial successes.
        Ok(_rejected) => {}
        Err(e) => {
            stats::add(&stats.metric_exports_failed, 1);
            tracing::warn!("exporting metrics failed: {e}");
        }
    }
}
