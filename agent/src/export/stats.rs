//! Export counters: atomics bumped by the hot path and the export task, read as a `Copy` snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A point-in-time view of the export counters (all totals since start,
/// except `queue_depth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans accepted into the queue.
    pub queued: u64,
    /// Spans waiting in the queue right now.
    pub queue_depth: usize,
    /// Spans accepted by the collector, or printed by the console view.
    pub exported: u64,
    /// Spans the collector refused in an OTLP partial success.
    pub rejected: u64,
    /// Spans dropped at submit because the queue was full.
    pub dropped_queue_full: u64,
    /// Spans dropped at submit because the export task had stopped.
    pub dropped_stopped: u64,
    /// Spans of batches given up on (permanent error or retries exhausted).
    pub dropped_failed: u64,
    pub failed_batches: u64,
    /// Send attempts repeated after a transient failure.
    pub retries: u64,
}

impl ExportStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_stopped + self.dropped_failed
    }

    /// Spans accepted into the queue whose fate is not settled yet.
    pub fn pending(&self) -> u64 {
        self.queued
            .saturating_sub(self.exported + self.rejected + self.dropped_failed)
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub queued: AtomicU64,
    pub exported: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_stopped: AtomicU64,
    pub dropped_failed: AtomicU64,
    pub failed_batches: AtomicU64,
    pub retries: AtomicU64,
}

/// Counters are independent totals; no ordering between them is promised.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self, queue_depth: usize) -> ExportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExportStats {
            queued: get(&self.queued),
            queue_depth,
            exported: get(&self.exported),
            rejected: get(&self.rejected),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_stopped: get(&self.dropped_stopped),
            dropped_failed: get(&self.dropped_failed),
            failed_batches: get(&self.failed_batches),
            retries: get(&self.retries),
        }
    }
}

const DROP_REPORT_EVERY: Duration = Duration::from_secs(30);

/// Summarizes drops once per period instead of logging each one; runs until
/// cancelled alongside the export task.
pub(super) async fn report_drops(counters: &Counters, name: &str) {
    let mut last = counters.snapshot(0);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + DROP_REPORT_EVERY,
        DROP_REPORT_EVERY,
    );
    loop {
        tick.tick().await;
        let now = counters.snapshot(0);
        if now.dropped() + now.rejected > last.dropped() + last.rejected {
            tracing::warn!(
                queue_full = now.dropped_queue_full - last.dropped_queue_full,
                export_failed = now.dropped_failed - last.dropped_failed,
                rejected_by_collector = now.rejected - last.rejected,
                "{name} lost in the last {}s",
                DROP_REPORT_EVERY.as_secs()
            );
        }
        last = now;
    }
}
