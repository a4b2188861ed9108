//! `traceparent` injection into plaintext HTTP/1 requests, without writing
//! user memory: a cgroup sockops program puts the TCP sockets that traced
//! processes connect into `INJECT_SOCKS`, and an sk_msg program on that map
//! inserts one header line after the request line of each request sent.
//!
//! It stands down (passes the bytes untouched) whenever it is unsure: a
//! request that already carries `traceparent`, a head not wholly inside one
//! send, chunked request bodies, or bytes that are not HTTP/1 — after those
//! the socket is never touched again. The `tracestate` the CLIENT span
//! carries (`carry`) follows the `traceparent` line, unless the request
//! has a `tracestate` of its own.
//!
//! A socket whose first send is the HTTP/2 client preface and a SETTINGS
//! frame is HTTP/2 for good: `inject_h2` takes its sends instead; one whose
//! first send starts a Kafka request is Kafka's: `inject_kafka` takes them.
//!
//! The same two programs carry the TCP-option mechanism (`tcp_option`):
//! with `--propagation tcp-option`, sockets are admitted to the map for it
//! too, and the sk_msg program tells it which sends are requests that left
//! without a `traceparent`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, sk_msg_md, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PARSE_HDR_OPT_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB,
    },
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_socket_cookie, bpf_loop, bpf_msg_pull_data, bpf_probe_read_kernel},
    },
    macros::{map, sk_msg, sock_ops},
    maps::{LruHashMap, PerCpuArray, ProgramArray, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use clew_common::{ctxflag, h2, proto, role, stat, MAX_INJECT_SOCKS, SCAN_BYTES, TRACEPARENT_LINE};

use crate::{
    carry, context,
    head::{self, Head},
    inject_h2, inject_kafka,
    maps::{count, INFLIGHT},
    tcp_option,
};

/// 1 when `traceparent` injection is on (`--propagation headers`).
#[unsafe(no_mangle)]
static INJECT: u32 = 1;

#[map]
pub static INJECT_SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_INJECT_SOCKS, 0);

/// Sockets whose connect() a traced process made, until established.
#[map]
static CONNECTING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_INJECT_SOCKS, 0);

/// Where each injectable socket stands in its request stream. Kept in
/// `SOCK_STATE` from the connection's establishment; an entry the LRU
/// evicts only means the socket is not injected into any more.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SockState {
    /// Bytes still to pass before the next request head (HTTP/1: of a
    /// request body) or frame header (HTTP/2: of a frame that went on
    /// beyond the last send; Kafka: of a request that did).
    pub skip: u64,
    /// Message boundaries are lost: never inject on this socket again.
    pub hands_off: u32,
    /// What the first send showed (`clew_common::proto`; HTTP/2 only when
    /// proven by the client preface and a SETTINGS frame; Kafka when it
    /// starts like a request).
    pub proto: u8,
    /// HTTP/2: the application put its own `tracestate` into the HPACK
    /// dynamic table, where later requests may reference it by an index
    /// the kernel cannot read: none is added on this connection.
    pub indexed_tracestate: u8,
    pub _pad8: [u8; 2],
    /// HTTP/2: the highest stream id a HEADERS frame opened.
    pub last_stream: u32,
    pub _pad: u32,
}

/// A loop over the pieces of one send (HTTP/2 frames, Kafka requests):
/// each step gets the message and the socket's state through these
/// pointers (spilled on the caller's stack, which the verifier follows
/// into the callback); the walk's own state lives in map memory.
#[repr(C)]
pub struct SendLoop {
    msg: *mut sk_msg_md,
    st: *mut SockState,
}

impl SendLoop {
    /// Runs `step` at most `max` times over the send of `ctx`; the
    /// socket's state, as the steps left it.
    pub fn run(
        ctx: &SkMsgContext,
        st: &mut SockState,
        max: u32,
        step: extern "C" fn(u64, *mut c_void) -> i64,
    ) -> *mut SockState {
        let mut l = SendLoop {
            msg: ctx.msg,
            st: st as *mut SockState,
        };
        unsafe {
            bpf_loop(
                max,
                step as *const () as *mut c_void,
                &mut l as *mut SendLoop as *mut c_void,
                0,
            )
        };
        l.st
    }

