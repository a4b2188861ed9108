//! The HTTP semantic conventions (stable HTTP spans), shared by every HTTP
//! version: each version's parser fills an [`HttpCall`] and this builds the span.

use std::{borrow::Cow, sync::Arc};

use compact_str::{CompactString, ToCompactString};

use super::common::{ip_text, push_peer, ConnFacts, Frame, Role, SpanOptions};
use crate::{
    clock::Clock,
    metrics::{Instrument, Measurement},
    span::{AttrValue, Attributes, Resource, Span, Status},
};

const KNOWN_METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// The methods `OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS` (comma-separated,
/// case-sensitive) names, which replace the default list rather than add
/// to it, as the conventions say.
pub fn known_methods_from_env(value: Option<&str>) -> Option<Vec<String>> {
    let list = value?
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    Some(list)
}

/// One request and what became of it, as the conventions see it.
pub struct HttpCall<'a> {
    pub method: &'a str,
    /// Without query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `Host`, or HTTP/2's `:authority`.
    pub authority: Option<&'a str>,
    /// HTTP/2's `:scheme`; HTTP/1 says nothing, and the transport decides.
    pub scheme: Option<&'a str>,
    pub version: Cow<'static, str>,
    /// `None`: the exchange ended without a response.
    pub status: Option<u16>,
    /// How the exchange failed short of an error status (a reset stream).
    pub failure: Option<&'static str>,
    pub user_agent: Option<&'a str>,
    pub baggage: Option<&'a str>,
}

pub fn http_span(
    call: HttpCall<'_>,
    frame: Frame,
    conn: &ConnFacts,
    resource: Arc<Resource>,
    clock: &Clock,
    opts: SpanOptions,
) -> Span {
    let mut a: Attributes = Vec::with_capacity(14);
    let known = known_method(call.method, opts);
    // An HTTP/2 request's method can be unknown (lost with capture).
    if known.is_none() && !call.method.is_empty() {
        a.push(("http.request.method_original", AttrValue::text(call.method)));
    }
    a.push(("http.request.method", known.unwrap_or("_OTHER").into()));
    if let Some(status) = call.status {
        a.push(("http.response.status_code", i64::from(status).into()));
    }
    a.push(("network.protocol.name", "http".into()));
    let tls = call
        .scheme
        .map_or(conn.tls, |s| s.eq_ignore_ascii_case("https"));
    let (scheme, default_port) = if tls { ("https", 443) } else { ("http", 80) };
    let (server, port) = server_endpoint(frame.role, conn, call.authority);
    match frame.role {
        Role::Server => {
            a.push(("url.scheme", scheme.into()));
            // Empty only when unknown (an HTTP/2 `:path` lost with capture).
            if !call.path.is_empty() {
                a.push(("url.path", AttrValue::text(call.path)));
            }
            if let Some(s) = server {
                a.push(("server.address", s.into()));
            }
        }
        Role::Client => {
            if let Some(s) = server {
                let path = call.path;
                let mut url = match port {
                    Some(p) if p != default_port => format!("{scheme}://{s}:{p}{path}"),
                    _ => format!("{scheme}://{s}{path}"),
                };
                if let Some(q) = call.query.filter(|_| opts.capture_query) {
                    url.push('?');
                    url.push_str(q);
                }
                a.push(("server.address", s.into()));
                // No URL from an unknown path (see `url.path` above).
                if !path.is_empty() {
                    a.push(("url.full", url.into()));
                }
            }
        }
    }
    if let Some(p) = port {
        a.push(("server.port", i64::from(p).into()));
    }
    push_peer(&mut a, frame.role, conn);
    if let Some(q) = call
        .query
        .filter(|_| opts.capture_query && frame.role == Role::Server)
    {
        a.push(("url.query", AttrValue::text(q)));
    }
    let wanted_baggage = !opts.baggage_keys.is_empty();
    if let Some(b) = call.baggage.filter(|_| wanted_baggage) {
        for (k, v) in crate::trace_context::parse_baggage(b) {
            if let Some(key) = opts.baggage_keys.iter().find(|want| **want == k) {
                a.push((key, v.into()));
            }
        }
    }
    if let Some(ua) = call.user_agent {
        a.push(("user_agent.original", AttrValue::text(ua)));
    }
    let error = error_type(frame.role, &call);
    a.push(("network.protocol.version", call.version.into()));
    let status = match error {
        Some(e) => {
            a.push(("error.type", AttrValue::Str(e)));
            Status::Error(String::new())
        }
        None => Status::Unset,
    };
    frame.into_span(known.unwrap_or("HTTP").into(), status, a, resource, clock)
}

/// `method` if the conventions (or `OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`) know it.
fn known_method(method: &str, opts: SpanOptions) -> Option<&'static str> {
    opts.known_methods
        .unwrap_or(KNOWN_METHODS)
        .iter()
        .find(|m| **m == method)
        .copied()
}

/// Servers fail on 5xx, clients on 4xx too (the conventions' rule).
fn error_type(role: Role, call: &HttpCall<'_>) -> Option<CompactString> {
    let error_from = if role == Role::Server { 500 } else { 400 };
    match (call.status, call.failure) {
        (Some(s), _) if s >= error_from => Some(s.to_compact_string()),
        (_, Some(f)) => Some(CompactString::const_new(f)),
        _ => None,
    }
}

