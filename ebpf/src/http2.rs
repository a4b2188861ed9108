//! The HTTP/2 observer, on the serving side: a request's HEADERS frame at
//! the start of a read starts a SERVER span for the reading thread (so the
//! calls it makes are injected as that span's children), and a frame that
//! ends a stream in a write ends it. It reads frame headers only, never
//! HPACK, with one exception: the `traceparent` field Clew itself injects
//! upstream (a literal without indexing, plain name and value, last in the
//! block), which it recognises byte for byte. Anything else is left to
//! userspace, which decodes the whole header block.

use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as read_user_raw};
use clew_common::{
    dir,
    h2::{self, flag, frame},
    role,
};

use crate::{
    context, head,
    inject::HEAD,
    maps::now,
    observe::{self, Staged},
    tcp_option,
};

const FRAME_HEADER: u64 = h2::FRAME_HEADER as u64;
const PREFACE: u64 = h2::PREFACE.len() as u64;
/// Frames looked at from the start of one read or write.
const MAX_FRAMES: u32 = 4;
const FIELD: u64 = h2::TRACEPARENT_FIELD as u64;
/// The default (and for a client, safe) largest frame payload.
const MAX_FRAME: u64 = h2::DEFAULT_MAX_FRAME as u64;
/// The largest frame type RFC 9113 defines.
const MAX_KIND: u8 = frame::CONTINUATION;

observe::observers!(observe_http2, observe_http2_tls);

#[inline(always)]
fn observe(s: &Staged) {
    let mut off = 0u64;
    if s.direction == dir::INGRESS
        && s.len >= PREFACE
        && matches!(unsafe { bpf_probe_read_user(s.buf as *const [u8; 8]) }, Ok(b) if b == *b"PRI * HT")
    {
        off = PREFACE;
    }
    let mut i = 0;
    while i < MAX_FRAMES {
        if off + FRAME_HEADER > s.len {
            return;
        }
        let Ok(h) = (unsafe { bpf_probe_read_user((s.buf + off) as *const [u8; 9]) }) else {
            return;
        };
        let f = h2::FrameHeader::parse(&h);
        let (len, kind, flags, stream) = (f.len as u64, f.ty, f.flags, f.stream);
        if s.direction == dir::EGRESS {
            if (kind == frame::HEADERS || kind == frame::DATA)
                && flags & flag::END_STREAM != 0
                && stream != 0
            {
                context::server_response(s.v.conn_id, stream);
                return;
            }
        } else if kind == frame::HEADERS && stream % 2 == 1 {
            let block = s.buf + off + FRAME_HEADER;
            let complete = off + FRAME_HEADER + len <= s.len;
            let tp = if complete && flags & (flag::END_HEADERS | flag::PADDED) == flag::END_HEADERS
            {
                injected_traceparent(block, len)
            } else {
                None
            };
            let incoming = tp.or_else(|| tcp_option::received(s.v.conn_id));
            let ctx = context::server_request(s.v.conn_id, stream, incoming, None);
            context::emit(role::ACCEPTED, s.v.conn_id, s.ts, &ctx, stream);
            return;
        }
        off += FRAME_HEADER + len;
        i += 1;
    }
}

/// A client about to write through TLS a request's HEADERS (the first
/// frame of the write that opens a stream): its CLIENT span is decided here
/// and offered to the TCP option, which the ciphertext's segments carry,
/// and reported with the stream id so the exported span has those ids.
#[inline(always)]
pub fn tls_request_write(pid_tgid: u64, buf: u64, need_preface: bool) {
    if !tcp_option::enabled() {
        return;
    }
    // A connection's first write often holds the preface, SETTINGS and
    // the first request's HEADERS together; the plaintext's protocol is
    // only known once that first write was seen.
    let mut off = 0u64;
    if matches!(unsafe { bpf_probe_read_user(buf as *const [u8; 8]) }, Ok(b) if b == *b"PRI * HT") {
        off = PREFACE;
    } else if need_preface {
        return;
    }
    let mut i = 0;
    while i < MAX_FRAMES {
        let Ok(h) = (unsafe { bpf_probe_read_user((buf + off) as *const [u8; 9]) }) else {
            return;
        };
        let f = h2::FrameHeader::parse(&h);
        let (len, stream) = (f.len as u64, f.stream);
        // The write's length is not known at entry: stop at anything that
        // is not a plausible frame header.
        if len > MAX_FRAME || f.ty > MAX_KIND {
            return;
        }
        if f.ty == frame::HEADERS && stream % 2 == 1 {
            let ctx = context::client_request();
            tcp_option::offer(pid_tgid, &ctx);
            context::emit(role::CONNECTED, 0, now(), &ctx, stream);
            return;
        }
        off += FRAME_HEADER + len;
        i += 1;
    }
}

/// The `traceparent` Clew injected upstream, if it ends the block.
#[inline(always)]
fn injected_traceparent(block: u64, len: u64) -> Option<([u8; 16], [u8; 8], bool)> {
    if len < FIELD {
        return None;
    }
    let field = block + len - FIELD;
    let prefix = unsafe { bpf_probe_read_user(field as *const [u8; 14]) }.ok()?;
    if prefix != *h2::TRACEPARENT_FIELD_PREFIX {
        return None;
    }
    let h = HEAD.get_ptr_mut(0)?;
    let h = unsafe { &mut *h };
    // The value at offset 1, where the HTTP/1 parser expects it after `name:`.
    if unsafe {
        read_user_raw(
            h.buf.as_mut_ptr().add(1).cast(),
            55,
            (field + 14) as *const _,
        )
    } != 0
    {
        return None;
    }
    // The value ends there, as an HTTP/1 header's would at its CR.
    h.buf[56] = b'\r';
    h.found.traceparent = 1;
    h.found.traceparent_repeated = 0;
    head::traceparent(h)
}