    /// In a step: the message and the socket's state of the loop `p`.
    ///
    /// # Safety
    /// `p` is the loop state `run` passed to the step.
    pub unsafe fn of<'a>(p: *mut c_void) -> (SkMsgContext, &'a mut SockState) {
        let l = unsafe { &*(p as *const SendLoop) };
        (SkMsgContext::new(l.msg), unsafe { &mut *l.st })
    }
}

/// A TCP connection from our side: the remote end and our port, as sockops
/// and sk_msg both see it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockKey {
    remote_ip: [u32; 4],
    remote_port: u32,
    local_port: u32,
}

#[map]
static SOCK_STATE: LruHashMap<SockKey, SockState> =
    LruHashMap::with_max_entries(MAX_INJECT_SOCKS, 0);

#[map]
pub static HEAD: PerCpuArray<Head> = PerCpuArray::with_max_entries(1, 0);

#[sock_ops]
pub fn track_sockets(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        // Runs inside connect(): the thread is the one the connect tracepoint saw.
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            if unsafe { CONNECTING.get(&cookie) }.is_some() {
                let _ = CONNECTING.remove(&cookie);
                let _ = SOCK_STATE.insert(&ops_key(&ctx), &SockState::default(), 0);
                let _ = INJECT_SOCKS.update(cookie, unsafe { &mut *ctx.ops }, BPF_NOEXIST as u64);
            }
        }
        // Only on sockets tcp_option asked them for.
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => tcp_option::reserve(&ctx, &ops_key(&ctx)),
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => tcp_option::write(&ctx, &ops_key(&ctx)),
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => tcp_option::on_segment(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            if tcp_option::enabled() {
                tcp_option::on_accept(&ctx);
            }
        }
        _ => {}
    }
    1
}

fn on_connect(ctx: &SockOpsContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(v) = INFLIGHT.get_ptr_mut(&pid_tgid) else {
        return;
    };
    let v = unsafe { &mut *v };
    if v.role != role::CONNECTED {
        return;
    }
    // Our own end, for linking both ends of a local call in userspace.
    let o = ctx.ops;
    if unsafe { core::ptr::read_volatile(&raw const (*o).family) } == 2 {
        v.a1 = unsafe { core::ptr::read_volatile(&raw const (*o).local_ip4) } as u64;
        v.a2 = unsafe { core::ptr::read_volatile(&raw const (*o).local_port) } as u64;
    }
    let headers = unsafe { core::ptr::read_volatile(&INJECT) } == 1;
    if headers || tcp_option::enabled() {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        let _ = CONNECTING.insert(&cookie, &1, 0);
    }
    if tcp_option::enabled() {
        tcp_option::on_connect(ctx, &ops_key(ctx));
    }
}

fn ops_key(ctx: &SockOpsContext) -> SockKey {
    let o = ctx.ops;
    unsafe {
        SockKey::read(
            &raw const (*o).family,
            &raw const (*o).remote_ip4,
            &raw const (*o).remote_ip6,
            &raw const (*o).remote_port,
            &raw const (*o).local_port,
        )
    }
}

/// What a send turned out to be, for the TCP-option mechanism.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Not looked at, or unreadable.
    Unseen,
    /// Starts with a request head that leaves with a `traceparent` (the
    /// application's or ours).
    Carried,
    /// Starts with a request head that leaves without one.
    Bare,
    /// Holds an HTTP/2 request (this stream's) that leaves without one.
    BareH2(u32),
    /// Anything else: a body, non-HTTP bytes.
    Other,
    /// A send on a Kafka connection, for `inject_kafka`.
    Kafka,
}

/// Injectors with programs of their own, tail-called by
/// `inject_traceparent` (filled by the agent from
/// `clew_common::names::program::INJECT_KAFKA`).
#[map]
static INJECTORS: ProgramArray = ProgramArray::with_max_entries(1, 0);
const INJECT_KAFKA_SLOT: u32 = 0;

/// A send on a Kafka connection (see `inject_kafka`).
#[sk_msg]
pub fn inject_kafka(ctx: SkMsgContext) -> u32 {
    if let Some(st) = SOCK_STATE.get_ptr_mut(&msg_key(&ctx)) {
        inject_kafka::on_send(&ctx, unsafe { &mut *st });
    }
    SK_PASS
}

