//! Captured exchanges all the way to OTLP bytes, pinned: the span path is
//! tuned for instructions per span, and a faster step must not change a
//! byte of what is exported.

use std::fmt::Write;

use super::{measure, to_span, Exchange, Session};
use crate::{
    capture::Data,
    clock::Clock,
    export::{encode_request, test_support::resource},
    nesting::Nesting,
    protocol::{ConnFacts, Role, SpanOptions},
    sampling::{Root, Sampler},
    span::{Span, SpanId, TraceId},
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Request and response chunks of one connection, as its syscalls moved them.
struct Conn {
    role: Role,
    facts: ConnFacts,
    chunks: &'static [(bool, &'static [u8])],
}

const SERVED: Conn = Conn {
    role: Role::Server,
    facts: ConnFacts {
        peer: Some(std::net::SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
            51000,
        )),
        local: Some(std::net::SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
            8080,
        )),
        tls: false,
    },
    chunks: &[
        // The pipeline benchmark's exchange.
        (true, b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\nHost: orders.internal:8080\r\n\
User-Agent: curl/7.88.1\r\nAccept: */*\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"),
        (false, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\
Date: Mon, 23 Nov 2026 20:00:00 GMT\r\n\r\n{\"id\":12345,\"status\":\"ok\"}\n"),
        // No Host: the server is the socket's end. A head split over two
        // reads, baggage, a query, a chunked error response.
        (true, b"POST /checkout/a-rather-long-path-segment?q=1&r=2 HTTP/1.1\r\nbaggage: tenant=acme\r\n"),
        (true, b"Content-Length: 2\r\ntracestate: v=1\r\n\r\nhi"),
        (false, b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n"),
        // HTTP/1.0, a method the conventions do not know, a long user agent.
        (true, b"BREW /pot HTTP/1.0\r\nHost: [::1]\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko\r\n\r\n"),
        (false, b"HTTP/1.0 418 Teapot\r\nContent-Length: 0\r\n\r\n"),
    ],
};

const CALLED: Conn = Conn {
    role: Role::Client,
    facts: ConnFacts {
        peer: Some(std::net::SocketAddr::new(
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
            8443,
        )),
        local: None,
        tls: true,
    },
    chunks: &[
        (
            false,
            b"GET /items?page=2 HTTP/1.1\r\nHost: api.example:8443\r\n\r\n",
        ),
        (true, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        // No Host: the server is the peer, by address.
        (
            false,
            b"DELETE /items/7 HTTP/1.1\r\nUser-Agent: python-requests/2.31\r\n\r\n",
        ),
        (true, b"HTTP/1.1 204 No Content\r\n\r\n"),
    ],
};

fn exchanges(conn: &Conn, nesting: &mut Nesting) -> Vec<Exchange> {
    let mut session = Session::new(conn.role, false, None);
    let mut out = Vec::new();
    for (i, (ingress, bytes)) in conn.chunks.iter().enumerate() {
        let d = Data::synthetic(1, *ingress, bytes, bytes.len(), 1_000 * (i as u64 + 1));
        session.on_data(&d, nesting, &mut out);
    }
    out
}

/// Random ids become their order of appearance, so that the bytes can be pinned.
#[derive(Default)]
struct Ids {
    spans: Vec<SpanId>,
    traces: Vec<TraceId>,
}

impl Ids {
    fn span(&mut self, id: SpanId) -> SpanId {
        let n = ordinal(&mut self.spans, id);
        [0, 0, 0, 0, 0, 0, 0, n]
    }

    fn trace(&mut self, id: TraceId) -> TraceId {
        if hex(&id) == TRACE {
            return id;
        }
        let mut trace = [0; 16];
        trace[15] = ordinal(&mut self.traces, id);
        trace
    }

    fn normalise(&mut self, span: &mut Span, clock: &Clock) {
        span.trace_id = self.trace(span.trace_id);
        span.span_id = self.span(span.span_id);
        // A parent from a traceparent header is kept as it came.
        if let Some(p) = span.parent_span_id.filter(|p| self.spans.contains(p)) {
            span.parent_span_id = Some(self.span(p));
        }
        let epoch = clock.to_unix_ns(0);
        span.start_ns -= epoch;
        span.end_ns -= epoch;
    }
}

fn ordinal<T: PartialEq>(seen: &mut Vec<T>, id: T) -> u8 {
    let at = seen.iter().position(|s| *s == id).unwrap_or_else(|| {
        seen.push(id);
        seen.len() - 1
    });
    at as u8 + 1
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[test]
fn exported_bytes_and_measurements_are_pinned() {
    let (clock, res) = (Clock::new(), resource(7, "orders"));
    let opts = SpanOptions {
        capture_query: true,
        baggage_keys: &["tenant"],
        known_methods: None,
    };
    let mut nesting = Nesting::new(Sampler::ParentBased(Root::AlwaysOn));
    let mut ids = Ids::default();
    let (mut spans, mut measured) = (Vec::new(), Vec::new());
    for conn in [&SERVED, &CALLED] {
        for x in exchanges(conn, &mut nesting) {
            let m = measure(&x, &conn.facts, opts);
            let attrs: Vec<_> = m
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            measured.push(format!("{:?} {:?} {}", m.path, m.failed, attrs.join(" ")));
            let mut span = to_span(x, &conn.facts, res.clone(), &clock, opts);
            ids.normalise(&mut span, &clock);
            spans.push(span);
        }
    }
    assert_eq!(spans.len(), PINNED_SPANS.len());
    for (span, pinned) in spans.iter().zip(PINNED_SPANS) {
        let request = hex(&encode_request(std::slice::from_ref(span)));
        assert!(request.ends_with(pinned), "{} {request}", span.name);
    }
    assert_eq!(measured, PINNED_MEASUREMENTS);
}

/// Each span's fields, as they follow its scope in the request.
const PINNED_SPANS: [&str; 5] = [
    "0a104bf92f3577b34da6a3ce929d0e0e473612080000000000000001220800f067aa0ba902b72a0347455430\
     0239e80300000000000041d0070000000000004a1c0a13687474702e726571756573742e6d6574686f641205\
     0a034745544a200a19687474702e726573706f6e73652e7374617475735f636f6465120318c8014a1f0a156e\
     6574776f726b2e70726f746f636f6c2e6e616d6512060a04687474704a140a0a75726c2e736368656d651206\
     0a04687474704a220a0875726c2e7061746812160a142f6170692f76312f6f72646572732f31323334354a23\
     0a0e7365727665722e6164647265737312110a0f6f72646572732e696e7465726e616c4a120a0b7365727665\
     722e706f7274120318903f4a1c0a0e636c69656e742e61646472657373120a0a0831302e302e302e324a220a\
     146e6574776f726b2e706565722e61646472657373120a0a0831302e302e302e324a190a116e6574776f726b\
     2e706565722e706f7274120418b88e034a1b0a0975726c2e7175657279120e0a0c657870616e643d6974656d\
     734a240a13757365725f6167656e742e6f726967696e616c120d0a0b6375726c2f372e38382e314a210a186e\
     6574776f726b2e70726f746f636f6c2e76657273696f6e12050a03312e31850101030000",
    "0a1000000000000000000000000000000001120800000000000000022a04504f5354300239b80b0000000000\
     004188130000000000004a1d0a13687474702e726571756573742e6d6574686f6412060a04504f53544a200a\
     19687474702e726573706f6e73652e7374617475735f636f6465120318f7034a1f0a156e6574776f726b2e70\
     726f746f636f6c2e6e616d6512060a04687474704a140a0a75726c2e736368656d6512060a04687474704a32\
     0a0875726c2e7061746812260a242f636865636b6f75742f612d7261746865722d6c6f6e672d706174682d73\
     65676d656e744a1c0a0e7365727665722e61646472657373120a0a0831302e302e302e314a120a0b73657276\
     65722e706f7274120318903f4a1c0a0e636c69656e742e61646472657373120a0a0831302e302e302e324a22\
     0a146e6574776f726b2e706565722e61646472657373120a0a0831302e302e302e324a190a116e6574776f72\
     6b2e706565722e706f7274120418b88e034a160a0975726c2e717565727912090a07713d3126723d324a100a\
     0674656e616e7412060a0461636d654a210a186e6574776f726b2e70726f746f636f6c2e76657273696f6e12\
     050a03312e314a130a0a6572726f722e7479706512050a033530337a021802850101010000",
    "0a1000000000000000000000000000000002120800000000000000032a044854545030023970170000000000\
     0041581b0000000000004a260a1c687474702e726571756573742e6d6574686f645f6f726967696e616c1206\
     0a04425245574a1f0a13687474702e726571756573742e6d6574686f6412080a065f4f544845524a200a1968\
     7474702e726573706f6e73652e7374617475735f636f6465120318a2034a1f0a156e6574776f726b2e70726f\
     746f636f6c2e6e616d6512060a04687474704a140a0a75726c2e736368656d6512060a04687474704a120a08\
     75726c2e7061746812060a042f706f744a170a0e7365727665722e6164647265737312050a033a3a314a120a\
     0b7365727665722e706f7274120318903f4a1c0a0e636c69656e742e61646472657373120a0a0831302e302e\
     302e324a220a146e6574776f726b2e706565722e61646472657373120a0a0831302e302e302e324a190a116e\
     6574776f726b2e706565722e706f7274120418b88e034a3e0a13757365725f6167656e742e6f726967696e61\
     6c12270a254d6f7a696c6c612f352e3020285831313b204c696e7578207838365f363429204765636b6f4a21\
     0a186e6574776f726b2e70726f746f636f6c2e76657273696f6e12050a03312e30850101010000",
    "0a1000000000000000000000000000000003120800000000000000042a03474554300339e803000000000000\
     41d0070000000000004a1c0a13687474702e726571756573742e6d6574686f6412050a034745544a200a1968\
     7474702e726573706f6e73652e7374617475735f636f646512031894034a1f0a156e6574776f726b2e70726f\
     746f636f6c2e6e616d6512060a04687474704a1f0a0e7365727665722e61646472657373120d0a0b6170692e\
     6578616d706c654a330a0875726c2e66756c6c12270a2568747470733a2f2f6170692e6578616d706c653a38\
     3434332f6974656d733f706167653d324a120a0b7365727665722e706f7274120318fb414a250a146e657477\
     6f726b2e706565722e61646472657373120d0a0b323030313a6462383a3a374a180a116e6574776f726b2e70\
     6565722e706f7274120318fb414a210a186e6574776f726b2e70726f746f636f6c2e76657273696f6e12050a\
     03312e314a130a0a6572726f722e7479706512050a033430347a021802850101010000",
    "0a1000000000000000000000000000000004120800000000000000052a0644454c455445300339b80b000000\
     00000041a00f0000000000004a1f0a13687474702e726571756573742e6d6574686f6412080a0644454c4554\
     454a200a19687474702e726573706f6e73652e7374617475735f636f6465120318cc014a1f0a156e6574776f\
     726b2e70726f746f636f6c2e6e616d6512060a04687474704a1f0a0e7365727665722e61646472657373120d\
     0a0b323030313a6462383a3a374a2e0a0875726c2e66756c6c12220a2068747470733a2f2f323030313a6462\
     383a3a373a383434332f6974656d732f374a120a0b7365727665722e706f7274120318fb414a250a146e6574\
     776f726b2e706565722e61646472657373120d0a0b323030313a6462383a3a374a180a116e6574776f726b2e\
     706565722e706f7274120318fb414a2d0a13757365725f6167656e742e6f726967696e616c12160a14707974\
     686f6e2d72657175657374732f322e33314a210a186e6574776f726b2e70726f746f636f6c2e76657273696f\
     6e12050a03312e31850101010000",
];

const PINNED_MEASUREMENTS: [&str; 5] = [
    "Some(\"/api/v1/orders/12345\") false http.request.method=GET http.response.status_code=200 network.protocol.version=1.1 url.scheme=http",
    "Some(\"/checkout/a-rather-long-path-segment\") true http.request.method=POST http.response.status_code=503 error.type=503 network.protocol.version=1.1 url.scheme=http",
    "Some(\"/pot\") false http.request.method=_OTHER http.response.status_code=418 network.protocol.version=1.0 url.scheme=http",
    "None true http.request.method=GET http.response.status_code=404 error.type=404 network.protocol.version=1.1 server.address=api.example server.port=8443",
    "None false http.request.method=DELETE http.response.status_code=204 network.protocol.version=1.1 server.address=2001:db8::7 server.port=8443",
];
