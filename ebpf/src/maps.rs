//! Maps and load-time constants shared by the programs.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
pub use clew_common::Inflight;
use clew_common::{
    exe, CgroupSel, ConnInfo, ConnKey, DataHeader, DEFAULT_RINGBUF_BYTES, MAX_CAPTURE,
    MAX_CGROUPS, MAX_CONNS, MAX_EXES, MAX_INFLIGHT, MAX_PIDS, MAX_TGID_PAGES, TGID_PAGE,
};

/// Set by the agent at load time (see `agent/src/capture`).
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;
#[unsafe(no_mangle)]
static SELECT_MODE: u32 = 0;
#[unsafe(no_mangle)]
static CAPTURE_LIMIT: u32 = 4096;
/// Offset of `child_pid` in the `sched:sched_process_fork` record, read by
/// the agent from the tracepoint's format file.
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: u32 = 0;
/// Offset of the `filename` `__data_loc` in the `sched:sched_process_exec`
/// record, from the tracepoint's format file; 0 when no `--exe` path is
/// selected, so the kernel reads no file name.
#[unsafe(no_mangle)]
static EXEC_FILENAME_OFFSET: u32 = 0;
/// log2 of the unread bytes in `EVENTS` at which a record wakes the agent:
/// a quarter of the ring, set by the agent for the size it gives the ring.
#[unsafe(no_mangle)]
static RING_WAKE_SHIFT: u32 = DEFAULT_RINGBUF_BYTES.trailing_zeros() - 2;

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    unsafe { core::ptr::read_volatile(v) }
}
pub fn agent_tgid() -> u32 {
    global(&AGENT_TGID)
}
pub fn select_mode() -> u32 {
    global(&SELECT_MODE)
}
pub fn capture_limit() -> u32 {
    global(&CAPTURE_LIMIT)
}
pub fn fork_child_pid_offset() -> u32 {
    global(&FORK_CHILD_PID_OFFSET)
}
pub fn exec_filename_offset() -> u32 {
    global(&EXEC_FILENAME_OFFSET)
}

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Ring-buffer flags for a record of `size` bytes that need not be read at
/// once. Records of requests wake nobody: the agent drains the ring on a
/// timer, and a wake-up per record would cost it a context switch per
/// syscall. A record that takes the unread bytes past a quarter, a half
/// or three quarters of the ring wakes it, so a burst is drained before
/// the ring fills rather than at the next pause; only those, so a stalled
/// agent costs the traced processes no wake-up per record. Computed
/// without a branch: a branch here, in every program that writes a
/// record, added a second to the verifier's work at load.
#[inline(always)]
pub fn quiet(size: usize) -> u64 {
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let shift = u64::from(global(&RING_WAKE_SHIFT));
    // A record is smaller than a quarter of the ring: it crosses one mark
    // at most.
    let crossed = ((unread + size as u64) >> shift) - (unread >> shift);
    BPF_RB_NO_WAKEUP as u64 + crossed
}
/// A record the agent must handle while its process is surely there (an
/// exec, a process's first connection: it reads the process's facts from
/// `/proc`) wakes it at once.
pub const URGENT: u64 = BPF_RB_FORCE_WAKEUP as u64;

#[map]
pub static CONNS: LruHashMap<ConnKey, ConnInfo> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// A byte per tgid, set when a connection of the process is tracked (here
/// or by the agent adopting one). Every read, write and close on the node
/// passes through the I/O programs: this array lookup, which the verifier
/// inlines, lets the processes Clew does not trace leave before any hash
/// lookup. Eviction: none; the agent sizes it to `pid_max` (a tgid past the
/// end takes the slow path), and a byte left by a process that exited only
/// costs the next process with its tgid the lookups every call paid before.
/// Memory-mapped: the agent marks the processes whose connections it adopts
/// with a byte store of its own, which cannot undo a mark the kernel makes
/// in the same page as a whole-value map update would.
#[map]
pub static CONN_TGIDS: Array<[u8; TGID_PAGE]> =
    Array::with_max_entries(MAX_TGID_PAGES, BPF_F_MMAPABLE);

/// Whether process `tgid` may have tracked connections (false: certainly not).
/// A call, not inlined: the caller keeps no pointer into the table, so the
/// verifier's states past the check stay what they were without it.
#[inline(never)]
pub fn may_have_conns(tgid: u32) -> bool {
    match CONN_TGIDS.get(tgid / TGID_PAGE as u32) {
        Some(page) => page[tgid as usize & (TGID_PAGE - 1)] != 0,
        None => true,
    }
}

