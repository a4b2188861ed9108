//! The HTTP/1 observer. It keeps the kernel's idea of which request each
//! thread serves current: a request read on a server connection starts a
//! SERVER span (joining its `traceparent` and carrying its `tracestate`,
//! else the connection's TCP option), a response written ends it. The context record carries the
//! timestamp of the request's data records so userspace can tell which
//! request it belongs to. Over TLS it also decides the CLIENT span of each
//! request a process writes.

use aya_ebpf::helpers::bpf_probe_read_user;
use clew_common::{dir, http1::is_method_word, role, SCAN_BYTES};

use crate::{
    carry, context, head,
    inject::HEAD,
    maps::now,
    observe::{self, Staged},
    tcp_option,
};

/// Shorter reads are not scanned as a request head.
const MIN_REQUEST: u64 = 16;

observe::observers!(observe_http1, observe_http1_tls);

#[inline(always)]
fn observe(s: &mut Staged) {
    if s.direction == dir::EGRESS {
        if observe::starts_with(s, b"HTTP/") {
            context::server_response(s.v.conn_id, 0);
        }
        return;
    }
    if s.len < MIN_REQUEST {
        return;
    }
    let Some(h) = HEAD.get_ptr_mut(0) else {
        return;
    };
    let h = unsafe { &mut *h };
    let n = if s.len < SCAN_BYTES as u64 {
        s.len as u32
    } else {
        SCAN_BYTES as u32
    };
    let n = n & (SCAN_BYTES as u32 * 2 - 1);
    if !observe::copy_start(s, h.buf.as_mut_ptr(), n) {
        return;
    }
    if !head::starts_with_method(&h.buf) {
        return;
    }
    // A head longer than the scan still yields a traceparent seen early.
    let _ = head::scan(h, n);
    // A traceparent in the request wins over the connection's TCP option;
    // a tracestate only counts next to a valid traceparent.
    let tp = head::traceparent(h);
    let tracestate = tp.and_then(|_| carry::incoming(h, n));
    let incoming = tp.or_else(|| tcp_option::received(s.v.conn_id));
    let ctx = context::server_request(s.v.conn_id, 0, incoming, tracestate);
    observe::server_span(s, &ctx);
}

/// A request head about to be written through TLS gets its CLIENT span
/// here, offered to the TCP option that the ciphertext's segments carry.
#[inline(always)]
pub fn tls_request_write(pid_tgid: u64, buf: u64) {
    if !tcp_option::enabled() {
        return;
    }
    let Ok(w) = (unsafe { bpf_probe_read_user(buf as *const u64) }) else {
        return;
    };
    if !is_method_word(u64::from_le(w)) {
        return;
    }
    let ctx = context::client_request();
    tcp_option::offer(pid_tgid, &ctx);
    context::emit(role::CONNECTED, 0, now(), &ctx, 0);
}
