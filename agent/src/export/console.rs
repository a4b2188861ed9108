//! Console view: without an OTLP endpoint, each trace is printed to stdout
//! as a span tree once it has gone quiet, with the log records its spans
//! wrote (when logs are captured and have no endpoint of their own) under
//! the span that wrote them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::stats::{add, Counters};
use super::Report;
use crate::logs::LogRecord;
use crate::span::{Span, SpanId, SpanKind, Status, TraceId};

/// Spans and log records held while their traces may still grow; past
/// this the oldest traces are printed early.
const MAX_HELD: usize = 10_000;

/// Log records to show, and their exporter's counters.
pub(super) type ShownLogs = (mpsc::Receiver<LogRecord>, Arc<Counters>);

/// Runs until the span queue is closed, then prints whatever is still held.
pub(super) async fn run(
    mut spans: mpsc::Receiver<Span>,
    logs: Option<ShownLogs>,
    quiet: Duration,
    counters: Arc<Counters>,
    report: Report,
) {
    let (mut records, log_counters) = match logs {
        Some((r, c)) => (Some(r), Some(c)),
        None => (None, None),
    };
    let out = Out {
        spans: counters,
        logs: log_counters,
        report,
    };
    let mut buffer = TraceBuffer::new(quiet, MAX_HELD);
    // Checking four times per quiet period prints a trace at most 1.25 quiet
    // periods after its last span.
    let mut tick = tokio::time::interval((quiet / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            span = spans.recv() => match span {
                Some(span) => out.emit(buffer.push(Held::Span(span), Instant::now())),
                None => break,
            },
            record = async { records.as_mut()?.recv().await }, if records.is_some() => match record {
                Some(r) => out.emit(buffer.push(Held::Log(r), Instant::now())),
                // Closed first at shutdown: the spans still come.
                None => records = None,
            },
            _ = tick.tick() => out.emit(buffer.take_quiet(Instant::now())),
        }
    }
    out.emit(buffer.take_all());
}

/// Where printed items are counted.
struct Out {
    spans: Arc<Counters>,
    logs: Option<Arc<Counters>>,
    report: Report,
}

impl Out {
    fn emit(&self, traces: Vec<Trace>) {
        if traces.is_empty() {
            return;
        }
        let spans = traces.iter().map(|t| t.spans.len()).sum::<usize>() as u64;
        let logs = traces.iter().map(|t| t.logs.len()).sum::<usize>() as u64;
        let text: String = traces.iter().map(render_trace).collect();
        let mut out = std::io::stdout().lock();
        // A closed stdout (piped into `head`, say) must not stop the agent.
        let ok = out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_ok();
        let count = |c: &Counters, n| match ok {
            true => add(&c.exported, n),
            false => add(&c.dropped_failed, n),
        };
        count(&self.spans, spans);
        if let Some(c) = &self.logs {
            count(c, logs);
        }
        if let Some(r) = &self.report {
            let outcome = if ok { Ok(()) } else { Err("stdout is closed") };
            for trace in &traces {
                r.delivered(&trace.spans, outcome);
            }
        }
    }
}

/// What the buffer holds.
enum Held {
    Span(Span),
    Log(LogRecord),
}

impl Held {
    fn trace_id(&self) -> TraceId {
        match self {
            Held::Span(s) => s.trace_id,
            Held::Log(l) => l.trace_id,
        }
    }
}

/// One trace's spans and log records.
#[derive(Default)]
struct Trace {
    spans: Vec<Span>,
    logs: Vec<LogRecord>,
}

impl Trace {
    fn len(&self) -> usize {
        self.spans.len() + self.logs.len()
    }
}

/// Spans and log records grouped by trace until the trace has been quiet
/// for a while.
struct TraceBuffer {
    quiet: Duration,
    max_held: usize,
    held: usize,
    traces: HashMap<TraceId, Pending>,
    /// Traces by arrival of their first item, oldest first.
    arrival: BTreeMap<u64, TraceId>,
    next_arrival: u64,
}

struct Pending {
    arrival: u64,
    last_seen: Instant,
    trace: Trace,
}

