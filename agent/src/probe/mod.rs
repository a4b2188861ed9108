//! What this kernel offers, found by asking it (loading tiny programs,
//! reading tracefs and securityfs), and which mechanism Clew uses for each
//! job. `clew probe` prints it; `clew run` logs it at start-up.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

pub struct Mechanism {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

pub struct Report {
    pub kernel: String,
    pub mechanisms: Vec<Mechanism>,
    /// (job, mechanism used) — "none" when nothing on this kernel can do it.
    pub jobs: Vec<(&'static str, String)>,
}

/// The tracefs directory, mounting tracefs when the host has not.
pub fn tracefs_dir() -> Result<PathBuf> {
    for d in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(d).join("events").is_dir() {
            return Ok(PathBuf::from(d));
        }
    }
    let target = "/sys/kernel/tracing";
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "tracefs is not mounted and mounting it at {target} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(PathBuf::from(target))
}

fn prog(t: ProgramType) -> bool {
    is_program_supported(t).unwrap_or(false)
}

fn lockdown() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    let mode = s.split('[').nth(1)?.split(']').next()?;
    Some(mode.to_owned())
}

pub fn run() -> Report {
    let tracefs = tracefs_dir().ok();
    let has = |f: &str| tracefs.as_ref().is_some_and(|d| d.join(f).exists());
    let lock = lockdown();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let ringbuf = is_map_supported(MapType::RingBuf).unwrap_or(false);
    let tp = prog(ProgramType::TracePoint) && has("events/syscalls");
    let uprobes = has("uprobe_events");
    let sockops = prog(ProgramType::SockOps) && crate::cgroup::cgroup2_mount().is_ok();
    let sk_msg = prog(ProgramType::SkMsg);
    let hdr_opt = sockops
        && is_helper_supported(ProgramType::SockOps, BpfHelper::BPF_FUNC_store_hdr_opt)
            .unwrap_or(false);
    let write_user = is_helper_supported(
        ProgramType::TracePoint,
        BpfHelper::BPF_FUNC_probe_write_user,
    )
    .unwrap_or(false)
        && !matches!(lock.as_deref(), Some("integrity" | "confidentiality"));
    let cgroup2 = crate::cgroup::cgroup2_mount().ok();
    let m = |name, available, detail: String| Mechanism {
        name,
        available,
        detail,
    };
    let mechanisms = vec![
        m("ring buffer", ringbuf, "BPF_MAP_TYPE_RINGBUF".into()),
        m(
            "syscall tracepoints",
            tp,
            format!(
                "tracefs at {}",
                tracefs
                    .as_ref()
                    .map_or("?".into(), |d| d.display().to_string())
            ),
        ),
        m(
            "raw tracepoints",
            prog(ProgramType::RawTracePoint),
            String::new(),
        ),
        m(
            "kprobes",
            prog(ProgramType::KProbe) && has("kprobe_events"),
            "needs CONFIG_KPROBES (kprobe_events in tracefs)".into(),
        ),
        m("uprobes", uprobes, "uprobe_events in tracefs".into()),
        m(
            "BTF",
            Path::new("/sys/kernel/btf/vmlinux").exists(),
            "/sys/kernel/btf/vmlinux".into(),
        ),
        m("sockops", sockops, "cgroup v2 sock_ops".into()),
        m("sk_msg", sk_msg, "SOCKHASH verdicts".into()),
        m(
            "TCP header options",
            hdr_opt,
            "sockops bpf_{reserve,store,load}_hdr_opt (Linux ≥ 5.10)".into(),
        ),
        m(
            "TC classifier",
            prog(ProgramType::SchedClassifier),
            "clsact".into(),
        ),
        m(
            "bpf_probe_write_user",
            write_user,
            format!("kernel lockdown: {}", lock.as_deref().unwrap_or("none")),
        ),
        m(
            "cgroup v2",
            cgroup2.is_some(),
            cgroup2.map_or("not mounted".into(), |p| p.display().to_string()),
        ),
    ];
    let pick = |ok: bool, what: &str| {
        if ok {
            what.to_owned()
        } else {
            "none (unavailable)".to_owned()
        }
    };
    let jobs = vec![
        (
            "socket payload capture",
            pick(tp && ringbuf, "syscall tracepoints → ring buffer"),
        ),
        (
            "connection lifecycle",
            pick(tp, "accept/connect/close tracepoints"),
        ),
        (
            "process lifecycle",
            pick(tp, "sched_process_{fork,exec,exit} tracepoints"),
        ),
        (
            "process selection by cgroup",
            pick(
                tp,
                "bpf_get_current_ancestor_cgroup_id in the accept/connect programs",
            ),
        ),
        (
            "incoming traceparent / span ids",
            pick(tp, "bpf_loop head scan in a tail-called tracepoint program"),
        ),
        (
            "traceparent injection (HTTP/1, HTTP/2)",
            pick(
                sockops && sk_msg,
                "cgroup sockops → SOCKHASH → sk_msg push_data",
            ),
        ),
        (
            "TLS plaintext (OpenSSL, Go crypto/tls)",
            pick(
                uprobes,
                "uprobes on SSL_read/SSL_write(_ex), Go Read/Write entry+RETs; once per file",
            ),
        ),
        (
            "trace context in a TCP option (any TCP)",
            pick(
                hdr_opt && sk_msg,
                "sockops header option kind 25, per request via sk_msg",
            ),
        ),
        (
            "peer of accept4(fd, NULL, NULL)",
            match crate::capture::accepted_socket_offsets() {
                Ok(_) if tp => "read off the socket in the accept tracepoint (BTF offsets)".into(),
                Ok(_) => "none (unavailable)".into(),
                Err(e) => format!("/proc, per connection ({e})"),
            },
        ),
    ];
    Report {
        kernel,
        mechanisms,
        jobs,
    }
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "kernel {}\n", self.kernel);
        let _ = writeln!(s, "{:<22} {:<10} detail", "mechanism", "here");
        for m in &self.mechanisms {
            let here = if m.available { "yes" } else { "NO" };
            let _ = writeln!(s, "{:<22} {:<10} {}", m.name, here, m.detail);
        }
        let _ = writeln!(s, "\n{:<40} uses", "job");
        for (job, how) in &self.jobs {
            let _ = writeln!(s, "{job:<40} {how}");
        }
        s
    }

    /// Fails when the one path Clew needs (tracepoints + ring buffer) is missing.
    pub fn require_capture(&self) -> Result<()> {
        let ok = |n: &str| self.mechanisms.iter().any(|m| m.name == n && m.available);
        if !ok("syscall tracepoints") || !ok("ring buffer") {
            bail!("this kernel lacks syscall tracepoints or BPF ring buffers (need Linux ≥ 5.8 with CONFIG_FTRACE_SYSCALLS):\n{}", self.render());
        }
        Ok(())
    }
}
