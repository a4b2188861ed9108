//! Sessions fed real frame bytes, built here with the HPACK encoder.

use loona_hpack::Encoder;

use super::{detect::PREFACE, to_span, Exchange, Session};
use crate::{
    capture::Data,
    clock::Clock,
    nesting::Nesting,
    protocol::{ConnFacts, Role, SpanOptions},
    sampling::{Root, Sampler},
    span::{Span, SpanKind, Status},
};

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings() -> Vec<u8> {
    frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])
}

fn data(stream: u32, end: bool, payload: &[u8]) -> Vec<u8> {
    frame(0x0, if end { END_STREAM } else { 0 }, stream, payload)
}

/// A gRPC message: uncompressed flag, big-endian length, body.
fn message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// One endpoint's encoder: its header blocks share a dynamic table.
struct Peer(Encoder<'static>);

impl Peer {
    fn new() -> Self {
        Peer(Encoder::new())
    }

    fn headers(&mut self, stream: u32, end: bool, fields: &[(&str, &str)]) -> Vec<u8> {
        let block = self.block(fields);
        let flags = END_HEADERS | if end { END_STREAM } else { 0 };
        frame(0x1, flags, stream, &block)
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.0
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }
}

fn grpc_request(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "svc.local:50051"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "grpc-go/1.60"),
    ]
}

const GRPC_HEAD: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/grpc")];

struct Harness {
    s: Session,
    n: Nesting,
    out: Vec<Exchange>,
    role: Role,
    client: Peer,
    server: Peer,
    ts: u64,
}

impl Harness {
    fn new(role: Role) -> Self {
        Harness {
            s: Session::new(role, None),
            n: Nesting::new(Sampler::ParentBased(Root::AlwaysOn)),
            out: Vec::new(),
            role,
            client: Peer::new(),
            server: Peer::new(),
            ts: 0,
        }
    }

    /// Whether the client's bytes are read (we serve) or written.
    fn ingress(&self, from_client: bool) -> bool {
        from_client == (self.role == Role::Server)
    }

    /// Bytes the client sends, as one syscall.
    fn client_sends(&mut self, bytes: &[u8]) {
        self.send(true, bytes, bytes.len());
    }

    fn server_sends(&mut self, bytes: &[u8]) {
        self.send(false, bytes, bytes.len());
    }

    /// One syscall that moved `total` bytes of which `bytes` were captured.
    fn send(&mut self, from_client: bool, bytes: &[u8], total: usize) {
        self.ts += 10;
        let d = record(self.ingress(from_client), bytes, total, self.ts, 1);
        self.s.on_data(&d, &mut self.n, &mut self.out);
    }

    /// Both prefaces.
    fn open(&mut self) {
        let mut hello = PREFACE.to_vec();
        hello.extend(settings());
        self.client_sends(&hello);
        self.server_sends(&settings());
    }

    fn span(&mut self) -> Span {
        let x = self.out.remove(0);
        to_span(
            x,
            &facts(),
            crate::export::test_support::resource(1, "svc"),
            &Clock::new(),
            SpanOptions::default(),
        )
    }
}

fn record(ingress: bool, payload: &[u8], total: usize, ts_ns: u64, conn_id: u64) -> Data<'_> {
    Data::synthetic(conn_id, ingress, payload, total, ts_ns)
}

fn facts() -> ConnFacts {
    ConnFacts {
        peer: Some("10.0.0.9:41000".parse().unwrap()),
        local: Some("10.0.0.1:50051".parse().unwrap()),
        tls: false,
    }
}

/// A whole unary gRPC call: what the client sends, what the server answers.
fn unary(h: &mut Harness, stream: u32, grpc_status: &str) -> (Vec<u8>, Vec<u8>) {
    let mut req = h
        .client
        .headers(stream, false, &grpc_request("/shop.Cart/Add"));
    req.extend(data(stream, true, &message(b"abc")));
    let mut resp = h.server.headers(stream, false, GRPC_HEAD);
    resp.extend(data(stream, false, &message(b"ok")));
    resp.extend(
        h.server
            .headers(stream, true, &[("grpc-status", grpc_status)]),
    );
    (req, resp)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attr(key).map(ToString::to_string)
}

