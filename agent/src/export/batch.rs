//! OTLP queue consumer: groups items (spans, log records) into batches and
//! delivers them with retry and backoff.
//!
//! Memory stays bounded while the collector is down: the queue holds at most
//! its capacity, and this task holds the one batch being delivered; newer
//! items wait in the queue (or are dropped there) until it is done.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::stats::{add, Counters};
use super::transport::{SendError, Transport};
use super::{Item, Report};

/// Attempts per batch, so an outage costs one batch of items at a time
/// rather than stalling the pipeline forever.
const MAX_ATTEMPTS: u32 = 5;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) struct Batching {
    pub max_batch: usize,
    /// How long a partial batch waits for more spans.
    pub linger: Duration,
    /// Bound on delivering one batch, retries and their pauses included.
    pub deadline: Duration,
}

/// Runs until the queue is closed and drained.
pub(super) async fn run<T: Item>(
    mut queue: mpsc::Receiver<T>,
    transport: Transport,
    endpoint: String,
    batching: Batching,
    counters: Arc<Counters>,
    report: Report<T>,
) {
    let mut delivery = Delivery {
        transport,
        endpoint,
        deadline: batching.deadline,
        counters,
        health: Health::Healthy,
        backoff: None,
    };
    let mut batch = Vec::with_capacity(batching.max_batch);
    loop {
        let open = fill(&mut queue, &mut batch, &batching).await;
        if !batch.is_empty() {
            let outcome = delivery.deliver(&batch).await;
            if let Some(r) = &report {
                r.delivered(&batch, outcome.as_ref().copied().map_err(String::as_str));
            }
            batch.clear();
        }
        if !open {
            return;
        }
    }
}