/// Process `tgid` now has a tracked connection; returns whether it had
/// none marked before (two CPUs racing may both say so). A plain byte
/// store: no read-modify-write another CPU could undo.
#[inline(always)]
pub fn mark_has_conns(tgid: u32) -> bool {
    let Some(page) = CONN_TGIDS.get_ptr_mut(tgid / TGID_PAGE as u32) else {
        return false;
    };
    let byte = unsafe { &mut (*page)[tgid as usize & (TGID_PAGE - 1)] };
    let first = *byte == 0;
    *byte = 1;
    first
}

/// The syscall each thread is in, by pid_tgid. An entry is written over in
/// place by the thread's next call and only marked taken on exit (`role`
/// 0), so a busy thread pays two lookups per call instead of an LRU insert
/// and delete. Eviction: `proc_exit` deletes a thread's entry when it
/// exits; LRU covers threads whose exit was missed.
#[map]
pub static INFLIGHT: LruHashMap<u64, Inflight> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// `role` of an `INFLIGHT` entry whose call has been taken by its exit.
const TAKEN: u8 = 0;

/// Records the call the current thread is entering.
#[inline(always)]
pub fn inflight_put(pid_tgid: u64, v: &Inflight) {
    put(&INFLIGHT, &pid_tgid, v);
}

/// Writes `v` at `key`: over the entry in place when there is one, else
/// inserted. For entries a thread rewrites on every call: an LRU insert
/// takes a free node and links it, and a delete gives it back, several
/// times the cost of the lookup.
#[inline(always)]
pub fn put<K, V: Copy>(map: &LruHashMap<K, V>, key: &K, v: &V) {
    match map.get_ptr_mut(key) {
        Some(p) => unsafe { *p = *v },
        None => {
            let _ = map.insert(key, v, 0);
        }
    }
}

/// Thread `pid_tgid` exited: its entry can go.
pub fn inflight_forget(pid_tgid: u64) {
    let _ = INFLIGHT.remove(&pid_tgid);
}

/// Takes the call the current thread is leaving, if its enter recorded one.
#[inline(always)]
pub fn inflight_take(pid_tgid: u64) -> Option<Inflight> {
    let p = INFLIGHT.get_ptr_mut(&pid_tgid)?;
    let v = unsafe { *p };
    if v.role == TAKEN {
        return None;
    }
    unsafe { (*p).role = TAKEN };
    Some(v)
}

/// Selected tgids (and the threads `proc_fork` saw them start). Eviction:
/// `proc_exit` deletes a thread's entry when it exits, and userspace
/// deletes the processes it unselects; when full, new selections fail
/// (userspace warns) rather than pushing out live ones.
#[map]
pub static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PIDS, 0);

/// `--exe NAME` selectors by `exe::name_key`, and `--exe /path` ones by
/// `exe::path_key`. Written by the agent before tracing starts, never
/// evicted: the agent refuses to put more than `MAX_EXES` of each kind
/// here and leaves the rest to its own exec handling.
#[map]
pub static EXE_NAMES: HashMap<[u8; exe::COMM_LEN], u8> = HashMap::with_max_entries(MAX_EXES, 0);
#[map]
pub static EXE_PATHS: HashMap<[u8; exe::PATH_LEN], u8> = HashMap::with_max_entries(MAX_EXES, 0);

#[map]
pub static CGROUPS: Array<CgroupSel> = Array::with_max_entries(MAX_CGROUPS, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(clew_common::stat::COUNT, 0);

/// Per-CPU source of connection ids (the CPU number goes in the top bits).
#[map]
static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Segments longer than this leave as records of their own instead of
/// being gathered after others: it keeps `Scratch` within the 32 KiB a
/// per-CPU map value may take.
pub const GATHER_MAX: usize = MAX_CAPTURE - 64;

/// A data record is assembled here before it is copied into the ring buffer
/// with only its used length (a reservation would cost the full maximum).
/// `data` holds a copy of up to `GATHER_MAX` bytes at any offset below the
/// capture bound (a call's segments gathered one after another), and a
/// SERVER span's context after a full payload.
#[repr(C)]
pub struct Scratch {
    pub hdr: DataHeader,
    pub data: [u8; MAX_CAPTURE + GATHER_MAX],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

pub fn count(stat: u32) {
    count_n(stat, 1);
}

pub fn count_n(stat: u32, n: u32) {
    if n == 0 {
        return;
    }
    if let Some(v) = STATS.get_ptr_mut(stat) {
        unsafe { *v += n as u64 };
    }
}

pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

pub fn next_conn_id() -> u64 {
    let cpu = unsafe { aya_ebpf::helpers::generated::bpf_get_smp_processor_id() } as u64;
    let seq = match CONN_SEQ.get_ptr_mut(0) {
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    };
    (cpu << 48) | (seq & 0xffff_ffff_ffff)
}