#[test]
fn unary_grpc_call_as_a_server_span() {
    let mut h = Harness::new(Role::Server);
    h.open();
    let (req, resp) = unary(&mut h, 1, "0");
    h.client_sends(&req);
    h.server_sends(&resp);
    assert_eq!(h.out.len(), 1);
    let span = h.span();
    assert_eq!(span.name, "shop.Cart/Add");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(attr(&span, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attr(&span, "rpc.service").as_deref(), Some("shop.Cart"));
    assert_eq!(attr(&span, "rpc.method").as_deref(), Some("Add"));
    assert_eq!(span.attr("rpc.grpc.status_code"), Some(&0i64.into()));
    assert_eq!(attr(&span, "server.address").as_deref(), Some("svc.local"));
    assert_eq!(span.attr("server.port"), Some(&50051i64.into()));
    assert_eq!(
        span.attr("rpc.grpc.request.message_count"),
        Some(&1i64.into())
    );
    assert_eq!(
        span.attr("rpc.grpc.response.message_count"),
        Some(&1i64.into())
    );
    assert_eq!(span.status, Status::Unset);
    assert_eq!(span.end_ns - span.start_ns, 10);
}

#[test]
fn frames_split_at_every_byte_boundary() {
    for role in [Role::Server, Role::Client] {
        let mut whole = Harness::new(role);
        let (req, resp) = unary(&mut whole, 1, "0");
        let mut client_bytes = PREFACE.to_vec();
        client_bytes.extend(settings());
        client_bytes.extend(&req);
        let mut server_bytes = settings();
        server_bytes.extend(&resp);
        for cut in 0..client_bytes.len().max(server_bytes.len()) {
            let mut h = Harness::new(role);
            let c = cut.min(client_bytes.len());
            h.client_sends(&client_bytes[..c]);
            h.client_sends(&client_bytes[c..]);
            let c = cut.min(server_bytes.len());
            h.server_sends(&server_bytes[..c]);
            h.server_sends(&server_bytes[c..]);
            assert_eq!(h.out.len(), 1, "cut at {cut}");
            assert_eq!(h.out[0].request.path.as_deref(), Some("/shop.Cart/Add"));
            assert_eq!(h.out[0].trailers.as_ref().unwrap().grpc_status, Some(0));
            assert_eq!(h.out[0].response_messages, Some(1));
            assert!(!h.s.is_hopeless());
        }
    }
}

#[test]
fn huffman_coded_and_indexed_requests_reuse_the_dynamic_table() {
    let mut h = Harness::new(Role::Server);
    h.open();
    // RFC 7541 C.4: Huffman-coded literals, then references to them.
    let blocks = [
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        "828684be5886a8eb10649cbf",
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ];
    for (i, b) in blocks.iter().enumerate() {
        let stream = 2 * i as u32 + 1;
        h.client_sends(&frame(
            0x1,
            END_HEADERS | END_STREAM,
            stream,
            &hex::decode(b).unwrap(),
        ));
    }
    for stream in [5, 1, 3] {
        let head = h.server.headers(stream, true, &[(":status", "204")]);
        h.server_sends(&head);
    }
    let paths: Vec<_> = h
        .out
        .iter()
        .map(|x| {
            let r = &x.request;
            (
                r.scheme.clone().unwrap(),
                r.path.clone().unwrap(),
                r.authority.clone().unwrap(),
            )
        })
        .collect();
    let host = "www.example.com".to_string();
    assert_eq!(
        paths,
        [
            ("https".into(), "/index.html".into(), host.clone()),
            ("http".into(), "/".into(), host.clone()),
            ("http".into(), "/".into(), host),
        ]
    );
}

#[test]
fn continuation_padding_and_priority_are_handled() {
    let mut h = Harness::new(Role::Client);
    h.open();
    let block = h.client.block(&grpc_request("/a.B/C"));
    let (first, rest) = block.split_at(block.len() / 2);
    // PADDED | PRIORITY: pad length 3, 5 bytes of priority, fragment, padding.
    let mut payload = vec![3, 0, 0, 0, 0, 16];
    payload.extend_from_slice(first);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut bytes = frame(0x1, 0x8 | 0x20, 1, &payload);
    bytes.extend(frame(0x9, 0, 1, &rest[..1]));
    bytes.extend(frame(0x9, END_HEADERS, 1, &rest[1..]));
    // Padded DATA: the padding is not a message.
    let mut padded = vec![4];
    padded.extend(message(b"x"));
    padded.extend_from_slice(&[9, 9, 9, 9]);
    bytes.extend(frame(0x0, 0x8 | END_STREAM, 1, &padded));
    h.client_sends(&bytes);
    let mut resp = h.server.headers(1, false, GRPC_HEAD);
    resp.extend(h.server.headers(1, true, &[("grpc-status", "0")]));
    h.server_sends(&resp);
    let x = &h.out[0];
    assert_eq!(x.request.path.as_deref(), Some("/a.B/C"));
    assert_eq!(x.request_messages, Some(1));
    assert_eq!(x.response_messages, Some(0));
}

#[test]
fn uncaptured_data_is_skipped_and_messages_still_count() {
    // One 100 KB message, or that and a small one, in one DATA frame of
    // which the first 4 KB were captured.
    for (messages, counted) in [(1, Some(1)), (2, None)] {
        let mut h = Harness::new(Role::Server);
        h.open();
        let head = h.client.headers(1, false, &grpc_request("/a.B/Upload"));
        h.client_sends(&head);
        let mut payload = message(&vec![7u8; 100_000]);
        if messages == 2 {
            payload.extend(message(b"last"));
        }
        let mut big = data(1, true, &payload);
        let total = big.len();
        big.truncate(4096);
        h.send(true, &big, total);
        let mut resp = h.server.headers(1, false, GRPC_HEAD);
        resp.extend(h.server.headers(1, true, &[("grpc-status", "0")]));
        h.server_sends(&resp);
        assert_eq!(h.out.len(), 1);
        assert_eq!(h.out[0].request_messages, counted);
        assert_eq!(h.s.losses.broken, 0);
        // The direction is still in sync.
        let next = h.client.headers(3, true, &grpc_request("/a.B/Next"));
        h.client_sends(&next);
        let resp = h
            .server
            .headers(3, true, &[(":status", "200"), ("grpc-status", "0")]);
        h.server_sends(&resp);
        assert_eq!(h.out[1].request.path.as_deref(), Some("/a.B/Next"));
    }
}

#[test]
fn grpc_status_rules_differ_by_role() {
    for (role, code, error) in [
        (Role::Server, "13", true),
        (Role::Server, "5", false),
        (Role::Client, "5", true),
        (Role::Client, "0", false),
    ] {
        let mut h = Harness::new(role);
        h.open();
        let (req, resp) = unary(&mut h, 1, code);
        h.client_sends(&req);
        h.server_sends(&resp);
        let span = h.span();
        assert_eq!(
            matches!(span.status, Status::Error(_)),
            error,
            "{role:?} {code}"
        );
        assert_eq!(
            span.attr("rpc.grpc.status_code"),
            Some(&code.parse::<i64>().unwrap().into())
        );
    }
}

#[test]
fn trailers_only_response_carries_the_status() {
    let mut h = Harness::new(Role::Client);
    h.open();
    let req = h.client.headers(1, true, &grpc_request("/a.B/Missing"));
    h.client_sends(&req);
    let only = h.server.headers(
        1,
        true,
        &[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "12"),
            ("grpc-message", "unknown method"),
        ],
    );
    h.server_sends(&only);
    let span = h.span();
    assert_eq!(span.attr("rpc.grpc.status_code"), Some(&12i64.into()));
    assert_eq!(attr(&span, "error.type").as_deref(), Some("UNIMPLEMENTED"));
    assert_eq!(span.status, Status::Error("unknown method".into()));
}

