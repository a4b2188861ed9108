//! HTTP/2 exchanges as spans: gRPC calls (`content-type:
//! application/grpc...`) with the RPC semantic conventions, the rest with
//! the HTTP ones.
//!
//! RPC attributes follow semantic conventions v1.37.0, the experimental RPC
//! conventions most gRPC instrumentations emit (`rpc.system`,
//! `rpc.service`, `rpc.method`, integer `rpc.grpc.status_code`); the later
//! release-candidate renames (`rpc.system.name`, `rpc.response.status_code`)
//! are not adopted yet.

use std::sync::Arc;

use super::Exchange;
use crate::{
    clock::Clock,
    metrics::{Instrument, Measurement},
    protocol::{
        common::{push_peer, Frame, CONNECTION_CLOSED},
        http_common::{http_measure, http_span, push_server_endpoint, HttpCall},
        ConnFacts, Role, SpanOptions,
    },
    span::{AttrValue, Attributes, Resource, Span, Status},
};

pub fn to_span(
    x: Exchange,
    conn: &ConnFacts,
    resource: Arc<Resource>,
    clock: &Clock,
    opts: SpanOptions,
) -> Span {
    let frame = Frame {
        ctx: x.ctx.clone(),
        role: x.role,
        start_ns: x.start_ns,
        end_ns: x.end_ns,
    };
    let mut span = if is_grpc(&x) {
        grpc_span(&x, frame, conn, resource, clock)
    } else {
        http_span(call(&x), frame, conn, resource, clock, opts)
    };
    // Resumed after lost records: fields the span lacks may be among
    // these, which Clew could not read (no convention covers it).
    let unknown = x.unknown_fields();
    if unknown > 0 {
        span.attributes
            .push(("clew.http2.unknown_fields", i64::from(unknown).into()));
    }
    span
}

/// `http.*.request.duration`, or for gRPC `rpc.*.duration`.
pub fn measure<'a>(x: &'a Exchange, conn: &ConnFacts, opts: SpanOptions) -> Measurement<'a> {
    let duration = x.end_ns.saturating_sub(x.start_ns);
    if !is_grpc(x) {
        return http_measure(&call(x), x.role, duration, conn, opts);
    }
    let mut a: Attributes = Vec::with_capacity(7);
    a.push(("rpc.system", "grpc".into()));
    let (service, method) = rpc_names(x);
    if let Some((s, m)) = service.zip(method) {
        a.push(("rpc.service", s.to_owned().into()));
        a.push(("rpc.method", m.to_owned().into()));
    }
    let grpc_status = grpc_status(x);
    if let Some(code) = grpc_status {
        a.push(("rpc.grpc.status_code", i64::from(code).into()));
    }
    let error = grpc_error(x, grpc_status);
    let failed = error.is_some();
    if let Some(e) = error {
        a.push(("error.type", e));
    }
    let instrument = match x.role {
        Role::Server => Instrument::RpcServer,
        Role::Client => {
            push_server_endpoint(&mut a, x.role, conn, x.request.authority.as_deref());
            Instrument::RpcClient
        }
    };
    Measurement {
        instrument,
        duration_ns: duration,
        attributes: a,
        path: None,
        failed,
    }
}

fn is_grpc(x: &Exchange) -> bool {
    x.request
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/grpc"))
}

/// `:path` is `/package.Service/Method`.
fn rpc_names(x: &Exchange) -> (Option<&str>, Option<&str>) {
    let path = x.request.path.as_deref().unwrap_or_default();
    let name = path.strip_prefix('/').unwrap_or(path);
    match name.split_once('/') {
        Some((s, m)) => (Some(s), Some(m)),
        None => (None, None),
    }
}

/// From the trailers, or a trailers-only response (its one HEADERS block).
fn grpc_status(x: &Exchange) -> Option<u32> {
    [&x.trailers, &x.response]
        .into_iter()
        .flatten()
        .find_map(|f| f.grpc_status)
}

fn grpc_error(x: &Exchange, grpc_status: Option<u32>) -> Option<AttrValue> {
    let http_status = x.response.as_ref().and_then(|r| r.status);
    match (failure(x), grpc_status, http_status) {
        (Some(f), _, _) => Some(f.into()),
        (None, Some(code), _) if is_error(x.role, code) => Some(grpc_code_name(code).into()),
        (None, Some(_), _) => None,
        // No grpc-status: the call failed at the HTTP level.
        (None, None, Some(s)) if s != 200 => Some(s.to_string().into()),
        (None, None, _) => None,
    }
}

fn call(x: &Exchange) -> HttpCall<'_> {
    let req = &x.request;
    let target = req.path.as_deref().unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    HttpCall {
        method: req.method.as_deref().unwrap_or_default(),
        path,
        query,
        authority: req.authority.as_deref(),
        scheme: req.scheme.as_deref(),
        version: "2".into(),
        status: x.response.as_ref().and_then(|r| r.status),
        failure: failure(x),
        user_agent: req.user_agent.as_deref(),
        baggage: req.baggage.as_deref(),
    }
}

fn grpc_span(
    x: &Exchange,
    frame: Frame,
    conn: &ConnFacts,
    resource: Arc<Resource>,
    clock: &Clock,
) -> Span {
    let mut a: Attributes = Vec::with_capacity(12);
    a.push(("rpc.system", "grpc".into()));
    let path = x.request.path.as_deref().unwrap_or_default();
    let name = path.strip_prefix('/').unwrap_or(path);
    if let (Some(service), Some(method)) = rpc_names(x) {
        a.push(("rpc.service", service.to_owned().into()));
        a.push(("rpc.method", method.to_owned().into()));
    }
    let grpc_status = grpc_status(x);
    if let Some(code) = grpc_status {
        a.push(("rpc.grpc.status_code", i64::from(code).into()));
    }
    push_server_endpoint(&mut a, frame.role, conn, x.request.authority.as_deref());
    push_peer(&mut a, frame.role, conn);
    // Clew's own attributes: messages each way (none in the conventions).
    let counts = [
        ("rpc.grpc.request.message_count", x.request_messages),
        ("rpc.grpc.response.message_count", x.response_messages),
    ];
    for (key, n) in counts {
        if let Some(n) = n.and_then(|n| i64::try_from(n).ok()) {
            a.push((key, n.into()));
        }
    }
    let status = match grpc_error(x, grpc_status) {
        Some(e) => {
            a.push(("error.type", e));
            let message = [&x.trailers, &x.response]
                .into_iter()
                .flatten()
                .find_map(|f| f.grpc_message.clone());
            Status::Error(message.unwrap_or_default())
        }
        None => Status::Unset,
    };
    let span_name = if name.is_empty() { "grpc" } else { name };
    frame.into_span(span_name.to_owned().into(), status, a, resource, clock)
}

/// gRPC's rules: a server failed on these codes only (the others are the
/// caller's doing); a client on any but OK.
fn is_error(role: Role, code: u32) -> bool {
    match role {
        Role::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        Role::Client => code != 0,
    }
}

fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("_OTHER")
}

/// RST_STREAM error codes (RFC 9113 §7).
/// How the stream failed short of a status: reset, or cut off by its
/// connection's close.
fn failure(x: &Exchange) -> Option<&'static str> {
    x.reset
        .map(reset_name)
        .or(x.cut_off.then_some(CONNECTION_CLOSED))
}

fn reset_name(code: u32) -> &'static str {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("_OTHER")
}