/// Waits for a first item, then takes more until the batch is full or it has
/// lingered long enough. Returns false once the queue is closed and empty.
async fn fill<T>(queue: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, batching: &Batching) -> bool {
    if queue.recv_many(batch, batching.max_batch).await == 0 {
        return false;
    }
    let deadline = Instant::now() + batching.linger;
    while batch.len() < batching.max_batch {
        let room = batching.max_batch - batch.len();
        match tokio::time::timeout_at(deadline, queue.recv_many(batch, room)).await {
            Ok(0) => return false,
            Ok(_) => {}
            Err(_elapsed) => break,
        }
    }
    true
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Health {
    Healthy,
    /// Transient failures: down, overloaded or timing out.
    Unavailable,
    /// Answering, but refusing our batches.
    Rejecting,
}

struct Delivery {
    transport: Transport,
    endpoint: String,
    deadline: Duration,
    counters: Arc<Counters>,
    health: Health,
    /// Pause before the next attempt; kept across batches so a long outage
    /// settles at one attempt per `BACKOFF_MAX` instead of hammering.
    backoff: Option<Duration>,
}

impl Delivery {
    /// `Err`: why the collector did not take every item of the batch.
    async fn deliver<T: Item>(&mut self, items: &[T]) -> Result<(), String> {
        let request = bytes::Bytes::from(T::encode(items));
        let count = items.len() as u64;
        let give_up = Instant::now() + self.deadline;
        let mut last = String::from("batch deadline reached before an attempt");
        for attempt in 1..=MAX_ATTEMPTS {
            if let Some(pause) = self.backoff {
                if Instant::now() + pause > give_up {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            if attempt > 1 {
                add(&self.counters.retries, 1);
            }
            match self.transport.send(&request).await {
                Ok(rejected) => {
                    self.backoff = None;
                    self.set_health::<T>(Health::Healthy, "");
                    add(&self.counters.exported, count.saturating_sub(rejected));
                    add(&self.counters.rejected, rejected.min(count));
                    return match rejected {
                        0 => Ok(()),
                        n => Err(format!(
                            "the collector rejected {n} {} of the batch",
                            T::NAME
                        )),
                    };
                }
                Err(SendError::Permanent(reason)) => {
                    // The collector answered, so the next batch need not wait.
                    self.backoff = None;
                    self.set_health::<T>(Health::Rejecting, &reason);
                    last = reason;
                    break;
                }
                Err(SendError::Transient {
                    reason,
                    retry_after,
                }) => {
                    let backoff = self
                        .backoff
                        .map_or(BACKOFF_START, |b| (b * 2).min(BACKOFF_MAX));
                    // Jitter keeps a fleet of agents from retrying in step
                    // after a collector restart; a server's own delay is
                    // honoured as a floor (bounded by the batch deadline).
                    let pause = jitter(backoff).max(retry_after.unwrap_or_default());
                    self.backoff = Some(pause);
                    self.set_health::<T>(Health::Unavailable, &reason);
                    last = reason;
                }
            }
        }
        add(&self.counters.failed_batches, 1);
        add(&self.counters.dropped_failed, count);
        Err(last)
    }

    /// Logs transitions only: an outage costs one warn and one info line, not
    /// one per batch; the periodic drop summary carries the counts.
    fn set_health<T: Item>(&mut self, health: Health, reason: &str) {
        if health == self.health {
            return;
        }
        let endpoint = &self.endpoint;
        let name = T::NAME;
        match health {
            Health::Healthy => tracing::info!(%endpoint, "OTLP export of {name} recovered"),
            Health::Unavailable => tracing::warn!(
                %endpoint,
                reason,
                "OTLP collector unreachable; retrying with backoff, {name} beyond the queue capacity are dropped"
            ),
            Health::Rejecting => tracing::warn!(
                %endpoint,
                reason,
                "OTLP collector rejects batches of {name}; dropping them (not retryable)"
            ),
        }
        self.health = health;
    }
}

/// A pause drawn evenly from the upper half of `backoff`, so the pause
/// still grows with each failure.
fn jitter(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::{free_port, resource, span, stats_until, Answers, Collector};
    use crate::export::test_tls::Pki;
    use crate::export::{ExportConfig, Exporter, Protocol, TlsFiles};
    use axum::http::StatusCode;

    fn config(endpoint: String, protocol: Protocol) -> ExportConfig {
        ExportConfig {
            endpoint: Some(endpoint),
            protocol,
            batch_timeout: Duration::from_millis(50),
            export_timeout: Duration::from_secs(2),
            ..ExportConfig::default()
        }
    }

    fn submit_ids(exporter: &Exporter, ids: impl IntoIterator<Item = u8>) {
        let res = resource(1, "svc");
        for id in ids {
            exporter.submit(span(&res, 1, id, None));
        }
    }

    #[tokio::test]
    async fn spans_reach_a_grpc_collector_in_bounded_batches() {
        let mut collector = Collector::start(Protocol::Grpc, 0).await;
        let exporter = Exporter::start(ExportConfig {
            max_batch: 2,
            ..config(collector.endpoint(), Protocol::Grpc)
        })
        .unwrap();
        assert!(exporter.is_running());
        submit_ids(&exporter, 1..=5);

        let mut seen = Vec::new();
        while seen.len() < 5 {
            let ids = collector.next().await.span_ids();
            assert!(ids.len() <= 2, "batch of {}", ids.len());
            seen.extend(ids);
        }
        seen.sort();
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        let stats = stats_until(&exporter, |s| s.exported == 5).await;
        assert_eq!((stats.queued, stats.dropped(), stats.retries), (5, 0, 0));
        exporter.shutdown(Duration::from_secs(1)).await;
    }

    /// Spans submitted while the collector is down are retried; spans after
    /// it comes up arrive.
    async fn collector_down_then_up(protocol: Protocol) {
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let endpoint = match protocol {
            Protocol::Grpc => endpoint,
            Protocol::HttpProtobuf => format!("{endpoint}/v1/traces"),
        };
        let exporter = Exporter::start(config(endpoint, protocol)).unwrap();
        submit_ids(&exporter, [1]);
        stats_until(&exporter, |s| s.retries > 0).await;

        let mut collector = Collector::start(protocol, port).await;
        submit_ids(&exporter, [2]);
        let seen = collector.wait_for_span(2).await;
        // Span 1 was still being retried when the collector came up.
        assert!(seen.contains(&1), "{protocol}: {seen:?}");
        exporter.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn grpc_collector_down_then_up() {
        collector_down_then_up(Protocol::Grpc).await;
    }

    #[tokio::test]
    async fn http_collector_down_then_up() {
        collector_down_then_up(Protocol::HttpProtobuf).await;
    }

    #[tokio::test]
    async fn overflow_is_dropped_and_counted_while_memory_stays_bounded() {
        let dead = format!("http://127.0.0.1:{}", free_port());
        let exporter = Exporter::start(ExportConfig {
            queue_capacity: 100,
            max_batch: 10,
            ..config(dead, Protocol::Grpc)
        })
        .unwrap();
        let res = resource(1, "svc");
        for id in 0..10_000u32 {
            exporter.submit(span(&res, 1, id as u8, None));
        }
        let stats = exporter.stats();
        assert_eq!(stats.queued + stats.dropped_queue_full, 10_000);
        // Held: the queue plus at most the one batch in delivery.
        assert!(stats.queued <= 110, "{stats:?}");
        assert!(stats.queue_depth <= 100, "{stats:?}");
        assert!(exporter.is_running());
        exporter.shutdown(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn rejected_batches_are_dropped_without_retry() {
        let mut collector = Collector::http_answering(StatusCode::BAD_REQUEST).await;
        let exporter =
            Exporter::start(config(collector.endpoint(), Protocol::HttpProtobuf)).unwrap();
        submit_ids(&exporter, 1..=3);
        let stats = stats_until(&exporter, |s| s.failed_batches == 1).await;
        assert_eq!(
            (stats.dropped_failed, stats.retries, stats.exported),
            (3, 0, 0)
        );
        assert_eq!(collector.drain().len(), 1);
        exporter.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn overloaded_collector_is_retried_then_the_batch_dropped() {
        let mut collector = Collector::http_answering(StatusCode::SERVICE_UNAVAILABLE).await;
        let exporter =
            Exporter::start(config(collector.endpoint(), Protocol::HttpProtobuf)).unwrap();
        submit_ids(&exporter, [1]);
        let stats = stats_until(&exporter, |s| s.failed_batches == 1).await;
        assert_eq!(
            (stats.dropped_failed, stats.retries),
            (1, u64::from(MAX_ATTEMPTS - 1))
        );
        assert_eq!(collector.drain().len(), MAX_ATTEMPTS as usize);
        exporter.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn shutdown_flushes_a_lingering_batch() {
        let mut collector = Collector::start(Protocol::Grpc, 0).await;
        let exporter = Exporter::start(ExportConfig {
            batch_timeout: Duration::from_secs(60),
            ..config(collector.endpoint(), Protocol::Grpc)
        })
        .unwrap();
        submit_ids(&exporter, 1..=3);
        let started = Instant::now();
        exporter.shutdown(Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            collector.drain().iter().flat_map(|r| r.span_ids()).count(),
            3
        );
    }

    #[tokio::test]
    async fn shutdown_gives_up_at_the_deadline() {
        let dead = format!("http://127.0.0.1:{}", free_port());
        let exporter = Exporter::start(config(dead, Protocol::Grpc)).unwrap();
        submit_ids(&exporter, 1..=3);
        let started = Instant::now();
        exporter.shutdown(Duration::from_millis(300)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(1),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn retry_after_is_waited_for_and_no_span_is_lost() {
        let answers = Answers::new(vec![
            (StatusCode::SERVICE_UNAVAILABLE, Some("1")),
            (StatusCode::OK, None),
        ]);
        let mut collector = Collector::http_answers(answers).await;
        let exporter =
            Exporter::start(config(collector.endpoint(), Protocol::HttpProtobuf)).unwrap();
        submit_ids(&exporter, 1..=3);
        let refused = collector.next().await;
        let refused_at = Instant::now();
        let accepted = collector.next().await;
        let waited = refused_at.elapsed();
        // Without the header the first retry comes after 50-100 ms.
        assert!(waited >= Duration::from_millis(950), "{waited:?}");
        assert_eq!(refused.span_ids(), accepted.span_ids());
        let stats = stats_until(&exporter, |s| s.exported == 3).await;
        assert_eq!((stats.retries, stats.dropped()), (1, 0));
        exporter.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_collector_with_an_unknown_ca_gets_nothing_and_the_exporter_keeps_counting() {
        let pki = Pki::new("batch-wrong-ca");
        let mut collector = Collector::tls(Protocol::Grpc, &pki).await;
        let exporter = Exporter::start(ExportConfig {
            tls: TlsFiles {
                ca: Some(pki.path("other-ca.pem")),
                client_cert: Some(pki.path("client.pem")),
                client_key: Some(pki.path("client.key")),
            },
            ..config(collector.endpoint(), Protocol::Grpc)
        })
        .unwrap();
        submit_ids(&exporter, 1..=2);
        let stats = stats_until(&exporter, |s| s.retries >= 2).await;
        assert_eq!(stats.exported, 0);
        assert!(exporter.is_running());
        assert!(collector.drain().is_empty());
        exporter.shutdown(Duration::from_millis(100)).await;
    }
}