#[test]
fn reset_streams_end_with_an_error() {
    let mut h = Harness::new(Role::Client);
    h.open();
    let req = h.client.headers(1, false, &grpc_request("/a.B/Watch"));
    h.client_sends(&req);
    h.client_sends(&frame(0x3, 0, 1, &8u32.to_be_bytes()));
    let span = h.span();
    assert_eq!(attr(&span, "error.type").as_deref(), Some("CANCEL"));
    assert!(matches!(span.status, Status::Error(_)));
    // A late frame of the reset stream is ignored.
    let late = h.server.headers(1, false, GRPC_HEAD);
    h.server_sends(&late);
    assert!(h.out.is_empty());
}

#[test]
fn goaway_refuses_streams_above_the_last_one() {
    let mut h = Harness::new(Role::Client);
    h.open();
    for stream in [1, 3, 5] {
        let req = h
            .client
            .headers(stream, true, &[(":method", "GET"), (":path", "/")]);
        h.client_sends(&req);
    }
    let mut goaway = 1u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    h.server_sends(&frame(0x7, 0, 0, &goaway));
    assert_eq!(h.s.losses.unanswered, 2);
    let resp = h.server.headers(1, true, &[(":status", "200")]);
    h.server_sends(&resp);
    assert_eq!(h.out.len(), 1);
    h.s.on_close(100, &mut h.n, &mut h.out);
    assert_eq!(h.s.losses.unanswered, 2);
}

