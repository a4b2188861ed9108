//! Which traced processes have their requests counted per goroutine or
//! Java thread rather than per OS thread: Go executables, whose goroutines
//! move between threads (a request read on one thread is answered, and its
//! calls written, from others), and JVMs with virtual threads (`jvm`). The
//! kernel finds the running goroutine below the thread's fs base
//! (`ebpf/src/goroutine.rs`); this module finds where, and hooks
//! `net/http`'s client hand-off to its writer goroutines and the start of
//! goroutines (`ebpf/src/spawn.rs`), per process.

use std::{collections::HashMap, path::PathBuf};

use memmap2::Mmap;
use object::{Object, ObjectSection};

use crate::{
    capture::{Capture, Plan, TlsLinks},
    jvm::{self, Jvm},
    tls::{go, library},
};
use clew_common::names::program as prog;

/// Processes remembered at most; forgotten wholesale beyond (they are then
/// looked at again).
const MAX_PROCESSES: usize = 65536;

/// Where Go keeps `g` relative to the fs base when the executable's only
/// TLS variable is Go's own (`runtime.tlsg`, 8 bytes, right below the
/// thread pointer in x86-64's TLS layout).
const G_BELOW_FS: i64 = -8;

const ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";
const REQUEST_WRITE: &str = "net/http.(*Request).write";

/// `go` statements: `newproc`'s closure calls `newproc1`, then `runqput`.
const NEWPROC_CLOSURE: &str = "runtime.newproc.func1";
const NEWPROC1: &str = "runtime.newproc1";
const RUNQPUT: &str = "runtime.runqput";
/// Where an exiting goroutine's `g` goes to the free list: `gfput`, called
/// by `goexit0` up to Go 1.21, by `gdestroy` since.
const GFPUT: &str = "runtime.gfput";
const G_EXITS: [&str; 2] = ["runtime.goexit0", "runtime.gdestroy"];

/// What the agent knows of a Go executable.
#[derive(Debug, PartialEq, Eq)]
pub struct GoExe {
    /// Where `g` sits relative to the fs base; `None` when the executable
    /// has TLS of its own (cgo variables), so the offset is not known.
    pub g_offset: Option<i64>,
    /// The `net/http` client probes, when its symbols are there.
    pub http: Option<Plan>,
    /// The goroutine start probes, when the runtime's symbols are there
    /// and its code is as expected.
    pub spawn: Option<Plan>,
}

#[derive(Default)]
pub struct Runtimes {
    /// Whether Go's `net/http` client probes are attached (see
    /// [`Runtimes::configure`]).
    hook_net_http: bool,
    /// Whether each process seen is Go.
    by_process: HashMap<u32, bool>,
    /// Whether each process seen running is a JVM with virtual threads.
    jvms: HashMap<u32, bool>,
    /// Go processes whose `net/http` probes wait to be attached.
    due: Vec<(u32, Plan)>,
    links: HashMap<u32, TlsLinks>,
    /// Links of processes gone, to detach.
    released: Vec<TlsLinks>,
}

impl Runtimes {
    /// With `tls_go` (Go's crypto/tls hooked), the `net/http` probes stay
    /// off: in the end-to-end suite, a Go HTTPS client hooked with both
    /// sets of probes under CPU load now and then paired a request with
    /// the next one's response (a response reached the agent before its
    /// request), which neither set alone did. The HTTP/1 client session now
    /// waits for such a request; until the pair is measured again, such
    /// processes nest per goroutine without following the hand-off.
    pub fn configure(&mut self, tls_go: bool) {
        self.hook_net_http = !tls_go;
    }

    /// What process `tgid` runs, when it was not known yet: `Some` for a
    /// Go executable (its `net/http` probes are then due), `None` for
    /// anything else or a process already seen.
    pub fn learn(&mut self, tgid: u32) -> Option<GoExe> {
        if self.by_process.contains_key(&tgid) {
            return None;
        }
        if self.by_process.len() >= MAX_PROCESSES {
            self.by_process.clear();
        }
        let go = inspect(tgid);
        self.by_process.insert(tgid, go.is_some());
        let exe = go?;
        if exe.g_offset.is_some() {
            let http = exe.http.iter().filter(|_| self.hook_net_http);
            let plan: Plan = http.chain(&exe.spawn).flatten().copied().collect();
            if !plan.is_empty() {
                self.due.push((tgid, plan));
            }
        }
        Some(exe)
    }

