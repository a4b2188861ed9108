//! Which fds of a traced process are log streams: standard output and
//! error by number, any other by the path of the file it holds
//! (`/proc/PID/fd/N`, as the process sees it, so a container's own paths)
//! matched against the configured patterns.
//!
//! Fd numbers are reused, so a verdict is on a file, not a number: the
//! kernel reports the inode number and device of the file each write went
//! to, and a verdict holds only for that file (in the kernel's `LOG_FDS`
//! too). Between the write and the agent reading its record the fd may
//! have been closed and reopened: the path read is trusted only when
//! `/proc/PID/fdinfo/N` names the write's inode, with the same inode and
//! mount, both before and after the path is read. A record that fails
//! this is dropped (its file is judged again at its next write), never
//! attributed to another file.

use std::{collections::HashMap, sync::Arc};

use anyhow::{bail, Context, Result};
use glob::{MatchOptions, Pattern};

/// Where a write went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    File(Arc<str>),
}

/// What `--logs` selects.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub stdout: bool,
    pub stderr: bool,
    pub patterns: Vec<Pattern>,
}

const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Sources {
    /// `stdout`, `stderr`, or an absolute path pattern (`*`, `?`, `[…]`
    /// within one path segment, `**` across them).
    pub fn parse(list: &[String]) -> Result<Sources> {
        let mut s = Sources::default();
        for item in list.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            match item {
                "stdout" => s.stdout = true,
                "stderr" => s.stderr = true,
                path if path.starts_with('/') => s
                    .patterns
                    .push(Pattern::new(path).with_context(|| format!("--logs pattern {path:?}"))?),
                other => {
                    bail!("--logs {other:?}: expected stdout, stderr or an absolute path pattern")
                }
            }
        }
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        !self.stdout && !self.stderr && self.patterns.is_empty()
    }

    /// The kernel's `LOGS` bits.
    pub fn kernel_bits(&self) -> u32 {
        use clew_common::logs::source;
        (self.stdout as u32 * source::STDOUT)
            | (self.stderr as u32 * source::STDERR)
            | (!self.patterns.is_empty() as u32 * source::FILES)
    }

    fn matches(&self, path: &str) -> bool {
        self.patterns.iter().any(|p| p.matches_with(path, MATCH))
    }
}

impl std::fmt::Display for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let std = [("stdout", self.stdout), ("stderr", self.stderr)];
        let names = std.iter().filter(|(_, on)| *on).map(|(n, _)| *n);
        let all: Vec<&str> = names
            .chain(self.patterns.iter().map(Pattern::as_str))
            .collect();
        f.write_str(&all.join(","))
    }
}

/// A file as judged.
struct Judged {
    ino: u64,
    dev: u32,
    /// `None`: no pattern matches it.
    path: Option<Arc<str>>,
}

/// What became of a write's fd.
#[derive(Debug, PartialEq, Eq)]
pub enum Judgement {
    /// A log stream; `verdict`: the kernel should be told (it asked).
    Capture { stream: Stream, verdict: bool },
    /// A file no pattern matches; `verdict`: the kernel should be told,
    /// so that it stops sending its writes.
    Skip { verdict: bool },
    /// The fd holds another file now (or none): the write cannot be placed.
    Unresolved,
}

/// Files judged at once at most; past it they are forgotten together and
/// judged again as they are written to.
const MAX_JUDGED: usize = clew_common::logs::MAX_LOG_FDS as usize;

/// The verdicts on the files of each process's fds.
pub struct Files {
    sources: Sources,
    judged: HashMap<u32, HashMap<u32, Judged>>,
    count: usize,
}

impl Files {
    pub fn new(sources: Sources) -> Files {
        Files {
            sources,
            judged: HashMap::new(),
            count: 0,
        }
    }

    /// Where a write of process `tgid` on `fd` went, the file it held then
    /// being inode `ino` of device `dev` (the kernel's view). `verified`:
    /// the kernel found a verdict to capture for this very file.
    pub fn judge(&mut self, tgid: u32, fd: u32, ino: u64, dev: u32, verified: bool) -> Judgement {
        match fd {
            1 if self.sources.stdout => {
                return Judgement::Capture {
                    stream: Stream::Stdout,
                    verdict: false,
                }
            }
            2 if self.sources.stderr => {
                return Judgement::Capture {
                    stream: Stream::Stderr,
                    verdict: false,
                }
            }
            _ => {}
        }
        let known = self
            .judged
            .get(&tgid)
            .and_then(|fds| fds.get(&fd))
            .filter(|j| j.ino == ino && j.dev == dev);
        if let Some(j) = known {
            return match &j.path {
                Some(p) => Judgement::Capture {
                    stream: Stream::File(p.clone()),
                    verdict: false,
                },
                None => Judgement::Skip { verdict: false },
            };
        }
        let Some(path) = path_of(tgid, fd, ino) else {
            return Judgement::Unresolved;
        };
        let path = self.sources.matches(&path).then(|| Arc::<str>::from(path));
        // The kernel is told what it does not already hold: a file it
        // captures as judged before (`verified`) needs no word, one that
        // matches no pattern now (renamed since) does.
        let judgement = match &path {
            Some(p) => Judgement::Capture {
                stream: Stream::File(p.clone()),
                verdict: !verified,
            },
            None => Judgement::Skip { verdict: true },
        };
        self.remember(tgid, fd, Judged { ino, dev, path });
        judgement
    }

