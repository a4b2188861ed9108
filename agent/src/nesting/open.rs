//! The server spans each executor has open: read and not answered yet. An
//! executor is a thread, or for processes whose threads do not own their
//! requests (Go), the whole process. Its calls nest under its request only
//! while that is the one open; with several open, which one a call is for
//! is a guess, which [`Parent::Unsure`] says.

use std::{
    collections::{hash_map::Entry, HashMap as SipHashMap},
    hash::{Hash, Hasher},
};

use foldhash::{HashMap, HashSet};
use smallvec::SmallVec;

use super::SpanCtx;
use crate::{
    span::{SpanId, SpanLink, TraceId},
    trace_context::TraceParent,
};

/// The thread that read or sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Thread {
    pub tgid: u32,
    pub tid: u32,
}

/// A thread, or for processes nested per process, the whole process (tid 0).
type Executor = Thread;

/// Bounded: requests whose answers are never seen must not pile up.
const MAX_OPEN: usize = 65536;

/// What an executor serves: the request it read last (until answered) and
/// how many it has open.
#[derive(Default)]
struct Serving {
    latest: Option<SpanCtx>,
    open: u32,
}

/// A server span read and not answered.
struct Open {
    exec: Executor,
    ctx: SpanCtx,
    /// Its [`super::request_key`], once described.
    request: Option<u64>,
}

/// Where an executor's calls nest.
pub enum Parent<'a> {
    /// Its one open request.
    Sure(&'a SpanCtx),
    /// Several open: the one read last, if still open, is only a candidate.
    Unsure(Option<&'a SpanCtx>),
    None,
}

#[derive(Default)]
pub struct OpenRequests {
    by_executor: HashMap<Executor, Serving>,
    open: HashMap<SpanId, Open>,
    /// The same spans by executor and request key: almost always one, so
    /// inline, or every request would allocate a list.
    by_request: HashMap<(Executor, u64), SmallVec<[SpanId; 1]>>,
    /// The same spans by process and the context their request came
    /// with. Per process: a proxy forwards the `traceparent` it received,
    /// so the next hop's server span has the same incoming context (and
    /// its request can reach the agent before the proxy's own send).
    /// SipHash: the key is what requests' senders wrote, unlike the others'
    /// (threads, ids drawn here or in the kernel), hashed with foldhash.
    by_incoming: SipHashMap<Incoming, SpanCtx>,
    /// Processes nested per process.
    by_process: HashSet<u32>,
}

/// A process and the context a request came with.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Incoming {
    tgid: u32,
    trace_id: TraceId,
    parent: SpanId,
}

impl Hash for Incoming {
    /// In one write: SipHash pays per write, and a tuple takes five.
    fn hash<H: Hasher>(&self, h: &mut H) {
        let mut b = [0; 28];
        b[..4].copy_from_slice(&self.tgid.to_ne_bytes());
        b[4..20].copy_from_slice(&self.trace_id);
        b[20..].copy_from_slice(&self.parent);
        h.write(&b);
    }
}

impl OpenRequests {
    /// `thread` works for span `ctx` now, until [`OpenRequests::done`].
    pub fn serve(&mut self, thread: Thread, ctx: &SpanCtx) {
        if self.open.len() >= MAX_OPEN {
            // Requests whose answers were never seen. Forgetting them all
            // can make an executor look surer than it is, but only until
            // its open requests are answered.
            self.open.clear();
            self.by_request.clear();
            self.by_incoming.clear();
            self.by_executor.clear();
        }
        let exec = self.executor(thread);
        self.open_span(exec, ctx);
        let s = self.by_executor.entry(exec).or_default();
        s.latest = Some(ctx.clone());
        s.open += 1;
    }

    /// Requests of process `tgid` count per process, not per thread (its
    /// threads do not own the requests they read), or again per thread.
    pub fn nest_by_process(&mut self, tgid: u32, yes: bool) {
        if yes {
            self.by_process.insert(tgid);
        } else {
            self.by_process.remove(&tgid);
        }
    }

    fn executor(&self, t: Thread) -> Executor {
        if self.by_process.contains(&t.tgid) {
            Thread {
                tgid: t.tgid,
                tid: 0,
            }
        } else {
            t
        }
    }

