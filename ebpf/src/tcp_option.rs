//! Trace context in a TCP header option, for traffic whose payload Clew
//! cannot rewrite (TLS, protocols it does not parse, or `traceparent`
//! injection turned off). The payload is never touched.
//!
//! Sending side (traced clients' sockets, in `track_sockets`/`inject_traceparent`):
//! a context due on a socket waits in `PENDING` until the next segment the
//! kernel transmits on it, which carries it (`HDR_OPT_LEN_CB` reserves the
//! room, `WRITE_HDR_OPT_CB` writes it). The SYN has no room for it (MSS,
//! SACK-permitted, timestamps and window scale leave 20 of 40 bytes), so the
//! connection's context rides on the handshake's final ACK instead.
//!
//! Receiving side (traced servers' sockets): the option is read off the
//! handshake's ACK and off every later segment that carries one, and kept
//! per client endpoint; the request scan in `observe_request` uses the
//! latest one as the remote parent of a request without `traceparent`.
//!
//! Wire format (28 bytes, fits next to TCP timestamps in the 40-byte option
//! space): kind 25 (as OBI uses; there is no room for an RFC 6994
//! experimental kind's 2-byte ExID), length 28, version 0, flags (bit 0:
//! sampled), trace id (16), span id (8).

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG},
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_load_hdr_opt, bpf_reserve_hdr_opt, bpf_store_hdr_opt},
    },
    macros::map,
    maps::{Array, LruHashMap},
    programs::SockOpsContext,
};
use clew_common::{
    ctxflag, role, stat, PeerKey, SockAddr, TraceCtx, MAX_CONNS, MAX_INFLIGHT, MAX_INJECT_SOCKS,
};

use crate::{
    context,
    inject::SockKey,
    maps::{count, now},
};

/// 1 when `--propagation` includes `tcp-option`.
#[unsafe(no_mangle)]
static TCP_OPTION: u32 = 0;

pub fn enabled() -> bool {
    let on = unsafe { core::ptr::read_volatile(&TCP_OPTION) };
    on == 1
}

const KIND: u8 = 25;
const LEN: u8 = 28;
const VERSION: u8 = 0;
const SAMPLED: u8 = 1;
/// `skb_tcp_flags` bit of a SYN.
const TCP_SYN: u32 = 0x02;

/// The option exactly as it goes on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Wire {
    kind: u8,
    len: u8,
    version: u8,
    flags: u8,
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

impl Wire {
    fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Wire {
        Wire {
            kind: KIND,
            len: LEN,
            version: VERSION,
            flags: if flags & ctxflag::SAMPLED != 0 {
                SAMPLED
            } else {
                0
            },
            trace_id,
            span_id,
        }
    }

    /// The option naming span `ctx` as the receiver's parent.
    pub fn naming(ctx: &TraceCtx) -> Wire {
        Wire::new(ctx.trace_id, ctx.span_id, ctx.flags)
    }
}

/// Contexts due on a client socket, until a segment carries them.
#[map]
static PENDING: LruHashMap<SockKey, Wire> = LruHashMap::with_max_entries(MAX_INJECT_SOCKS, 0);

/// Contexts a thread's next send carries (TLS: set where the plaintext is
/// known, consumed by the sk_msg program on the socket it is written to).
#[map]
static OFFERS: LruHashMap<u64, Wire> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// The client endpoint of each accepted connection, by connection id
/// (written by the agent when neither accept() nor the socket told the kernel).
#[map]
static PEERS: LruHashMap<u64, PeerKey> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// The latest option received from each client endpoint.
#[map]
static RECEIVED: LruHashMap<PeerKey, Wire> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// Nonzero once a client endpoint has sent the option. Until then a
/// request without `traceparent` (most of them, where no other Clew sends
/// to this node) skips the two hash lookups that find its client's latest
/// option. Never cleared: entries age out of `RECEIVED` unseen.
#[map]
static SEEN: Array<u32> = Array::with_max_entries(1, 0);

/// TLS entry point: the next send of thread `pid_tgid` on a traced client
/// socket carries `ctx` (the CLIENT span the caller decided and reports).
pub fn offer(pid_tgid: u64, ctx: &TraceCtx) {
    if enabled() {
        let _ = OFFERS.insert(&pid_tgid, &Wire::naming(ctx), 0);
    }
}

/// `TCP_CONNECT_CB` of a traced client's socket (inside connect()): ask for
/// the option callbacks, and put the context of the request the thread is
/// serving on the connection, so a server that never sees a per-request
/// option still joins the trace.
pub fn on_connect(ctx: &SockOpsContext, key: &SockKey) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG) as i32);
    if let Some(s) = context::serving() {
        let _ = PENDING.insert(key, &Wire::naming(&s), 0);
    }
}

/// `HDR_OPT_LEN_CB`: room for a pending context. Also called with no
/// segment while the kernel sizes segments, so they leave the room too.
pub fn reserve(ctx: &SockOpsContext, key: &SockKey) {
    let flags = unsafe { core::ptr::read_volatile(&raw const (*ctx.ops).skb_tcp_flags) };
    if flags & TCP_SYN != 0 || unsafe { PENDING.get(key) }.is_none() {
        return;
    }
    if unsafe { bpf_reserve_hdr_opt(ctx.ops, LEN as u32, 0) } != 0 && flags != 0 {
        // No room on this segment (SACK blocks, MD5...): a later one may have it.
        count(stat::TCP_OPT_NO_ROOM);
    }
}