    fn remember(&mut self, tgid: u32, fd: u32, j: Judged) {
        if self.count >= MAX_JUDGED {
            self.judged.clear();
            self.count = 0;
        }
        if self.judged.entry(tgid).or_default().insert(fd, j).is_none() {
            self.count += 1;
        }
    }

    /// Process `tgid` is gone: the fds whose files it judged (their kernel
    /// entries go too).
    pub fn forget_process(&mut self, tgid: u32) -> Vec<u32> {
        let fds: Vec<u32> = self
            .judged
            .remove(&tgid)
            .map(|fds| fds.into_keys().collect())
            .unwrap_or_default();
        self.count -= fds.len();
        fds
    }
}

/// The path of the file `fd` of `tgid` holds, if it is still inode
/// `ino` (see the module's notes on races).
fn path_of(tgid: u32, fd: u32, ino: u64) -> Option<String> {
    let before = fdinfo(tgid, fd)?;
    if before.0 != ino {
        return None;
    }
    let link = std::fs::read_link(format!("/proc/{tgid}/fd/{fd}")).ok()?;
    if fdinfo(tgid, fd)? != before {
        return None;
    }
    let path = link.to_string_lossy();
    // A file removed since it was opened (rotated away) is still the
    // file its pattern selected.
    Some(path.strip_suffix(" (deleted)").unwrap_or(&path).to_owned())
}

/// (inode, mount id) of the file `fd` of `tgid` holds.
fn fdinfo(tgid: u32, fd: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/fdinfo/{fd}")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("ino:")?, field("mnt_id:")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn sources(list: &[&str]) -> Sources {
        Sources::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn sources_and_kernel_bits() {
        let s = sources(&["stderr", "/var/log/app/*.log", " "]);
        assert!(!s.stdout && s.stderr);
        assert_eq!(s.kernel_bits(), 2 | 4);
        assert!(s.matches("/var/log/app/web.log"));
        assert!(!s.matches("/var/log/app/sub/web.log"));
        assert!(!s.matches("/var/log/app/web.txt"));
        assert!(sources(&["/var/log/**/*.log"]).matches("/var/log/a/b/c.log"));
        assert_eq!(sources(&["stdout"]).kernel_bits(), 1);
        assert!(sources(&[]).is_empty());
        let bad = |item: &str| Sources::parse(&[item.to_owned()]).is_err();
        assert!(bad("relative/*.log"));
        assert!(bad("/var/log/[.log"));
        assert!(bad("stdin"));
    }

    /// Real files of this process: matched, not matched, then the same fd
    /// number holding another file.
    #[test]
    fn files_are_judged_by_path_and_by_inode() {
        let dir = std::env::temp_dir().join(format!("clew-logs-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("app.log");
        let other = dir.join("data.bin");
        let pattern = format!("{}/*.log", dir.display());
        let mut files = Files::new(sources(&["stdout", &pattern]));
        let me = std::process::id();
        let open = |p: &std::path::Path| {
            let f = std::fs::File::create(p).unwrap();
            let ino = f.metadata().unwrap().ino();
            (f, ino)
        };
        use std::os::fd::AsRawFd;

        assert_eq!(
            files.judge(me, 1, 0, 0, false),
            Judgement::Capture {
                stream: Stream::Stdout,
                verdict: false
            }
        );
        // stderr is not selected: fd 2 is judged as a file (a pipe or a
        // tty has no path a pattern can match).
        let (f, ino) = open(&log);
        let fd = f.as_raw_fd() as u32;
        let want = Stream::File(log.to_string_lossy().into());
        assert_eq!(
            files.judge(me, fd, ino, 7, false),
            Judgement::Capture {
                stream: want.clone(),
                verdict: true
            }
        );
        // Known now; the kernel's verdict is not asked for again.
        assert_eq!(
            files.judge(me, fd, ino, 7, true),
            Judgement::Capture {
                stream: want,
                verdict: false
            }
        );
        // The same number, another file: judged anew. dup2 swaps the file
        // under the number f still holds (closing f and reopening could hand
        // the number to another test's thread first).
        let (g, other_ino) = open(&other);
        // SAFETY: both descriptors are open and owned by this test.
        assert_eq!(unsafe { libc::dup2(g.as_raw_fd(), fd as i32) }, fd as i32);
        assert_eq!(
            files.judge(me, fd, other_ino, 7, false),
            Judgement::Skip { verdict: true }
        );
        // A record of the earlier file read after the fd changed cannot be placed.
        assert_eq!(files.judge(me, fd, ino, 7, false), Judgement::Unresolved);
        assert_eq!(files.forget_process(me), vec![fd]);
        drop((f, g));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
