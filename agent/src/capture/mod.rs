//! Kernel side of the pipeline: loads the embedded eBPF object, attaches its
//! programs, and turns ring-buffer records into [`Event`]s.
//!
//! Everything attached is owned by [`Capture`]: aya attaches tracepoints
//! through file descriptors, so dropping it (or the process dying, even by
//! SIGKILL) detaches every program.

mod btf;
mod event;
mod maps;
mod sock_offsets;
mod uprobes;

use anyhow::{Context, Result};
use std::path::PathBuf;

use aya::{
    maps::{MapData, ProgramArray, RingBuf, SockHash},
    programs::{CgroupAttachMode, Program, ProgramError, SkMsg, SockOps, TracePoint},
    Ebpf, EbpfLoader,
};
use clew_common::{names, select, SockOffsets};

use crate::cli::Mechanisms;

pub use event::{decode, ConnOpen, Data, DecodeError, Event, KernelCtx};
pub use maps::{BlockedRead, KernelMaps};
pub use uprobes::{GoFn, GoTlsOffsets, Plan, SslOffsets, TlsLinks};

/// The kernel object built from `ebpf/` (see agent/build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("CLEW_EBPF_OBJECT"));

/// Syscall tracepoints carrying payload, all handled by `enter_io`/`exit_io`
/// (which dispatch on the syscall number).
const IO_SYSCALLS: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "sendfile64",
];

/// Load-time settings of the kernel programs.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Trace every process but the agent (no selector given).
    pub select_all: bool,
    /// Bytes of each read/write copied to userspace.
    pub capture_limit: u32,
    pub ringbuf_bytes: u32,
    /// Head sampling for the ids the kernel decides.
    pub sampling: crate::sampling::KernelSampling,
    /// Which propagation mechanisms the kernel programs apply.
    pub propagation: Mechanisms,
}

pub struct Capture {
    ebpf: Ebpf,
    attached: Vec<String>,
    propagation: Mechanisms,
}

impl Capture {
    pub fn load(cfg: &CaptureConfig) -> Result<Self> {
        let mode = if cfg.select_all {
            select::ALL
        } else {
            select::LISTED
        };
        let limit = cfg.capture_limit.clamp(64, clew_common::MAX_CAPTURE as u32);
        let fork_off = fork_child_pid_offset().unwrap_or_else(|e| {
            tracing::warn!("children of --pid/--exe/--port processes will not be followed: {e:#}");
            0
        });
        let sock_off = accepted_socket_offsets().unwrap_or_else(|e| {
            tracing::warn!(
                "peers of accept4(fd, NULL, NULL) servers (Node.js, Go) will come from /proc, \
                 too late for the TCP option of a connection's first request: {e}"
            );
            SockOffsets::default()
        });
        let agent = std::process::id();
        let ebpf = EbpfLoader::new()
            .override_global(names::global::AGENT_TGID, &agent, true)
            .override_global(names::global::SELECT_MODE, &mode, true)
            .override_global(names::global::CAPTURE_LIMIT, &limit, true)
            .override_global(names::global::FORK_CHILD_PID_OFFSET, &fork_off, true)
            .override_global(names::global::SOCK_OFFSETS, &sock_off, true)
            .override_global(names::global::SAMPLE_ALWAYS, &cfg.sampling.always, true)
            .override_global(
                names::global::SAMPLE_THRESHOLD,
                &cfg.sampling.threshold,
                true,
            )
            .override_global(
                names::global::SAMPLE_PARENT_BASED,
                &cfg.sampling.parent_based,
                true,
            )
            .override_global(
                names::global::INJECT,
                &(cfg.propagation.headers as u32),
                true,
            )
            .override_global(
                names::global::TCP_OPTION,
                &(cfg.propagation.tcp_option as u32),
                true,
            )
            .map_max_entries(names::map::EVENTS, cfg.ringbuf_bytes.next_power_of_two())
            .load(OBJECT)
            .context("loading the eBPF programs (is this root, with BPF allowed?)")?;
        Ok(Capture {
            ebpf,
            attached: Vec::new(),
            propagation: cfg.propagation,
        })
    }

    /// Attaches every program; any failure is fatal because a partial set
    /// would miss connections or bytes silently.
    pub fn attach(&mut self) -> Result<()> {
        self.load_tail_calls()?;
        self.load_uprobes()?;
        for sc in IO_SYSCALLS {
            self.attach_tp(
                names::program::ENTER_IO,
                "syscalls",
                &format!("sys_enter_{sc}"),
            )?;
            self.attach_tp(
                names::program::EXIT_IO,
                "syscalls",
                &format!("sys_exit_{sc}"),
            )?;
        }
        for sc in ["accept", "accept4"] {
            self.attach_tp(
                names::program::ENTER_ACCEPT,
                "syscalls",
                &format!("sys_enter_{sc}"),
            )?;
            self.attach_tp(
                names::program::EXIT_ACCEPT,
                "syscalls",
                &format!("sys_exit_{sc}"),
            )?;
        }
        self.attach_tp(
            names::program::ENTER_CONNECT,
            "syscalls",
            "sys_enter_connect",
        )?;
        self.attach_tp(names::program::EXIT_CONNECT, "syscalls", "sys_exit_connect")?;
        self.attach_tp(names::program::ENTER_CLOSE, "syscalls", "sys_enter_close")?;
        self.attach_tp(names::program::PROC_FORK, "sched", "sched_process_fork")?;
        self.attach_tp(names::program::PROC_EXEC, "sched", "sched_process_exec")?;
        self.attach_tp(names::program::PROC_EXIT, "sched", "sched_process_exit")?;
        Ok(())
    }

