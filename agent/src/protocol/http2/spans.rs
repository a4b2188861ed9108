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
    protocol::{
        common::{push_peer, Frame, CONNECTION_CLOSED},
        http_common::{http_span, server_endpoint, HttpCall},
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
    let grpc = x
        .request
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/grpc"));
    if grpc {
        return grpc_span(&x, frame, conn, resource, clock);
    }
    let req = &x.request;
    let target = req.path.as_deref().unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let call = HttpCall {
        method: req.method.as_deref().unwrap_or_default(),
        path,
        query,
        authority: req.authority.as_deref(),
        scheme: req.scheme.as_deref(),
        version: "2".into(),
        status: x.response.as_ref().and_then(|r| r.status),
        failure: failure(&x),
        user_agent: req.user_agent.as_deref(),
        baggage: req.baggage.as_deref(),
    };
    http_span(call, frame, conn, resource, clock, opts)
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
    // `:path` is `/package.Service/Method`.
    let path = x.request.path.as_deref().unwrap_or_default();
    let name = path.strip_prefix('/').unwrap_or(path);
    if let Some((service, method)) = name.split_once('/') {
        a.push(("rpc.service", service.to_owned().into()));
        a.push(("rpc.method", method.to_owned().into()));
    }
    // Trailers, or a trailers-only response (its one HEADERS block).
    let grpc_status = [&x.trailers, &x.response]
        .into_iter()
        .flatten()
        .find_map(|f| f.grpc_status);
    if let Some(code) = grpc_status {
        a.push(("rpc.grpc.status_code", i64::from(code).into()));
    }
    let (server, port) = server_endpoint(frame.role, conn, x.request.authority.as_deref());
    if let Some(s) = server {
        a.push(("server.address", s.into()));
    }
    if let Some(p) = port {
        a.push(("server.port", i64::from(p).into()));
    }
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
    let http_status = x.response.as_ref().and_then(|r| r.status);
    let error: Option<AttrValue> = match (failure(x), grpc_status, http_status) {
        (Some(f), _, _) => Some(f.into()),
        (None, Some(code), _) if is_error(frame.role, code) => Some(grpc_code_name(code).into()),
        (None, Some(_), _) => None,
        // No grpc-status: the call failed at the HTTP level.
        (None, None, Some(s)) if s != 200 => Some(s.to_string().into()),
        (None, None, _) => None,
    };
    let status = match error {
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