/// `WRITE_HDR_OPT_CB`: the segment has the room `reserve` asked for.
pub fn write(ctx: &SockOpsContext, key: &SockKey) {
    let Some(w) = (unsafe { PENDING.get(key) }).copied() else {
        return;
    };
    if unsafe { bpf_store_hdr_opt(ctx.ops, (&w as *const Wire).cast(), LEN as u32, 0) } == 0 {
        let _ = PENDING.remove(key);
        count(stat::TCP_OPT_WRITTEN);
    }
}

/// `PASSIVE_ESTABLISHED_CB` of a traced server's socket: ask to see later
/// segments' unknown options, and start the connection with the context
/// its handshake carried (or none: a reused endpoint must not inherit).
pub fn on_accept(ctx: &SockOpsContext) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG) as i32);
    if !parse(ctx) {
        let _ = RECEIVED.remove(&peer_of(ctx));
    }
}

/// `PARSE_HDR_OPT_CB`: a segment with options the kernel does not know.
pub fn on_segment(ctx: &SockOpsContext) {
    let _ = parse(ctx);
}

fn parse(ctx: &SockOpsContext) -> bool {
    let mut w = Wire::new([0; 16], [0; 8], 0);
    w.len = 0; // search by kind only
    let n = unsafe { bpf_load_hdr_opt(ctx.ops, (&mut w as *mut Wire).cast(), LEN as u32, 0) };
    if n != LEN as i64 || w.version != VERSION || w.trace_id == [0; 16] || w.span_id == [0; 8] {
        return false;
    }
    let _ = RECEIVED.insert(&peer_of(ctx), &w, 0);
    if let Some(seen) = SEEN.get_ptr_mut(0) {
        // Written once: a store on every option would bounce the line.
        if unsafe { *seen } == 0 {
            unsafe { *seen = 1 };
        }
    }
    count(stat::TCP_OPT_READ);
    true
}

fn peer_of(ctx: &SockOpsContext) -> PeerKey {
    let o = ctx.ops;
    let rd = |p: *const u32| unsafe { core::ptr::read_volatile(p) };
    // Every field is loaded at its own fixed offset before choosing: the
    // verifier refuses a context pointer computed at run time.
    let ip6 = unsafe { &raw const (*o).remote_ip6 } as *const u32;
    let v6 = unsafe { [rd(ip6), rd(ip6.add(1)), rd(ip6.add(2)), rd(ip6.add(3))] };
    let v4 = rd(unsafe { &raw const (*o).remote_ip4 });
    let words = if rd(unsafe { &raw const (*o).family }) == 2 {
        [0, 0, 0xffff_u32.to_be(), v4]
    } else {
        v6
    };
    let mut addr = [0u8; 16];
    let mut k = 0;
    while k < 4 {
        let b = words[k].to_ne_bytes();
        addr[4 * k..4 * k + 4].copy_from_slice(&b);
        k += 1;
    }
    // The kernel hands the port over in network order, in the high half.
    let port = ((rd(unsafe { &raw const (*o).remote_port }) >> 16) as u16).swap_bytes();
    PeerKey {
        addr,
        port: port as u32,
    }
}

/// accept() returned connection `conn_id` from `peer` (family 0: unknown).
pub fn accepted(conn_id: u64, peer: &SockAddr) {
    if enabled() && peer.family != 0 {
        let key = PeerKey {
            addr: peer.addr,
            port: peer.port as u32,
        };
        let _ = PEERS.insert(&conn_id, &key, 0);
    }
}

/// Server connection `conn_id` closed: its client endpoint is not needed
/// any more (the LRU only bounds what closes are missed).
pub fn closed(conn_id: u64) {
    let _ = PEERS.remove(&conn_id);
}

/// The context the client of server connection `conn_id` sent last:
/// (trace id, parent span id, sampled), like an incoming `traceparent`.
pub fn received(conn_id: u64) -> Option<([u8; 16], [u8; 8], bool)> {
    if !enabled() || SEEN.get(0).is_none_or(|seen| *seen == 0) {
        return None;
    }
    let peer = unsafe { PEERS.get(&conn_id) }?;
    let w = unsafe { RECEIVED.get(peer) }?;
    Some((w.trace_id, w.span_id, w.flags & SAMPLED != 0))
}

/// The sk_msg program saw a send on a traced client socket. The context
/// it carries: one offered for this thread (TLS), else, for a request that
/// leaves without `traceparent` (`bare_request` names its HTTP/2 stream, 0
/// for HTTP/1), a new CLIENT span's (reported like an injected one, so the
/// exported span has its ids).
pub fn on_send(key: &SockKey, bare_request: impl FnOnce() -> Option<u32>) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(w) = unsafe { OFFERS.get(&pid_tgid) }.copied() {
        let _ = OFFERS.remove(&pid_tgid);
        let _ = PENDING.insert(key, &w, 0);
        return;
    }
    let Some(stream_id) = bare_request() else {
        return;
    };
    let tctx = context::client_request();
    let _ = PENDING.insert(key, &Wire::naming(&tctx), 0);
    context::emit(role::CONNECTED, 0, now(), &tctx, stream_id);
}
