//! Export stage: finished, sampled spans leave the agent here, either as OTLP
//! to a collector or as a live console view when no endpoint is configured.
//!
//! The pipeline hands spans to an [`Exporter`] through a bounded queue that
//! never blocks it; one background task drains the queue into the chosen sink.

mod batch;
mod config;
mod console;
mod grpc;
mod metrics;
mod otlp;
mod proto;
mod stats;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod test_tls;
mod tls;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;

pub use config::{
    check_endpoint, Compression, ExportConfig, ExportFlags, Protocol, Signal, TlsFiles,
};
pub use metrics::export_metrics;
pub use otlp::encode_request;
pub use stats::ExportStats;

use crate::span::Span;
use stats::{add, Counters};

/// Handle held by the pipeline; dropping it without [`Exporter::shutdown`]
/// closes the queue and lets the task finish in the background.
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Spawns the export task on the current tokio runtime. A collector that
    /// is down at start-up is fine: connections are made lazily.
    pub fn start(cfg: ExportConfig) -> Result<Exporter> {
        ensure!(
            cfg.queue_capacity > 0,
            "export queue capacity must be at least 1"
        );
        ensure!(cfg.max_batch > 0, "export batch size must be at least 1");
        let runtime = tokio::runtime::Handle::try_current()
            .context("the exporter must be started inside a tokio runtime")?;
        let (queue, spans) = mpsc::channel(cfg.queue_capacity);
        let counters = Arc::new(Counters::default());

        let sink: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match cfg
            .endpoint
            .clone()
        {
            None => {
                tracing::info!("no OTLP endpoint configured: printing traces to stdout");
                Box::pin(console::run(spans, cfg.batch_timeout, counters.clone()))
            }
            Some(endpoint) => {
                let transport = transport::Transport::new(&endpoint, &cfg, Signal::Traces)?;
                tracing::info!(%endpoint, protocol = %cfg.protocol, "exporting spans over OTLP");
                let batching = batch::Batching {
                    max_batch: cfg.max_batch,
                    linger: cfg.batch_timeout,
                    deadline: cfg.batch_deadline,
                };
                Box::pin(batch::run(
                    spans,
                    transport,
                    endpoint,
                    batching,
                    counters.clone(),
                ))
            }
        };
        let reporter_counters = counters.clone();
        let task = runtime.spawn(async move {
            // The drop reporter lives exactly as long as the sink.
            tokio::select! {
                () = sink => {}
                () = stats::report_drops(&reporter_counters) => {}
            }
        });
        Ok(Exporter {
            queue,
            counters,
            task,
        })
    }

    /// Never blocks, never awaits: if the queue is full the span is
    /// dropped and counted. Whether the span was queued.
    pub fn submit(&self, span: Span) -> bool {
        let (counter, queued) = match self.queue.try_send(span) {
            Ok(()) => (&self.counters.queued, true),
            Err(TrySendError::Full(_)) => (&self.counters.dropped_queue_full, false),
            Err(TrySendError::Closed(_)) => (&self.counters.dropped_stopped, false),
        };
        add(counter, 1);
        queued
    }

    /// More than half the queue is waiting: the pipeline should leave
    /// records in the ring buffer for a while.
    pub fn is_backed_up(&self) -> bool {
        self.queue.capacity() < self.queue.max_capacity() / 2
    }

    pub fn stats(&self) -> ExportStats {
        let depth = self.queue.max_capacity() - self.queue.capacity();
        self.counters.snapshot(depth)
    }

    /// Whether the export task is alive (it only ends by panicking or at shutdown).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Flushes what is queued, giving up at `deadline`, and stops the task.
    pub async fn shutdown(self, deadline: Duration) {
        let Exporter {
            queue,
            counters,
            mut task,
        } = self;
        // Closing the queue makes the task deliver what is left, then return.
        drop(queue);
        let finished = tokio::time::timeout(deadline, &mut task).await.is_ok();
        if !finished {
            task.abort();
        }
        let stats = counters.snapshot(0);
        if stats.pending() > 0 {
            tracing::warn!(
                unsent = stats.pending(),
                "export shutdown deadline reached; unsent spans lost"
            );
        }
        tracing::info!(
            exported = stats.exported,
            dropped = stats.dropped(),
            rejected = stats.rejected,
            "exporter stopped"
        );
    }
}
