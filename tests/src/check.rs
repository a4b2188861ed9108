//! What an HTTP span must look like under the span contract, checked field by field.

use crate::env::host_name;
use crate::receiver::{
    Receiver, RecvSpan, Value, KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET,
};
use crate::SPAN_TIMEOUT;
use anyhow::{bail, Result};

/// The expected shape of one HTTP SERVER or CLIENT span.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    pub kind: i32,
    pub service: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: i64,
    /// The port the request went to (the server's, for both kinds).
    pub server_port: u16,
    /// A substring `user_agent.original` must contain.
    pub user_agent: Option<&'a str>,
    pub pid: Option<u32>,
    pub exe: Option<&'a str>,
    /// `http` or `https`.
    pub scheme: &'a str,
}

impl<'a> Expect<'a> {
    /// A `GET` answered 200, as seen by the server.
    pub fn server(service: &'a str, path: &'a str, server_port: u16) -> Self {
        Expect {
            kind: KIND_SERVER,
            service,
            method: "GET",
            path,
            status: 200,
            server_port,
            user_agent: None,
            pid: None,
            exe: None,
            scheme: "http",
        }
    }

    /// A `GET` answered 200, as seen by the client.
    pub fn client(service: &'a str, path: &'a str, server_port: u16) -> Self {
        Expect {
            kind: KIND_CLIENT,
            ..Self::server(service, path, server_port)
        }
    }

    /// The request went over TLS.
    pub fn https(self) -> Self {
        Expect {
            scheme: "https",
            ..self
        }
    }

    pub fn status(self, status: i64) -> Self {
        Expect { status, ..self }
    }

    pub fn path(self, path: &'a str) -> Self {
        Expect { path, ..self }
    }

    pub fn method(self, method: &'a str) -> Self {
        Expect { method, ..self }
    }

    pub fn user_agent(self, ua: &'a str) -> Self {
        Expect {
            user_agent: Some(ua),
            ..self
        }
    }

    pub fn process(self, pid: u32, exe: &'a str) -> Self {
        Expect {
            pid: Some(pid),
            exe: Some(exe),
            ..self
        }
    }

    /// Cheap identity filter: kind, service and path. Use `check` for the rest.
    pub fn matches(&self, s: &RecvSpan) -> bool {
        s.is(self.kind, self.service, self.path)
    }

    /// The spans `matches` selects.
    pub fn select<'s>(&self, spans: &'s [RecvSpan]) -> Vec<&'s RecvSpan> {
        spans.iter().filter(|s| self.matches(s)).collect()
    }

    /// The one span `matches` selects, checked against the whole contract.
    pub fn one<'s>(&self, spans: &'s [RecvSpan]) -> Result<&'s RecvSpan> {
        expect_count(spans, &format!("{self:?} spans"), 1, |s| self.matches(s))?;
        let s = self.select(spans)[0];
        self.check(s)?;
        Ok(s)
    }

    /// Every field of the contract; all mismatches reported at once.
    pub fn check(&self, s: &RecvSpan) -> Result<()> {
        let mut bad = Vec::new();
        let mut want = |what: &str, ok: bool, got: String| {
            if !ok {
                bad.push(format!("{what} (got {got})"));
            }
        };
        let str_is = |m: Option<&Value>, v: &str| m == Some(&Value::Str(v.into()));
        let int_is = |m: Option<&Value>, v: i64| m == Some(&Value::Int(v));
        let show = |m: Option<&Value>| m.map_or("nothing".into(), |v| v.to_string());
        let attr = |k: &str| s.attrs.get(k);
        let res = |k: &str| s.resource.get(k);

        want(
            &format!("kind {}", self.kind),
            s.kind == self.kind,
            s.kind.to_string(),
        );
        want(
            &format!("name {:?}", self.method),
            s.name == self.method,
            format!("{:?}", s.name),
        );
        let error = match self.kind {
            KIND_SERVER => self.status >= 500,
            _ => self.status >= 400,
        };
        let status = if error { STATUS_ERROR } else { STATUS_UNSET };
        want(
            &format!("status code {status}"),
            s.status_code == status,
            s.status_code.to_string(),
        );
        // Semconv: server spans carry url.path, client spans url.full.
        let url = match self.kind {
            KIND_SERVER => ("url.path", self.path.to_string()),
            _ => (
                "url.full",
                format!(
                    "{}://127.0.0.1:{}{}",
                    self.scheme, self.server_port, self.path
                ),
            ),
        };
        if self.kind == KIND_SERVER {
            want(
                &format!("url.scheme={:?}", self.scheme),
                str_is(attr("url.scheme"), self.scheme),
                show(attr("url.scheme")),
            );
        }
        for (key, value) in [
            ("http.request.method", self.method),
            (url.0, url.1.as_str()),
            ("server.address", "127.0.0.1"),
            ("network.peer.address", "127.0.0.1"),
            ("network.protocol.version", "1.1"),
        ] {
            want(
                &format!("{key}={value:?}"),
                str_is(attr(key), value),
                show(attr(key)),
            );
        }
        for (key, value) in [
            ("http.response.status_code", self.status),
            ("server.port", i64::from(self.server_port)),
        ] {
            want(
                &format!("{key}={value}"),
                int_is(attr(key), value),
                show(attr(key)),
            );
        }
        if self.kind == KIND_SERVER {
            let key = "client.address";
            want(
                "client.address=\"127.0.0.1\"",
                str_is(attr(key), "127.0.0.1"),
                show(attr(key)),
            );
        }
        if let Some(ua) = self.user_agent {
            let got = s.attr_str("user_agent.original").unwrap_or("");
            want(
                &format!("user_agent.original containing {ua:?}"),
                got.contains(ua),
                got.into(),
            );
        }
        for (key, value) in [
            ("service.name", self.service),
            ("telemetry.sdk.name", "clew"),
            ("host.name", host_name().as_str()),
        ] {
            want(
                &format!("resource {key}={value:?}"),
                str_is(res(key), value),
                show(res(key)),
            );
        }
        let pid = res("process.pid");
        match self.pid {
            Some(p) => want(
                &format!("resource process.pid={p}"),
                int_is(pid, p.into()),
                show(pid),
            ),
            None => want(
                "resource process.pid",
                matches!(pid, Some(Value::Int(p)) if *p > 0),
                show(pid),
            ),
        }
        let exe = res("process.executable.name");
        match self.exe {
            Some(e) => want(
                &format!("resource process.executable.name={e:?}"),
                str_is(exe, e),
                show(exe),
            ),
            None => want(
                "resource process.executable.name",
                matches!(exe, Some(Value::Str(_))),
                show(exe),
            ),
        }
        if !bad.is_empty() {
            bail!(
                "span does not match the contract:\n  - {}\nspan: {s}",
                bad.join("\n  - ")
            );
        }
        Ok(())
    }
}

