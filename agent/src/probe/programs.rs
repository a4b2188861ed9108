//! The mechanisms found out by loading a minimal program of the
//! `clew-probe` object (ebpf/src/probe/main.rs) and, where that is
//! harmless, attaching it for a moment: the kernel's own answer, and its
//! error when it says no. Everything attached is detached when the object
//! is dropped at the end of [`test_all`], a few milliseconds later.

use std::{fs, path::PathBuf};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{MapData, RingBuf, SockHash},
    programs::{
        uprobe::UProbeScope, CgroupAttachMode, FEntry, FExit, KProbe, ProgramError, SkMsg, SockOps,
        TracePoint, UProbe,
    },
    Btf, Ebpf, EbpfLoader,
};
use clew_common::probe::{global, map, program, FIRED_TRACEPOINT, FIRED_UPROBE, KERNEL_FUNCTION};

static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("CLEW_EBPF_PROBE_OBJECT"));

/// What one test found: how the mechanism was seen working, or why not.
pub type Finding = Result<String, String>;

pub struct Findings {
    pub ring_buffer: Finding,
    pub uprobes: Finding,
    pub kprobes: Finding,
    pub fentry_fexit: Finding,
    pub write_user: Finding,
    pub sockops: Finding,
    pub tcp_options: Finding,
    pub sk_msg: Finding,
}

/// Runs every test.
pub fn test_all() -> Findings {
    let mut ebpf = match load() {
        Ok(ebpf) => ebpf,
        Err(e) => {
            let failed = || Err(reason(&e));
            return Findings {
                ring_buffer: failed(),
                uprobes: failed(),
                kprobes: failed(),
                fentry_fexit: failed(),
                write_user: failed(),
                sockops: failed(),
                tcp_options: failed(),
                sk_msg: failed(),
            };
        }
    };
    let (ring_buffer, uprobes) = fired(&mut ebpf);
    let scratch = ScratchCgroup::new();
    Findings {
        ring_buffer,
        uprobes,
        kprobes: finding(kprobe(&mut ebpf)),
        fentry_fexit: finding(fentry_fexit(&mut ebpf)),
        write_user: finding(write_user(&mut ebpf)),
        sockops: finding(sockops(&mut ebpf, program::SOCKOPS, &scratch)),
        tcp_options: finding(sockops(&mut ebpf, program::TCP_OPTION, &scratch)),
        sk_msg: finding(sk_msg(&mut ebpf)),
    }
}

/// Only what `clew run` cannot do without: a syscall tracepoint's record
/// read back from a ring buffer.
pub fn ring_buffer() -> Finding {
    match load() {
        Ok(mut ebpf) => fired(&mut ebpf).0,
        Err(e) => Err(reason(&e)),
    }
}

/// Whether programs of every type Clew runs may read the calling task's
/// saved user registers (the JVM nesting, `ebpf/src/java.rs`): the strictest
/// of them, an sk_msg program, loads with the helpers.
pub fn task_regs() -> Result<()> {
    let mut ebpf = load()?;
    let msg: &mut SkMsg = program(&mut ebpf, program::TASK_REGS)?;
    msg.load()?;
    Ok(())
}

fn load() -> Result<Ebpf> {
    let me = std::process::id();
    EbpfLoader::new()
        .override_global(global::TGID, &me, true)
        .load(OBJECT)
        .context("loading the probe object")
}

fn finding(r: Result<String>) -> Finding {
    r.map_err(|e| reason(&e))
}

/// The tracepoint on `sys_enter_getpid` and the uprobe on libc's `getpid`
/// each write a record when this process calls getpid: whether the records
/// arrive shows the ring buffer and the uprobe working, not only loading.
fn fired(ebpf: &mut Ebpf) -> (Finding, Finding) {
    let ring = ebpf
        .take_map(map::EVENTS)
        .context("PROBE_EVENTS map missing")
        .and_then(|m| Ok(RingBuf::try_from(m)?));
    let tracepoint = attach_tracepoint(ebpf);
    let uprobe = attach_uprobe(ebpf);
    // SAFETY: getpid has no preconditions; it is called for its probes.
    unsafe { libc::getpid() };
    let seen = match ring {
        Ok(mut ring) => {
            let mut seen = Vec::new();
            while let Some(record) = ring.next() {
                if let Ok(word) = <[u8; 4]>::try_from(&record[..record.len().min(4)]) {
                    seen.push(u32::from_ne_bytes(word));
                }
            }
            Ok(seen)
        }
        Err(e) => Err(reason(&e)),
    };
    let ring_buffer = match (&seen, tracepoint) {
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(format!(
            "attaching a tracepoint to write into it: {}",
            reason(&e)
        )),
        (Ok(s), Ok(())) if s.contains(&FIRED_TRACEPOINT) => {
            Ok("a syscall tracepoint's record read back".into())
        }
        (Ok(_), Ok(())) => Err("the sys_enter_getpid tracepoint wrote no record".into()),
    };
    let uprobes = match (uprobe, &seen) {
        (Err(e), _) => Err(reason(&e)),
        (Ok(()), Ok(s)) if s.contains(&FIRED_UPROBE) => Ok("fired on libc's getpid".into()),
        (Ok(()), Ok(_)) => Err("attached to libc's getpid, but it did not fire".into()),
        (Ok(()), Err(_)) => {
            Ok("attached to libc's getpid (firing unchecked: no ring buffer)".into())
        }
    };
    (ring_buffer, uprobes)
}

fn attach_tracepoint(ebpf: &mut Ebpf) -> Result<()> {
    let tp: &mut TracePoint = program(ebpf, program::RINGBUF)?;
    tp.load()?;
    tp.attach("syscalls", "sys_enter_getpid")?;
    Ok(())
}

