//! Console view: without an OTLP endpoint, each trace is printed to stdout as a span tree once it has gone quiet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::stats::{add, Counters};
use super::DeliveryReport;
use crate::span::{Span, SpanId, SpanKind, Status, TraceId};

/// Spans held while their traces may still grow; past this the oldest traces
/// are printed early.
const MAX_HELD_SPANS: usize = 10_000;

/// Runs until the queue is closed, then prints whatever is still held.
pub(super) async fn run(
    mut queue: mpsc::Receiver<Span>,
    quiet: Duration,
    counters: Arc<Counters>,
    report: Option<Arc<dyn DeliveryReport>>,
) {
    let emit = |traces: Vec<Vec<Span>>, counters: &Counters| {
        let outcome = emit(&traces, counters);
        if let Some(r) = &report {
            for trace in &traces {
                r.delivered(trace, outcome);
            }
        }
    };
    let mut buffer = TraceBuffer::new(quiet, MAX_HELD_SPANS);
    // Checking four times per quiet period prints a trace at most 1.25 quiet
    // periods after its last span.
    let mut tick = tokio::time::interval((quiet / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            span = queue.recv() => match span {
                Some(span) => emit(buffer.push(span, Instant::now()), &counters),
                None => break,
            },
            _ = tick.tick() => emit(buffer.take_quiet(Instant::now()), &counters),
        }
    }
    emit(buffer.take_all(), &counters);
}

fn emit(traces: &[Vec<Span>], counters: &Counters) -> Result<(), &'static str> {
    if traces.is_empty() {
        return Ok(());
    }
    let spans = traces.iter().map(Vec::len).sum::<usize>() as u64;
    let text: String = traces.iter().map(|trace| render_trace(trace)).collect();
    let mut out = std::io::stdout().lock();
    // A closed stdout (piped into `head`, say) must not stop the agent.
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {
            add(&counters.exported, spans);
            Ok(())
        }
        Err(_) => {
            add(&counters.dropped_failed, spans);
            Err("stdout is closed")
        }
    }
}

/// Spans grouped by trace until the trace has been quiet for a while.
struct TraceBuffer {
    quiet: Duration,
    max_spans: usize,
    held: usize,
    traces: HashMap<TraceId, Pending>,
    /// Traces by arrival of their first span, oldest first.
    arrival: BTreeMap<u64, TraceId>,
    next_arrival: u64,
}

struct Pending {
    arrival: u64,
    last_seen: Instant,
    spans: Vec<Span>,
}

impl TraceBuffer {
    fn new(quiet: Duration, max_spans: usize) -> Self {
        TraceBuffer {
            quiet,
            max_spans,
            held: 0,
            traces: HashMap::new(),
            arrival: BTreeMap::new(),
            next_arrival: 0,
        }
    }

    /// Holds `span`; returns the oldest traces if that went over the limit.
    fn push(&mut self, span: Span, now: Instant) -> Vec<Vec<Span>> {
        let pending = self.traces.entry(span.trace_id).or_insert_with(|| {
            self.arrival.insert(self.next_arrival, span.trace_id);
            self.next_arrival += 1;
            Pending {
                arrival: self.next_arrival - 1,
                last_seen: now,
                spans: Vec::new(),
            }
        });
        pending.last_seen = now;
        pending.spans.push(span);
        self.held += 1;

        let mut early = Vec::new();
        while self.held > self.max_spans {
            let Some((_, &oldest)) = self.arrival.first_key_value() else {
                break;
            };
            early.push(self.remove(oldest));
        }
        early
    }

    /// Traces with no new span for the quiet period, oldest first.
    fn take_quiet(&mut self, now: Instant) -> Vec<Vec<Span>> {
        let quiet: Vec<TraceId> = self
            .arrival
            .values()
            .filter(|id| now.duration_since(self.traces[*id].last_seen) >= self.quiet)
            .copied()
            .collect();
        quiet.into_iter().map(|id| self.remove(id)).collect()
    }

    fn take_all(&mut self) -> Vec<Vec<Span>> {
        let all: Vec<TraceId> = self.arrival.values().copied().collect();
        all.into_iter().map(|id| self.remove(id)).collect()
    }

    fn remove(&mut self, id: TraceId) -> Vec<Span> {
        let pending = self.traces.remove(&id).expect("arrival and traces agree");
        self.arrival.remove(&pending.arrival);
        self.held -= pending.spans.len();
        pending.spans
    }
}

