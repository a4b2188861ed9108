//! Userspace handles on the kernel maps the agent writes (selection,
//! connection seeding) or reads (drop counters).

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    Ebpf,
};
use clew_common::{
    exe,
    logs::{LogFd, LogFdKey},
    names::map,
    nr, role, stat, CgroupSel, ConnInfo, ConnKey, Inflight, JavaThreadLayout, PeerKey, SockAddr,
    IO_MARK, MAX_CGROUPS, MAX_TGID_PAGES, NEST_JAVA, TGID_PAGE,
};
use std::{
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
};

pub struct KernelMaps {
    conns: HashMap<MapData, ConnKey, ConnInfo>,
    pids: HashMap<MapData, u32, u8>,
    exe_names: HashMap<MapData, [u8; exe::COMM_LEN], u8>,
    exe_paths: HashMap<MapData, [u8; exe::PATH_LEN], u8>,
    cgroups: Array<MapData, CgroupSel>,
    stats: PerCpuArray<MapData, u64>,
    inflight: HashMap<MapData, u64, Inflight>,
    peers: HashMap<MapData, u64, PeerKey>,
    nest_by_process: HashMap<MapData, u32, i64>,
    java_threads: HashMap<MapData, u32, JavaThreadLayout>,
    conn_tgids: ConnTgids,
    /// An enter program keeps each call's arguments, so a read already
    /// blocked when it attached needs its entry written here.
    enter_program: bool,
    seeded: u64,
}

/// The kernel's byte per tgid saying "this process has tracked
/// connections" (`CONN_TGIDS`), mapped into the agent: a byte store marks
/// one process without rewriting its neighbours, which the kernel marks
/// concurrently.
struct ConnTgids {
    bytes: memmap2::MmapMut,
    // The mapping holds the map too; the fd goes with it.
    _map: MapData,
}

impl ConnTgids {
    fn new(map: MapData) -> Result<Self> {
        let len = map.info()?.max_entries() as usize * TGID_PAGE;
        // SAFETY: the kernel created the array mmapable with exactly this
        // size; other writers only store whole bytes into it.
        let bytes = unsafe {
            memmap2::MmapOptions::new()
                .len(len)
                .map_mut(map.fd().as_fd().as_raw_fd())
        }
        .context("mapping CONN_TGIDS")?;
        Ok(ConnTgids { bytes, _map: map })
    }

    fn mark(&mut self, tgid: u32) {
        // A tgid past the table takes the kernel's slow path: nothing to mark.
        if let Some(b) = self.bytes.get_mut(tgid as usize) {
            *b = 1;
        }
    }
}

/// Pages of `CONN_TGIDS` for this host's `pid_max`.
pub(super) fn conn_tgid_pages() -> u32 {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(MAX_TGID_PAGES as usize * TGID_PAGE);
    (pid_max.div_ceil(TGID_PAGE) as u32).clamp(1, MAX_TGID_PAGES)
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelStats {
    pub ringbuf_drops: u64,
    pub read_errors: u64,
    pub data_events: u64,
    pub tls_unbound: u64,
    pub tcp_opt_written: u64,
    pub tcp_opt_no_room: u64,
    pub tcp_opt_read: u64,
    pub h2: H2InjectStats,
    pub kafka: KafkaStats,
    pub tracestate: TracestateStats,
    pub log_writes: u64,
    pub log_writes_ambiguous: u64,
    pub log_writes_over_rate: u64,
}

/// What the kernel did with `tracestate` (`stat::TRACESTATE_*`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TracestateStats {
    pub carried: u64,
    pub dropped: u64,
    pub injected: u64,
    pub own: u64,
    pub no_room: u64,
}

/// What the kernel did with outgoing HTTP/2 requests (`stat::H2_*`).
#[derive(Clone, Copy, Debug, Default)]
pub struct H2InjectStats {
    pub injected: u64,
    pub own_traceparent: u64,
    pub split: u64,
    pub unscanned: u64,
    pub too_long: u64,
    pub lost_framing: u64,
    pub failed: u64,
    pub app_indexed: u64,
}

