//! What this kernel offers, found by asking it: loading a minimal program
//! per mechanism (see [`programs`]), reading tracefs and securityfs; and
//! what Clew uses each mechanism for. `clew probe` prints it; `clew run`
//! checks the one path it cannot do without.

mod programs;

pub use programs::task_regs;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};
use aya::{programs::ProgramType, sys::is_program_supported};

use programs::Finding;

pub struct Mechanism {
    pub name: &'static str,
    /// How it was seen working, or the kernel's reason it does not.
    pub finding: Finding,
    /// What Clew uses it for; `None`: Clew does not use it.
    pub used_for: Option<&'static str>,
}

impl Mechanism {
    pub fn works(&self) -> bool {
        self.finding.is_ok()
    }
}

pub struct Report {
    pub kernel: String,
    pub lockdown: Lockdown,
    pub mechanisms: Vec<Mechanism>,
    /// (job, mechanism used) — "none" when nothing on this kernel can do it.
    pub jobs: Vec<(&'static str, String)>,
}

/// The kernel lockdown mode, as securityfs says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lockdown {
    /// `none`, `integrity` or `confidentiality`.
    Mode(String),
    /// No lockdown LSM in this kernel: nothing is locked down.
    Absent,
    /// securityfs could not be read.
    Unknown(String),
}

impl std::fmt::Display for Lockdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lockdown::Mode(m) => f.write_str(m),
            Lockdown::Absent => f.write_str("none (no lockdown LSM in this kernel)"),
            Lockdown::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

const TRACEFS: &str = "/sys/kernel/tracing";
const SECURITYFS: &str = "/sys/kernel/security";

/// The tracefs directory, mounting tracefs when the host has not.
pub fn tracefs_dir() -> Result<PathBuf> {
    for d in [TRACEFS, "/sys/kernel/debug/tracing"] {
        if Path::new(d).join("events").is_dir() {
            return Ok(PathBuf::from(d));
        }
    }
    mount("tracefs", c"tracefs", TRACEFS, c"/sys/kernel/tracing")?;
    Ok(PathBuf::from(TRACEFS))
}