#[sk_msg]
pub fn inject_traceparent(ctx: SkMsgContext) -> u32 {
    let key = msg_key(&ctx);
    let sent = if unsafe { core::ptr::read_volatile(&INJECT) } == 1 {
        try_inject(&ctx, &key)
    } else {
        Sent::Unseen
    };
    if sent == Sent::Kafka {
        // Kafka's sends have a program of their own: its walk is verified
        // apart from this program's HTTP walks. Returns only if the slot
        // is empty: the bytes then pass untouched.
        let _ = unsafe { INJECTORS.tail_call(&ctx, INJECT_KAFKA_SLOT) };
        return SK_PASS;
    }
    if tcp_option::enabled() {
        tcp_option::on_send(&key, || {
            let sent = if sent == Sent::Unseen {
                classify(&ctx)
            } else {
                sent
            };
            match sent {
                Sent::Bare => Some(0),
                Sent::BareH2(stream) => Some(stream),
                _ => None,
            }
        });
    }
    SK_PASS
}

/// Copies the start of the send into `HEAD`, scans it, and says whether it
/// is a request head and whether it carries `traceparent`.
fn classify(ctx: &SkMsgContext) -> Sent {
    let size = ctx.size();
    let want = if size < SCAN_BYTES as u32 {
        size
    } else {
        SCAN_BYTES as u32
    };
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, want, 0) } != 0 {
        return Sent::Unseen;
    }
    let avail = ctx.data_end().saturating_sub(ctx.data());
    if avail > SCAN_BYTES {
        return Sent::Unseen;
    }
    if avail < 16 {
        return Sent::Other;
    }
    let Some(h) = HEAD.get_ptr_mut(0) else {
        return Sent::Unseen;
    };
    let h = unsafe { &mut *h };
    let n = (avail as u32) & (SCAN_BYTES as u32 * 2 - 1);
    if unsafe { bpf_probe_read_kernel(h.buf.as_mut_ptr().cast(), n, ctx.data() as *const _) } != 0 {
        return Sent::Unseen;
    }
    if !head::starts_with_method(&h.buf) {
        return Sent::Other;
    }
    // A head longer than the scan is still a request; a traceparent past
    // the scan goes unseen (the option then duplicates it harmlessly).
    let _ = head::scan(h, n);
    if h.found.traceparent != 0 {
        Sent::Carried
    } else {
        Sent::Bare
    }
}

fn try_inject(ctx: &SkMsgContext, key: &SockKey) -> Sent {
    let Some(st) = SOCK_STATE.get_ptr_mut(key) else {
        return Sent::Unseen;
    };
    let st = unsafe { &mut *st };
    if st.hands_off != 0 {
        return Sent::Unseen;
    }
    if st.proto == proto::HTTP2 {
        return inject_h2::on_send(ctx, st, 0);
    }
    if st.proto == proto::KAFKA {
        return Sent::Kafka;
    }
    if st.proto == proto::UNKNOWN {
        if inject_h2::starts_with_preface(ctx) {
            st.proto = proto::HTTP2;
            return inject_h2::on_send(ctx, st, h2::PREFACE.len() as u64);
        }
        if inject_kafka::starts_request(ctx) {
            st.proto = proto::KAFKA;
            return Sent::Kafka;
        }
        st.proto = proto::HTTP1;
    }
    let size = ctx.size() as u64;
    if st.skip > 0 {
        if size <= st.skip {
            st.skip -= size;
        } else {
            // A body's tail and what follows share a send: boundaries unknown.
            st.hands_off = 1;
        }
        return Sent::Other;
    }
    // Until proven a complete request head, this socket is off limits.
    st.hands_off = 1;
    let sent = classify(ctx);
    if sent != Sent::Bare && sent != Sent::Carried {
        return sent;
    }
    let Some(h) = HEAD.get_ptr_mut(0) else {
        return sent;
    };
    let h = unsafe { &mut *h };
    if h.found.hdr_end == 0 || h.found.chunked != 0 {
        return sent;
    }
    let Some(body) = head::content_length(h) else {
        return sent;
    };
    let total = h.found.hdr_end as u64 + body;
    if size > total {
        // Pipelined: this request is safe, what follows in the send is not.
        st.hands_off = 1;
    } else {
        st.hands_off = 0;
        st.skip = total - size;
    }
    if sent == Sent::Carried {
        // The application propagates by itself: leave its bytes alone.
        return sent;
    }
    let own_tracestate = h.found.tracestate != 0;
    if inject(ctx, h.found.line_end, size, own_tracestate) {
        Sent::Carried
    } else {
        st.hands_off = 1;
        Sent::Bare
    }
}

