//! HTTP/1 exchanges as spans, with the stable HTTP semantic conventions.

use std::sync::Arc;

use super::{Exchange, Known, RequestHead, ResponseHead};
use crate::{
    clock::Clock,
    metrics::Measurement,
    protocol::{
        common,
        http_common::{http_measure, http_span, HttpCall},
        ConnFacts, SpanOptions,
    },
    span::{Resource, Span},
};

pub fn to_span(
    x: Exchange,
    conn: &ConnFacts,
    resource: Arc<Resource>,
    clock: &Clock,
    opts: SpanOptions,
) -> Span {
    let call = call(&x.request, x.response.as_ref(), x.cut_off);
    let frame = common::Frame {
        // Moved, not cloned: the exchange ends here.
        ctx: x.ctx,
        role: x.role,
        start_ns: x.start_ns,
        end_ns: x.end_ns,
    };
    http_span(call, frame, conn, resource, clock, opts)
}

pub fn measure<'a>(x: &'a Exchange, conn: &ConnFacts, opts: SpanOptions) -> Measurement<'a> {
    let duration = x.end_ns.saturating_sub(x.start_ns);
    let call = call(&x.request, x.response.as_ref(), x.cut_off);
    http_measure(&call, x.role, duration, conn, opts)
}

/// `cut_off`: the connection closed before the response was complete.
fn call<'a>(req: &'a RequestHead, response: Option<&ResponseHead>, cut_off: bool) -> HttpCall<'a> {
    let version = match req.minor_version {
        0 => "1.0".into(),
        1 => "1.1".into(),
        minor => format!("1.{minor}").into(),
    };
    HttpCall {
        method: req.method(),
        path: req.path(),
        query: req.query(),
        authority: req.known(Known::Host),
        scheme: None,
        version,
        status: response.map(|r| r.status),
        failure: cut_off.then_some(common::CONNECTION_CLOSED),
        user_agent: req.known(Known::UserAgent),
        baggage: req.known(Known::Baggage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{Root, Sampler};
    use crate::{
        capture::Data,
        nesting::Nesting,
        protocol::{http1::Session, Role},
        span::{SpanKind, Status},
    };

    const REQ: &[u8] =
        b"GET /a?x=1 HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: curl/8\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn nesting() -> Nesting {
        Nesting::new(Sampler::ParentBased(Root::AlwaysOn))
    }

    struct Harness {
        s: Session,
        n: Nesting,
        out: Vec<Exchange>,
    }

    impl Harness {
        fn new(role: Role) -> Self {
            Harness {
                s: Session::new(role, false, None),
                n: nesting(),
                out: Vec::new(),
            }
        }
        fn feed(&mut self, ingress: bool, bytes: &[u8], ts: u64) {
            self.s
                .on_data(&data(ingress, bytes, ts, 1), &mut self.n, &mut self.out);
        }
    }

    /// One syscall's record on connection `conn_id`, read or written by thread 7.
    fn data(ingress: bool, payload: &[u8], ts_ns: u64, conn_id: u64) -> Data<'_> {
        Data::synthetic(conn_id, ingress, payload, payload.len(), ts_ns)
    }

    fn facts() -> ConnFacts {
        ConnFacts {
            peer: Some("10.0.0.9:41000".parse().unwrap()),
            local: Some("10.0.0.1:8080".parse().unwrap()),
            tls: false,
        }
    }

    fn resource() -> Arc<Resource> {
        crate::export::test_support::resource(1, "svc")
    }

    #[test]
    fn keep_alive_exchanges_pair_in_order() {
        let mut h = Harness::new(Role::Server);
        h.feed(true, REQ, 10);
        h.feed(false, OK, 20);
        h.feed(
            true,
            b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            30,
        );
        h.feed(false, b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", 45);
        let got: Vec<_> = h
            .out
            .iter()
            .map(|x| (x.request.method(), status(x), x.start_ns, x.end_ns))
            .collect();
        assert_eq!(got, [("GET", 200, 10, 20), ("POST", 500, 30, 45)]);
    }

    #[test]
    fn client_calls_made_while_serving_are_children() {
        let mut n = nesting();
        let mut out: Vec<Exchange> = Vec::new();
        let mut server = Session::new(Role::Server, false, None);
        let mut client = Session::new(Role::Client, false, None);
        server.on_data(&data(true, REQ, 1, 1), &mut n, &mut out);
        client.on_data(&data(false, REQ, 2, 2), &mut n, &mut out);
        client.on_data(&data(true, OK, 3, 2), &mut n, &mut out);
        server.on_data(&data(false, OK, 4, 1), &mut n, &mut out);
        let (c, s) = (&out[0], &out[1]);
        assert_eq!((c.role, s.role), (Role::Client, Role::Server));
        assert_eq!(c.ctx.trace_id, s.ctx.trace_id);
        assert_eq!(c.ctx.parent, Some(s.ctx.span_id));
        assert_eq!(s.ctx.parent, None);
    }

    #[test]
    fn both_ends_seen_by_one_agent_are_linked_without_headers() {
        let mut n = nesting();
        let mut out: Vec<Exchange> = Vec::new();
        let client_end = Some("127.0.0.1:40000".parse().unwrap());
        let mut client = Session::new(Role::Client, false, client_end);
        let mut server = Session::new(Role::Server, false, client_end);
        let mut other = Session::new(
            Role::Server,
            false,
            Some("127.0.0.1:40001".parse().unwrap()),
        );
        let req = b"GET / HTTP/1.1\r\n\r\n";
        client.on_data(&data(false, req, 1, 1), &mut n, &mut out);
        server.on_data(&data(true, req, 2, 2), &mut n, &mut out);
        other.on_data(&data(true, req, 3, 3), &mut n, &mut out);
        server.on_data(&data(false, OK, 4, 2), &mut n, &mut out);
        other.on_data(&data(false, OK, 5, 3), &mut n, &mut out);
        client.on_data(&data(true, OK, 6, 1), &mut n, &mut out);
        let (s, o, c) = (&out[0].ctx, &out[1].ctx, &out[2].ctx);
        assert_eq!((s.trace_id, s.parent), (c.trace_id, Some(c.span_id)));
        assert_eq!(o.parent, None);
    }

    #[test]
    fn continue_interim_does_not_complete_the_request() {
        let mut h = Harness::new(Role::Server);
        h.feed(
            true,
            b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
            1,
        );
        h.feed(false, b"HTTP/1.1 100 Continue\r\n\r\n", 2);
        h.feed(true, b"data", 3);
        assert!(h.out.is_empty());
        h.feed(
            false,
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            4,
        );
        assert_eq!(status(&h.out[0]), 201);
    }

    fn status(x: &Exchange) -> u16 {
        x.response.as_ref().map_or(0, |r| r.status)
    }

    #[test]
    fn close_ends_a_close_delimited_response_and_fails_the_unanswered() {
        let mut h = Harness::new(Role::Client);
        h.feed(false, b"GET / HTTP/1.0\r\n\r\n", 1);
        h.feed(true, b"HTTP/1.0 200 OK\r\n\r\nbody until close", 2);
        h.s.on_close(9, &mut h.n, &mut h.out);
        assert_eq!(h.out.len(), 1);
        assert_eq!(h.out[0].end_ns, 9);
        assert!(!h.out[0].cut_off);
        h.feed(false, b"GET /slow HTTP/1.1\r\n\r\n", 10);
        h.s.on_close(11, &mut h.n, &mut h.out);
        assert_eq!(h.s.losses.unanswered, 1);
        let x = h.out.pop().unwrap();
        assert!(x.cut_off && x.response.is_none());
        let span = to_span(
            x,
            &facts(),
            resource(),
            &Clock::new(),
            SpanOptions::default(),
        );
        assert_eq!(span.status, Status::Error(String::new()));
        assert_eq!(span.attr("error.type"), Some(&"connection_closed".into()));
        assert_eq!(span.attr("http.response.status_code"), None);
        assert_eq!(span.end_ns - span.start_ns, 1);
    }

    #[test]
    fn a_response_read_before_its_request_answers_it_not_a_failure() {
        // On a connection seen from its start, a response another thread
        // read before any request is one whose request record is late (see
        // session::Early).
        let mut h = Harness::new(Role::Client);
        let read = Data {
            tid: 8,
            ..data(true, OK, 1, 1)
        };
        h.s.on_data(&read, &mut h.n, &mut h.out);
        h.feed(false, b"GET /a HTTP/1.1\r\n\r\n", 2);
        h.s.on_close(3, &mut h.n, &mut h.out);
        assert_eq!(h.s.losses.unanswered, 0);
        assert_eq!(h.out.len(), 1);
        assert!(!h.out[0].cut_off);
    }

    #[test]
    fn a_response_cut_off_keeps_its_status_and_fails() {
        let mut h = Harness::new(Role::Server);
        h.feed(true, REQ, 1);
        h.feed(
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            2,
        );
        h.s.on_close(3, &mut h.n, &mut h.out);
        let span = to_span(
            h.out.pop().unwrap(),
            &facts(),
            resource(),
            &Clock::new(),
            SpanOptions::default(),
        );
        assert_eq!(span.attr("http.response.status_code"), Some(&200i64.into()));
        assert_eq!(span.attr("error.type"), Some(&"connection_closed".into()));
    }

    #[test]
    fn server_span_follows_semantic_conventions() {
        let mut h = Harness::new(Role::Server);
        h.feed(true, REQ, 1_000);
        h.feed(
            false,
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
            5_000,
        );
        let x = h.out.pop().unwrap();
        let span = to_span(
            x,
            &facts(),
            resource(),
            &Clock::new(),
            SpanOptions::default(),
        );
        assert_eq!(span.name, "GET");
        assert_eq!(span.kind, SpanKind::Server);
        let a = |k| span.attr(k).cloned();
        assert_eq!(a("url.path"), Some("/a".into()));
        assert_eq!(a("url.query"), None);
        assert_eq!(a("server.address"), Some("shop.local".into()));
        assert_eq!(a("server.port"), Some(8080i64.into()));
        assert_eq!(a("client.address"), Some("10.0.0.9".into()));
        assert_eq!(a("network.protocol.version"), Some("1.1".into()));
        assert_eq!(a("user_agent.original"), Some("curl/8".into()));
        assert_eq!(a("http.response.status_code"), Some(503i64.into()));
        assert_eq!(span.status, Status::Error(String::new()));
        assert_eq!(span.end_ns - span.start_ns, 4_000);
    }

    #[test]
    fn client_span_errors_on_4xx_and_names_the_peer() {
        let mut h = Harness::new(Role::Client);
        h.feed(false, b"BREW /pot HTTP/1.1\r\n\r\n", 1);
        h.feed(true, b"HTTP/1.1 418 Teapot\r\nContent-Length: 0\r\n\r\n", 2);
        let x = h.out.pop().unwrap();
        let span = to_span(
            x,
            &facts(),
            resource(),
            &Clock::new(),
            SpanOptions {
                capture_query: true,
                baggage_keys: &[],
                known_methods: None,
            },
        );
        assert_eq!(span.name, "HTTP");
        assert_eq!(span.attr("http.request.method"), Some(&"_OTHER".into()));
        assert_eq!(
            span.attr("http.request.method_original"),
            Some(&"BREW".into())
        );
        assert_eq!(span.attr("server.address"), Some(&"10.0.0.9".into()));
        assert_eq!(
            span.attr("url.full"),
            Some(&"http://10.0.0.9:41000/pot".into())
        );
        assert!(matches!(span.status, Status::Error(_)));
    }

    #[test]
    fn known_methods_can_be_replaced() {
        let mut h = Harness::new(Role::Client);
        h.feed(false, b"PURGE /a HTTP/1.1\r\n\r\n", 1);
        h.feed(true, OK, 2);
        h.feed(false, b"GET /b HTTP/1.1\r\n\r\n", 3);
        h.feed(true, OK, 4);
        let opts = SpanOptions {
            known_methods: Some(&["PURGE"]),
            ..SpanOptions::default()
        };
        let mut spans = h
            .out
            .drain(..)
            .map(|x| to_span(x, &facts(), resource(), &Clock::new(), opts));
        let purge = spans.next().unwrap();
        assert_eq!(purge.name, "PURGE");
        assert_eq!(purge.attr("http.request.method"), Some(&"PURGE".into()));
        let get = spans.next().unwrap();
        assert_eq!(get.name, "HTTP");
        assert_eq!(
            get.attr("http.request.method_original"),
            Some(&"GET".into())
        );
    }

    #[test]
    fn allow_listed_baggage_becomes_attributes() {
        let mut h = Harness::new(Role::Server);
        h.feed(
            true,
            b"GET / HTTP/1.1\r\nbaggage: tenant=acme,secret=x,plan=gold;p=1\r\n\r\n",
            1,
        );
        h.feed(false, OK, 2);
        let opts = SpanOptions {
            capture_query: false,
            baggage_keys: &["tenant", "plan"],
            known_methods: None,
        };
        let span = to_span(
            h.out.pop().unwrap(),
            &facts(),
            resource(),
            &Clock::new(),
            opts,
        );
        assert_eq!(span.attr("tenant"), Some(&"acme".into()));
        assert_eq!(span.attr("plan"), Some(&"gold".into()));
        assert_eq!(span.attr("secret"), None);
    }

    /// Every attribute of a server span, in the order they are encoded:
    /// the exported bytes depend on it.
    #[test]
    fn server_span_attributes_in_their_order() {
        let mut h = Harness::new(Role::Server);
        h.feed(
            true,
            b"GET /a?x=1 HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: curl/8\r\nbaggage: k=v\r\n\r\n",
            1,
        );
        h.feed(false, b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", 2);
        let opts = SpanOptions {
            capture_query: true,
            baggage_keys: &["k"],
            known_methods: None,
        };
        let span = to_span(
            h.out.pop().unwrap(),
            &facts(),
            resource(),
            &Clock::new(),
            opts,
        );
        let got: Vec<_> = span
            .attributes
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        let want = [
            ("http.request.method", "GET"),
            ("http.response.status_code", "503"),
            ("network.protocol.name", "http"),
            ("url.scheme", "http"),
            ("url.path", "/a"),
            ("server.address", "shop.local"),
            ("server.port", "8080"),
            ("client.address", "10.0.0.9"),
            ("network.peer.address", "10.0.0.9"),
            ("network.peer.port", "41000"),
            ("url.query", "x=1"),
            ("k", "v"),
            ("user_agent.original", "curl/8"),
            ("network.protocol.version", "1.1"),
            ("error.type", "503"),
        ]
        .map(|(k, v)| (k, v.to_owned()));
        assert_eq!(got, want);
    }
}
