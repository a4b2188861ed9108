//! What HTTP/2 and gRPC spans must look like under the span contract,
//! checked field by field (the HTTP/1 counterpart is `check::Expect`).

use crate::receiver::{RecvSpan, Value, KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET};
use anyhow::{bail, Result};

/// How the agent marks a span whose header fields referred to HPACK table
/// entries lost with capture: how many did.
pub const UNKNOWN_FIELDS: &str = "clew.http2.unknown_fields";

/// Attribute keys by which the agent may mark a span it could only partly
/// decode (e.g. HPACK state missed on a connection opened before it
/// started). Any key containing "degraded" also counts.
pub const DEGRADED_KEYS: &[&str] = &[
    UNKNOWN_FIELDS,
    "clew.degraded",
    "clew.http2.degraded",
    "clew.partial",
];

/// The span says it was assembled from incomplete state.
pub fn is_degraded(s: &RecvSpan) -> bool {
    s.attrs.iter().any(|(k, v)| {
        (DEGRADED_KEYS.contains(&k.as_str()) || k.contains("degraded"))
            && !matches!(v, Value::Bool(false))
    })
}

fn str_is(s: &RecvSpan, k: &str, v: &str) -> bool {
    s.attrs.get(k) == Some(&Value::Str(v.into()))
}

fn int_is(s: &RecvSpan, k: &str, v: i64) -> bool {
    s.attrs.get(k) == Some(&Value::Int(v))
}

fn show(s: &RecvSpan, k: &str) -> String {
    s.attrs.get(k).map_or("nothing".into(), |v| v.to_string())
}

/// Collects contract violations, then fails with all of them at once.
struct Violations(Vec<String>);

impl Violations {
    fn want(&mut self, what: impl Into<String>, ok: bool, got: impl Into<String>) {
        if !ok {
            self.0.push(format!("{} (got {})", what.into(), got.into()));
        }
    }

    fn attr_str(&mut self, s: &RecvSpan, k: &str, v: &str) {
        self.want(format!("{k}={v:?}"), str_is(s, k, v), show(s, k));
    }

    fn attr_int(&mut self, s: &RecvSpan, k: &str, v: i64) {
        self.want(format!("{k}={v}"), int_is(s, k, v), show(s, k));
    }

    fn finish(self, s: &RecvSpan) -> Result<()> {
        if !self.0.is_empty() {
            bail!(
                "span does not match the contract:\n  - {}\nspan: {s}",
                self.0.join("\n  - ")
            );
        }
        Ok(())
    }
}

/// One plain HTTP/2 SERVER or CLIENT span.
#[derive(Clone, Debug)]
pub struct H2Expect<'a> {
    pub kind: i32,
    pub service: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: i64,
    pub server_port: u16,
    pub scheme: &'a str,
}

impl<'a> H2Expect<'a> {
    /// A `GET` answered 200 over plaintext, as the server saw it.
    pub fn server(service: &'a str, path: &'a str, server_port: u16) -> Self {
        H2Expect {
            kind: KIND_SERVER,
            service,
            method: "GET",
            path,
            status: 200,
            server_port,
            scheme: "http",
        }
    }

    /// The same, as the client saw it.
    pub fn client(service: &'a str, path: &'a str, server_port: u16) -> Self {
        H2Expect {
            kind: KIND_CLIENT,
            ..Self::server(service, path, server_port)
        }
    }

    pub fn https(self) -> Self {
        H2Expect {
            scheme: "https",
            ..self
        }
    }

    pub fn status(self, status: i64) -> Self {
        H2Expect { status, ..self }
    }

    /// Kind, service and path (url.path, or the path of url.full).
    pub fn matches(&self, s: &RecvSpan) -> bool {
        s.is(self.kind, self.service, self.path)
    }

    pub fn select<'s>(&self, spans: &'s [RecvSpan]) -> Vec<&'s RecvSpan> {
        spans.iter().filter(|s| self.matches(s)).collect()
    }

    pub fn check(&self, s: &RecvSpan) -> Result<()> {
        let mut v = Violations(Vec::new());
        v.want(
            format!("kind {}", self.kind),
            s.kind == self.kind,
            s.kind.to_string(),
        );
        v.want(
            format!("name {:?}", self.method),
            s.name == self.method,
            format!("{:?}", s.name),
        );
        let error = match self.kind {
            KIND_SERVER => self.status >= 500,
            _ => self.status >= 400,
        };
        let want = if error { STATUS_ERROR } else { STATUS_UNSET };
        v.want(
            format!("status code {want}"),
            s.status_code == want,
            s.status_code.to_string(),
        );
        v.attr_str(s, "http.request.method", self.method);
        v.attr_int(s, "http.response.status_code", self.status);
        v.attr_str(s, "network.protocol.name", "http");
        v.attr_str(s, "network.protocol.version", "2");
        v.attr_str(s, "server.address", "127.0.0.1");
        v.attr_int(s, "server.port", i64::from(self.server_port));
        if self.kind == KIND_SERVER || s.attrs.contains_key("url.path") {
            v.attr_str(s, "url.path", self.path);
        }
        // Clients may carry url.full instead (as HTTP/1 clients do).
        let scheme_ok = str_is(s, "url.scheme", self.scheme)
            || (self.kind == KIND_CLIENT
                && s.attr_str("url.full")
                    .is_some_and(|u| u.starts_with(&format!("{}://", self.scheme))));
        v.want(
            format!("url.scheme={:?}", self.scheme),
            scheme_ok,
            format!(
                "{} / url.full {}",
                show(s, "url.scheme"),
                show(s, "url.full")
            ),
        );
        v.want(
            format!("resource service.name={:?}", self.service),
            s.service() == Some(self.service),
            format!("{:?}", s.service()),
        );
        v.finish(s)
    }
}