    /// What running process `tgid` (with a connection: a JVM's threads
    /// are known once it runs) is, when not known yet: `Some` for a JVM
    /// with virtual threads, `None` for anything else or a process already
    /// seen.
    pub fn learn_jvm(&mut self, tgid: u32) -> Option<Jvm> {
        if self.jvms.contains_key(&tgid) {
            return None;
        }
        if self.jvms.len() >= MAX_PROCESSES {
            self.jvms.clear();
        }
        let jvm = jvm::inspect(tgid);
        self.jvms.insert(tgid, jvm.is_some());
        jvm
    }

    /// The process exited or exec'd: whether it was Go or a JVM with
    /// virtual threads.
    pub fn forget(&mut self, tgid: u32) -> bool {
        self.due.retain(|(p, _)| *p != tgid);
        if let Some(l) = self.links.remove(&tgid) {
            self.released.push(l);
        }
        let go = self.by_process.remove(&tgid).unwrap_or(false);
        let jvm = self.jvms.remove(&tgid).unwrap_or(false);
        go || jvm
    }

    /// Attaches the probes due and detaches those of processes gone.
    pub fn attach_due(&mut self, capture: &mut Capture) {
        for l in self.released.drain(..) {
            capture.detach_tls(l);
        }
        for (tgid, plan) in self.due.drain(..) {
            let exe = PathBuf::from(format!("/proc/{tgid}/exe"));
            match capture.attach_tls(&exe, &plan, Some(tgid)) {
                Ok(l) => {
                    let hooked = |name| plan.iter().any(|(p, _)| *p == name);
                    tracing::info!(
                        pid = tgid,
                        net_http = hooked(prog::GO_HTTP_ROUND_TRIP),
                        goroutine_starts = hooked(prog::GO_SPAWN_CHILD),
                        "Go runtime hooked: calls nest per goroutine"
                    );
                    self.links.insert(tgid, l);
                }
                Err(e) => tracing::info!(pid = tgid, "Go runtime not hooked: {e:#}"),
            }
        }
    }

    pub fn detach_all(&mut self, capture: &mut Capture) {
        self.released.extend(self.links.drain().map(|(_, l)| l));
        self.due.clear();
        self.attach_due(capture);
    }
}

/// `/proc/PID/exe`, if Go built it.
fn inspect(pid: u32) -> Option<GoExe> {
    inspect_file(std::path::Path::new(&format!("/proc/{pid}/exe")))
}

/// The executable at `path`, if Go built it: its runtime's sections are
/// there even in stripped executables.
fn inspect_file(path: &std::path::Path) -> Option<GoExe> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: read-only mapping of an executable; a file changed under us
    // gives a wrong answer, not unsoundness, since `object` only reads bytes.
    let data = unsafe { Mmap::map(&file) }.ok()?;
    let elf = object::File::parse(&*data).ok()?;
    let is_go = elf.section_by_name(".go.buildinfo").is_some()
        || elf.section_by_name(".gopclntab").is_some();
    is_go.then(|| GoExe {
        g_offset: g_offset(&elf),
        http: http_plan(&elf),
        spawn: spawn_plan(&elf),
    })
}

fn g_offset(elf: &object::File<'_>) -> Option<i64> {
    if !go::register_abi(elf) {
        return None;
    }
    let size = |name| elf.section_by_name(name).map_or(0, |s| s.size());
    (size(".tdata") + size(".tbss") <= 8).then_some(G_BELOW_FS)
}

