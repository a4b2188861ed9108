//! Userspace pipeline throughput on a recorded event stream: ring-buffer
//! records → decode → protocol session (HTTP/1 framing and pairing) →
//! spans → OTLP protobuf.
//! Run with `cargo xtask bench` (or `cargo bench -p clew --bench pipeline`).

use std::sync::Arc;

use clew::{
    capture,
    clock::Clock,
    export::encode_request,
    nesting::Nesting,
    protocol::{ConnFacts, Role, Session, Shared, SpanOptions},
    sampling::{Root, Sampler},
    span::Resource,
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
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(EXCHANGES as u64));
    g.bench_function("records_to_otlp_bytes", |b| {
        b.iter(|| {
            let mut nesting = Nesting::new(Sampler::ParentBased(Root::AlwaysOn));
            let mut session = Session::detect(Some(Role::Server), true, &stream[0], |_| None)
                .expect("a known role always gets a session");
            let mut shared = Shared::default();
            let mut done = Vec::new();
            let mut spans = Vec::with_capacity(BATCH);
            let mut bytes = 0;
            for r in &stream {
                let Ok(capture::Event::Data(d)) = capture::decode(r) else {
                    unreachable!()
                };
                session.on_data(&d, &mut nesting, &mut shared, &mut done);
                for t in done.drain(..) {
                    spans.push(t.into_span(
                        &facts,
                        resource.clone(),
                        &clock,
                        SpanOptions::default(),
                    ));
                }
                if spans.len() == BATCH {
                    bytes += encode_request(&spans).len();
                    spans.clear();
                }
            }
            bytes
        })
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
