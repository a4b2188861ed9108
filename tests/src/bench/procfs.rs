//! What the kernel reports about a process (CPU time of all its threads,
//! peak RSS), and pinning processes to a CPU.

use anyhow::{bail, Context, Result};

/// CPU seconds (user + system) the process `pid` has used so far, all its
/// threads included.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let ticks = stat_cpu_ticks(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) = {hz}");
    }
    Ok(ticks as f64 / hz as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. For a
/// thread-group leader these cover every thread of the process.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // `comm` (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set size (`VmHWM`) of `pid`, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = status_kib(&status, "VmHWM").context("no VmHWM in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// The value of a `Key:   1234 kB` line of `/proc/PID/status`.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Pins the calling thread to `cpu` (inherited by what it spawns afterwards).
pub fn pin_self(cpu: usize) -> std::io::Result<()> {
    set_affinity(0, cpu)
}

/// Pins every thread of process `pid` to `cpu`.
pub fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    for task in tasks {
        let tid: i32 = task?.file_name().to_string_lossy().parse()?;
        set_affinity(tid, cpu).with_context(|| format!("pinning thread {tid} to CPU {cpu}"))?;
    }
    Ok(())
}

fn set_affinity(tid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within
    // it for cpu < CPU_SETSIZE, which the kernel checks again anyway.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_tricky_comm() {
        let stat =
            "4242 (tokio) (x y) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 37 0 0 20 0 9 0 1 2 3";
        assert_eq!(stat_cpu_ticks(stat), Some(287));
        assert_eq!(stat_cpu_ticks("4242 (clew) S 1"), None);
    }

    #[test]
    fn reads_status_values() {
        let status =
            "Name:\tclew\nVmPeak:\t  200000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(23456));
        assert_eq!(status_kib(status, "VmRSS"), Some(20000));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn reads_this_process() {
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 0);
    }
}
