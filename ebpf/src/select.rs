//! Is the current task one Clew traces? Decided once per connection (at
//! accept/connect), never per read or write.

use aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id;
use clew_common::{select, MAX_CGROUPS};

use crate::maps::{agent_tgid, select_mode, CGROUPS, PIDS};

#[inline(always)]
pub fn current_selected(tgid: u32) -> bool {
    if tgid == agent_tgid() {
        return false;
    }
    if select_mode() == select::ALL {
        return true;
    }
    if unsafe { PIDS.get(&tgid) }.is_some() {
        return true;
    }
    for i in 0..MAX_CGROUPS {
        let Some(sel) = CGROUPS.get(i) else {
            return false;
        };
        if sel.used == 0 {
            return false;
        }
        if unsafe { bpf_get_current_ancestor_cgroup_id(sel.level as i32) } == sel.id {
            return true;
        }
    }
    false
}
