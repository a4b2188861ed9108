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

mod go;
mod library;
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
    capture::{Capture, TlsLinks},
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
    links: Option<TlsLinks>,
    error: Option<String>,
    users: HashSet<u32>,
    /// The host's libssl: hooked for the agent's lifetime.
    pinned: bool,
}

/// What one process uses, for `clew probe` and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    pub library: Library,
    /// A library Clew hooks, with its probes attached.
    pub hooked: bool,
    pub error: Option<String>,
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
        }
    }

    /// Hook Go's crypto/tls as well (`--tls-go`).
    pub fn enable_go(&mut self, on: bool) {
        self.go = on;
    }

    /// Hooks the host's libssl files (the loader's default directories).
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
            let mut f = hook(&path, &name, false, capture, &self.stats, self.go);
            f.pinned = true;
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
            if f.users.is_empty() && !f.pinned {
                let f = self.files.remove(&id).expect("present");
                if let Some(links) = f.links {
                    tracing::info!(file = %f.path.display(), "TLS library no longer used: probes detached");
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

    /// Reads a process's mappings and hooks any OpenSSL not hooked yet.
    pub fn scan(&mut self, pid: u32, capture: &mut Capture) {
        self.scanned.insert(pid);
        for (m, is_exe) in maps::tls_candidates(pid) {
            let Some(id) = FileId::of(&m.host_path) else {
                continue;
            };
            if !self.procs.entry(pid).or_default().insert(id) {
                continue;
            }
            let (stats, go) = (&self.stats, self.go);
            let f = self
                .files
                .entry(id)
                .or_insert_with(|| hook(&m.host_path, &m.file_name, is_exe, capture, stats, go));
            f.users.insert(pid);
            if let Some(lib) = &f.library {
                if matches!(lib, Library::Unsupported(_)) {
                    stats::add(&stats.tls_unsupported, 1);
                }
                report(pid, &m.path, lib, f);
            }
        }
    }

    /// What each traced process uses.
    pub fn findings(&self) -> Vec<(u32, Finding)> {
        let mut out = Vec::new();
        for (&pid, ids) in &self.procs {
            for f in ids.iter().filter_map(|id| self.files.get(id)) {
                if let Some(library) = &f.library {
                    out.push((
                        pid,
                        Finding {
                            path: f.path.clone(),
                            library: library.clone(),
                            hooked: f.links.is_some(),
                            error: f.error.clone(),
                        },
                    ));
                }
            }
        }
        out.sort_by_key(|(pid, f)| (*pid, f.path.clone()));
        out
    }

    pub fn detach_all(&mut self, capture: &mut Capture) {
        for (_, f) in self.files.drain() {
            if let Some(links) = f.links {
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

/// Inspects a file seen for the first time, and hooks it if Clew can.
fn hook(
    path: &std::path::Path,
    name: &str,
    is_exe: bool,
    capture: &mut Capture,
    stats: &Stats,
    go: bool,
) -> Hooked {
    let mut h = Hooked {
        path: path.to_path_buf(),
        library: None,
        links: None,
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
        Err(e) => {
            // An executable we cannot parse is simply not a TLS library.
            if !is_exe {
                tracing::warn!("cannot inspect {}: {e:#}", path.display());
            }
            return h;
        }
    }
    let Some(lib) = &h.library else {
        return h;
    };
    if let Some(plan) = lib.plan() {
        let what = lib.name();
        match capture.attach_tls(path, plan) {
            Ok(links) => {
                tracing::info!(file = %path.display(), "{what} hooked");
                stats::add(&stats.tls_files_hooked, 1);
                h.links = Some(links);
            }
            Err(e) => {
                stats::add(&stats.tls_attach_failures, 1);
                tracing::warn!("cannot hook {what} in {}: {e:#}", path.display());
                h.error = Some(format!("{e:#}"));
            }
        }
    }
    h
}

/// One log line per process and library it cannot see into.
fn report(pid: u32, path: &std::path::Path, lib: &Library, f: &Hooked) {
    match lib {
        Library::Unsupported(what) => tracing::warn!(
            pid,
            file = %path.display(),
            "maps {what}, which Clew cannot hook: TLS through it is not traced"
        ),
        _ if f.links.is_none() => tracing::warn!(
            pid,
            file = %path.display(),
            "{} found but not hooked: this process's TLS traffic is not traced",
            lib.name()
        ),
        _ => tracing::debug!(pid, file = %path.display(), "{} traced", lib.name()),
    }
}
