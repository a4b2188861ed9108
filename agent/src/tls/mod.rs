//! TLS libraries of the traced processes: which each one maps, hooked once
//! per distinct file, released when the last process using a file exits.
//!
//! Uprobes belong to a file, not a process, so one attachment covers every
//! process mapping that file, including ones started later; the programs
//! skip processes that are not selected.
//!
//! The host's own libssl is hooked at start-up and kept: a process started
//! later uses it from its first request, before any scan of its mappings
//! could run. Other files (containers' libraries, executables with OpenSSL
//! inside) are found in selected processes' mappings: at start, at exec (and
//! shortly after, as the loader and `dlopen` map them) and at a process's
//! first connection.

pub(crate) mod go;
mod internal;
pub(crate) mod library;
mod maps;

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

pub use library::Library;

use crate::{
    capture::{Capture, Plan, TlsLinks},
    stats::{self, Stats},
};

/// A file, across mount namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(path: &std::path::Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

struct Hooked {
    path: PathBuf,
    library: Option<Library>,
    /// Where each hook goes, when the library is one Clew hooks.
    plan: Option<Plan>,
    /// Attachments: per traced process, or one for every process (`None`).
    links: HashMap<Option<u32>, TlsLinks>,
    error: Option<String>,
    users: HashSet<u32>,
    /// The host's libssl: kept for the agent's lifetime.
    pinned: bool,
}

/// After an exec, libraries appear as the dynamic loader (then `dlopen`)
/// maps them: look again a few times, then rely on connection events.
const RESCAN_AFTER_EXEC: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

pub struct TlsHooks {
    files: HashMap<FileId, Hooked>,
    procs: HashMap<u32, HashSet<FileId>>,
    /// Processes whose maps have been read since their last exec.
    scanned: HashSet<u32>,
    due: Vec<(Instant, u32)>,
    exited: Vec<u32>,
    stats: Arc<Stats>,
    /// `--tls-go`: hook Go's crypto/tls too.
    go: bool,
    /// `--tls-attach process`: attach per traced process rather than once
    /// per file. A uprobe traps in every process mapping its file, and on
    /// this class of VM a trap costs about 10 µs, so untraced processes
    /// using a hooked libssl lose much of their TLS throughput; per
    /// process, they pay nothing, but a process's first milliseconds after
    /// exec go unseen.
    per_process: bool,
    /// The host's libssl files, attached for each traced process at its
    /// first scan, before it maps them (per-process mode).
    host: Vec<FileId>,
}

impl TlsHooks {
    pub fn new(stats: Arc<Stats>) -> Self {
        TlsHooks {
            files: HashMap::new(),
            procs: HashMap::new(),
            scanned: HashSet::new(),
            due: Vec::new(),
            exited: Vec::new(),
            stats,
            go: false,
            per_process: false,
            host: Vec::new(),
        }
    }

    /// Hook Go's crypto/tls as well (`--tls-go`), and attach per process
    /// when only some processes are traced.
    pub fn configure(&mut self, go: bool, per_process: bool) {
        self.go = go;
        self.per_process = per_process;
    }

    /// Inspects the host's libssl files (the loader's default directories).
    /// Tracing every process, they are hooked now, for all; otherwise each
    /// traced process gets them at its first scan.
    pub fn hook_host_libraries(&mut self, capture: &mut Capture) {
        for path in maps::host_libssl() {
            let Some(id) = FileId::of(&path) else {
                continue;
            };
            if self.files.contains_key(&id) {
                continue;
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut f = inspect(&path, &name, false, self.go);
            f.pinned = true;
            if !self.per_process {
                attach(&mut f, None, capture, &self.stats);
            }
            self.host.push(id);
            self.files.insert(id, f);
        }
    }

    /// A selected process exec'd: its old mappings are gone.
    pub fn on_exec(&mut self, tgid: u32, now: Instant) {
        self.scanned.remove(&tgid);
        self.due
            .extend(RESCAN_AFTER_EXEC.iter().map(|d| (now + *d, tgid)));
    }

    /// A selected process opened a connection: make sure its libraries
    /// are known (processes that were running before, or forked).
    pub fn on_conn(&mut self, tgid: u32, now: Instant) {
        if self.scanned.insert(tgid) {
            self.due.push((now, tgid));
        }
    }

    pub fn on_exit(&mut self, tgid: u32) {
        self.scanned.remove(&tgid);
        self.due.retain(|&(_, p)| p != tgid);
        if self.procs.contains_key(&tgid) {
            self.exited.push(tgid);
        }
    }

    fn release(&mut self, tgid: u32, capture: &mut Capture) {
        for id in self.procs.remove(&tgid).unwrap_or_default() {
            let Some(f) = self.files.get_mut(&id) else {
                continue;
            };
            f.users.remove(&tgid);
            if let Some(links) = f.links.remove(&Some(tgid)) {
                capture.detach_tls(links);
            }
            if f.users.is_empty() && !f.pinned {
                let f = self.files.remove(&id).expect("present");
                if !f.links.is_empty() {
                    tracing::info!(file = %f.path.display(), "TLS library no longer used: probes detached");
                }
                for (_, links) in f.links {
                    capture.detach_tls(links);
                }
            }
        }
    }

    /// Scans the processes whose time has come and releases what exited
    /// processes were the last to use.
    pub fn run_due(&mut self, now: Instant, capture: &mut Capture) {
        for tgid in std::mem::take(&mut self.exited) {
            self.release(tgid, capture);
        }
        if self.due.is_empty() {
            return;
        }
        let (ready, later): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|&(t, _)| t <= now);
        self.due = later;
        let pids: HashSet<u32> = ready.into_iter().map(|(_, p)| p).collect();
        for pid in pids {
            self.scan(pid, capture);
        }
    }