/// The `http.{server,client}.request.duration` measurement of a call,
/// with the conventions' low-cardinality attributes only.
pub fn http_measure<'a>(
    call: &HttpCall<'a>,
    role: Role,
    duration_ns: u64,
    conn: &ConnFacts,
    opts: SpanOptions,
) -> Measurement<'a> {
    let mut a: Attributes = Vec::with_capacity(7);
    let method = known_method(call.method, opts).unwrap_or("_OTHER");
    a.push(("http.request.method", method.into()));
    if let Some(status) = call.status {
        a.push(("http.response.status_code", i64::from(status).into()));
    }
    let error = error_type(role, call);
    let failed = error.is_some();
    if let Some(e) = error {
        a.push(("error.type", AttrValue::Str(e)));
    }
    a.push(("network.protocol.version", call.version.clone().into()));
    let instrument = match role {
        Role::Server => {
            let tls = call
                .scheme
                .map_or(conn.tls, |s| s.eq_ignore_ascii_case("https"));
            a.push(("url.scheme", if tls { "https" } else { "http" }.into()));
            Instrument::HttpServer
        }
        Role::Client => {
            push_server_endpoint(&mut a, role, conn, call.authority);
            Instrument::HttpClient
        }
    };
    Measurement {
        instrument,
        duration_ns,
        attributes: a,
        path: (role == Role::Server).then_some(call.path),
        failed,
    }
}

/// `server.address` and `server.port`: the authority the client named,
/// else the server's end of the socket.
pub fn server_endpoint(
    role: Role,
    conn: &ConnFacts,
    authority: Option<&str>,
) -> (Option<CompactString>, Option<u16>) {
    let (host, port) = authority.map(split_host).unwrap_or((None, None));
    let socket = match role {
        Role::Server => conn.local,
        Role::Client => conn.peer,
    };
    (
        host.map(CompactString::new)
            .or_else(|| socket.map(|s| ip_text(s.ip()))),
        port.or(socket.map(|s| s.port())),
    )
}

/// `server.address` and `server.port`, as [`server_endpoint`] finds them.
pub fn push_server_endpoint(
    a: &mut Attributes,
    role: Role,
    conn: &ConnFacts,
    authority: Option<&str>,
) {
    let (server, port) = server_endpoint(role, conn, authority);
    if let Some(s) = server {
        a.push(("server.address", s.into()));
    }
    if let Some(p) = port {
        a.push(("server.port", i64::from(p).into()));
    }
}

/// `host[:port]` or `[v6]:port` from a Host header or `:authority`;
/// user-info a client should not have sent there (`user:pw@host`) is dropped.
pub fn split_host(h: &str) -> (Option<&str>, Option<u16>) {
    // Searched for bytes (the separators are ASCII) with memchr: str's
    // char searchers cost more than these short values, and a loop turn
    // per byte (the whole value, for the user-info) hardly less.
    let find = |s: &str, b: u8| memchr::memchr(b, s.as_bytes());
    let rfind = |s: &str, b: u8| memchr::memrchr(b, s.as_bytes());
    let h = trim(h);
    let h = rfind(h, b'@').map_or(h, |at| &h[at + 1..]);
    if h.is_empty() {
        return (None, None);
    }
    if let Some(rest) = h.strip_prefix('[') {
        let (ip, tail) = find(rest, b']').map_or((rest, ""), |at| (&rest[..at], &rest[at + 1..]));
        return (
            Some(ip),
            tail.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match rfind(h, b':') {
        Some(at) => (Some(&h[..at]), h[at + 1..].parse().ok()),
        None => (Some(h), None),
    }
}

/// [`str::trim`], which decodes a character at each end, skipped when both
/// ends are visible ASCII (nearly every header value): then there is
/// nothing to trim.
fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

/// Lossy UTF-8 of at most `max` bytes of a header value, cut on a
/// character boundary.
pub fn bounded_text(value: &[u8], max: usize) -> Cow<'_, str> {
    let kept = &value[..value.len().min(max)];
    if kept.is_ascii() {
        // Nearly every value, checked a word at a time, where from_utf8's
        // set-up cost most of a short value's keeping.
        // SAFETY: ASCII is valid UTF-8.
        return Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(kept) });
    }
    match std::str::from_utf8(kept) {
        Ok(valid) => Cow::Borrowed(valid),
        // Rare: replacement characters may make it longer than `max` again.
        Err(_) => {
            let mut s = String::from_utf8_lossy(kept).into_owned();
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            Cow::Owned(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_split() {
        assert_eq!(split_host("a:81"), (Some("a"), Some(81)));
        assert_eq!(split_host("[::1]:8080"), (Some("::1"), Some(8080)));
        assert_eq!(split_host("a"), (Some("a"), None));
        assert_eq!(split_host(" "), (None, None));
        assert_eq!(split_host("u:pw@a:81"), (Some("a"), Some(81)));
    }

    #[test]
    fn trimming_matches_str_trim() {
        for s in [
            "",
            "a",
            " a",
            "a ",
            "\ta\r\n",
            "\u{a0}a",
            "a\u{2003}",
            "é",
            "\x1fa\x7f",
        ] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    #[test]
    fn known_methods_replace_the_default_list() {
        assert_eq!(known_methods_from_env(None), None);
        assert_eq!(
            known_methods_from_env(Some("GET, PURGE,,")),
            Some(vec!["GET".to_owned(), "PURGE".to_owned()])
        );
    }

    #[test]
    fn text_is_cut_on_a_char_boundary() {
        assert_eq!(bounded_text("éé".as_bytes(), 3), "é");
        assert_eq!(bounded_text(b"a\xffb", 8), "a\u{fffd}b");
        assert_eq!(bounded_text(b"ab\xff", 3), "ab");
    }
}