impl TraceBuffer {
    fn new(quiet: Duration, max_held: usize) -> Self {
        TraceBuffer {
            quiet,
            max_held,
            held: 0,
            traces: HashMap::new(),
            arrival: BTreeMap::new(),
            next_arrival: 0,
        }
    }

    /// Holds `item`; returns the oldest traces if that went over the limit.
    fn push(&mut self, item: Held, now: Instant) -> Vec<Trace> {
        let trace_id = item.trace_id();
        let pending = self.traces.entry(trace_id).or_insert_with(|| {
            self.arrival.insert(self.next_arrival, trace_id);
            self.next_arrival += 1;
            Pending {
                arrival: self.next_arrival - 1,
                last_seen: now,
                trace: Trace::default(),
            }
        });
        pending.last_seen = now;
        match item {
            Held::Span(s) => pending.trace.spans.push(s),
            Held::Log(l) => pending.trace.logs.push(l),
        }
        self.held += 1;

        let mut early = Vec::new();
        while self.held > self.max_held {
            let Some((_, &oldest)) = self.arrival.first_key_value() else {
                break;
            };
            early.push(self.remove(oldest));
        }
        early
    }

    /// Traces with no new item for the quiet period, oldest first.
    fn take_quiet(&mut self, now: Instant) -> Vec<Trace> {
        let quiet: Vec<TraceId> = self
            .arrival
            .values()
            .filter(|id| now.duration_since(self.traces[*id].last_seen) >= self.quiet)
            .copied()
            .collect();
        quiet.into_iter().map(|id| self.remove(id)).collect()
    }

    fn take_all(&mut self) -> Vec<Trace> {
        let all: Vec<TraceId> = self.arrival.values().copied().collect();
        all.into_iter().map(|id| self.remove(id)).collect()
    }

    fn remove(&mut self, id: TraceId) -> Trace {
        let pending = self.traces.remove(&id).expect("arrival and traces agree");
        self.arrival.remove(&pending.arrival);
        self.held -= pending.trace.len();
        pending.trace
    }
}

/// One trace as a header line plus an indented tree, each span's log
/// records under it; spans whose parent is not among the trace's are
/// roots, and records whose span is not among them come last. Ends with
/// a newline.
fn render_trace(trace: &Trace) -> String {
    let Trace { spans, logs } = trace;
    let Some(trace_id) = spans
        .first()
        .map(|s| s.trace_id)
        .or_else(|| logs.first().map(|l| l.trace_id))
    else {
        return String::new();
    };
    let start = spans.iter().map(|s| s.start_ns).min().unwrap_or_default();
    let end = spans.iter().map(|s| s.end_ns).max().unwrap_or_default();
    let plural = |n: usize, what: &str| match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    };
    let mut counts = plural(spans.len(), "span");
    if !logs.is_empty() {
        let _ = write!(counts, ", {}", plural(logs.len(), "log record"));
    }
    let mut by_span: HashMap<SpanId, Vec<&LogRecord>> = HashMap::new();
    for l in logs {
        by_span.entry(l.span_id).or_default().push(l);
    }
    by_span
        .values_mut()
        .for_each(|l| l.sort_by_key(|r| r.time_ns));
    let mut tree = Tree {
        spans,
        children: HashMap::new(),
        shown: vec![false; spans.len()],
        logs: by_span,
        out: format!(
            "trace {}  ({counts}, {})\n",
            hex::encode(trace_id),
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
    // Records of spans not printed (not sampled, or not finished yet).
    let mut rest: Vec<(SpanId, Vec<&LogRecord>)> = tree.logs.drain().collect();
    rest.sort_by_key(|(_, l)| l[0].time_ns);
    for (span_id, records) in rest {
        let _ = writeln!(tree.out, "· span {} (not shown)", hex::encode(span_id));
        for l in records {
            let _ = writeln!(tree.out, "    {}", log_line(l));
        }
    }
    tree.out
}

struct Tree<'a> {
    spans: &'a [Span],
    children: HashMap<SpanId, Vec<usize>>,
    /// Guards against cycles and duplicate span ids.
    shown: Vec<bool>,
    /// Log records by the span that wrote them, taken as they are shown.
    logs: HashMap<SpanId, Vec<&'a LogRecord>>,
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
            let nested = format!("{prefix}{}", if last { "   " } else { "│  " });
            let children = self
                .children
                .get(&span.span_id)
                .cloned()
                .unwrap_or_default();
            for l in self.logs.remove(&span.span_id).unwrap_or_default() {
                let bar = if children.is_empty() { " " } else { "│" };
                let _ = writeln!(self.out, "{nested}{bar}  · {}", log_line(l));
            }
            self.siblings(&children, &nested);
        }
    }
}