/// What the kernel did with Kafka records and Fetch responses
/// (`stat::KAFKA_*`).
#[derive(Clone, Copy, Debug, Default)]
pub struct KafkaStats {
    pub injected: u64,
    pub own_traceparent: u64,
    pub compressed: u64,
    pub split: u64,
    pub crc: u64,
    pub bounds: u64,
    pub unsupported: u64,
    pub malformed: u64,
    pub failed: u64,
    pub lost_framing: u64,
    pub consumer_spans: u64,
    pub consumer_stood_down: u64,
}

impl KernelMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        Ok(KernelMaps {
            conns: HashMap::try_from(take(map::CONNS)?)?,
            pids: HashMap::try_from(take(map::PIDS)?)?,
            exe_names: HashMap::try_from(take(map::EXE_NAMES)?)?,
            exe_paths: HashMap::try_from(take(map::EXE_PATHS)?)?,
            cgroups: Array::try_from(take(map::CGROUPS)?)?,
            stats: PerCpuArray::try_from(take(map::STATS)?)?,
            inflight: HashMap::try_from(take(map::INFLIGHT)?)?,
            peers: HashMap::try_from(take(map::PEERS)?)?,
            nest_by_process: HashMap::try_from(take(map::NEST_BY_PROCESS)?)?,
            java_threads: HashMap::try_from(take(map::JAVA_THREADS)?)?,
            conn_tgids: match take(map::CONN_TGIDS)? {
                aya::maps::Map::Array(m) => ConnTgids::new(m)?,
                other => anyhow::bail!("map {} is not an array: {other:?}", map::CONN_TGIDS),
            },
            enter_program: true,
            seeded: 0,
        })
    }

    pub fn select_pid(&mut self, tgid: u32) -> Result<()> {
        self.pids
            .insert(tgid, 1, 0)
            .with_context(|| format!("selecting pid {tgid}"))
    }

    /// Process `tgid`'s requests count per goroutine in the kernel's
    /// nesting (`g` at `g_offset` below the fs base; 0: per process), or
    /// with `None`, per thread again.
    pub fn nest_by_process(&mut self, tgid: u32, g_offset: Option<i64>) -> Result<()> {
        match g_offset {
            Some(off) => self
                .nest_by_process
                .insert(tgid, off, 0)
                .with_context(|| format!("nesting process {tgid} per goroutine")),
            None => {
                // Absent already (removed by the kernel at its exit).
                let _ = self.nest_by_process.remove(&tgid);
                let _ = self.java_threads.remove(&tgid);
                Ok(())
            }
        }
    }

    /// Process `tgid`'s requests count per Java thread in the kernel's
    /// nesting, read as `layout` says.
    pub fn nest_by_java_thread(&mut self, tgid: u32, layout: JavaThreadLayout) -> Result<()> {
        self.java_threads
            .insert(tgid, layout, 0)
            .with_context(|| format!("nesting process {tgid} per Java thread"))?;
        self.nest_by_process
            .insert(tgid, NEST_JAVA, 0)
            .with_context(|| format!("nesting process {tgid} per Java thread"))
    }

    pub fn unselect_pid(&mut self, tgid: u32) {
        // Absent already (never selected, or removed by the exit program).
        let _ = self.pids.remove(&tgid);
    }

    /// Hands `--exe` selectors to the exec program. One the kernel cannot
    /// key (see `exe::name_key`, `exe::path_key`) or has no room for
    /// (`MAX_EXES`) is still matched by userspace, after the exec event.
    pub fn set_exes(&mut self, names: &[String], paths: &[String]) {
        for n in names {
            let key = exe::name_key(n);
            if key.is_none_or(|k| self.exe_names.insert(k, 1, 0).is_err()) {
                warn_late_exe(n);
            }
        }
        for p in paths {
            let key = exe::path_key(p);
            if key.is_none_or(|k| self.exe_paths.insert(k, 1, 0).is_err()) {
                warn_late_exe(p);
            }
        }
    }

    pub fn set_cgroups(&mut self, sel: &[(u64, u32)]) -> Result<()> {
        anyhow::ensure!(
            sel.len() <= MAX_CGROUPS as usize,
            "at most {MAX_CGROUPS} --cgroup selectors"
        );
        for i in 0..MAX_CGROUPS {
            let v = sel
                .get(i as usize)
                .map(|&(id, level)| CgroupSel { id, level, used: 1 })
                .unwrap_or_default();
            self.cgroups.set(i, v, 0)?;
        }
        Ok(())
    }

    /// Puts a socket that existed before the agent started into the
    /// connection table so its traffic is captured; returns the id its
    /// records will carry.
    pub fn seed_conn(&mut self, tgid: u32, fd: u32) -> Result<u64> {
        self.seeded += 1;
        // Kernel ids carry the CPU number in the top 16 bits; this value is
        // above any CPU number, so seeded ids never collide with them.
        let id = (0xffffu64 << 48) | self.seeded;
        let info = ConnInfo {
            id,
            role: role::UNKNOWN,
            state: 0,
            _pad: [0; 6],
        };
        // NOEXIST: a socket the kernel already tracks (its process was
        // selected when it opened it, e.g. a child selected at its fork
        // that a rescan lists only now) keeps its id and role.
        self.conns.insert(ConnKey { tgid, fd }, info, 1)?;
        self.conn_tgids.mark(tgid);
        Ok(id)
    }

    /// Whether the kernel reads calls' arguments with an enter program
    /// (false: at their return, where a blocked read is caught anyway).
    pub fn set_enter_program(&mut self, attached: bool) {
        self.enter_program = attached;
    }

    /// Blocked reads must be recorded with [`Self::resume_blocked_read`].
    pub fn resumes_blocked_reads(&self) -> bool {
        self.enter_program
    }

    /// A thread was already blocked reading an adopted connection when the
    /// probes attached, so its enter tracepoint never ran: record the call
    /// as the enter program would have, and its return is captured.
    pub fn resume_blocked_read(
        &mut self,
        tgid: u32,
        tid: u32,
        conn_id: u64,
        call: &BlockedRead,
    ) -> Result<()> {
        let v = Inflight {
            nr: call.nr,
            conn_id,
            fd: call.fd,
            role: IO_MARK,
            conn_role: role::UNKNOWN,
            conn_state: 0,
            data_flags: 0,
            a1: call.buf,
            a2: call.len,
            peer: SockAddr::default(),
        };
        let key = ((tgid as u64) << 32) | tid as u64;
        // NOEXIST: a fresh entry from the real enter program wins.
        Ok(self.inflight.insert(key, v, 1)?)
    }

    /// Stops capturing connection `id` (not HTTP, or evicted). Only if the
    /// kernel's entry is still that connection: by the time userspace gets
    /// here the fd may already belong to a newer one.
    pub fn forget_conn(&mut self, tgid: u32, fd: u32, id: u64) {
        let key = ConnKey { tgid, fd };
        if self.conns.get(&key, 0).is_ok_and(|info| info.id == id) {
            let _ = self.conns.remove(&key);
        }
    }

    /// Tells the kernel the client endpoint of server connection `id`,
    /// which accept() did not report (`accept4(fd, NULL, NULL)`) and the
    /// kernel could not read off the socket (no BTF offsets), so its
    /// requests can find the TCP options that client sent.
    pub fn set_peer(&mut self, id: u64, peer: SocketAddr) {
        let addr = match peer.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        let key = PeerKey {
            addr: addr.octets(),
            port: peer.port() as u32,
        };
        // Best effort: without it, only header propagation reaches this connection.
        let _ = self.peers.insert(id, key, 0);
    }

    pub fn stats(&self) -> KernelStats {
        let sum = |i: u32| self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        KernelStats {
            ringbuf_drops: sum(stat::RINGBUF_DROPS),
            read_errors: sum(stat::READ_ERRORS),
            data_events: sum(stat::DATA_EVENTS),
            tls_unbound: sum(stat::TLS_UNBOUND),
            tcp_opt_written: sum(stat::TCP_OPT_WRITTEN),
            tcp_opt_no_room: sum(stat::TCP_OPT_NO_ROOM),
            tcp_opt_read: sum(stat::TCP_OPT_READ),
            h2: H2InjectStats {
                injected: sum(stat::H2_INJECTED),
                own_traceparent: sum(stat::H2_OWN_TRACEPARENT),
                split: sum(stat::H2_SPLIT),
                unscanned: sum(stat::H2_UNSCANNED),
                too_long: sum(stat::H2_TOO_LONG),
                lost_framing: sum(stat::H2_LOST_FRAMING),
                failed: sum(stat::H2_FAILED),
                app_indexed: sum(stat::H2_APP_INDEXED),
            },
            kafka: KafkaStats {
                injected: sum(stat::KAFKA_INJECTED),
                own_traceparent: sum(stat::KAFKA_OWN_TRACEPARENT),
                compressed: sum(stat::KAFKA_COMPRESSED),
                split: sum(stat::KAFKA_SPLIT),
                crc: sum(stat::KAFKA_CRC),
                bounds: sum(stat::KAFKA_BOUNDS),
                unsupported: sum(stat::KAFKA_UNSUPPORTED),
                malformed: sum(stat::KAFKA_MALFORMED),
                failed: sum(stat::KAFKA_FAILED),
                lost_framing: sum(stat::KAFKA_LOST_FRAMING),
                consumer_spans: sum(stat::KAFKA_CONSUMER_SPANS),
                consumer_stood_down: sum(stat::KAFKA_CONSUMER_STOOD_DOWN),
            },
            tracestate: TracestateStats {
                carried: sum(stat::TRACESTATE_CARRIED),
                dropped: sum(stat::TRACESTATE_DROPPED),
                injected: sum(stat::TRACESTATE_INJECTED),
                own: sum(stat::TRACESTATE_OWN),
                no_room: sum(stat::TRACESTATE_NO_ROOM),
            },
            log_writes: sum(stat::LOG_WRITES),
            log_writes_ambiguous: sum(stat::LOG_WRITES_AMBIGUOUS),
            log_writes_over_rate: sum(stat::LOG_WRITES_OVER_RATE),
        }
    }
}