fn http_plan(elf: &object::File<'_>) -> Option<Plan> {
    if !go::register_abi(elf) {
        return None;
    }
    let at = |name| library::file_offset(elf, &go::find(elf, name)?);
    Some(vec![
        (prog::GO_HTTP_ROUND_TRIP, at(ROUND_TRIP)?),
        (prog::GO_HTTP_REQUEST_WRITE, at(REQUEST_WRITE)?),
    ])
}

/// The CALLs of `newproc1` and `runqput` in `newproc`'s closure (one each,
/// in that order) and of `gfput` as goroutines exit. Probes on CALLs are
/// emulated, not single-stepped: cheap enough for every `go` statement.
fn spawn_plan(elf: &object::File<'_>) -> Option<Plan> {
    if !go::register_abi(elf) {
        return None;
    }
    let only = |callee| match go::calls(elf, NEWPROC_CLOSURE, callee)?.as_slice() {
        [at] => Some(*at),
        _ => None,
    };
    let (parent, child) = (only(NEWPROC1)?, only(RUNQPUT)?);
    if parent > child {
        return None;
    }
    let frees = G_EXITS
        .iter()
        .filter_map(|f| go::calls(elf, f, GFPUT))
        .flatten()
        .map(|at| (prog::GO_G_FREE, at));
    let plan: Plan = [
        (prog::GO_SPAWN_PARENT, parent),
        (prog::GO_SPAWN_CHILD, child),
    ]
    .into_iter()
    .chain(frees)
    .collect();
    (plan.len() > 2).then_some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tls::go::tests::{peers, struct_members};

    /// The e2e tests' Go peer: Go's own TLS only (g at -8), both
    /// `net/http` functions found; stripped, no probes but still per
    /// goroutine.
    #[test]
    fn go_executables_are_inspected() {
        let (full, stripped) = peers();
        let exe = inspect_file(full).expect("a Go executable");
        assert_eq!(exe.g_offset, Some(G_BELOW_FS));
        let plan = exe.http.expect("net/http symbols");
        assert_eq!(plan.len(), 2);
        let file = std::fs::read(full).unwrap();
        for (name, off) in plan {
            // Go's stack-growth check opens both: the offset is an entry.
            let at = usize::try_from(off).unwrap();
            let prologue = &file[at..at + 12];
            assert!(
                prologue.windows(3).any(|w| w == [0x3b, 0x66, 0x10]),
                "{name} starts {prologue:02x?}"
            );
        }
        let exe = inspect_file(stripped).expect("a Go executable");
        assert_eq!(
            (exe.g_offset, exe.http, exe.spawn),
            (Some(G_BELOW_FS), None, None)
        );
    }

    /// The goroutine start probes sit on direct CALLs (0xe8 rel32, which
    /// uprobes emulate), parent before child, plus at least one `gfput`.
    #[test]
    fn goroutine_starts_are_found_on_calls() {
        let exe = inspect_file(&peers().0).expect("a Go executable");
        let plan = exe.spawn.expect("runtime symbols");
        let names: Vec<_> = plan.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            &names[..3],
            [prog::GO_SPAWN_PARENT, prog::GO_SPAWN_CHILD, prog::GO_G_FREE]
        );
        assert!(plan[0].1 < plan[1].1);
        let file = std::fs::read(&peers().0).unwrap();
        for (name, off) in plan {
            let at = usize::try_from(off).unwrap();
            assert_eq!(file[at], 0xe8, "{name} at {off:#x}");
        }
    }

    /// `go_http_round_trip` reads the `*Request` at the start of the
    /// `transportRequest` it is given.
    #[test]
    fn transport_request_embeds_the_request_first() {
        let m = struct_members(&peers().0);
        let key = (
            "net/http.transportRequest".to_string(),
            "Request".to_string(),
        );
        assert_eq!(
            m.get(&key),
            Some(&0),
            "{:?}",
            m.keys()
                .filter(|k| k.0.contains("transportRequest"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn this_test_binary_is_not_go() {
        let mut r = Runtimes::default();
        assert_eq!(r.learn(std::process::id()), None);
        assert_eq!(r.learn(std::process::id()), None);
        assert!(!r.forget(std::process::id()));
    }
}
