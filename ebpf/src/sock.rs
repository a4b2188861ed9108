//! The endpoints of a TCP socket the current task holds, read from kernel
//! memory (task → files → fdtable → file → socket → sock) at offsets the
//! agent computed from the kernel's BTF (`SockOffsets`): tracepoints have
//! no fd-to-socket helper and Rust eBPF has no CO-RE. The first steps, to
//! an fd's `struct file`, serve `logs` too.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task};
use clew_common::{SockAddr, SockOffsets};

/// Set by the agent at load time; all zero (`valid == 0`) when the
/// kernel's BTF did not give every offset.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets {
    valid: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_type: 0,
    socket_file: 0,
    socket_sk: 0,
    sk_socket: 0,
    sk_protocol: 0,
    skc_family: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;

/// A `T` at `base + off` in kernel memory (None if unreadable).
#[inline(always)]
pub fn at<T>(base: u64, off: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off) as *const T) }.ok()
}

/// The `struct file` behind `fd` of the current task (None when the
/// offsets are unknown, a read fails, or no file is there).
#[inline(always)]
pub fn file(fd: u32) -> Option<u64> {
    let o = unsafe { core::ptr::read_volatile(&SOCK_OFFSETS) };
    if o.valid == 0 {
        return None;
    }
    let off = |v: u32| v as u64;
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = at(task, off(o.task_files))?;
    let fdt: u64 = at(files, off(o.files_fdt))?;
    let max_fds: u32 = at(fdt, off(o.fdt_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let fds: u64 = at(fdt, off(o.fdt_fd))?;
    let file: u64 = at(fds, 8 * fd as u64)?;
    (file != 0).then_some(file)
}

/// (peer, local) of TCP socket `fd` of the current task. None when the
/// offsets are unknown, a read fails, or `fd` is not a TCP socket.
pub fn tcp_endpoints(fd: u32) -> Option<(SockAddr, SockAddr)> {
    let o = unsafe { core::ptr::read_volatile(&SOCK_OFFSETS) };
    let off = |v: u32| v as u64;
    let file = file(fd)?;
    let socket: u64 = at(file, off(o.file_private_data))?;
    // Only a socket's file has a private struct socket pointing back at it,
    // whose sock points back at the socket: anything else (wrong offsets,
    // another kind of file) fails one of these.
    if at::<u64>(socket, off(o.socket_file))? != file {
        return None;
    }
    let sk: u64 = at(socket, off(o.socket_sk))?;
    if sk == 0 || at::<u64>(sk, off(o.sk_socket))? != socket {
        return None;
    }
    let kind: u16 = at(socket, off(o.socket_type))?;
    let protocol: u16 = at(sk, off(o.sk_protocol))?;
    if kind != SOCK_STREAM || protocol != IPPROTO_TCP {
        return None;
    }
    let peer_port = u16::from_be(at(sk, off(o.skc_dport))?);
    let local_port: u16 = at(sk, off(o.skc_num))?;
    match at::<u16>(sk, off(o.skc_family))? {
        AF_INET => Some((
            SockAddr::ipv4(at(sk, off(o.skc_daddr))?, peer_port),
            SockAddr::ipv4(at(sk, off(o.skc_rcv_saddr))?, local_port),
        )),
        AF_INET6 => {
            let v6 = |addr: [u8; 16], port: u16| SockAddr {
                family: AF_INET6,
                port,
                _pad: 0,
                addr,
            };
            Some((
                v6(at(sk, off(o.skc_v6_daddr))?, peer_port),
                v6(at(sk, off(o.skc_v6_rcv_saddr))?, local_port),
            ))
        }
        _ => None,
    }
}