    /// `exit_io` hands request scanning to `observe_request` by tail call.
    fn load_tail_calls(&mut self) -> Result<()> {
        let p: &mut TracePoint = program(&mut self.ebpf, names::program::OBSERVE_REQUEST)?;
        p.load().context("verifier rejected observe_request")?;
        let fd = p.fd()?.try_clone()?;
        let mut tail = ProgramArray::try_from(
            self.ebpf
                .map_mut(names::map::TAIL)
                .context("TAIL map missing")?,
        )?;
        tail.set(names::tail::OBSERVE_REQUEST, &fd, 0)
            .context("installing the observe_request tail call")?;
        Ok(())
    }

    /// sockops on each cgroup whose processes' connections we follow (it
    /// reports their local ends, admits them to propagation, and writes and
    /// reads TCP options), and, when propagating, sk_msg on the socket map.
    pub fn attach_sockops(&mut self, cgroups: &[PathBuf]) -> Result<()> {
        if self.propagation.headers || self.propagation.tcp_option {
            self.attach_sk_msg()?;
        }
        let ops: &mut SockOps = program(&mut self.ebpf, names::program::TRACK_SOCKETS)?;
        ops.load().context("verifier rejected track_sockets")?;
        for cg in cgroups {
            let dir = std::fs::File::open(cg)
                .with_context(|| format!("opening cgroup {}", cg.display()))?;
            // A bpf_link (what aya uses on this kernel) coexists with other
            // agents' sockops programs and takes no multi-attach flag.
            ops.attach(dir, CgroupAttachMode::Single)
                .with_context(|| format!("attaching sockops to {}", cg.display()))?;
            self.attached.push(format!("sockops:{}", cg.display()));
        }
        Ok(())
    }

    fn attach_sk_msg(&mut self) -> Result<()> {
        let socks: SockHash<&MapData, u64> = SockHash::try_from(
            self.ebpf
                .map(names::map::INJECT_SOCKS)
                .context("INJECT_SOCKS map missing")?,
        )?;
        let socks_fd = socks.fd().try_clone()?;
        let msg: &mut SkMsg = program(&mut self.ebpf, names::program::INJECT_TRACEPARENT)?;
        msg.load().context("verifier rejected inject_traceparent")?;
        msg.attach(&socks_fd)
            .context("attaching sk_msg to the socket map")?;
        self.attached.push("sk_msg:INJECT_SOCKS".into());
        Ok(())
    }

    fn attach_tp(&mut self, prog: &str, category: &str, name: &str) -> Result<()> {
        let p: &mut TracePoint = program(&mut self.ebpf, prog)?;
        if p.fd().is_err() {
            p.load()
                .with_context(|| format!("verifier rejected {prog}"))?;
        }
        p.attach(category, name)
            .with_context(|| format!("attaching {prog} to {category}:{name}"))?;
        self.attached.push(format!("{category}:{name}"));
        Ok(())
    }

    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// Takes the ring buffer out; the caller polls it.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::map::EVENTS)
            .context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn maps(&mut self) -> Result<KernelMaps> {
        KernelMaps::take(&mut self.ebpf)
    }
}

/// Where `exit_accept` finds an accepted socket's endpoints in this
/// kernel's structs, from its BTF.
pub fn accepted_socket_offsets() -> Result<SockOffsets, sock_offsets::OffsetError> {
    sock_offsets::from_btf_file(std::path::Path::new(btf::VMLINUX))
}

/// A program of the object, as its type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(name);
    Ok(
        p.with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?,
    )
}

/// Reads where `child_pid` sits in the fork tracepoint record from its
/// format file, instead of assuming a layout.
fn fork_child_pid_offset() -> Result<u32> {
    let path = crate::probe::tracefs_dir()?.join("events/sched/sched_process_fork/format");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| l.contains("child_pid;"))
        .find_map(|l| {
            let off = l.split("offset:").nth(1)?.split(';').next()?;
            off.trim().parse().ok()
        })
        .context("no child_pid field in sched_process_fork")
}

#[cfg(test)]
mod tests {
    use super::OBJECT;
    use clew_common::names;
    use object::{Object, ObjectSymbol};
    use std::collections::HashSet;

    /// Every map, global and program the agent looks up by name is defined
    /// by the kernel object it embeds (the kernel declares them as
    /// identifiers, which `clew_common::names` cannot name for it).
    #[test]
    fn kernel_object_has_every_shared_name() {
        let file = object::File::parse(OBJECT).expect("the embedded eBPF object parses");
        let symbols: HashSet<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        let all = names::map::ALL
            .iter()
            .chain(names::global::ALL)
            .chain(names::program::ALL);
        for name in all {
            assert!(symbols.contains(name), "{name} is not in the kernel object");
        }
    }
}
