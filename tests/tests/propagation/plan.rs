//! Planned raw connections for the byte-exact tests: one generator per case
//! of the injection rules, and the check of what the server recorded
//! against what the rules (`clew_e2e::wire`) say it must be.

use clew_e2e::recording::{describe_sends, PlannedConn, Recorded, Step};
use clew_e2e::wire::{check_received, escape, expected, Injected, Rng};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

pub struct Plan {
    pub conns: Vec<PlannedConn>,
    /// Case name and number of HTTP requests, per connection id.
    pub meta: Vec<(&'static str, usize)>,
    rng: Rng,
    port: u16,
    /// Numbers request paths, so that each one is unique.
    seq: usize,
}

/// Per-case totals of a verified run.
#[derive(Default, Debug)]
pub struct CaseStats {
    pub conns: usize,
    pub requests: usize,
    pub sends: usize,
    pub bytes: usize,
    pub injected: usize,
    pub hands_off: usize,
    pub ok: usize,
}

pub struct Verified {
    pub cases: BTreeMap<&'static str, CaseStats>,
    pub failures: Vec<String>,
    /// The failed connections: "case: first request line", one per line.
    pub failed: Vec<String>,
    /// Every injected line received, with its connection id.
    pub injected: Vec<(usize, Injected)>,
}

impl Verified {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<24} {:>6} {:>8} {:>6} {:>9} {:>9} {:>9} {:>6}\n",
            "case", "conns", "requests", "sends", "bytes", "injected", "handsoff", "ok"
        );
        let mut total = CaseStats::default();
        for (name, c) in &self.cases {
            let _ = writeln!(
                out,
                "{name:<24} {:>6} {:>8} {:>6} {:>9} {:>9} {:>9} {:>6}",
                c.conns, c.requests, c.sends, c.bytes, c.injected, c.hands_off, c.ok
            );
            total.conns += c.conns;
            total.requests += c.requests;
            total.sends += c.sends;
            total.bytes += c.bytes;
            total.injected += c.injected;
            total.hands_off += c.hands_off;
            total.ok += c.ok;
        }
        let _ = writeln!(
            out,
            "{:<24} {:>6} {:>8} {:>6} {:>9} {:>9} {:>9} {:>6}",
            "TOTAL",
            total.conns,
            total.requests,
            total.sends,
            total.bytes,
            total.injected,
            total.hands_off,
            total.ok
        );
        out
    }

    pub fn total_requests(&self) -> usize {
        self.cases.values().map(|c| c.requests).sum()
    }
}

/// Connections of `plan` whose recorded bytes differ in any way from what
/// was sent, described.
pub fn changed(plan: &Plan, recorded: &HashMap<usize, Recorded>) -> Vec<String> {
    let mut out = Vec::new();
    for conn in &plan.conns {
        let sent: Vec<u8> = conn.sends().flatten().copied().collect();
        let got = recorded.get(&conn.id).map_or(&[][..], |r| &r.data[..]);
        if *got != sent {
            out.push(format!(
                "connection {}: sent {} bytes, received {}: {}",
                conn.id,
                sent.len(),
                got.len(),
                escape(&got[..got.len().min(600)])
            ));
        }
    }
    out
}

/// Checks every planned connection against what the server recorded.
pub fn verify(plan: &Plan, recorded: &HashMap<usize, Recorded>) -> Verified {
    let mut v = Verified {
        cases: BTreeMap::new(),
        failures: Vec::new(),
        failed: Vec::new(),
        injected: Vec::new(),
    };
    for conn in &plan.conns {
        let (case, requests) = plan.meta[conn.id];
        let exp = expected(conn.sends());
        let stats = v.cases.entry(case).or_default();
        stats.conns += 1;
        stats.requests += requests;
        stats.sends += conn.sends().count();
        stats.bytes += exp.sent.len();
        stats.injected += exp.inject_at.len();
        stats.hands_off += usize::from(exp.hands_off);
        let Some(rec) = recorded.get(&conn.id) else {
            v.failures
                .push(format!("[{case}] connection {}: nothing recorded", conn.id));
            continue;
        };
        match check_received(&exp, &rec.data) {
            Ok(lines) => {
                stats.ok += 1;
                v.injected.extend(lines.into_iter().map(|l| (conn.id, l)));
            }
            Err(e) => {
                let first = conn.sends().next().unwrap_or_default();
                let line = first.split(|&b| b == b'\r').next().unwrap_or_default();
                v.failed
                    .push(format!("{case}: {}", escape(&line[..line.len().min(60)])));
                v.failures.push(format!(
                "[{case}] connection {} (client port {}): {e}\n  sends:\n{}  received ({} bytes): {}",
                conn.id,
                rec.peer_port,
                describe_sends(conn),
                rec.data.len(),
                shorten(&rec.data)
            ))
            }
        }
    }
    v
}