fn mount(
    what: &str,
    fstype: &std::ffi::CStr,
    target: &str,
    c_target: &std::ffi::CStr,
) -> Result<()> {
    // SAFETY: constant NUL-terminated strings, no mount data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c_target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "{what} is not mounted and mounting it at {target} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Reads `/sys/kernel/security/lockdown` (`none [integrity] confidentiality`),
/// mounting securityfs when the host has not.
pub fn lockdown() -> Lockdown {
    let file = Path::new(SECURITYFS).join("lockdown");
    if !file.exists() && !Path::new(SECURITYFS).join("lsm").exists() {
        if let Err(e) = mount(
            "securityfs",
            c"securityfs",
            SECURITYFS,
            c"/sys/kernel/security",
        ) {
            return Lockdown::Unknown(format!("{e:#}"));
        }
    }
    match std::fs::read_to_string(&file) {
        Ok(text) => parse_lockdown(&text).map_or_else(
            || Lockdown::Unknown(format!("unreadable: {text:?}")),
            Lockdown::Mode,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lockdown::Absent,
        Err(e) => Lockdown::Unknown(format!("reading {}: {e}", file.display())),
    }
}

/// The bracketed mode of the lockdown file.
fn parse_lockdown(text: &str) -> Option<String> {
    let mode = text.split('[').nth(1)?.split(']').next()?;
    Some(mode.to_owned())
}

/// A program type the kernel accepts (aya loads a trivial one).
fn program_type(t: ProgramType) -> Finding {
    match is_program_supported(t) {
        Ok(true) => Ok("a trivial program loads".into()),
        Ok(false) => Err("the kernel refuses this program type".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run() -> Report {
    let tracefs = tracefs_dir();
    let tracepoints = syscall_tracepoints(&tracefs);
    let lockdown = lockdown();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let found = programs::test_all();
    let cgroup2 = crate::cgroup::cgroup2_mount();
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    let write_user = found.write_user.map_err(|why| match &lockdown {
        Lockdown::Mode(m) if m != "none" => format!("{why} (kernel lockdown: {m})"),
        _ => why,
    });
    let m = |name, finding, used_for| Mechanism {
        name,
        finding,
        used_for,
    };
    let mechanisms = vec![
        m(
            "ring buffer",
            found.ring_buffer,
            Some("every event to the agent"),
        ),
        m(
            "syscall tracepoints",
            tracepoints,
            Some("socket I/O, connections, processes"),
        ),
        m(
            "raw tracepoints",
            program_type(ProgramType::RawTracePoint),
            None,
        ),
        m("kprobes", found.kprobes, None),
        m("fentry/fexit", found.fentry_fexit, None),
        m("uprobes", found.uprobes, Some("TLS plaintext, Go requests")),
        m(
            "BTF",
            if btf.exists() {
                Ok(btf.display().to_string())
            } else {
                Err(format!("{} is missing", btf.display()))
            },
            Some("struct offsets"),
        ),
        m("sockops", found.sockops, Some("socket ends, propagation")),
        m("sk_msg", found.sk_msg, Some("traceparent injection")),
        m(
            "TCP header options",
            found.tcp_options,
            Some("trace context in a TCP option"),
        ),
        m(
            "TC classifier",
            program_type(ProgramType::SchedClassifier),
            None,
        ),
        m("bpf_probe_write_user", write_user, None),
        m(
            "cgroup v2",
            cgroup2
                .as_ref()
                .map(|p| p.display().to_string())
                .map_err(|e| format!("{e:#}")),
            Some("--cgroup selection, sockops"),
        ),
    ];
    let jobs = jobs(&mechanisms);
    Report {
        kernel,
        lockdown,
        mechanisms,
        jobs,
    }
}

fn syscall_tracepoints(tracefs: &Result<PathBuf>) -> Finding {
    let dir = tracefs.as_ref().map_err(|e| format!("{e:#}"))?;
    program_type(ProgramType::TracePoint)?;
    if !dir.join("events/syscalls").is_dir() {
        return Err(format!(
            "no {}/events/syscalls (CONFIG_FTRACE_SYSCALLS)",
            dir.display()
        ));
    }
    Ok(format!("tracefs at {}", dir.display()))
}

/// Which mechanism does each of Clew's jobs here.
fn jobs(mechanisms: &[Mechanism]) -> Vec<(&'static str, String)> {
    let works = |n: &str| mechanisms.iter().any(|m| m.name == n && m.works());
    let (tp, ringbuf, uprobes) = (
        works("syscall tracepoints"),
        works("ring buffer"),
        works("uprobes"),
    );
    let (sockops, sk_msg, hdr_opt) = (
        works("sockops"),
        works("sk_msg"),
        works("TCP header options"),
    );
    let pick = |ok: bool, what: &str| {
        if ok {
            what.to_owned()
        } else {
            "none (unavailable)".to_owned()
        }
    };
    vec![
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
    ]
}

impl Report {
    /// One line per mechanism: name, `yes` or `NO`, what Clew uses it for
    /// (`-`: nothing), then how it was seen working or why it does not.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "kernel {}", self.kernel);
        let _ = writeln!(s, "kernel lockdown: {}\n", self.lockdown);
        let _ = writeln!(
            s,
            "{:<22} {:<5} {:<36} detail",
            "mechanism", "here", "used by Clew for"
        );
        for m in &self.mechanisms {
            let (here, detail) = match &m.finding {
                Ok(how) => ("yes", how.as_str()),
                Err(why) => ("NO", why.as_str()),
            };
            let used = m.used_for.unwrap_or("-");
            let _ = writeln!(s, "{:<22} {here:<5} {used:<36} {detail}", m.name);
        }
        let _ = writeln!(s, "\n{:<40} uses", "job");
        for (job, how) in &self.jobs {
            let _ = writeln!(s, "{job:<40} {how}");
        }
        s
    }
}

/// Fails, with the whole report, when the one path Clew needs (syscall
/// tracepoints writing into a ring buffer) does not work here.
pub fn require_capture() -> Result<()> {
    // tracefs first: it mounts tracefs where the host has not, and aya
    // looks for tracefs once per process, at the first attach, keeping a
    // miss for good (seen on a fresh machine: the first agent started
    // there found no ring buffer).
    let tracepoints = syscall_tracepoints(&tracefs_dir());
    let ring = programs::ring_buffer();
    if ring.is_err() || tracepoints.is_err() {
        bail!(
            "this kernel lacks syscall tracepoints or BPF ring buffers (need Linux ≥ 5.8 \
             with CONFIG_FTRACE_SYSCALLS):\n{}",
            run().render()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_mode_is_the_bracketed_one() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality").as_deref(),
            Some("none")
        );
        assert_eq!(parse_lockdown(""), None);
    }

    #[test]
    fn a_failing_mechanism_shows_its_reason() {
        let report = Report {
            kernel: "6.1".into(),
            lockdown: Lockdown::Mode("integrity".into()),
            mechanisms: vec![
                Mechanism {
                    name: "kprobes",
                    finding: Err("attaching to do_sys_openat2: No such file".into()),
                    used_for: None,
                },
                Mechanism {
                    name: "uprobes",
                    finding: Ok("fired on libc's getpid".into()),
                    used_for: Some("TLS plaintext, Go requests"),
                },
            ],
            jobs: Vec::new(),
        };
        let text = report.render();
        assert!(text.contains("kernel lockdown: integrity\n"), "{text}");
        let line = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap();
        let kprobes: Vec<&str> = line("kprobes").split_whitespace().collect();
        assert_eq!(&kprobes[..3], ["kprobes", "NO", "-"], "{text}");
        assert!(line("kprobes").ends_with("attaching to do_sys_openat2: No such file"));
        assert!(line("uprobes").contains(" yes "), "{text}");
    }
}
