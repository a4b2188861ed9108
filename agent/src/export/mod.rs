//! Export stage: finished, sampled spans (and, with log capture, log
//! records) leave the agent here, either as OTLP to a collector or as a
//! live console view when no endpoint is configured.
//!
//! The pipeline hands items to an [`Exporter`] through a bounded queue that
//! never blocks it; one background task drains the queue into the chosen
//! sink. Spans and log records share the machinery (queue, batching,
//! retries, transport): only their encoding and signal differ ([`Item`]).

mod batch;
mod config;
mod console;
mod grpc;
mod gzip;
mod metrics;
mod otlp;
mod otlp_logs;
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

use anyhow::{bail, ensure, Context, Result};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;

pub use config::{
    check_endpoint, Compression, ExportConfig, ExportFlags, Protocol, Signal, TlsFiles,
};
pub use metrics::export_metrics;
pub use otlp::encode_request;
pub use stats::ExportStats;
pub use transport::describe as describe_error;

use crate::{logs::LogRecord, span::Span};
use stats::{add, Counters};

/// Told, batch by batch, whether items reached their destination: the
/// collector acknowledged them (`Ok`), or why not. Called on the export
/// task, so it must be quick.
pub trait DeliveryReport<T = Span>: Send + Sync {
    fn delivered(&self, items: &[T], outcome: Result<(), &str>);
}

/// A report, if any, on what became of a kind of item.
pub type Report<T = Span> = Option<Arc<dyn DeliveryReport<T>>>;

/// What an exporter carries to OTLP.
pub trait Item: Send + Sync + 'static + Sized {
    /// Its OTLP signal: endpoint settings, path and service.
    const SIGNAL: Signal;
    /// What items are called in the agent's log lines.
    const NAME: &'static str;
    /// The encoded export request carrying `batch`.
    fn encode(batch: &[Self]) -> Vec<u8>;
}

impl Item for Span {
    const SIGNAL: Signal = Signal::Traces;
    const NAME: &'static str = "spans";
    fn encode(batch: &[Span]) -> Vec<u8> {
        otlp::encode_request(batch)
    }
}

impl Item for LogRecord {
    const SIGNAL: Signal = Signal::Logs;
    const NAME: &'static str = "log records";
    fn encode(batch: &[LogRecord]) -> Vec<u8> {
        otlp_logs::encode_request(batch)
    }
}

/// Handle held by the pipeline; dropping it without [`Exporter::shutdown`]
/// closes the queue and lets the task finish in the background.
pub struct Exporter<T = Span> {
    queue: mpsc::Sender<T>,
    counters: Arc<Counters>,
    /// `None` for log records shown in the console view, whose task the
    /// span exporter owns.
    task: Option<JoinHandle<()>>,
}

fn check(cfg: &ExportConfig) -> Result<tokio::runtime::Handle> {
    ensure!(
        cfg.queue_capacity > 0,
        "export queue capacity must be at least 1"
    );
    ensure!(cfg.max_batch > 0, "export batch size must be at least 1");
    tokio::runtime::Handle::try_current()
        .context("the exporter must be started inside a tokio runtime")
}

/// Runs `sink` with the drop reporter of `counters` beside it.
fn spawn(
    runtime: &tokio::runtime::Handle,
    sink: impl std::future::Future<Output = ()> + Send + 'static,
    counters: Arc<Counters>,
    name: &'static str,
) -> JoinHandle<()> {
    runtime.spawn(async move {
        // The drop reporter lives exactly as long as the sink.
        tokio::select! {
            () = sink => {}
            () = stats::report_drops(&counters, name) => {}
        }
    })
}

impl Exporter<Span> {
    /// Spawns the export task on the current tokio runtime: OTLP to the
    /// configured endpoint, or the console view without one. A collector
    /// that is down at start-up is fine: connections are made lazily.
    pub fn start(cfg: ExportConfig) -> Result<Exporter<Span>> {
        Ok(start_with_logs(cfg, None, None)?.0)
    }
}

impl<T: Item> Exporter<T> {
    /// OTLP to `endpoint`.
    fn otlp(cfg: ExportConfig, endpoint: String, report: Report<T>) -> Result<Exporter<T>> {
        let runtime = check(&cfg)?;
        let (queue, items) = mpsc::channel(cfg.queue_capacity);
        let counters = Arc::new(Counters::default());
        let transport = transport::Transport::new(&endpoint, &cfg, T::SIGNAL)?;
        tracing::info!(%endpoint, protocol = %cfg.protocol, "exporting {} over OTLP", T::NAME);
        let batching = batch::Batching {
            max_batch: cfg.max_batch,
            linger: cfg.batch_timeout,
            deadline: cfg.batch_deadline,
        };
        let sink = batch::run(
            items,
            transport,
            endpoint,
            batching,
            counters.clone(),
            report,
        );
        let task = spawn(&runtime, sink, counters.clone(), T::NAME);
        Ok(Exporter {
            queue,
            counters,
            task: Some(task),
        })
    }
}

