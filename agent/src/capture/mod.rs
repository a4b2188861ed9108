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
use clew_common::{
    logs::FileOffsets,
    names::{self, global, map, program},
    select, SockOffsets,
};

use crate::config::{Mechanisms, SyscallArguments};

pub use event::{decode, ConnOpen, Data, DecodeError, Event, KernelCtx, LogWrite};
pub use maps::{BlockedRead, KernelMaps, LogVerdicts};
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

/// Written to by log capture (positioned writes go to files only).
const LOG_SYSCALLS: &[&str] = &["pwrite64", "pwritev", "pwritev2"];

/// Load-time settings of the kernel programs.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Trace every process but the agent (no selector given).
    pub select_all: bool,
    /// Some `--exe` selector is a path: the exec program then reads the
    /// exec'd file name.
    pub exe_paths: bool,
    /// Bytes of each read/write copied to userspace.
    pub capture_limit: u32,
    pub ringbuf_bytes: u32,
    /// Head sampling for the ids the kernel decides.
    pub sampling: crate::sampling::KernelSampling,
    /// Which propagation mechanisms the kernel programs apply.
    pub propagation: Mechanisms,
    /// Which writes log capture takes (`clew_common::logs::source`
    /// bits; 0: off).
    pub logs: u32,
    /// Captured writes per second per process.
    pub log_rate: u32,
    pub syscall_arguments: SyscallArguments,
}

pub struct Capture {
    ebpf: Ebpf,
    attached: Vec<String>,
    propagation: Mechanisms,
    logs: u32,
    syscall_arguments: SyscallArguments,
}

impl Capture {
    pub fn load(cfg: &CaptureConfig) -> Result<Self> {
        let mode = if cfg.select_all {
            select::ALL
        } else {
            select::LISTED
        };
        let limit = cfg.capture_limit.clamp(64, clew_common::MAX_CAPTURE as u32);
        let fork_off =
            tracepoint_field_offset("sched_process_fork", "child_pid").unwrap_or_else(|e| {
                tracing::warn!(
                    "children of --pid/--exe/--port processes will not be followed: {e:#}"
                );
                0
            });
        let exec_off = match cfg.exe_paths {
            true => tracepoint_field_offset("sched_process_exec", "filename").unwrap_or_else(|e| {
                tracing::warn!(
                    "--exe paths are matched after the exec, too late for children \
                     forked at once: {e:#}"
                );
                0
            }),
            false => 0,
        };
        let sock_off = accepted_socket_offsets().unwrap_or_else(|e| {
            tracing::warn!(
                "peers of accept4(fd, NULL, NULL) servers (Node.js, Go) will come from /proc, \
                 too late for the TCP option of a connection's first request: {e}"
            );
            SockOffsets::default()
        });
        let files_off = match cfg.logs & clew_common::logs::source::FILES {
            0 => FileOffsets::default(),
            _ => sock_offsets::files_from_btf_file(std::path::Path::new(btf::VMLINUX))
                .unwrap_or_else(|e| {
                    tracing::warn!(
                        "log files cannot be told apart on this kernel, only stdout and \
                         stderr are captured: {e}"
                    );
                    FileOffsets::default()
                }),
        };
        let fsbase_off = task_fsbase_offset().unwrap_or_else(|e| {
            tracing::warn!("Go requests will be counted per process, not per goroutine: {e:#}");
            0
        });
        let java_regs = match crate::probe::task_regs() {
            Ok(()) => 1u32,
            Err(e) => {
                tracing::info!(
                    "JVMs with virtual threads will count requests per process, not per Java \
                     thread: {e:#}"
                );
                0
            }
        };
        let agent = std::process::id();
        let ring_bytes = cfg.ringbuf_bytes.next_power_of_two();
        let ebpf = EbpfLoader::new()
            .override_global(global::AGENT_TGID, &agent, true)
            .override_global(global::SELECT_MODE, &mode, true)
            .override_global(global::CAPTURE_LIMIT, &limit, true)
            .override_global(
                global::RING_WAKE_SHIFT,
                &(ring_bytes.trailing_zeros() - 2),
                true,
            )
            .override_global(global::FORK_CHILD_PID_OFFSET, &fork_off, true)
            .override_global(global::EXEC_FILENAME_OFFSET, &exec_off, true)
            .override_global(global::SOCK_OFFSETS, &sock_off, true)
            .override_global(global::TASK_FSBASE_OFFSET, &fsbase_off, true)
            .override_global(global::JAVA_REGS, &java_regs, true)
            .override_global(global::LOGS, &cfg.logs, true)
            .override_global(global::FILE_OFFSETS, &files_off, true)
            .override_global(
                global::LOG_WRITE_COST_NS,
                &(1_000_000_000 / u64::from(cfg.log_rate.max(1))),
                true,
            )
            .override_global(global::SAMPLE_ALWAYS, &cfg.sampling.always, true)
            .override_global(global::SAMPLE_THRESHOLD, &cfg.sampling.threshold, true)
            .override_global(
                global::SAMPLE_PARENT_BASED,
                &cfg.sampling.parent_based,
                true,
            )
            .override_global(global::SAMPLE_CONSISTENT, &cfg.sampling.consistent, true)
            .override_global(global::SAMPLE_TH_STATE, &cfg.sampling.th_state, true)
            .override_global(global::SAMPLE_TH_LEN, &cfg.sampling.th_len, true)
            .override_global(global::INJECT, &(cfg.propagation.headers as u32), true)
            .override_global(
                global::TCP_OPTION,
                &(cfg.propagation.tcp_option as u32),
                true,
            )
            .map_max_entries(map::EVENTS, ring_bytes)
            .map_max_entries(map::CONN_TGIDS, maps::conn_tgid_pages())
            // Two Kafka walk buffers per CPU (see ebpf/src/kafka.rs).
            .map_max_entries(map::KAFKA_BUFS, 2 * kafka_cpus())
            .load(OBJECT)
            .context("loading the eBPF programs (is this root, with BPF allowed?)")?;
        Ok(Capture {
            ebpf,
            attached: Vec::new(),
            propagation: cfg.propagation,
            logs: cfg.logs,
            syscall_arguments: cfg.syscall_arguments,
        })
    }