/// One trace as a header line plus an indented tree; spans whose parent is
/// not among `spans` are roots. Ends with a newline.
fn render_trace(spans: &[Span]) -> String {
    let Some(first) = spans.first() else {
        return String::new();
    };
    let start = spans.iter().map(|s| s.start_ns).min().unwrap_or_default();
    let end = spans.iter().map(|s| s.end_ns).max().unwrap_or_default();
    let plural = if spans.len() == 1 { "" } else { "s" };
    let mut tree = Tree {
        spans,
        children: HashMap::new(),
        shown: vec![false; spans.len()],
        out: format!(
            "trace {}  ({} span{plural}, {})\n",
            hex::encode(first.trace_id),
            spans.len(),
            millis(end.saturating_sub(start))
        ),
    };

    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match span
            .parent_span_id
            .filter(|p| ids.contains(p) && *p != span.span_id)
        {
            Some(parent) => tree.children.entry(parent).or_default().push(i),
            None => roots.push(i),
        }
    }
    let by_start = |a: &usize, b: &usize| spans[*a].start_ns.cmp(&spans[*b].start_ns);
    roots.sort_by(by_start);
    tree.children.values_mut().for_each(|c| c.sort_by(by_start));

    tree.siblings(&roots, "");
    // Spans in a parent cycle hang under no root; show them rather than lose them.
    while let Some(stray) = tree.shown.iter().position(|shown| !shown) {
        tree.siblings(&[stray], "");
    }
    tree.out
}

struct Tree<'a> {
    spans: &'a [Span],
    children: HashMap<SpanId, Vec<usize>>,
    /// Guards against cycles and duplicate span ids.
    shown: Vec<bool>,
    out: String,
}

impl Tree<'_> {
    fn siblings(&mut self, indexes: &[usize], prefix: &str) {
        let unshown: Vec<usize> = indexes
            .iter()
            .copied()
            .filter(|&i| !self.shown[i])
            .collect();
        for (n, &i) in unshown.iter().enumerate() {
            let last = n + 1 == unshown.len();
            self.shown[i] = true;
            let span = &self.spans[i];
            let branch = if last { "└─ " } else { "├─ " };
            let _ = writeln!(self.out, "{prefix}{branch}{}", span_line(span));
            let children = self
                .children
                .get(&span.span_id)
                .cloned()
                .unwrap_or_default();
            let nested = format!("{prefix}{}", if last { "   " } else { "│  " });
            self.siblings(&children, &nested);
        }
    }
}

/// `KIND service  name [path]  [status]  [ERROR]  duration  [→ peer]  [client=addr]`
fn span_line(span: &Span) -> String {
    let kind = match span.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
        SpanKind::Producer => "PRODUCER",
        SpanKind::Consumer => "CONSUMER",
    };
    let mut line = format!("{kind} {}  {}", span.resource.service_name, span.name);
    if let Some(path) = span.attr("url.path").map(ToString::to_string) {
        // Span names may already carry the path ("GET /price").
        if !span.name.ends_with(&path) {
            let _ = write!(line, " {path}");
        }
    }
    if let Some(code) = span.attr("http.response.status_code") {
        let _ = write!(line, "  {code}");
    } else if let Some(code) = span.attr("rpc.grpc.status_code") {
        let _ = write!(line, "  grpc={code}");
    }
    if let Status::Error(message) = &span.status {
        line.push_str("  ERROR");
        if !message.is_empty() {
            let _ = write!(line, " ({message})");
        }
    }
    let _ = write!(
        line,
        "  {}",
        millis(span.end_ns.saturating_sub(span.start_ns))
    );
    if let Some(address) = span.attr("server.address") {
        let _ = write!(line, "  → {address}");
        if let Some(port) = span.attr("server.port") {
            let _ = write!(line, ":{port}");
        }
    }
    if let Some(client) = span.attr("client.address") {
        let _ = write!(line, "  client={client}");
    }
    line
}