/// The span exporter and, given the log records' settings, the log
/// exporter. Each goes to its own OTLP endpoint; without a span endpoint
/// spans go to the console view, and so do log records without one of
/// their own, under the spans they belong to. Log records with nowhere
/// to go while spans have an endpoint are a configuration error. `report`
/// hears what became of every batch of spans.
pub fn start_with_logs(
    traces: ExportConfig,
    logs: Option<ExportConfig>,
    report: Report,
) -> Result<(Exporter<Span>, Option<Exporter<LogRecord>>)> {
    let logs_endpoint = logs.as_ref().map(|l| l.endpoint.clone());
    match (traces.endpoint.clone(), logs_endpoint) {
        (Some(_), Some(None)) => bail!(
            "log capture is on but logs have no OTLP endpoint: set --otlp-endpoint, \
             OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
        ),
        (Some(endpoint), _) => {
            let spans = Exporter::otlp(traces, endpoint, report)?;
            let logs = logs.map(|l| {
                let endpoint = l.endpoint.clone().expect("checked above");
                Exporter::otlp(l, endpoint, None)
            });
            Ok((spans, logs.transpose()?))
        }
        (None, logs_endpoint) => {
            let runtime = check(&traces)?;
            tracing::info!("no OTLP endpoint configured: printing traces to stdout");
            let (span_queue, spans) = mpsc::channel(traces.queue_capacity);
            let span_counters = Arc::new(Counters::default());
            let mut log_exporter = None;
            let mut shown_logs = None;
            match (logs, logs_endpoint.flatten()) {
                (Some(l), Some(endpoint)) => {
                    log_exporter = Some(Exporter::otlp(l, endpoint, None)?)
                }
                (Some(l), None) => {
                    let (queue, records) = mpsc::channel(l.queue_capacity);
                    let counters = Arc::new(Counters::default());
                    shown_logs = Some((records, counters.clone()));
                    log_exporter = Some(Exporter {
                        queue,
                        counters,
                        task: None,
                    });
                }
                (None, _) => {}
            }
            let sink = console::run(
                spans,
                shown_logs,
                traces.batch_timeout,
                span_counters.clone(),
                report,
            );
            let task = spawn(&runtime, sink, span_counters.clone(), Span::NAME);
            let spans = Exporter {
                queue: span_queue,
                counters: span_counters,
                task: Some(task),
            };
            Ok((spans, log_exporter))
        }
    }
}

impl<T: Item> Exporter<T> {
    /// Never blocks, never awaits: if the queue is full the item is
    /// dropped and counted. Whether the item was queued.
    pub fn submit(&self, item: T) -> bool {
        let (counter, queued) = match self.queue.try_send(item) {
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
        self.task.as_ref().is_none_or(|t| !t.is_finished())
    }

    /// Flushes what is queued, giving up at `deadline`, and stops the task.
    /// (A console view's log records are flushed by the span exporter's
    /// task: shut this one down first.)
    pub async fn shutdown(self, deadline: Duration) {
        let Exporter {
            queue,
            counters,
            task,
        } = self;
        // Closing the queue makes the task deliver what is left, then return.
        drop(queue);
        let Some(mut task) = task else {
            return;
        };
        let finished = tokio::time::timeout(deadline, &mut task).await.is_ok();
        if !finished {
            task.abort();
        }
        let stats = counters.snapshot(0);
        if stats.pending() > 0 {
            tracing::warn!(
                unsent = stats.pending(),
                "export shutdown deadline reached; unsent {} lost",
                T::NAME
            );
        }
        tracing::info!(
            exported = stats.exported,
            dropped = stats.dropped(),
            rejected = stats.rejected,
            "{} exporter stopped",
            T::NAME
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::{resource, stats_until};
    use crate::logs::LogRecord;

    fn log(id: u8) -> LogRecord {
        LogRecord {
            time_ns: 1,
            observed_ns: 2,
            severity: None,
            body: format!("line {id}"),
            attributes: Vec::new(),
            trace_id: [1; 16],
            span_id: [id; 8],
            sampled: true,
            resource: resource(1, "svc"),
        }
    }

    #[test]
    fn log_records_with_nowhere_to_go_are_a_start_up_error() {
        let traces = ExportConfig {
            endpoint: Some("http://127.0.0.1:4317".into()),
            ..ExportConfig::default()
        };
        let err = start_with_logs(traces, Some(ExportConfig::default()), None)
            .err()
            .expect("an error");
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
            "{err}"
        );
    }

    /// Without any endpoint, log records print in the console view (their
    /// OTLP path is the spans', tested end to end).
    #[tokio::test]
    async fn log_records_without_endpoints_print_in_the_console() {
        let console = ExportConfig {
            batch_timeout: Duration::from_millis(20),
            ..ExportConfig::default()
        };
        let (spans, records) = start_with_logs(console.clone(), Some(console), None).unwrap();
        let records = records.expect("a log exporter");
        assert!(records.is_running());
        assert!(records.submit(log(1)) && records.submit(log(2)));
        let stats = stats_until(&records, |s| s.exported == 2).await;
        assert_eq!(stats.dropped(), 0);
        records.shutdown(Duration::from_secs(1)).await;
        spans.shutdown(Duration::from_secs(1)).await;
    }
}