#[test]
fn interleaved_streams_pair_by_id() {
    let mut h = Harness::new(Role::Server);
    h.open();
    let a = h.client.headers(1, false, &grpc_request("/a.S/One"));
    let b = h.client.headers(3, false, &grpc_request("/a.S/Two"));
    let mut bytes = [a, b].concat();
    bytes.extend(data(3, true, &message(b"2")));
    bytes.extend(data(1, true, &message(b"1")));
    h.client_sends(&bytes);
    let mut resp = h.server.headers(3, false, GRPC_HEAD);
    resp.extend(h.server.headers(1, false, GRPC_HEAD));
    resp.extend(h.server.headers(1, true, &[("grpc-status", "0")]));
    resp.extend(h.server.headers(3, true, &[("grpc-status", "14")]));
    h.server_sends(&resp);
    let got: Vec<_> = h
        .out
        .iter()
        .map(|x| {
            let t = x.trailers.as_ref().unwrap();
            (x.request.path.clone().unwrap(), t.grpc_status.unwrap())
        })
        .collect();
    assert_eq!(got, [("/a.S/One".into(), 0), ("/a.S/Two".into(), 14)]);
    assert_ne!(h.out[0].ctx.span_id, h.out[1].ctx.span_id);
}

#[test]
fn bytes_lost_inside_a_header_block_break_the_direction() {
    let mut h = Harness::new(Role::Server);
    h.open();
    let req = h.client.headers(1, true, &grpc_request("/a.B/C"));
    // Only the frame header and 3 bytes of the block were captured.
    h.send(true, &req[..12], req.len());
    assert!(h.s.is_hopeless());
    assert_eq!((h.s.losses.gaps, h.s.losses.broken), (1, 1));
    let next = h.client.headers(3, true, &grpc_request("/a.B/C"));
    h.client_sends(&next);
    let resp = h.server.headers(1, true, &[(":status", "200")]);
    h.server_sends(&resp);
    assert!(h.out.is_empty());
}

#[test]
fn hpack_garbage_breaks_the_direction() {
    let mut h = Harness::new(Role::Server);
    h.open();
    h.client_sends(&frame(0x1, END_HEADERS, 1, &[0x80 | 90]));
    assert!(h.s.is_hopeless());
    assert_eq!((h.s.losses.hpack_errors, h.s.losses.broken), (1, 1));
}

#[test]
fn garbage_after_the_preface_is_hopeless() {
    let mut h = Harness::new(Role::Server);
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    h.client_sends(&bytes);
    assert!(h.s.is_hopeless());
    assert_eq!(h.s.losses.not_http2, 1);
    let mut h = Harness::new(Role::Server);
    h.client_sends(b"GET / HTTP/1.1\r\n\r\n");
    assert!(h.s.is_hopeless());
}