/// Waits until every expectation selects a span, checks the first of each
/// and returns them, in the order of `expects`.
pub fn wait_for_each(rx: &Receiver, expects: &[Expect]) -> Result<Vec<RecvSpan>> {
    let spans = rx.wait_for(
        |s| expects.iter().all(|e| !e.select(s).is_empty()),
        SPAN_TIMEOUT,
    )?;
    expects
        .iter()
        .map(|e| {
            let span = e.select(&spans)[0].clone();
            e.check(&span).map(|()| span)
        })
        .collect()
}

/// `n` spans satisfy `pred`, else an error naming `what` and listing the matches.
pub fn expect_count(
    spans: &[RecvSpan],
    what: &str,
    n: usize,
    pred: impl Fn(&RecvSpan) -> bool,
) -> Result<()> {
    let got: Vec<_> = spans.iter().filter(|s| pred(s)).collect();
    if got.len() != n {
        let list: Vec<String> = got.iter().map(|s| format!("  {s}")).collect();
        bail!(
            "expected {n} {what}, got {}:\n{}",
            got.len(),
            list.join("\n")
        );
    }
    Ok(())
}

/// The spans whose parent is `parent` within its trace.
pub fn children<'s>(spans: &'s [RecvSpan], parent: &RecvSpan) -> Vec<&'s RecvSpan> {
    spans
        .iter()
        .filter(|s| {
            s.trace_id == parent.trace_id && s.parent_span_id.as_deref() == Some(&parent.span_id)
        })
        .collect()
}

/// `child` is a direct child of `parent`: same trace, parent id set to
/// `parent`'s span id, and its time span within `parent`'s.
pub fn is_child_within(parent: &RecvSpan, child: &RecvSpan) -> bool {
    child.trace_id == parent.trace_id
        && child.parent_span_id.as_deref() == Some(&parent.span_id)
        && parent.start_ns <= child.start_ns
        && child.end_ns <= parent.end_ns
}

/// The largest number of `spans` open at the same instant (from their
/// timestamps), to show that requests really overlapped.
pub fn max_overlap(spans: &[&RecvSpan]) -> usize {
    let mut edges: Vec<(u64, i32)> = spans
        .iter()
        .flat_map(|s| [(s.start_ns, 1), (s.end_ns, -1)])
        .collect();
    // Ends sort before starts at the same instant: touching spans do not overlap.
    edges.sort();
    let (mut open, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        max = max.max(open);
    }
    max as usize
}

/// `child`'s parent is `parent`, in the same trace.
pub fn ensure_parent(child: &RecvSpan, parent: &RecvSpan) -> Result<()> {
    anyhow::ensure!(
        child.trace_id == parent.trace_id
            && child.parent_span_id.as_deref() == Some(parent.span_id.as_str()),
        "wrong parent:\n  child:    {child}\n  expected: {parent}"
    );
    Ok(())
}

/// The one span among `candidates` that is `child`'s parent (same trace).
pub fn parent_among<'s>(child: &RecvSpan, candidates: &[&'s RecvSpan]) -> Result<&'s RecvSpan> {
    let found: Vec<_> = candidates
        .iter()
        .filter(|p| {
            p.trace_id == child.trace_id
                && child.parent_span_id.as_deref() == Some(p.span_id.as_str())
        })
        .collect();
    if found.len() != 1 {
        let list: Vec<String> = candidates.iter().map(|c| format!("    {c}")).collect();
        anyhow::bail!(
            "expected one parent for\n  {child}\namong {} candidates, found {}:\n{}",
            candidates.len(),
            found.len(),
            list.join("\n")
        );
    }
    Ok(found[0])
}