/// Milliseconds with microsecond precision, computed exactly in integers.
fn millis(ns: u64) -> String {
    format!("{}.{:03} ms", ns / 1_000_000, ns % 1_000_000 / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::{resource, span, stats_until};
    use crate::export::{ExportConfig, Exporter};

    /// The frontend → backend example: a server span, its client call and
    /// the backend's server span, each starting `offset_us` into the trace.
    fn checkout_trace() -> Vec<Span> {
        let (frontend, backend) = (resource(1, "frontend"), resource(2, "backend"));
        let timed = |mut s: Span, offset_us: u64, dur_us: u64| {
            s.start_ns = 1_000_000_000 + offset_us * 1_000;
            s.end_ns = s.start_ns + dur_us * 1_000;
            s
        };
        let mut server = timed(span(&frontend, 0x36, 1, None), 0, 12_431);
        server.attributes = vec![
            ("url.path", "/checkout".into()),
            ("http.response.status_code", 200.into()),
            ("client.address", "127.0.0.1".into()),
        ];
        let mut client = timed(span(&frontend, 0x36, 2, Some(1)), 1_000, 8_002);
        client.kind = SpanKind::Client;
        client.attributes = vec![
            ("http.response.status_code", 200.into()),
            ("server.address", "127.0.0.1".into()),
            ("server.port", 8081.into()),
        ];
        let mut backend_server = timed(span(&backend, 0x36, 3, Some(2)), 1_300, 7_214);
        backend_server.name = "GET /price".into();
        backend_server.attributes = vec![
            ("url.path", "/price".into()),
            ("http.response.status_code", 200.into()),
        ];
        vec![backend_server, client, server]
    }

    #[test]
    fn renders_a_nested_trace() {
        assert_eq!(
            render_trace(&checkout_trace()),
            "trace 00000000000000000000000000000036  (3 spans, 12.431 ms)\n\
             └─ SERVER frontend  GET /checkout  200  12.431 ms  client=127.0.0.1\n\
             \x20  └─ CLIENT frontend  GET  200  8.002 ms  → 127.0.0.1:8081\n\
             \x20     └─ SERVER backend  GET /price  200  7.214 ms\n"
        );
    }

    #[test]
    fn renders_siblings_orphans_and_errors() {
        let res = resource(1, "api");
        let root = span(&res, 9, 1, None);
        let mut first = span(&res, 9, 2, Some(1));
        first.kind = SpanKind::Client;
        first.status = Status::Error("connection reset".into());
        let mut second = span(&res, 9, 3, Some(1));
        second.kind = SpanKind::Client;
        second.start_ns += 500_000;
        second.end_ns += 500_000;
        let grandchild = span(&res, 9, 4, Some(2));
        // Its parent was never seen: shown as a root of its own.
        let mut orphan = span(&res, 9, 5, Some(0x77));
        orphan.start_ns += 2_000_000;
        orphan.end_ns += 2_000_000;
        assert_eq!(
            render_trace(&[orphan, second, grandchild, first, root]),
            "trace 00000000000000000000000000000009  (5 spans, 3.000 ms)\n\
             ├─ SERVER api  GET  1.000 ms\n\
             │  ├─ CLIENT api  GET  ERROR (connection reset)  1.000 ms\n\
             │  │  └─ SERVER api  GET  1.000 ms\n\
             │  └─ CLIENT api  GET  1.000 ms\n\
             └─ SERVER api  GET  1.000 ms\n"
        );
    }

    #[test]
    fn parent_cycles_neither_loop_nor_lose_spans() {
        let res = resource(1, "api");
        let a = span(&res, 1, 1, Some(2));
        let b = span(&res, 1, 2, Some(1));
        let rendered = render_trace(&[a, b]);
        assert_eq!(rendered.lines().count(), 3, "{rendered}");
    }

    #[tokio::test]
    async fn without_endpoint_quiet_traces_are_printed() {
        let exporter = Exporter::start(ExportConfig {
            batch_timeout: Duration::from_millis(20),
            ..ExportConfig::default()
        })
        .unwrap();
        let res = resource(1, "console-test");
        exporter.submit(span(&res, 1, 1, None));
        exporter.submit(span(&res, 1, 2, Some(1)));
        let stats = stats_until(&exporter, |s| s.exported == 2).await;
        assert_eq!(stats.dropped(), 0);
        exporter.shutdown(Duration::from_secs(1)).await;
    }

    #[test]
    fn traces_wait_for_quiet_and_overflow_prints_the_oldest_early() {
        let res = resource(1, "api");
        let quiet = Duration::from_millis(100);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut buffer = TraceBuffer::new(quiet, 3);
        let trace_ids = |traces: Vec<Vec<Span>>| -> Vec<Vec<u8>> {
            traces
                .iter()
                .map(|t| t.iter().map(|s| s.span_id[7]).collect())
                .collect()
        };

        assert!(buffer.push(span(&res, 1, 1, None), ms(0)).is_empty());
        assert!(buffer.push(span(&res, 2, 2, None), ms(50)).is_empty());
        assert!(buffer.push(span(&res, 1, 3, Some(1)), ms(90)).is_empty());
        // Trace 1 got a span at 90 ms, trace 2 has been quiet since 50 ms.
        assert_eq!(trace_ids(buffer.take_quiet(ms(160))), [vec![2]]);
        assert_eq!(trace_ids(buffer.take_quiet(ms(190))), [vec![1, 3]]);

        buffer.push(span(&res, 3, 4, None), ms(200));
        buffer.push(span(&res, 4, 5, None), ms(200));
        buffer.push(span(&res, 3, 6, None), ms(200));
        // A fourth span exceeds the limit of 3: trace 3, the oldest, goes early.
        assert_eq!(
            trace_ids(buffer.push(span(&res, 5, 7, None), ms(200))),
            [vec![4, 6]]
        );
        assert_eq!(trace_ids(buffer.take_all()), [vec![5], vec![7]]);
        assert_eq!(buffer.held, 0);
    }
}