/// The kernel's copy of the agent's verdicts on log files (`LOG_FDS`,
/// see ebpf/src/logs.rs): writes to a file judged not to be a log stop
/// reaching the agent.
pub struct LogVerdicts {
    map: HashMap<MapData, LogFdKey, LogFd>,
}

impl LogVerdicts {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf.take_map(map::LOG_FDS).context("map LOG_FDS missing")?;
        Ok(LogVerdicts {
            map: HashMap::try_from(map)?,
        })
    }

    /// Writes to `fd` of `tgid` while it holds inode `ino` of device `dev`
    /// are captured, or never.
    pub fn set(&mut self, tgid: u32, fd: u32, ino: u64, dev: u32, capture: bool) {
        let v = LogFd {
            ino,
            dev,
            capture: capture as u32,
        };
        // Best effort: without the entry the kernel keeps asking.
        if let Err(e) = self.map.insert(LogFdKey { tgid, fd }, v, 0) {
            tracing::debug!(tgid, fd, "cannot record a log file verdict: {e}");
        }
    }

    pub fn forget(&mut self, tgid: u32, fd: u32) {
        let _ = self.map.remove(&LogFdKey { tgid, fd });
    }
}

fn warn_late_exe(exe: &str) {
    tracing::warn!(
        "--exe {exe}: matched after its exec only, so a child it forks at once may be missed"
    );
}