fn attach_uprobe(ebpf: &mut Ebpf) -> Result<()> {
    let up: &mut UProbe = program(ebpf, program::UPROBE)?;
    up.load()?;
    up.attach("getpid", "libc", UProbeScope::CallingProcess)?;
    Ok(())
}

fn kprobe(ebpf: &mut Ebpf) -> Result<String> {
    let kp: &mut KProbe = program(ebpf, program::KPROBE)?;
    kp.load()?;
    kp.attach(KERNEL_FUNCTION, 0)
        .with_context(|| format!("attaching to {KERNEL_FUNCTION}"))?;
    Ok(format!("attached to {KERNEL_FUNCTION}"))
}

fn fentry_fexit(ebpf: &mut Ebpf) -> Result<String> {
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let entry: &mut FEntry = program(ebpf, program::FENTRY)?;
    entry.load(KERNEL_FUNCTION, &btf).context("fentry")?;
    entry.attach().context("attaching fentry")?;
    let exit: &mut FExit = program(ebpf, program::FEXIT)?;
    exit.load(KERNEL_FUNCTION, &btf).context("fexit")?;
    exit.attach().context("attaching fexit")?;
    Ok(format!("both attached to {KERNEL_FUNCTION}"))
}

/// Loaded only: a program that can write user memory is never attached.
fn write_user(ebpf: &mut Ebpf) -> Result<String> {
    let tp: &mut TracePoint = program(ebpf, program::WRITE_USER)?;
    tp.load()?;
    Ok("the verifier accepts the helper (the program is not attached)".into())
}

fn sockops(ebpf: &mut Ebpf, name: &str, scratch: &Result<ScratchCgroup>) -> Result<String> {
    let ops: &mut SockOps = program(ebpf, name)?;
    ops.load()?;
    let cgroup = match scratch {
        Ok(cg) => cg,
        Err(e) => return Ok(format!("loaded; not attached: {e:#}")),
    };
    let dir =
        fs::File::open(&cgroup.0).with_context(|| format!("opening {}", cgroup.0.display()))?;
    let link = ops.attach(dir, CgroupAttachMode::Single)?;
    ops.detach(link)?;
    Ok("attached to a scratch cgroup".into())
}

fn sk_msg(ebpf: &mut Ebpf) -> Result<String> {
    let socks: SockHash<&MapData, u32> =
        SockHash::try_from(ebpf.map(map::SOCKS).context("PROBE_SOCKS map missing")?)?;
    let fd = socks.fd().try_clone()?;
    let msg: &mut SkMsg = program(ebpf, program::SK_MSG)?;
    msg.load()?;
    msg.attach(&fd)?;
    Ok("attached to a SOCKHASH".into())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the probe object"))?;
    Ok(p.try_into()?)
}

/// A cgroup of its own for the sockops programs, so attaching them touches
/// no socket on the machine; removed on drop.
struct ScratchCgroup(PathBuf);

impl ScratchCgroup {
    fn new() -> Result<ScratchCgroup> {
        let root = crate::cgroup::cgroup2_mount()?;
        let dir = root.join(format!("clew-probe-{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchCgroup(dir))
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir(&self.0) {
            tracing::warn!("removing {}: {e}", self.0.display());
        }
    }
}

/// The kernel's answer in one line: the syscall's error and, for a program
/// the verifier refused, the verifier's verdict (not its whole log).
pub fn reason(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        if let Some(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) = cause.downcast_ref::<ProgramError>()
        {
            let log = verifier_log.to_string();
            parts.push(match verdict(&log) {
                Some(line) => format!("program load: {io_error}; verifier: {line}"),
                None => format!("program load: {io_error}"),
            });
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
}

/// The verifier's last word in its log: what it refused (the statistics
/// it ends with left out).
fn verdict(log: &str) -> Option<&str> {
    const STATISTICS: [&str; 3] = ["processed ", "verification time", "stack depth"];
    log.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !STATISTICS.iter().any(|s| l.starts_with(s)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use object::{Object, ObjectSymbol};

    use super::*;

    /// The names the agent looks up are the ones the probe object has.
    #[test]
    fn shared_names_exist_in_the_probe_object() {
        let file = object::File::parse(OBJECT).expect("the embedded probe object parses");
        let symbols: HashSet<&str> = file.symbols().filter_map(|s| s.name().ok()).collect();
        for name in [
            program::KPROBE,
            program::FENTRY,
            program::FEXIT,
            program::UPROBE,
            program::WRITE_USER,
            program::SOCKOPS,
            program::TCP_OPTION,
            program::SK_MSG,
            program::RINGBUF,
            map::EVENTS,
            map::SOCKS,
            global::TGID,
        ] {
            assert!(symbols.contains(name), "{name} is not in the probe object");
        }
    }

    #[test]
    fn a_refusal_is_explained_by_the_verifier_last_line() {
        // As this kernel (6.18, lockdown integrity) wrote it.
        let log = "5: (85) call bpf_probe_write_user#36\n\
                   program of this type cannot use helper bpf_probe_write_user#36\n\
                   verification time 36 usec\nstack depth 8\n\
                   processed 6 insns (limit 1000000) max_states_per_insn 0\n";
        assert_eq!(
            verdict(log),
            Some("program of this type cannot use helper bpf_probe_write_user#36")
        );
        assert_eq!(verdict(""), None);
        let plain = anyhow!("no such file").context("attaching to do_sys_openat2");
        assert_eq!(reason(&plain), "attaching to do_sys_openat2: no such file");
    }
}
