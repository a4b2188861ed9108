//! Trace context inside a process: which SERVER span each thread is
//! serving, so the CLIENT spans it sends become that span's children; and
//! the ids and sampling decision of new spans.

use std::collections::HashMap;

use rand::Rng;

use crate::{
    sampling::Sampler,
    span::{SpanId, TraceId},
    trace_context::TraceParent,
};

#[derive(Clone, Debug, PartialEq)]
pub struct SpanCtx {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub trace_state: String,
}

struct Active {
    ctx: SpanCtx,
    conn_id: u64,
}

/// Bounded: a thread that never answers (or an agent that missed the
/// response) must not pin an entry forever.
const MAX_THREADS: usize = 65536;

pub struct Nesting {
    sampler: Sampler,
    by_tid: HashMap<u32, Active>,
}

impl Nesting {
    pub fn new(sampler: Sampler) -> Self {
        Nesting {
            sampler,
            by_tid: HashMap::new(),
        }
    }

    /// A request arrived on a server connection, read by thread `tid`.
    pub fn server_span(
        &mut self,
        tid: u32,
        conn_id: u64,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> SpanCtx {
        let incoming = traceparent.and_then(TraceParent::parse);
        let ctx = match incoming {
            Some(tp) => SpanCtx {
                trace_id: tp.trace_id,
                span_id: new_span_id(),
                parent: Some(tp.parent_id),
                sampled: self.sampler.sample(&tp.trace_id, Some(tp.sampled)),
                trace_state: tracestate.unwrap_or_default().to_owned(),
            },
            None => self.root(),
        };
        if self.by_tid.len() >= MAX_THREADS && !self.by_tid.contains_key(&tid) {
            self.by_tid.clear();
        }
        self.by_tid.insert(
            tid,
            Active {
                ctx: ctx.clone(),
                conn_id,
            },
        );
        ctx
    }

    /// The response to the server span `span_id` is complete.
    pub fn server_done(&mut self, tid: u32, span_id: &SpanId) {
        if self
            .by_tid
            .get(&tid)
            .is_some_and(|a| &a.ctx.span_id == span_id)
        {
            self.by_tid.remove(&tid);
        }
    }

    /// Server connection `conn_id` closed: nothing more is served on it.
    pub fn conn_closed(&mut self, conn_id: u64) {
        self.by_tid.retain(|_, a| a.conn_id != conn_id);
    }

    /// A request is being sent by thread `tid`. When the request already
    /// carries a `traceparent` (the application propagates by itself), the
    /// span takes that identity instead of inventing one.
    pub fn client_span(&mut self, tid: u32, traceparent: Option<&str>) -> SpanCtx {
        let serving = self.by_tid.get(&tid).map(|a| &a.ctx);
        match traceparent.and_then(TraceParent::parse) {
            Some(tp) => SpanCtx {
                trace_id: tp.trace_id,
                span_id: tp.parent_id,
                parent: serving
                    .filter(|s| s.trace_id == tp.trace_id)
                    .map(|s| s.span_id),
                sampled: tp.sampled,
                trace_state: String::new(),
            },
            None => match serving {
                Some(s) => SpanCtx {
                    trace_id: s.trace_id,
                    span_id: new_span_id(),
                    parent: Some(s.span_id),
                    sampled: s.sampled,
                    trace_state: s.trace_state.clone(),
                },
                None => self.root(),
            },
        }
    }

    fn root(&self) -> SpanCtx {
        let trace_id = new_trace_id();
        SpanCtx {
            trace_id,
            span_id: new_span_id(),
            parent: None,
            sampled: self.sampler.sample(&trace_id, None),
            trace_state: String::new(),
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.by_tid.len()
    }
}

fn new_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    while id == [0; 16] {
        rand::rng().fill(&mut id);
    }
    id
}

fn new_span_id() -> SpanId {
    let mut id = [0u8; 8];
    while id == [0; 8] {
        rand::rng().fill(&mut id);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Root;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn nesting() -> Nesting {
        Nesting::new(Sampler::ParentBased(Root::AlwaysOn))
    }

    #[test]
    fn client_calls_nest_under_the_request_their_thread_serves() {
        let mut n = nesting();
        let server = n.server_span(10, 1, None, None);
        let client = n.client_span(10, None);
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(client.parent, Some(server.span_id));
        let other_thread = n.client_span(11, None);
        assert_ne!(other_thread.trace_id, server.trace_id);
        assert_eq!(other_thread.parent, None);
        n.server_done(10, &server.span_id);
        assert_eq!(n.client_span(10, None).parent, None);
    }

    #[test]
    fn incoming_traceparent_is_joined() {
        let mut n = nesting();
        let s = n.server_span(1, 1, Some(TP), Some("k=v"));
        assert_eq!(hex::encode(s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            s.parent.map(hex::encode).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(s.trace_state, "k=v");
        assert!(s.sampled);
        let unsampled = n.server_span(2, 1, Some(&TP.replace("-01", "-00")), None);
        assert!(!unsampled.sampled);
    }

    #[test]
    fn application_context_on_outgoing_requests_wins() {
        let mut n = nesting();
        let c = n.client_span(5, Some(TP));
        assert_eq!(hex::encode(c.span_id), "00f067aa0ba902b7");
        assert_eq!(c.parent, None);
    }

    #[test]
    fn closing_a_connection_forgets_its_threads() {
        let mut n = nesting();
        n.server_span(1, 7, None, None);
        n.server_span(2, 8, None, None);
        n.conn_closed(7);
        assert_eq!(n.tracked(), 1);
    }
}
