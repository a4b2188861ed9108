//! Connection lifecycle: accept/accept4 and connect put a TCP socket of a
//! selected process into `CONNS`; close takes it out. Both emit a record so
//! userspace can open and finish its per-connection state.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use clew_common::{connstate, dataflag, kind, role, ConnEvent, ConnInfo, ConnKey, SockAddr};

use crate::{
    maps::{
        inflight_put, inflight_take, mark_has_conns, may_have_conns, next_conn_id, now, quiet,
        Inflight, CONNS, EVENTS, URGENT,
    },
    select::current_selected,
    sock, tcp_option, tp,
};

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;

/// Reads a user `struct sockaddr` (family 0 if absent or unreadable).
#[inline(always)]
fn read_sockaddr(ptr: u64) -> SockAddr {
    let mut out = SockAddr::default();
    if ptr == 0 {
        return out;
    }
    let Ok(head) = (unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }) else {
        return out;
    };
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    if family == AF_INET {
        return SockAddr::ipv4([head[4], head[5], head[6], head[7]], port);
    }
    out.family = family;
    out.port = port;
    if family == AF_INET6 {
        if let Ok(a) = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) } {
            out.addr = a;
        }
    }
    out
}

fn emit(
    kind: u32,
    conn_id: u64,
    role: u8,
    flags: u8,
    pid_tgid: u64,
    fd: u32,
    peer: SockAddr,
    local: SockAddr,
    wake: u64,
) {
    let ev = ConnEvent {
        kind,
        role,
        flags,
        _pad: [0; 2],
        conn_id,
        pid_tgid,
        ts_ns: now(),
        fd,
        _pad2: 0,
        peer,
        local,
    };
    if EVENTS.output::<ConnEvent>(&ev, wake).is_err() {
        crate::maps::count(clew_common::stat::RINGBUF_DROPS);
    }
}

/// The calling thread, when its process is traced. Every `accept` and
/// `connect` on the node comes here: the test goes before any read of the
/// call's arguments from user memory.
fn selected_caller() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    current_selected((pid_tgid >> 32) as u32).then_some(pid_tgid)
}

fn remember(pid_tgid: u64, nr_role: u8, fd: u32, a1: u64, peer: SockAddr) {
    let inflight = Inflight {
        nr: 0,
        conn_id: 0,
        fd,
        role: nr_role,
        conn_role: 0,
        conn_state: 0,
        data_flags: 0,
        a1,
        a2: 0,
        peer,
    };
    inflight_put(pid_tgid, &inflight);
}

fn open(pid_tgid: u64, fd: u32, role: u8, peer: SockAddr, local: SockAddr) -> u64 {
    let id = next_conn_id();
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    let info = ConnInfo {
        id,
        role,
        state: 0,
        _pad: [0; 6],
    };
    if CONNS.insert(&key, &info, 0).is_ok() {
        // The process's first connection: the agent reads its facts now.
        let wake = if mark_has_conns(key.tgid) {
            URGENT
        } else {
            quiet(core::mem::size_of::<ConnEvent>())
        };
        emit(
            kind::CONN_OPEN,
            id,
            role,
            0,
            pid_tgid,
            fd,
            peer,
            local,
            wake,
        );
    }
    id
}

fn take_inflight(role: u8) -> Option<(u64, Inflight)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let v = inflight_take(pid_tgid)?;
    (v.role == role).then_some((pid_tgid, v))
}

#[tracepoint]
pub fn enter_accept(ctx: TracePointContext) -> u32 {
    // accept(fd, addr, addrlen) / accept4(fd, addr, addrlen, flags)
    let Some(pid_tgid) = selected_caller() else {
        return 0;
    };
    remember(
        pid_tgid,
        role::ACCEPTED,
        tp::arg(&ctx, 0) as u32,
        tp::arg(&ctx, 1),
        SockAddr::default(),
    );
    0
}

#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    let Some((pid_tgid, v)) = take_inflight(role::ACCEPTED) else {
        return 0;
    };
    let fd = tp::ret(&ctx);
    if fd < 0 {
        return 0;
    }
    let mut peer = read_sockaddr(v.a1);
    if peer.family == AF_UNIX {
        return 0;
    }
    let mut local = SockAddr::default();
    if peer.family == 0 {
        // accept4(fd, NULL, NULL): ask the socket itself, now, so the first
        // request read finds the TCP option its client sent. If it cannot
        // be read, the agent asks /proc (too late for that request).
        if let Some((p, l)) = sock::tcp_endpoints(fd as u32) {
            (peer, local) = (p, l);
        }
    }
    let id = open(pid_tgid, fd as u32, role::ACCEPTED, peer, local);
    tcp_option::accepted(id, &peer);
    0
}

#[tracepoint]
pub fn enter_connect(ctx: TracePointContext) -> u32 {
    let Some(pid_tgid) = selected_caller() else {
        return 0;
    };
    let peer = read_sockaddr(tp::arg(&ctx, 1));
    if peer.family != AF_INET && peer.family != AF_INET6 {
        return 0;
    }
    remember(pid_tgid, role::CONNECTED, tp::arg(&ctx, 0) as u32, 0, peer);
    0
}

#[tracepoint]
pub fn exit_connect(ctx: TracePointContext) -> u32 {
    let Some((pid_tgid, v)) = take_inflight(role::CONNECTED) else {
        return 0;
    };
    let ret = tp::ret(&ctx);
    if ret == 0 || ret == -EINPROGRESS {
        // track_sockets (sockops) noted our end in a1/a2 during connect().
        let local = if v.a2 == 0 {
            SockAddr::default()
        } else {
            SockAddr::ipv4((v.a1 as u32).to_ne_bytes(), v.a2 as u16)
        };
        let _ = open(pid_tgid, v.fd, role::CONNECTED, v.peer, local);
    }
    0
}

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !may_have_conns(tgid) {
        return 0;
    }
    let key = ConnKey {
        tgid,
        fd: tp::arg(&ctx, 0) as u32,
    };
    let Some(info) = (unsafe { CONNS.get(&key) }).copied() else {
        return 0;
    };
    let _ = CONNS.remove(&key);
    if info.role == role::ACCEPTED {
        crate::tcp_option::closed(info.id);
        crate::context::conn_closed(info.id);
    }
    // Records lost since the connection's last one: its close must not
    // make the requests whose responses were among them look unanswered.
    let flags = if info.state & connstate::LOST != 0 {
        dataflag::AFTER_LOSS
    } else {
        0
    };
    emit(
        kind::CONN_CLOSE,
        info.id,
        info.role,
        flags,
        pid_tgid,
        key.fd,
        SockAddr::default(),
        SockAddr::default(),
        quiet(core::mem::size_of::<ConnEvent>()),
    );
    0
}
