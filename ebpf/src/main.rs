//! Clew's kernel programs: syscall tracepoints that follow TCP connections of
//! the selected processes and copy a bounded prefix of every read and write
//! into one ring buffer, in the order the kernel saw them.
#![no_std]
#![no_main]

mod carry;
mod conn;
mod context;
mod go_tls;
mod goroutine;
mod head;
mod http1;
mod http2;
mod inject;
mod inject_h2;
mod inject_kafka;
mod io;
mod java;
mod kafka;
mod logs;
mod maps;
mod observe;
mod proc;
mod select;
mod sock;
mod spawn;
mod tcp_option;
mod tls;
mod zero;

/// Offsets inside the `syscalls:sys_{enter,exit}_*` tracepoint records: the
/// common header (8 bytes), `__syscall_nr` (int, padded to 8), then six
/// 8-byte arguments; on exit, the return value sits where arg 0 would.
mod tp {
    use aya_ebpf::{programs::TracePointContext, EbpfContext};

    pub const NR: usize = 8;
    pub const ARGS: usize = 16;
    pub const RET: usize = 16;

    #[inline(always)]
    pub fn read<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
        // Tracepoint records are directly readable context memory, with
        // naturally aligned fields. Volatile: one load per field at a fixed
        // offset, never a merged load at a computed one (the verifier
        // refuses a modified context pointer).
        unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset) as *const T) }
    }

    #[inline(always)]
    pub fn arg(ctx: &TracePointContext, i: usize) -> u64 {
        read::<u64>(ctx, ARGS + 8 * i)
    }

    #[inline(always)]
    pub fn nr(ctx: &TracePointContext) -> i64 {
        read::<i32>(ctx, NR) as i64
    }

    #[inline(always)]
    pub fn ret(ctx: &TracePointContext) -> i64 {
        read::<i64>(ctx, RET)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