/// A read-type syscall a thread is blocked in, from /proc/PID/task/TID/syscall.
#[derive(Debug, PartialEq, Eq)]
pub struct BlockedRead {
    pub nr: i64,
    pub fd: u32,
    pub buf: u64,
    pub len: u64,
}

impl BlockedRead {
    /// Parses `NR ARG1 ARG2 ARG3 ...` (number in decimal, arguments in hex).
    pub fn parse(line: &str) -> Option<Self> {
        let mut f = line.split_whitespace();
        let nr: i64 = f.next()?.parse().ok()?;
        if ![nr::READ, nr::RECVFROM, nr::READV, nr::RECVMSG].contains(&nr) {
            return None;
        }
        let mut arg = || u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok();
        Some(BlockedRead {
            nr,
            fd: arg()? as u32,
            buf: arg()?,
            len: arg()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocked_reads_only() {
        let r =
            BlockedRead::parse("45 0x4 0x7f4f00000ba0 0x2000 0x0 0x0 0x0 0x7ffd 0x7f01").unwrap();
        assert_eq!(
            r,
            BlockedRead {
                nr: nr::RECVFROM,
                fd: 4,
                buf: 0x7f4f00000ba0,
                len: 0x2000
            }
        );
        assert_eq!(
            BlockedRead::parse("7 0x1 0x2 0x3 0x0 0x0 0x0 0x1 0x2"),
            None
        );
        assert_eq!(BlockedRead::parse("running"), None);
        assert_eq!(BlockedRead::parse("0 0x3"), None);
    }
}
