//! Userspace handles on the kernel maps the agent writes (selection,
//! connection seeding) or reads (drop counters).

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    Ebpf,
};
use clew_common::{role, stat, CgroupSel, ConnInfo, ConnKey, MAX_CGROUPS};

pub struct KernelMaps {
    conns: HashMap<MapData, ConnKey, ConnInfo>,
    pids: HashMap<MapData, u32, u8>,
    cgroups: Array<MapData, CgroupSel>,
    stats: PerCpuArray<MapData, u64>,
    seeded: u64,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelStats {
    pub ringbuf_drops: u64,
    pub read_errors: u64,
    pub data_events: u64,
}

impl KernelMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        Ok(KernelMaps {
            conns: HashMap::try_from(take("CONNS")?)?,
            pids: HashMap::try_from(take("PIDS")?)?,
            cgroups: Array::try_from(take("CGROUPS")?)?,
            stats: PerCpuArray::try_from(take("STATS")?)?,
            seeded: 0,
        })
    }

    pub fn select_pid(&mut self, tgid: u32) -> Result<()> {
        self.pids
            .insert(tgid, 1, 0)
            .with_context(|| format!("selecting pid {tgid}"))
    }

    pub fn unselect_pid(&mut self, tgid: u32) {
        // Absent already (never selected, or removed by the exit program).
        let _ = self.pids.remove(&tgid);
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
            _pad: [0; 7],
        };
        self.conns.insert(ConnKey { tgid, fd }, info, 0)?;
        Ok(id)
    }

    /// Stops capturing a connection (not HTTP, or the process went away).
    pub fn forget_conn(&mut self, tgid: u32, fd: u32) {
        let _ = self.conns.remove(&ConnKey { tgid, fd });
    }

    pub fn stats(&self) -> KernelStats {
        let sum = |i: u32| self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        KernelStats {
            ringbuf_drops: sum(stat::RINGBUF_DROPS),
            read_errors: sum(stat::READ_ERRORS),
            data_events: sum(stat::DATA_EVENTS),
        }
    }
}