#[test]
fn plain_http2_follows_the_http_conventions() {
    let mut h = Harness::new(Role::Client);
    h.open();
    let req = h.client.headers(
        1,
        true,
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/items?id=3"),
            (":authority", "shop.example"),
            ("user-agent", "curl/8"),
        ],
    );
    h.client_sends(&req);
    let resp = h.server.headers(1, false, &[(":status", "404")]);
    h.server_sends(&resp);
    h.server_sends(&data(1, true, b"not found"));
    let span = h.span();
    assert_eq!(span.name, "GET");
    assert_eq!(span.kind, SpanKind::Client);
    // No port in `:authority`: the socket's, as for HTTP/1's Host.
    assert_eq!(
        attr(&span, "url.full").as_deref(),
        Some("https://shop.example:41000/items")
    );
    assert_eq!(span.attr("http.response.status_code"), Some(&404i64.into()));
    assert_eq!(
        attr(&span, "network.protocol.version").as_deref(),
        Some("2")
    );
    assert_eq!(attr(&span, "error.type").as_deref(), Some("404"));
    assert_eq!(
        attr(&span, "user_agent.original").as_deref(),
        Some("curl/8")
    );
}

#[test]
fn informational_heads_do_not_answer_the_request() {
    let mut h = Harness::new(Role::Server);
    h.open();
    let req = h
        .client
        .headers(1, true, &[(":method", "PUT"), (":path", "/u")]);
    h.client_sends(&req);
    let early = h.server.headers(1, false, &[(":status", "103")]);
    h.server_sends(&early);
    let resp = h.server.headers(1, true, &[(":status", "201")]);
    h.server_sends(&resp);
    assert_eq!(h.out[0].response.as_ref().unwrap().status, Some(201));
}

#[test]
fn upgraded_connections_skip_stream_one() {
    let mut h = Harness::new(Role::Server);
    h.s = Session::after_upgrade(Role::Server, None);
    h.open();
    let upgraded = h.server.headers(1, true, &[(":status", "200")]);
    h.server_sends(&upgraded);
    assert_eq!((h.out.len(), h.s.losses.orphan_responses), (0, 0));
    let req = h
        .client
        .headers(3, true, &[(":method", "GET"), (":path", "/next")]);
    h.client_sends(&req);
    let resp = h.server.headers(3, true, &[(":status", "200")]);
    h.server_sends(&resp);
    assert_eq!(h.out[0].request.path.as_deref(), Some("/next"));
}