    /// Attaches every program; any failure is fatal because a partial set
    /// would miss connections or bytes silently. Returns whether socket
    /// calls have an enter program (see `load_exit_io_regs`).
    pub fn attach(&mut self) -> Result<bool> {
        self.load_observers()?;
        self.load_uprobes()?;
        let logs: &[&str] = if self.logs != 0 { LOG_SYSCALLS } else { &[] };
        let at_exit = self.load_exit_io_regs();
        for sc in IO_SYSCALLS.iter().chain(logs) {
            if at_exit {
                self.attach_tp(program::EXIT_IO_REGS, "syscalls", &format!("sys_exit_{sc}"))?;
                continue;
            }
            self.attach_tp(program::ENTER_IO, "syscalls", &format!("sys_enter_{sc}"))?;
            self.attach_tp(program::EXIT_IO, "syscalls", &format!("sys_exit_{sc}"))?;
        }
        for sc in ["accept", "accept4"] {
            self.attach_tp(
                program::ENTER_ACCEPT,
                "syscalls",
                &format!("sys_enter_{sc}"),
            )?;
            self.attach_tp(program::EXIT_ACCEPT, "syscalls", &format!("sys_exit_{sc}"))?;
        }
        self.attach_tp(program::ENTER_CONNECT, "syscalls", "sys_enter_connect")?;
        self.attach_tp(program::EXIT_CONNECT, "syscalls", "sys_exit_connect")?;
        self.attach_tp(program::ENTER_CLOSE, "syscalls", "sys_enter_close")?;
        self.attach_tp(program::PROC_FORK, "sched", "sched_process_fork")?;
        self.attach_tp(program::PROC_EXEC, "sched", "sched_process_exec")?;
        self.attach_tp(program::PROC_EXIT, "sched", "sched_process_exit")?;
        Ok(!at_exit)
    }