    /// Open span `old` got other ids.
    pub fn rebind(&mut self, old: &SpanId, ctx: &SpanCtx) {
        let Some(o) = self.close_span(old) else {
            return;
        };
        let exec = o.exec;
        self.open_span(exec, ctx);
        if let Some(key) = o.request {
            self.describe(&ctx.span_id, key);
        }
        if let Some(l) = self
            .by_executor
            .get_mut(&exec)
            .and_then(|s| s.latest.as_mut())
            .filter(|l| &l.span_id == old)
        {
            *l = ctx.clone();
        }
    }

    /// Span `span_id` is answered (or will never be).
    pub fn done(&mut self, span_id: &SpanId) {
        let Some(Open { exec, .. }) = self.close_span(span_id) else {
            return;
        };
        let Some(s) = self.by_executor.get_mut(&exec) else {
            return;
        };
        s.open = s.open.saturating_sub(1);
        if s.latest.as_ref().is_some_and(|l| &l.span_id == span_id) {
            s.latest = None;
        }
        if s.open == 0 {
            self.by_executor.remove(&exec);
        }
    }

    /// Where calls of `thread` nest.
    pub fn parent(&self, thread: Thread) -> Parent<'_> {
        match self.by_executor.get(&self.executor(thread)) {
            Some(s) if s.open == 1 && s.latest.is_some() => {
                Parent::Sure(s.latest.as_ref().expect("checked"))
            }
            Some(s) if s.open > 0 => Parent::Unsure(s.latest.as_ref()),
            _ => Parent::None,
        }
    }

    /// Open span `span_id` answers a request with key `key`.
    pub fn describe(&mut self, span_id: &SpanId, key: u64) {
        let Some(o) = self.open.get_mut(span_id) else {
            return;
        };
        if o.request.replace(key).is_none() {
            self.by_request
                .entry((o.exec, key))
                .or_default()
                .push(*span_id);
        }
    }

    /// The one span open on `thread`'s executor whose request has key
    /// `key`, if exactly one has.
    pub fn only_with(&self, thread: Thread, key: u64) -> Option<&SpanCtx> {
        let [only] = self
            .by_request
            .get(&(self.executor(thread), key))?
            .as_slice()
        else {
            return None;
        };
        self.open.get(only).map(|o| &o.ctx)
    }

    /// The open span whose request came with context `tp`.
    pub fn received(&self, tgid: u32, tp: &TraceParent) -> Option<&SpanCtx> {
        self.by_incoming.get(&Incoming {
            tgid,
            trace_id: tp.trace_id,
            parent: tp.parent_id,
        })
    }

    /// Span `span_id`, if it is open.
    pub fn get(&self, span_id: &SpanId) -> Option<&SpanCtx> {
        self.open.get(span_id).map(|o| &o.ctx)
    }

    /// A link to span `span_id`, if it is open.
    pub fn link(&self, span_id: &SpanId) -> Option<SpanLink> {
        let c = self.get(span_id)?;
        Some(SpanLink {
            trace_id: c.trace_id,
            span_id: c.span_id,
        })
    }

    fn open_span(&mut self, exec: Executor, ctx: &SpanCtx) {
        if let Some(p) = ctx.parent {
            // The first wins: a process calling itself with the context
            // forwarded must not find its own downstream span.
            let key = Incoming {
                tgid: exec.tgid,
                trace_id: ctx.trace_id,
                parent: p,
            };
            self.by_incoming.entry(key).or_insert_with(|| ctx.clone());
        }
        let open = Open {
            exec,
            ctx: ctx.clone(),
            request: None,
        };
        self.open.insert(ctx.span_id, open);
    }

    fn close_span(&mut self, span_id: &SpanId) -> Option<Open> {
        let o = self.open.remove(span_id)?;
        if let Some(p) = o.ctx.parent {
            let key = Incoming {
                tgid: o.exec.tgid,
                trace_id: o.ctx.trace_id,
                parent: p,
            };
            if let Entry::Occupied(e) = self.by_incoming.entry(key) {
                if e.get().span_id == *span_id {
                    e.remove();
                }
            }
        }
        if let Some(key) = o.request {
            if let Some(ids) = self.by_request.get_mut(&(o.exec, key)) {
                ids.retain(|s| s != span_id);
                if ids.is_empty() {
                    self.by_request.remove(&(o.exec, key));
                }
            }
        }
        Some(o)
    }
}