#[test]
fn client_calls_made_while_serving_are_children() {
    let mut n = Nesting::new(Sampler::ParentBased(Root::AlwaysOn));
    let mut out = Vec::new();
    let mut server = Session::new(Role::Server, None);
    let mut client = Session::new(Role::Client, None);
    let (mut inbound_client, mut inbound_server) = (Peer::new(), Peer::new());
    let (mut outbound_client, mut outbound_server) = (Peer::new(), Peer::new());
    let mut hello = PREFACE.to_vec();
    hello.extend(settings());
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = hello.clone();
    let mut fields = grpc_request("/front.Api/Get");
    fields.push(("traceparent", tp));
    req.extend(inbound_client.headers(1, true, &fields));
    server.on_data(&record(true, &req, req.len(), 1, 1), &mut n, &mut out);
    let mut call = hello;
    call.extend(outbound_client.headers(1, true, &grpc_request("/back.Db/Query")));
    client.on_data(&record(false, &call, call.len(), 2, 2), &mut n, &mut out);
    let mut answer = settings();
    answer.extend(outbound_server.headers(1, true, &[(":status", "200"), ("grpc-status", "0")]));
    client.on_data(&record(true, &answer, answer.len(), 3, 2), &mut n, &mut out);
    let mut reply = settings();
    reply.extend(inbound_server.headers(1, true, &[(":status", "200"), ("grpc-status", "0")]));
    server.on_data(&record(false, &reply, reply.len(), 4, 1), &mut n, &mut out);
    let (c, s) = (&out[0], &out[1]);
    assert_eq!((c.role, s.role), (Role::Client, Role::Server));
    assert_eq!(
        hex::encode(s.ctx.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(c.ctx.trace_id, s.ctx.trace_id);
    assert_eq!(c.ctx.parent, Some(s.ctx.span_id));
}

#[test]
fn both_ends_seen_by_one_agent_are_linked() {
    let mut n = Nesting::new(Sampler::ParentBased(Root::AlwaysOn));
    let mut out = Vec::new();
    let end = Some("127.0.0.1:40000".parse().unwrap());
    let mut client = Session::new(Role::Client, end);
    let mut server = Session::new(Role::Server, end);
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut req = PREFACE.to_vec();
    req.extend(settings());
    req.extend(c.headers(1, true, &[(":method", "GET"), (":path", "/")]));
    client.on_data(&record(false, &req, req.len(), 1, 1), &mut n, &mut out);
    server.on_data(&record(true, &req, req.len(), 2, 2), &mut n, &mut out);
    let mut resp = settings();
    resp.extend(s.headers(1, true, &[(":status", "200")]));
    server.on_data(&record(false, &resp, resp.len(), 3, 2), &mut n, &mut out);
    client.on_data(&record(true, &resp, resp.len(), 4, 1), &mut n, &mut out);
    let (sv, cl) = (&out[0].ctx, &out[1].ctx);
    assert_eq!((sv.trace_id, sv.parent), (cl.trace_id, Some(cl.span_id)));
}

#[test]
fn open_streams_are_bounded() {
    let mut h = Harness::new(Role::Client);
    h.open();
    for i in 0..1100u32 {
        let req = h
            .client
            .headers(2 * i + 1, true, &[(":method", "GET"), (":path", "/")]);
        h.client_sends(&req);
    }
    assert_eq!(h.s.losses.unanswered, 1100 - 1024);
    h.s.on_close(0, &mut h.n, &mut h.out);
    assert_eq!(h.s.losses.unanswered, 1100);
    // Requests were already dropped: no failure is claimed for the rest.
    assert!(h.out.is_empty());
}

#[test]
fn streams_open_at_close_become_failed_spans() {
    let mut h = Harness::new(Role::Client);
    h.open();
    let req = h
        .client
        .headers(1, true, &[(":method", "GET"), (":path", "/slow")]);
    h.client_sends(&req);
    h.s.on_close(50, &mut h.n, &mut h.out);
    let span = h.span();
    assert!(matches!(span.status, Status::Error(_)));
    assert_eq!(span.attr("error.type"), Some(&"connection_closed".into()));
    assert_eq!(span.attr("http.response.status_code"), None);
}

#[test]
fn repeated_traceparent_starts_a_trace_and_tracestates_join() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let other = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
    let served = |fields: &[(&str, &str)]| {
        let mut h = Harness::new(Role::Server);
        h.open();
        let mut all = grpc_request("/shop.Cart/Add");
        all.extend_from_slice(fields);
        let req = h.client.headers(1, true, &all);
        h.client_sends(&req);
        let resp = h
            .server
            .headers(1, true, &[(":status", "200"), ("grpc-status", "0")]);
        h.server_sends(&resp);
        h.span()
    };
    let joined = served(&[
        ("traceparent", &tp),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("tracestate", "rojo=00f067aa0ba902b7"),
    ]);
    assert_eq!(hex::encode(joined.trace_id), TRACE);
    assert_eq!(
        joined.trace_state,
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    );
    let repeated = served(&[("traceparent", &tp), ("traceparent", other)]);
    assert_ne!(hex::encode(repeated.trace_id), TRACE);
    assert_eq!(repeated.parent_span_id, None);
}

/// Records lost in the middle of a connection: the session skips what
/// does not start at a frame boundary, then goes on. Fields whose table
/// entries went with the loss are counted on the span, never guessed; a
/// stream opened before the loss is still answered after it.
#[test]
fn lost_records_resume_at_a_frame_boundary() {
    let mut h = Harness::new(Role::Server);
    h.open();
    let (req, resp) = unary(&mut h, 1, "0");
    h.client_sends(&req);
    h.server_sends(&resp);
    assert_eq!(h.span().name, "shop.Cart/Add");
    // Stream 3 opens; the records after it are lost.
    let open = h.client.headers(3, true, &grpc_request("/shop.Cart/Add"));
    h.client_sends(&open);
    // Encoded (the client's table moves on) but never captured.
    h.client.headers(5, true, &grpc_request("/shop.Cart/Lost"));
    h.s.resume_after_loss();
    // The rest of a frame whose start was lost: skipped, not parsed.
    let (tail, _) = unary(&mut h, 7, "0");
    h.client_sends(&tail[4..]);
    assert_eq!(h.s.losses.skipped, 1);
    assert!(!h.s.is_hopeless());
    // A new call: a field it shares with earlier calls refers to a lost
    // entry (index 62); new literals and static entries are read as sent.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut block = vec![0xbe, 0x83, 0x44, 17];
    block.extend_from_slice(b"/shop.Cart/Remove");
    block.extend_from_slice(&[0x00, 11]);
    block.extend_from_slice(b"traceparent");
    block.push(tp.len() as u8);
    block.extend_from_slice(tp.as_bytes());
    let mut req = frame(0x1, END_HEADERS, 9, &block);
    req.extend(data(9, true, &message(b"x")));
    h.client_sends(&req);
    let mut resp = h.server.headers(9, true, &[(":status", "200")]);
    resp.extend(h.server.headers(3, true, &[(":status", "503")]));
    h.server_sends(&resp);
    assert_eq!(h.out.len(), 2);
    let span = h.span();
    assert_eq!(hex::encode(span.trace_id), &tp[3..35]);
    assert_eq!(
        span.parent_span_id.map(hex::encode).as_deref(),
        Some(&tp[36..52])
    );
    // Not a gRPC span: its content-type may be the unknown field.
    assert_eq!(
        attr(&span, "url.path").as_deref(),
        Some("/shop.Cart/Remove")
    );
    assert_eq!(attr(&span, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(span.attr("http.response.status_code"), Some(&200i64.into()));
    assert_eq!(span.attr("clew.http2.unknown_fields"), Some(&1i64.into()));
    // Stream 3's request was read before the loss, in full.
    let span = h.span();
    assert_eq!(span.name, "shop.Cart/Add");
    assert_eq!(span.attr("clew.http2.unknown_fields"), None);
    assert!(matches!(span.status, Status::Error(_)));
    // Never a span for the lost request, nor for the skipped one.
    h.s.on_close(100, &mut h.n, &mut h.out);
    assert!(h.out.is_empty());
}

/// A connection open before Clew started, written a frame header and a
/// payload at a time (as gRPC's core does): followed from the first
/// frames, its fields that refer to entries added before counted.
#[test]
fn a_connection_met_mid_stream_is_followed() {
    let mut h = Harness::new(Role::Server);
    h.s = Session::mid_stream(Role::Server, None);
    // :method POST, :path /a.B/C (literal, static name), a lost entry.
    let mut block = vec![0x83, 0x44, 6];
    block.extend_from_slice(b"/a.B/C");
    block.push(0xc0);
    let req = frame(0x1, END_HEADERS, 41, &block);
    for piece in [&req[..9], &req[9..]] {
        h.client_sends(piece);
    }
    let mut resp = frame(0x1, END_HEADERS, 41, &[0x88]);
    resp.extend(data(41, true, b"ok"));
    h.server_sends(&resp);
    let span = h.span();
    assert_eq!(attr(&span, "url.path").as_deref(), Some("/a.B/C"));
    assert_eq!(span.attr("http.response.status_code"), Some(&200i64.into()));
    assert_eq!(span.attr("clew.http2.unknown_fields"), Some(&1i64.into()));
}

/// Bytes met mid-stream that never frame are given up on.
#[test]
fn a_connection_met_mid_stream_that_never_frames_is_hopeless() {
    let mut h = Harness::new(Role::Server);
    h.s = Session::mid_stream(Role::Server, None);
    for _ in 0..63 {
        h.client_sends(b"+OK some other protocol\r\n");
    }
    assert!(!h.s.is_hopeless());
    h.client_sends(b"+OK some other protocol\r\n");
    assert!(h.s.is_hopeless());
}