    /// Reads a process's mappings and hooks the TLS libraries in them (and,
    /// per process, the host's libssl even before it is mapped).
    pub fn scan(&mut self, pid: u32, capture: &mut Capture) {
        self.scanned.insert(pid);
        if self.per_process {
            for id in self.host.clone() {
                self.use_file(pid, id, None, capture);
            }
        }
        for (m, is_exe) in maps::tls_candidates(pid) {
            let Some(id) = FileId::of(&m.host_path) else {
                continue;
            };
            let go = self.go;
            self.files
                .entry(id)
                .or_insert_with(|| inspect(&m.host_path, &m.file_name, is_exe, go));
            self.use_file(pid, id, Some(&m.path), capture);
        }
    }

    /// Process `pid` uses file `id` (already inspected): hook it for the
    /// process if needed, and report it once (`seen_as`: the path the
    /// process maps it under, when it does).
    fn use_file(
        &mut self,
        pid: u32,
        id: FileId,
        seen_as: Option<&std::path::Path>,
        capture: &mut Capture,
    ) {
        let Some(f) = self.files.get_mut(&id) else {
            return;
        };
        let first = self.procs.entry(pid).or_default().insert(id);
        f.users.insert(pid);
        let scope = if self.per_process { Some(pid) } else { None };
        if !f.links.contains_key(&scope) {
            attach(f, scope, capture, &self.stats);
        }
        if let (true, Some(path), Some(lib)) = (first, seen_as, &f.library) {
            if matches!(lib, Library::Unsupported(_)) {
                stats::add(&self.stats.tls_unsupported, 1);
            }
            report(pid, path, lib, f);
        }
    }

    pub fn detach_all(&mut self, capture: &mut Capture) {
        for (_, f) in self.files.drain() {
            for (_, links) in f.links {
                capture.detach_tls(links);
            }
        }
        self.procs.clear();
    }
}

/// `clew probe`'s table: the TLS libraries each process maps, and whether
/// `clew run` hooks them.
pub fn render_processes(pids: &HashSet<u32>) -> String {
    use std::fmt::Write as _;
    let mut pids: Vec<u32> = pids.iter().copied().collect();
    pids.sort_unstable();
    let mut seen: HashMap<FileId, Option<Library>> = HashMap::new();
    let mut s = String::new();
    let _ = writeln!(s, "{:<8} {:<16} {:<42} library", "pid", "process", "file");
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let mut any = false;
        for (m, is_exe) in maps::tls_candidates(pid) {
            let Some(id) = FileId::of(&m.host_path) else {
                continue;
            };
            let lib = seen
                .entry(id)
                .or_insert_with(|| library::inspect(&m.host_path, &m.file_name).ok().flatten());
            let verdict = match lib {
                Some(Library::Unsupported(what)) => format!("{what}: NOT hooked"),
                Some(lib) => format!("{}: hooked (uprobes)", lib.name()),
                None if is_exe => continue,
                None => "unrecognised: NOT hooked".to_string(),
            };
            any = true;
            let _ = writeln!(
                s,
                "{pid:<8} {:<16} {:<42} {verdict}",
                comm.trim(),
                m.path.display()
            );
        }
        if !any {
            let _ = writeln!(s, "{pid:<8} {:<16} {:<42} no TLS library", comm.trim(), "-");
        }
    }
    s
}

/// Inspects a file seen for the first time.
fn inspect(path: &std::path::Path, name: &str, is_exe: bool, go: bool) -> Hooked {
    let mut h = Hooked {
        path: path.to_path_buf(),
        library: None,
        plan: None,
        links: HashMap::new(),
        error: None,
        users: HashSet::new(),
        pinned: false,
    };
    match library::inspect(path, name) {
        Ok(Some(Library::GoTls(_))) if !go => {
            h.library = Some(Library::Unsupported(
                "Go crypto/tls (hookable: off unless --tls-go)",
            ))
        }
        Ok(lib) => h.library = lib,
        // An executable we cannot parse is simply not a TLS library.
        Err(e) if !is_exe => tracing::warn!("cannot inspect {}: {e:#}", path.display()),
        Err(_) => {}
    }
    h.plan = h.library.as_ref().and_then(|l| l.plan());
    h
}

/// Attaches a hookable file's probes for one process (or all).
fn attach(h: &mut Hooked, pid: Option<u32>, capture: &mut Capture, stats: &Stats) {
    let (Some(plan), Some(lib)) = (&h.plan, &h.library) else {
        return;
    };
    let what = lib.name();
    match capture.attach_tls(&h.path, plan, pid) {
        Ok(links) => {
            if h.links.is_empty() {
                tracing::info!(file = %h.path.display(), "{what} hooked");
                stats::add(&stats.tls_files_hooked, 1);
            }
            h.links.insert(pid, links);
        }
        Err(e) => {
            stats::add(&stats.tls_attach_failures, 1);
            tracing::warn!("cannot hook {what} in {}: {e:#}", h.path.display());
            h.error = Some(format!("{e:#}"));
        }
    }
}

/// One log line per process and library it cannot see into.
fn report(pid: u32, path: &std::path::Path, lib: &Library, f: &Hooked) {
    match lib {
        Library::Unsupported(what) => tracing::warn!(
            pid,
            file = %path.display(),
            "maps {what}, which Clew cannot hook: TLS through it is not traced"
        ),
        _ if f.links.is_empty() => tracing::warn!(
            pid,
            file = %path.display(),
            "{} found but not hooked: this process's TLS traffic is not traced",
            lib.name()
        ),
        _ => tracing::debug!(pid, file = %path.display(), "{} traced", lib.name()),
    }
}