fn shorten(b: &[u8]) -> String {
    if b.len() > 1500 {
        format!("{}...({} more bytes)", escape(&b[..1500]), b.len() - 1500)
    } else {
        escape(b)
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Plan {
    /// A connection's case and sends, for failure messages.
    pub fn describe(&self, id: usize) -> String {
        format!(
            "    case {}\n{}",
            self.meta[id].0,
            describe_sends(&self.conns[id])
        )
    }

    pub fn new(port: u16, seed: u64) -> Self {
        Plan {
            conns: Vec::new(),
            meta: Vec::new(),
            rng: Rng::new(seed),
            port,
            seq: 0,
        }
    }

    fn add(&mut self, case: &'static str, requests: usize, steps: Vec<Step>) {
        let id = self.conns.len();
        self.conns.push(PlannedConn { id, steps });
        self.meta.push((case, requests));
    }

    /// A request head: request line, Host, User-Agent, `extra` header
    /// lines (each with its CRLF), a few random padding headers, blank line.
    fn head(&mut self, method: &str, version: &str, extra: &str) -> Vec<u8> {
        let id = self.conns.len();
        self.seq += 1;
        let n = self.seq;
        let query = if self.rng.range(0, 3) == 0 {
            "?q=1&r=two"
        } else {
            ""
        };
        let mut pads = String::new();
        for k in 0..self.rng.range(0, 3) {
            let len = self.rng.range(0, 60);
            let text = String::from_utf8(self.rng.text(len)).unwrap();
            let _ = write!(pads, "X-Clew-Pad-{k}: {text}\r\n");
        }
        format!(
            "{method} /wire/{id}/{n}{query} {version}\r\nHost: 127.0.0.1:{}\r\nUser-Agent: clew-e2e-wire\r\n{extra}{pads}Accept: */*\r\n\r\n",
            self.port
        )
        .into_bytes()
    }

    fn get(&mut self) -> Vec<u8> {
        self.head("GET", "HTTP/1.1", "")
    }

    fn body(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let n = self.rng.range(lo, hi);
        self.rng.text(n)
    }

    fn post_head(&mut self, method: &str, len: usize) -> Vec<u8> {
        self.head(
            method,
            "HTTP/1.1",
            &format!("Content-Length: {len}\r\nContent-Type: text/plain\r\n"),
        )
    }

    /// `data` cut into `pieces` non-empty sends (fewer if too short).
    fn split(&mut self, data: &[u8], pieces: usize) -> Vec<Step> {
        let pieces = pieces.clamp(1, data.len().max(1));
        let mut cuts: Vec<usize> = (0..pieces - 1)
            .map(|_| self.rng.range(1, data.len() - 1))
            .collect();
        cuts.sort();
        cuts.dedup();
        let mut steps = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            steps.push(Step::Send(data[at..c].to_vec()));
            at = c;
        }
        steps
    }

    fn traceparent(&mut self) -> String {
        let t = hex::encode(self.rng.bytes(16));
        let s = hex::encode(self.rng.bytes(8));
        format!("00-{t}-{s}-01")
    }

    fn junk(&mut self) -> Vec<u8> {
        let n = self.rng.range(5, 2000);
        let mut j = self.rng.bytes(n);
        // Not a method: a control byte first, as in a TLS record.
        j[0] = self.rng.range(1, 0x1f) as u8;
        j
    }

    /// One request of a keep-alive sequence that the kernel must inject
    /// into, its body sent in one of several ways; ends with its response.
    fn injectable_request(&mut self, steps: &mut Vec<Step>) {
        match self.rng.range(0, 3) {
            0 => steps.push(Step::Send(self.get())),
            1 => {
                let body = self.body(1, 3000);
                let head = self.post_head("POST", body.len());
                steps.push(Step::Send(cat(&[&head, &body])));
            }
            2 => {
                let body = self.body(1, 3000);
                let head = self.post_head("POST", body.len());
                steps.push(Step::Send(head));
                let pieces = self.rng.range(1, 3);
                steps.extend(self.split(&body, pieces));
            }
            _ => {
                let body = self.body(2, 3000);
                let head = self.post_head("PUT", body.len());
                let k = self.rng.range(1, body.len() - 1);
                steps.push(Step::Send(cat(&[&head, &body[..k]])));
                let pieces = self.rng.range(1, 3);
                steps.extend(self.split(&body[k..], pieces));
            }
        }
        steps.push(Step::Await(1));
    }

    /// A plain GET and its response: on a socket gone hands-off it must pass untouched.
    fn follow_up(&mut self, steps: &mut Vec<Step>, answered: bool) {
        steps.push(Step::Send(self.get()));
        if answered {
            steps.push(Step::Await(1));
        }
    }

    /// Every case of the rules, `scale` times the base connection counts.
    pub fn all_cases(&mut self, scale: usize) {
        for _ in 0..300 * scale {
            let n = self.rng.range(1, 4);
            let mut steps = Vec::new();
            for _ in 0..n {
                steps.push(Step::Send(self.get()));
                steps.push(Step::Await(1));
            }
            self.add("get_keepalive", n, steps);
        }
        for _ in 0..100 * scale {
            let n = self.rng.range(1, 2);
            let mut steps = Vec::new();
            for _ in 0..n {
                let r = if self.rng.range(0, 1) == 0 {
                    self.head("GET", "HTTP/1.0", "")
                } else {
                    let body = self.body(1, 500);
                    let h = self.head(
                        "POST",
                        "HTTP/1.0",
                        &format!("Content-Length: {}\r\n", body.len()),
                    );
                    cat(&[&h, &body])
                };
                steps.push(Step::Send(r));
                steps.push(Step::Await(1));
            }
            self.add("http10", n, steps);
        }
        for _ in 0..150 * scale {
            let n = self.rng.range(1, 3);
            let mut steps = Vec::new();
            for _ in 0..n {
                let body = self.body(1, 3000);
                let head = self.post_head("POST", body.len());
                steps.push(Step::Send(cat(&[&head, &body])));
                steps.push(Step::Await(1));
            }
            self.add("post_body_same_send", n, steps);
        }
        for _ in 0..120 * scale {
            let n = self.rng.range(1, 2);
            let mut steps = Vec::new();
            for _ in 0..n {
                let body = self.body(1, 3000);
                steps.push(Step::Send(self.post_head("POST", body.len())));
                let pieces = self.rng.range(1, 3);
                steps.extend(self.split(&body, pieces));
                steps.push(Step::Await(1));
            }
            self.add("post_body_later_sends", n, steps);
        }
        for _ in 0..100 * scale {
            let n = self.rng.range(1, 2);
            let mut steps = Vec::new();
            for _ in 0..n {
                let body = self.body(2, 3000);
                let head = self.post_head("POST", body.len());
                let k = self.rng.range(1, body.len() - 1);
                steps.push(Step::Send(cat(&[&head, &body[..k]])));
                let pieces = self.rng.range(1, 3);
                steps.extend(self.split(&body[k..], pieces));
                steps.push(Step::Await(1));
            }
            self.add("post_part_of_body_first", n, steps);
        }
        for _ in 0..50 * scale {
            let body = self.body(16 * 1024 + 1, 100_000);
            let head = self.post_head("POST", body.len());
            let steps = vec![Step::Send(cat(&[&head, &body])), Step::Await(1)];
            let mut steps = steps;
            self.follow_up(&mut steps, true);
            self.add("post_big_body_same_send", 2, steps);
        }
        for _ in 0..50 * scale {
            let body = self.body(16 * 1024 + 1, 100_000);
            let head = self.post_head("POST", body.len());
            let k = self.rng.range(0, 2000);
            let mut steps = vec![Step::Send(cat(&[&head, &body[..k]]))];
            let pieces = self.rng.range(1, 6);
            steps.extend(self.split(&body[k..], pieces));
            steps.push(Step::Await(1));
            self.follow_up(&mut steps, true);
            self.add("post_big_body_later_sends", 2, steps);
        }
        for _ in 0..100 * scale {
            let method = *self
                .rng
                .pick(&["PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]);
            let r = if matches!(method, "PUT" | "PATCH") || self.rng.range(0, 3) == 0 {
                let body = self.body(0, 800);
                let h = self.post_head(method, body.len());
                cat(&[&h, &body])
            } else {
                self.head(method, "HTTP/1.1", "")
            };
            let mut steps = vec![Step::Send(r), Step::Await(1)];
            self.follow_up(&mut steps, true);
            self.add("other_listed_methods", 2, steps);
        }
        for _ in 0..100 * scale {
            let name =
                *self
                    .rng
                    .pick(&["traceparent", "Traceparent", "TraceParent", "TRACEPARENT"]);
            let tp = self.traceparent();
            // Anywhere among the headers.
            let extra = if self.rng.range(0, 1) == 0 {
                format!("{name}: {tp}\r\n")
            } else {
                format!("X-Before: 1\r\n{name}: {tp}\r\nTracestate: clew=1\r\n")
            };
            let r = if self.rng.range(0, 1) == 0 {
                self.head("GET", "HTTP/1.1", &extra)
            } else {
                let body = self.body(1, 2000);
                let h = self.head(
                    "POST",
                    "HTTP/1.1",
                    &format!("{extra}Content-Length: {}\r\n", body.len()),
                );
                cat(&[&h, &body])
            };
            let mut steps = vec![Step::Send(r), Step::Await(1)];
            // The socket stays injectable: the next request gets a line.
            self.follow_up(&mut steps, true);
            self.add("has_traceparent", 2, steps);
        }
        for _ in 0..100 * scale {
            let n = self.rng.range(2, 3);
            let mut all = Vec::new();
            for _ in 0..n {
                if self.rng.range(0, 1) == 0 {
                    all.extend(self.get());
                } else {
                    let body = self.body(1, 300);
                    all.extend(self.post_head("POST", body.len()));
                    all.extend(body);
                }
            }
            let mut steps = vec![Step::Send(all), Step::Await(n)];
            self.follow_up(&mut steps, true);
            self.add("pipelined_one_send", n + 1, steps);
        }
        for _ in 0..50 * scale {
            let r = self.get();
            let mut steps = vec![Step::Send(cat(&[&r, b"\r\n"])), Step::Await(1)];
            // The server stops framing at the stray CRLF: not answered.
            self.follow_up(&mut steps, false);
            self.add("trailing_bytes", 2, steps);
        }
        for _ in 0..100 * scale {
            let post = self.rng.range(0, 1) == 0;
            let (head, body) = if post {
                let body = self.body(1, 500);
                (self.post_head("POST", body.len()), body)
            } else {
                (self.get(), Vec::new())
            };
            let pieces = self.rng.range(2, 4);
            let mut steps = self.split(&head, pieces);
            if !body.is_empty() {
                steps.push(Step::Send(body));
            }
            steps.push(Step::Await(1));
            self.follow_up(&mut steps, true);
            self.add("head_split_over_sends", 2, steps);
        }
        for _ in 0..80 * scale {
            let head = self.get();
            let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
            let mut steps = vec![
                Step::Send(head[..line_end].to_vec()),
                Step::Send(head[line_end..].to_vec()),
                Step::Await(1),
            ];
            self.follow_up(&mut steps, true);
            self.add("request_line_then_rest", 2, steps);
        }
        for _ in 0..60 * scale {
            let mut steps = vec![Step::Send(self.junk())];
            self.follow_up(&mut steps, false);
            self.follow_up(&mut steps, false);
            self.add("non_http_then_http", 2, steps);
        }
        for _ in 0..80 * scale {
            let len = self.rng.range(1100, 4000);
            let big = String::from_utf8(self.rng.text(len)).unwrap();
            let r = if self.rng.range(0, 1) == 0 {
                self.head("GET", "HTTP/1.1", &format!("Cookie: {big}\r\n"))
            } else {
                let body = self.body(1, 500);
                let h = self.head(
                    "POST",
                    "HTTP/1.1",
                    &format!("Cookie: {big}\r\nContent-Length: {}\r\n", body.len()),
                );
                cat(&[&h, &body])
            };
            let mut steps = vec![Step::Send(r), Step::Await(1)];
            self.follow_up(&mut steps, true);
            self.add("head_over_1k", 2, steps);
        }
        for _ in 0..40 * scale {
            let h = self.head("POST", "HTTP/1.1", "Transfer-Encoding: chunked\r\n");
            let mut steps = vec![Step::Send(cat(&[&h, b"5\r\nhello\r\n0\r\n\r\n"]))];
            self.follow_up(&mut steps, false);
            self.add("chunked_body", 2, steps);
        }
        for _ in 0..20 * scale {
            let body = self.body(1, 100);
            let h = self.head(
                "POST",
                "HTTP/1.1",
                &format!(
                    "Transfer-Extension: x\r\nContent-Length: {}\r\n",
                    body.len()
                ),
            );
            let mut steps = vec![Step::Send(cat(&[&h, &body]))];
            self.follow_up(&mut steps, false);
            self.add("transfer_prefixed_header", 2, steps);
        }
        for _ in 0..20 * scale {
            let h = self.head("POST", "HTTP/1.1", "Content-Length: x1\r\n");
            let mut steps = vec![Step::Send(cat(&[&h, b"x"]))];
            self.follow_up(&mut steps, false);
            self.add("bad_content_length", 2, steps);
        }
        for _ in 0..60 * scale {
            let body = self.body(2, 2000);
            let head = self.post_head("POST", body.len());
            let k = self.rng.range(0, body.len() - 1);
            let next = self.get();
            let mut steps = vec![
                Step::Send(cat(&[&head, &body[..k]])),
                Step::Send(cat(&[&body[k..], &next])),
                Step::Await(2),
            ];
            self.follow_up(&mut steps, true);
            self.add("body_end_and_next_request", 3, steps);
        }
        for _ in 0..40 * scale {
            let method = *self.rng.pick(&["TRACE", "PROPFIND", "MKCOL", "PURGE"]);
            let mut steps = vec![
                Step::Send(self.head(method, "HTTP/1.1", "")),
                Step::Await(1),
            ];
            self.follow_up(&mut steps, true);
            self.add("unlisted_method", 2, steps);
        }
        for _ in 0..100 * scale {
            let n = self.rng.range(3, 8);
            let mut steps = Vec::new();
            for _ in 0..n {
                self.injectable_request(&mut steps);
            }
            self.add("keepalive_mixed", n, steps);
        }
    }

    /// `conns` keep-alive connections of 2 to 5 requests the kernel injects into.
    pub fn keepalive_only(&mut self, conns: usize) {
        for _ in 0..conns {
            let n = self.rng.range(2, 5);
            let mut steps = Vec::new();
            for _ in 0..n {
                self.injectable_request(&mut steps);
            }
            self.add("keepalive_mixed", n, steps);
        }
    }

    /// GETs (and POSTs with a body in the same send) whose heads are
    /// `lo..=hi` bytes long, around the 1024-byte scan limit.
    pub fn head_sizes(&mut self, lo: usize, hi: usize) {
        for len in lo..=hi {
            for post in [false, true] {
                let (method, extra) = if post {
                    ("POST", "Content-Length: 100\r\nX-Fill: ")
                } else {
                    ("GET", "X-Fill: ")
                };
                let line = format!(
                    "{method} /size/{len} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
                    self.port
                );
                let fixed = line.len() + extra.len() + 4;
                let fill = String::from_utf8(self.rng.text(len - fixed)).unwrap();
                let mut r = format!("{line}{extra}{fill}\r\n\r\n").into_bytes();
                assert_eq!(r.len(), len);
                if post {
                    r.extend(self.rng.text(100));
                }
                let mut steps = vec![Step::Send(r), Step::Await(1)];
                self.follow_up(&mut steps, true);
                self.add(
                    if post {
                        "head_size_post"
                    } else {
                        "head_size_get"
                    },
                    2,
                    steps,
                );
            }
        }
    }
}

/// What the CLIENT spans of `service` say about the injected lines.
pub struct SpanCheck {
    /// Injected requests whose CLIENT span carries exactly the injected ids.
    pub matched: usize,
    /// Injected requests without any CLIENT span, by connection.
    pub missing: BTreeMap<usize, usize>,
}

/// Every CLIENT span of `service` for a request that got a traceparent line
/// must carry exactly its trace id and span id, and no parent (the client
/// serves nothing); a span with an injected span id must be that request's.
/// Fails at once on any mismatch. Requests without a span at all are
/// waited for up to `timeout`, then returned as `missing`.
pub fn check_client_spans(
    rx: &clew_e2e::Receiver,
    service: &str,
    injected: &[(usize, Injected)],
    timeout: std::time::Duration,
    describe: impl Fn(usize) -> String,
) -> anyhow::Result<SpanCheck> {
    use std::collections::HashSet;
    let ids: HashSet<&str> = injected.iter().map(|(_, l)| l.span_id.as_str()).collect();
    anyhow::ensure!(
        ids.len() == injected.len(),
        "{} injected span ids are repeated",
        injected.len() - ids.len()
    );
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let spans = rx.spans();
        let mut by_path: HashMap<&str, Vec<&clew_e2e::RecvSpan>> = HashMap::new();
        for s in spans
            .iter()
            .filter(|s| s.is_client() && s.service() == Some(service))
        {
            by_path.entry(s.path().unwrap_or("")).or_default().push(s);
        }
        let mut wrong = Vec::new();
        let mut missing: BTreeMap<usize, usize> = BTreeMap::new();
        let mut matched = 0;
        for (conn, l) in injected {
            match by_path.get(l.path()).map(Vec::as_slice) {
                None | Some([]) => *missing.entry(*conn).or_default() += 1,
                // Several planned requests may share a path (the GET and
                // POST of one head size): the injected ids single one out.
                Some(found)
                    if found.iter().any(|s| {
                        s.trace_id == l.trace_id
                            && s.span_id == l.span_id
                            && s.parent_span_id.is_none()
                    }) =>
                {
                    matched += 1
                }
                Some(found) => wrong.push(format!(
                    "  connection {conn}: injected {l:?}\n{}\n{}",
                    found
                        .iter()
                        .map(|s| format!("    span {s}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    describe(*conn)
                )),
            }
        }
        let paths: HashMap<&str, &str> = injected
            .iter()
            .map(|(_, l)| (l.span_id.as_str(), l.path()))
            .collect();
        for s in spans.iter().filter(|s| s.is_client()) {
            if let Some(p) = paths.get(s.span_id.as_str()) {
                if s.path() != Some(p) {
                    wrong.push(format!(
                        "  a span carries the span id injected into {p}: {s}"
                    ));
                }
            }
        }
        if !wrong.is_empty() {
            anyhow::bail!(
                "{} CLIENT spans of injected requests do not carry exactly the injected trace id and span id (or have a parent):\n{}",
                wrong.len(),
                wrong.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
            );
        }
        if missing.is_empty() || std::time::Instant::now() > deadline {
            return Ok(SpanCheck { matched, missing });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
