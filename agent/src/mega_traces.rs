//! Mega-traces: a trace that keeps growing from one root, the mark of a
//! nesting rule that attaches unrelated requests to one long-lived span
//! (a thread that keeps an answered request as its parent, a consumer
//! that never stops processing). Each is counted once, on
//! `clew_mega_traces`, and logged with its trace id.

use foldhash::HashMap;

use crate::span::TraceId;

/// Spans beyond which a trace counts as a mega-trace. A request fanning
/// out to this many calls is itself worth a look.
pub const MEGA_TRACE_SPANS: u32 = 10_000;
/// Traces followed at most; beyond, the idlest are forgotten.
const MAX_TRACES: usize = 65536;
/// A trace that got no span for this many ticks (seconds) is forgotten.
const IDLE_TICKS: u64 = 60;

#[derive(Default)]
pub struct MegaTraces {
    /// Spans seen and the tick of the last one, by trace.
    traces: HashMap<TraceId, (u32, u64)>,
}

impl MegaTraces {
    /// A span of `trace` was emitted at tick `now`: true when that makes
    /// the trace a mega-trace (once per trace).
    pub fn note(&mut self, trace: TraceId, now: u64) -> bool {
        if self.traces.len() >= MAX_TRACES && !self.traces.contains_key(&trace) {
            self.forget_idle(now);
            if self.traces.len() >= MAX_TRACES {
                self.traces.clear();
            }
        }
        let (spans, last) = self.traces.entry(trace).or_default();
        *spans = spans.saturating_add(1);
        *last = now;
        *spans == MEGA_TRACE_SPANS
    }

    /// Drops traces that stopped growing by tick `now`.
    pub fn forget_idle(&mut self, now: u64) {
        self.traces
            .retain(|_, (_, last)| now.saturating_sub(*last) < IDLE_TICKS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_counted_once_when_it_crosses_the_threshold() {
        let mut m = MegaTraces::default();
        let crossed = (0..MEGA_TRACE_SPANS * 2)
            .filter(|_| m.note([1; 16], 0))
            .count();
        assert_eq!(crossed, 1);
        assert!(!m.note([2; 16], 0));
    }

    #[test]
    fn idle_traces_are_forgotten() {
        let mut m = MegaTraces::default();
        for _ in 0..MEGA_TRACE_SPANS - 1 {
            m.note([1; 16], 0);
        }
        m.forget_idle(IDLE_TICKS);
        // Started over: one more span does not make it a mega-trace.
        assert!(!m.note([1; 16], IDLE_TICKS));
    }
}