    /// Whether socket calls are read at their return alone
    /// (`exit_io_regs`): configured so and allowed by this kernel (which
    /// refuses the program's register helper before Linux 5.15). Otherwise
    /// a program at each call's entry keeps its arguments.
    fn load_exit_io_regs(&mut self) -> bool {
        if self.syscall_arguments == SyscallArguments::Enter {
            tracing::info!("socket call arguments kept at entry (configured)");
            return false;
        }
        let loaded = program::<TracePoint>(&mut self.ebpf, program::EXIT_IO_REGS)
            .and_then(|p| Ok(p.load()?));
        match loaded {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "socket calls cost two programs each on this kernel (arguments kept at \
                     entry): exit_io_regs was refused: {e:#}"
                );
                false
            }
        }
    }

    /// `exit_io` hands each call on a server connection to its protocol's
    /// observer by tail call.
    fn load_observers(&mut self) -> Result<()> {
        for (proto, name, _) in names::OBSERVERS {
            let p: &mut TracePoint = program(&mut self.ebpf, name)?;
            p.load()
                .with_context(|| format!("verifier rejected {name}"))?;
            let fd = p.fd()?.try_clone()?;
            install_tail_call(&mut self.ebpf, map::OBSERVERS, proto, &fd, name)?;
        }
        Ok(())
    }

    /// sockops on each cgroup whose processes' connections we follow (it
    /// reports their local ends, admits them to propagation, and writes and
    /// reads TCP options), and, when propagating, sk_msg on the socket map.
    pub fn attach_sockops(&mut self, cgroups: &[PathBuf]) -> Result<()> {
        if self.propagation.headers || self.propagation.tcp_option {
            self.attach_sk_msg()?;
        }
        let ops: &mut SockOps = program(&mut self.ebpf, program::TRACK_SOCKETS)?;
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
                .map(map::INJECT_SOCKS)
                .context("INJECT_SOCKS map missing")?,
        )?;
        let socks_fd = socks.fd().try_clone()?;
        let kafka: &mut SkMsg = program(&mut self.ebpf, program::INJECT_KAFKA)?;
        kafka.load().context("verifier rejected inject_kafka")?;
        let fd = kafka.fd()?.try_clone()?;
        install_tail_call(
            &mut self.ebpf,
            map::INJECTORS,
            0,
            &fd,
            program::INJECT_KAFKA,
        )?;
        let msg: &mut SkMsg = program(&mut self.ebpf, program::INJECT_TRACEPARENT)?;
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
            .take_map(map::EVENTS)
            .context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn maps(&mut self) -> Result<KernelMaps> {
        KernelMaps::take(&mut self.ebpf)
    }

    pub fn log_verdicts(&mut self) -> Result<LogVerdicts> {
        LogVerdicts::take(&mut self.ebpf)
    }
}

/// Where `exit_accept` finds an accepted socket's endpoints in this
/// kernel's structs, from its BTF.
pub fn accepted_socket_offsets() -> Result<SockOffsets, sock_offsets::OffsetError> {
    sock_offsets::from_btf_file(std::path::Path::new(btf::VMLINUX))
}

/// Where a task's fs base sits in `task_struct` (`thread.fsbase`), from
/// the kernel's BTF: Go keeps the running goroutine just below it.
pub fn task_fsbase_offset() -> Result<u32> {
    let f = btf::Btf::from_file(std::path::Path::new(btf::VMLINUX))?
        .field("task_struct", &["thread", "fsbase"])?;
    anyhow::ensure!(f.size == 8, "task_struct.thread.fsbase is {} bytes", f.size);
    Ok(f.offset)
}

/// CPUs the kernel's per-CPU Kafka buffers must cover: every possible
/// one (a CPU id indexes them). Without the count, the kernel's default of
/// one pair serves CPU 0 only and Kafka stands down elsewhere.
fn kafka_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n as u32)
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

/// Puts `fd` (program `name`) into slot `slot` of program array `array`.
fn install_tail_call(
    ebpf: &mut Ebpf,
    array: &str,
    slot: u8,
    fd: &aya::programs::ProgramFd,
    name: &str,
) -> Result<()> {
    let map = ebpf
        .map_mut(array)
        .with_context(|| format!("{array} map missing"))?;
    ProgramArray::try_from(map)?
        .set(u32::from(slot), fd, 0)
        .with_context(|| format!("installing {name} in {array}"))
}