/// `[SEVERITY] body  (where)`
fn log_line(l: &LogRecord) -> String {
    let mut line = String::new();
    if let Some(s) = &l.severity {
        let _ = write!(line, "{} ", s.text);
    }
    line.push_str(&l.body);
    if let Some(at) = l
        .attributes
        .iter()
        .find(|(k, _)| *k == "log.iostream" || *k == "log.file.path")
    {
        let _ = write!(line, "  ({})", at.1);
    }
    line
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
    use crate::logs::Severity;

    fn of(spans: impl Into<Vec<Span>>) -> Trace {
        Trace {
            spans: spans.into(),
            logs: Vec::new(),
        }
    }

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
            render_trace(&of(checkout_trace())),
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
            render_trace(&of([orphan, second, grandchild, first, root])),
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
        let rendered = render_trace(&of([a, b]));
        assert_eq!(rendered.lines().count(), 3, "{rendered}");
    }

    fn log(
        res: &Arc<crate::span::Resource>,
        trace: u8,
        span: u8,
        at_us: u64,
        body: &str,
    ) -> LogRecord {
        let mut trace_id = [0; 16];
        trace_id[15] = trace;
        LogRecord {
            time_ns: 1_000_000_000 + at_us * 1_000,
            observed_ns: 0,
            severity: Some(Severity {
                number: 13,
                text: "WARNING".into(),
            }),
            body: body.into(),
            attributes: vec![("log.iostream", "stderr".into())],
            trace_id,
            span_id: [0, 0, 0, 0, 0, 0, 0, span],
            sampled: true,
            resource: res.clone(),
        }
    }

    #[test]
    fn log_records_show_under_the_span_that_wrote_them() {
        let spans = checkout_trace();
        let frontend = spans[2].resource.clone();
        let backend = spans[0].resource.clone();
        let trace = Trace {
            spans,
            logs: vec![
                log(&frontend, 0x36, 1, 900, "second"),
                log(&backend, 0x36, 3, 1_500, "priced"),
                log(&frontend, 0x36, 1, 100, "first"),
                log(&frontend, 0x36, 9, 5, "of a span not shown"),
            ],
        };
        assert_eq!(
            render_trace(&trace),
            "trace 00000000000000000000000000000036  (3 spans, 4 log records, 12.431 ms)\n\
             └─ SERVER frontend  GET /checkout  200  12.431 ms  client=127.0.0.1\n\
             \x20  │  · WARNING first  (stderr)\n\
             \x20  │  · WARNING second  (stderr)\n\
             \x20  └─ CLIENT frontend  GET  200  8.002 ms  → 127.0.0.1:8081\n\
             \x20     └─ SERVER backend  GET /price  200  7.214 ms\n\
             \x20           · WARNING priced  (stderr)\n\
             · span 0000000000000009 (not shown)\n\
             \x20   WARNING of a span not shown  (stderr)\n"
        );
        // A trace of which only records came (its spans were not sampled).
        let only = Trace {
            spans: Vec::new(),
            logs: vec![log(&frontend, 0x37, 1, 0, "alone")],
        };
        assert!(render_trace(&only).starts_with(
            "trace 00000000000000000000000000000037  (0 spans, 1 log record, 0.000 ms)\n"
        ));
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
        let trace_ids = |traces: Vec<Trace>| -> Vec<Vec<u8>> {
            traces
                .iter()
                .map(|t| t.spans.iter().map(|s| s.span_id[7]).collect())
                .collect()
        };
        let span = |res, trace, id, parent| Held::Span(span(res, trace, id, parent));

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