/// gRPC status codes a SERVER span reports as ERROR (semconv).
pub const SERVER_ERROR_CODES: &[i64] = &[2, 4, 12, 13, 14, 15];

/// One gRPC SERVER or CLIENT span.
#[derive(Clone, Debug)]
pub struct RpcExpect<'a> {
    pub kind: i32,
    pub service: &'a str,
    /// `package.Service`.
    pub rpc_service: &'a str,
    pub method: &'a str,
    pub code: i64,
    pub server_port: u16,
}

impl<'a> RpcExpect<'a> {
    pub fn server(service: &'a str, rpc_service: &'a str, method: &'a str, port: u16) -> Self {
        RpcExpect {
            kind: KIND_SERVER,
            service,
            rpc_service,
            method,
            code: 0,
            server_port: port,
        }
    }

    pub fn client(service: &'a str, rpc_service: &'a str, method: &'a str, port: u16) -> Self {
        RpcExpect {
            kind: KIND_CLIENT,
            ..Self::server(service, rpc_service, method, port)
        }
    }

    pub fn code(self, code: i64) -> Self {
        RpcExpect { code, ..self }
    }

    /// `package.Service/Method`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.rpc_service, self.method)
    }

    /// Kind, service and span name.
    pub fn matches(&self, s: &RecvSpan) -> bool {
        s.kind == self.kind && s.service() == Some(self.service) && s.name == self.name()
    }

    pub fn select<'s>(&self, spans: &'s [RecvSpan]) -> Vec<&'s RecvSpan> {
        spans.iter().filter(|s| self.matches(s)).collect()
    }

    /// Selects by `matches` and by the status code too.
    pub fn select_exact<'s>(&self, spans: &'s [RecvSpan]) -> Vec<&'s RecvSpan> {
        spans
            .iter()
            .filter(|s| self.matches(s) && int_is(s, "rpc.grpc.status_code", self.code))
            .collect()
    }

    pub fn error(&self) -> bool {
        match self.kind {
            KIND_SERVER => SERVER_ERROR_CODES.contains(&self.code),
            _ => self.code != 0,
        }
    }

    pub fn check(&self, s: &RecvSpan) -> Result<()> {
        let mut v = Violations(Vec::new());
        v.want(
            format!("kind {}", self.kind),
            s.kind == self.kind,
            s.kind.to_string(),
        );
        v.want(
            format!("name {:?}", self.name()),
            s.name == self.name(),
            format!("{:?}", s.name),
        );
        let want = if self.error() {
            STATUS_ERROR
        } else {
            STATUS_UNSET
        };
        v.want(
            format!("status code {want}"),
            s.status_code == want,
            s.status_code.to_string(),
        );
        v.attr_str(s, "rpc.system", "grpc");
        v.attr_str(s, "rpc.service", self.rpc_service);
        v.attr_str(s, "rpc.method", self.method);
        v.attr_int(s, "rpc.grpc.status_code", self.code);
        v.attr_str(s, "server.address", "127.0.0.1");
        v.attr_int(s, "server.port", i64::from(self.server_port));
        v.want(
            format!("resource service.name={:?}", self.service),
            s.service() == Some(self.service),
            format!("{:?}", s.service()),
        );
        v.want(
            "not marked degraded",
            !is_degraded(s),
            "a degraded marker".to_string(),
        );
        v.finish(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn span(kind: i32, name: &str, attrs: &[(&str, Value)]) -> RecvSpan {
        RecvSpan {
            trace_id: "t".into(),
            span_id: "s".into(),
            parent_span_id: None,
            trace_state: String::new(),
            name: name.into(),
            kind,
            status_code: STATUS_UNSET,
            status_message: String::new(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            resource: HashMap::from([("service.name".into(), Value::Str("svc".into()))]),
            start_ns: 0,
            end_ns: 1,
        }
    }

    #[test]
    fn grpc_status_to_span_status() {
        let srv = RpcExpect::server("svc", "p.S", "M", 1);
        let cli = RpcExpect::client("svc", "p.S", "M", 1);
        // NOT_FOUND is the caller's error, not the server's.
        assert!(!srv.clone().code(5).error() && cli.clone().code(5).error());
        assert!(srv.clone().code(13).error() && cli.clone().code(13).error());
        assert!(!srv.code(0).error() && !cli.code(0).error());
    }

    #[test]
    fn checks_a_grpc_span() {
        let e = RpcExpect::server("svc", "p.S", "M", 50051).code(5);
        let mut attrs = vec![
            ("rpc.system", Value::Str("grpc".into())),
            ("rpc.service", Value::Str("p.S".into())),
            ("rpc.method", Value::Str("M".into())),
            ("rpc.grpc.status_code", Value::Int(5)),
            ("server.address", Value::Str("127.0.0.1".into())),
            ("server.port", Value::Int(50051)),
        ];
        let good = span(KIND_SERVER, "p.S/M", &attrs);
        assert!(e.matches(&good) && e.check(&good).is_ok());
        assert_eq!(e.select_exact(std::slice::from_ref(&good)).len(), 1);
        attrs[3].1 = Value::Str("5".into());
        let err = e.check(&span(KIND_SERVER, "p.S/M", &attrs)).unwrap_err();
        assert!(format!("{err}").contains("rpc.grpc.status_code=5"), "{err}");
        attrs.push(("clew.degraded", Value::Bool(true)));
        assert!(is_degraded(&span(KIND_SERVER, "p.S/M", &attrs)));
        assert!(!is_degraded(&good));
    }
}
