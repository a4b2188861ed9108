//! Userspace pipeline throughput on a recorded event stream: ring-buffer
//! records → decode → protocol session (HTTP/1 framing and pairing) →
//! RED metrics (every transaction) → spans (sampled ones) → OTLP protobuf.
//! Run with `cargo xtask bench` (or `cargo bench -p clew --bench pipeline`).

use std::sync::Arc;

use clew::{
    capture,
    clock::Clock,
    export::encode_request,
    metrics::{registry::DEFAULT_SERIES_LIMIT, Metrics, Registry, Routes, Shared},
    nesting::Nesting,
    protocol::{ConnFacts, Role, Session, Shared as ProtocolShared, SpanOptions},
    sampling::{Root, Sampler},
    span::Resource,
    stats::Stats,
};
use clew_common::{dir, kind, DataHeader};
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const EXCHANGES: usize = 1024;
const BATCH: usize = 512;

fn record(ingress: bool, payload: &[u8], ts: u64) -> Vec<u8> {
    let h = DataHeader {
        kind: kind::DATA,
        direction: if ingress { dir::INGRESS } else { dir::EGRESS },
        flags: 0,
        _pad: [0; 2],
        conn_id: 1,
        pid_tgid: (100 << 32) | 101,
        ts_ns: ts,
        total: payload.len() as u32,
        captured: payload.len() as u32,
        fd: 7,
        syscall: 0,
    };
    // SAFETY: DataHeader is repr(C) plain data.
    let head = unsafe {
        std::slice::from_raw_parts(
            &h as *const DataHeader as *const u8,
            size_of::<DataHeader>(),
        )
    };
    [head, payload].concat()
}

/// A server connection as curl against a JSON API would produce it.
fn recorded_stream() -> Vec<Vec<u8>> {
    let req = b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\nHost: orders.internal:8080\r\n\
User-Agent: curl/7.88.1\r\nAccept: */*\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\
Date: Mon, 23 Nov 2026 20:00:00 GMT\r\n\r\n{\"id\":12345,\"status\":\"ok\"}\n";
    (0..EXCHANGES as u64)
        .flat_map(|i| {
            [
                record(true, req, i * 1000),
                record(false, resp, i * 1000 + 500),
            ]
        })
        .collect()
}

/// What one pass over the stream does with each finished transaction.
struct Pass<'a> {
    stream: &'a [Vec<u8>],
    resource: &'a Arc<Resource>,
    facts: &'a ConnFacts,
    clock: &'a Clock,
    /// One transaction in this many becomes a span (head sampling).
    sample_every: usize,
    /// Measure every transaction, as the agent does before sampling.
    metrics: bool,
}

impl Pass<'_> {
    /// Encoded OTLP bytes, so that nothing is optimised away.
    fn run(&self) -> usize {
        let mut nesting = Nesting::new(Sampler::ParentBased(Root::AlwaysOn));
        let mut session = Session::detect(Some(Role::Server), true, &self.stream[0], |_| None)
            .expect("a known role always gets a session");
        let mut metrics = Metrics::new(
            Routes::new(Vec::new(), true),
            Shared::new(Registry::new(DEFAULT_SERIES_LIMIT, 0)),
            Arc::new(Stats::default()),
        );
        let mut shared = ProtocolShared::default();
        let mut done = Vec::new();
        let mut spans = Vec::with_capacity(BATCH);
        let (mut bytes, mut n) = (0, 0);
        for r in self.stream {
            let Ok(capture::Event::Data(d)) = capture::decode(r) else {
                unreachable!()
            };
            session.on_data(&d, &mut nesting, &mut shared, &mut done);
            for mut t in done.drain(..) {
                n += 1;
                let ctx = t.ctx_mut();
                let (trace_id, span_id, parent) = (ctx.trace_id, ctx.span_id, ctx.parent);
                let measured = self
                    .metrics
                    .then(|| t.measure(self.facts, SpanOptions::default()))
                    .flatten()
                    .map(|m| metrics.prepare(m, self.resource, span_id, parent));
                let sampled = n % self.sample_every == 0;
                let exported = sampled.then(|| {
                    let span = t.into_span(
                        self.facts,
                        self.resource.clone(),
                        self.clock,
                        SpanOptions::default(),
                    );
                    let end = span.end_ns;
                    spans.push(span);
                    end
                });
                if let Some(m) = measured {
                    metrics.record(self.resource, m, trace_id, exported);
                }
                if spans.len() == BATCH {
                    bytes += encode_request(&spans).len();
                    spans.clear();
                }
            }
        }
        bytes + spans.len()
    }
}

fn pipeline(c: &mut Criterion) {
    let stream = recorded_stream();
    let resource = Arc::new(Resource {
        pid: 100,
        service_name: "orders".into(),
        attributes: vec![],
        sdk_exports: false,
    });
    let facts = ConnFacts {
        peer: Some("10.0.0.2:51000".parse().unwrap()),
        local: None,
        tls: false,
    };
    let clock = Clock::new();
    let pass = |sample_every, metrics| Pass {
        stream: &stream,
        resource: &resource,
        facts: &facts,
        clock: &clock,
        sample_every,
        metrics,
    };
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(EXCHANGES as u64));
    let cases = [
        ("records_to_otlp_bytes", pass(1, false)),
        ("records_to_otlp_bytes_with_metrics", pass(1, true)),
        ("one_percent_sampled", pass(100, false)),
        ("one_percent_sampled_with_metrics", pass(100, true)),
    ];
    for (name, p) in &cases {
        g.bench_function(*name, |b| b.iter(|| p.run()));
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