/// Reads where `field` sits in a `sched` tracepoint's record from its
/// format file, instead of assuming a layout.
fn tracepoint_field_offset(event: &str, field: &str) -> Result<u32> {
    let path = crate::probe::tracefs_dir()?.join(format!("events/sched/{event}/format"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    field_offset(&text, field).with_context(|| format!("no {field} field in {event}"))
}

fn field_offset(format: &str, field: &str) -> Option<u32> {
    let decl = format!(" {field};");
    format.lines().filter(|l| l.contains(&decl)).find_map(|l| {
        let off = l.split("offset:").nth(1)?.split(';').next()?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use clew_common::names::{self, global, map, program};
    use object::{Object, ObjectSymbol};

    use super::{field_offset, OBJECT};

    #[test]
    fn field_offsets_come_from_the_format_file() {
        let exec = "name: sched_process_exec\nformat:\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
            \tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
            \tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(exec, "filename"), Some(8));
        // `pid` is not `common_pid` nor `old_pid`.
        assert_eq!(field_offset(exec, "pid"), Some(12));
        assert_eq!(field_offset(exec, "child_pid"), None);
    }

    /// The names the agent looks up are the ones the kernel object has.
    #[test]
    fn shared_names_exist_in_the_kernel_object() {
        let file = object::File::parse(OBJECT).expect("the embedded eBPF object parses");
        let symbols: HashSet<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        let observers = names::OBSERVERS.iter().flat_map(|(_, t, u)| [*t, *u]);
        let wanted = [
            map::EVENTS,
            map::CONNS,
            map::PIDS,
            map::EXE_NAMES,
            map::EXE_PATHS,
            map::CGROUPS,
            map::STATS,
            map::INFLIGHT,
            map::PEERS,
            map::INJECT_SOCKS,
            map::OBSERVERS,
            map::TLS_OBSERVERS,
            map::NEST_BY_PROCESS,
            map::JAVA_THREADS,
            map::KAFKA_BUFS,
            map::INJECTORS,
            map::LOG_FDS,
            map::CONN_TGIDS,
            global::LOGS,
            global::FILE_OFFSETS,
            global::LOG_WRITE_COST_NS,
            global::AGENT_TGID,
            global::SELECT_MODE,
            global::CAPTURE_LIMIT,
            global::RING_WAKE_SHIFT,
            global::FORK_CHILD_PID_OFFSET,
            global::EXEC_FILENAME_OFFSET,
            global::SOCK_OFFSETS,
            global::SAMPLE_ALWAYS,
            global::SAMPLE_THRESHOLD,
            global::SAMPLE_PARENT_BASED,
            global::SAMPLE_CONSISTENT,
            global::SAMPLE_TH_STATE,
            global::SAMPLE_TH_LEN,
            global::INJECT,
            global::TCP_OPTION,
            global::TASK_FSBASE_OFFSET,
            global::JAVA_REGS,
            program::ENTER_IO,
            program::EXIT_IO,
            program::EXIT_IO_REGS,
            program::ENTER_ACCEPT,
            program::EXIT_ACCEPT,
            program::ENTER_CONNECT,
            program::EXIT_CONNECT,
            program::ENTER_CLOSE,
            program::PROC_FORK,
            program::PROC_EXEC,
            program::PROC_EXIT,
            program::TRACK_SOCKETS,
            program::INJECT_TRACEPARENT,
            program::INJECT_KAFKA,
            program::SSL_READ_ENTER,
            program::SSL_READ_EX_ENTER,
            program::SSL_WRITE_ENTER,
            program::SSL_WRITE_EX_ENTER,
            program::SSL_FREE_ENTER,
            program::SSL_EXIT,
            program::GO_TLS_READ_ENTER,
            program::GO_TLS_WRITE_ENTER,
            program::GO_TLS_EXIT,
            program::GO_HTTP_ROUND_TRIP,
            program::GO_HTTP_REQUEST_WRITE,
            program::GO_SPAWN_PARENT,
            program::GO_SPAWN_CHILD,
            program::GO_G_FREE,
        ];
        for name in wanted.into_iter().chain(observers) {
            assert!(symbols.contains(name), "{name} is not in the eBPF object");
        }
    }
}