/// Inserts a new CLIENT span's `traceparent` line at `at` (just past the
/// request line), followed by the `tracestate` line it carries unless the
/// request has its own (`own_tracestate`), or leaves the message exactly
/// as it was.
fn inject(ctx: &SkMsgContext, at: u32, size: u64, own_tracestate: bool) -> bool {
    if at == 0 || at as usize >= SCAN_BYTES {
        return false;
    }
    let mut tctx = context::client_request();
    tctx.flags |= ctxflag::INJECTED;
    let carries = tctx.flags & (ctxflag::TRACESTATE | ctxflag::SAMPLER_TH) != 0;
    let state_len = if carries && own_tracestate {
        count(stat::TRACESTATE_OWN);
        tctx.flags &= !(ctxflag::TRACESTATE | ctxflag::SAMPLER_TH);
        0
    } else {
        carry::line(&mut tctx)
    };
    let mut line = [0u8; TRACEPARENT_LINE];
    context::format_traceparent(&tctx, &mut line);
    let tp_len = TRACEPARENT_LINE as u32;
    let len = tp_len + state_len;
    if ctx.push_data(at, len, 0).is_err() {
        return false;
    }
    // One contiguous buffer again: pushed bytes land in their own page, and
    // a message in pieces is sent as several segments, which Nagle and
    // delayed ACKs then hold up for 40 ms. Best effort: a message too big
    // to linearise is still sent correctly, only maybe later.
    let _ = unsafe { bpf_msg_pull_data(ctx.msg, 0, size as u32 + len, 0) };
    // Then a window onto the new line (no copy once linear).
    let written = unsafe { bpf_msg_pull_data(ctx.msg, at, at + tp_len, 0) } == 0
        && write(ctx, &line)
        && (state_len == 0 || carry::write(ctx, at + tp_len, state_len));
    if !written {
        // Put the message back exactly as the application sent it.
        let _ = ctx.pop_data(at, len, 0);
        return false;
    }
    if state_len > 0 {
        count(stat::TRACESTATE_INJECTED);
    }
    context::emit(role::CONNECTED, 0, crate::maps::now(), &tctx, 0);
    true
}

fn msg_key(ctx: &SkMsgContext) -> SockKey {
    let m = ctx.msg;
    unsafe {
        SockKey::read(
            &raw const (*m).family,
            &raw const (*m).remote_ip4,
            &raw const (*m).remote_ip6,
            &raw const (*m).remote_port,
            &raw const (*m).local_port,
        )
    }
}

impl SockKey {
    /// Context fields must be loaded one by one at fixed offsets: the
    /// verifier refuses a pointer that could be either of two fields.
    unsafe fn read(
        family: *const u32,
        ip4: *const u32,
        ip6: *const [u32; 4],
        remote_port: *const u32,
        local_port: *const u32,
    ) -> SockKey {
        let rd = |p: *const u32| unsafe { core::ptr::read_volatile(p) };
        let ip6 = ip6 as *const u32;
        let v6 = unsafe { [rd(ip6), rd(ip6.add(1)), rd(ip6.add(2)), rd(ip6.add(3))] };
        let v4 = rd(ip4);
        SockKey {
            remote_ip: if rd(family) == 2 { [v4, 0, 0, 0] } else { v6 },
            remote_port: rd(remote_port),
            local_port: rd(local_port),
        }
    }
}

fn write(ctx: &SkMsgContext, line: &[u8; TRACEPARENT_LINE]) -> bool {
    let data = ctx.data();
    if data + TRACEPARENT_LINE > ctx.data_end() {
        return false;
    }
    let dst = data as *mut u8;
    let mut k = 0;
    while k < TRACEPARENT_LINE {
        unsafe { *dst.add(k) = line[k] };
        k += 1;
    }
    true
}
