//! The uprobes: TLS libraries (OpenSSL, Go's crypto/tls; see
//! [`crate::tls`]) and Go's `net/http` client (see [`crate::runtime`]),
//! loaded with the other programs, attached per file or process on demand.

use anyhow::{Context, Result};
use aya::programs::{
    uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    UProbe,
};
use std::path::Path;

use clew_common::names::{self, map, program as prog};

use super::{install_tail_call, program, Capture};

/// File offsets of the OpenSSL entry points in one library or executable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslOffsets {
    pub read: u64,
    pub write: u64,
    /// OpenSSL ≥ 1.1.1.
    pub read_ex: Option<u64>,
    pub write_ex: Option<u64>,
    pub free: Option<u64>,
    /// The function both read (write) forms call, when it can stand for
    /// them (see `crate::tls::internal`): it takes the `_ex` arguments.
    pub read_core: Option<u64>,
    pub write_core: Option<u64>,
}

/// Where one Go function's code sits: its entry and every RET in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoFn {
    pub entry: u64,
    pub rets: Vec<u64>,
}

/// File offsets of `crypto/tls.(*Conn).Read` and `Write` in a Go executable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoTlsOffsets {
    pub read: GoFn,
    pub write: GoFn,
}

/// Which program goes at which file offset.
pub type Plan = Vec<(&'static str, u64)>;

impl GoTlsOffsets {
    /// No uretprobes for Go (see `ebpf/src/go_tls.rs`): `go_tls_exit`
    /// goes on every RET instead.
    pub fn plan(&self) -> Plan {
        let mut p = Vec::new();
        for (enter, f) in [
            (prog::GO_TLS_READ_ENTER, &self.read),
            (prog::GO_TLS_WRITE_ENTER, &self.write),
        ] {
            p.push((enter, f.entry));
            p.extend(f.rets.iter().map(|&r| (prog::GO_TLS_EXIT, r)));
        }
        p
    }
}

impl SslOffsets {
    /// Every call returns through `ssl_exit`; one probe pair on a shared
    /// internal function replaces the pairs on the public forms.
    ///
    /// `SSL_free` and the return probes go first, the entries last: the
    /// first attaches of a burst took 80–160 ms here (the kernel's uprobe
    /// registration lock was cold), the rest about 30 µs each. So the
    /// entries go on together, and a process making its first calls while
    /// its probes are attached (per-process mode) does not have its reads
    /// traced but not its writes for long, nor an entry without a return.
    pub fn plan(&self) -> Plan {
        let o = self;
        let mut entries = Vec::new();
        for (core, int, ex, int_enter, ex_enter) in [
            (
                o.read_core,
                o.read,
                o.read_ex,
                prog::SSL_READ_ENTER,
                prog::SSL_READ_EX_ENTER,
            ),
            (
                o.write_core,
                o.write,
                o.write_ex,
                prog::SSL_WRITE_ENTER,
                prog::SSL_WRITE_EX_ENTER,
            ),
        ] {
            match core {
                Some(x) => entries.push((ex_enter, x)),
                None => {
                    entries.push((int_enter, int));
                    entries.extend(ex.map(|x| (ex_enter, x)));
                }
            }
        }
        let mut p: Plan = o
            .free
            .map(|x| (prog::SSL_FREE_ENTER, x))
            .into_iter()
            .collect();
        p.extend(entries.iter().map(|&(_, x)| (prog::SSL_EXIT, x)));
        p.extend(entries);
        p
    }
}

/// Links of one hooked file, to detach when no traced process uses it.
#[derive(Debug)]
pub struct TlsLinks(Vec<(&'static str, UProbeLinkId)>);

const PROGRAMS: &[&str] = &[
    prog::SSL_READ_ENTER,
    prog::SSL_READ_EX_ENTER,
    prog::SSL_WRITE_ENTER,
    prog::SSL_WRITE_EX_ENTER,
    prog::SSL_FREE_ENTER,
    prog::SSL_EXIT,
    prog::GO_TLS_READ_ENTER,
    prog::GO_TLS_WRITE_ENTER,
    prog::GO_TLS_EXIT,
    prog::GO_HTTP_ROUND_TRIP,
    prog::GO_HTTP_REQUEST_WRITE,
    prog::GO_SPAWN_PARENT,
    prog::GO_SPAWN_CHILD,
    prog::GO_G_FREE,
];

impl Capture {
    /// Loads the TLS probes and their protocols' observers, attached to
    /// nothing yet.
    pub(super) fn load_uprobes(&mut self) -> Result<()> {
        for name in PROGRAMS {
            let p: &mut UProbe = program(&mut self.ebpf, name)?;
            p.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        for (proto, _, name) in names::OBSERVERS {
            let p: &mut UProbe = program(&mut self.ebpf, name)?;
            p.load()
                .with_context(|| format!("verifier rejected {name}"))?;
            let fd = p.fd()?.try_clone()?;
            install_tail_call(&mut self.ebpf, map::TLS_OBSERVERS, proto, &fd, name)?;
        }
        Ok(())
    }

    /// Hooks the TLS library in `file` for process `pid`, or for every
    /// process that maps it (the programs then skip unselected ones).
    pub fn attach_tls(&mut self, file: &Path, plan: &Plan, pid: Option<u32>) -> Result<TlsLinks> {
        let mut links = TlsLinks(Vec::new());
        for &(name, offset) in plan {
            let p: &mut UProbe = program(&mut self.ebpf, name)?;
            // One process: the kernel plants breakpoints only in that
            // process's mappings of the file, including ones it maps later.
            let scope = match pid.and_then(std::num::NonZeroU32::new) {
                Some(pid) => UProbeScope::OneProcess(pid),
                None => UProbeScope::AllProcesses,
            };
            match p.attach(UProbeAttachLocation::AbsoluteOffset(offset), file, scope) {
                Ok(id) => links.0.push((name, id)),
                Err(e) => {
                    self.detach_tls(links);
                    return Err(e)
                        .with_context(|| format!("attaching {name} to {}", file.display()));
                }
            }
        }
        Ok(links)
    }

    pub fn detach_tls(&mut self, links: TlsLinks) {
        for (name, id) in links.0 {
            if let Ok(p) = program::<UProbe>(&mut self.ebpf, name) {
                if let Err(e) = p.detach(id) {
                    tracing::debug!("detaching {name}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_gets_an_exit_probe_on_every_ret_and_no_uretprobe() {
        let o = GoTlsOffsets {
            read: GoFn {
                entry: 10,
                rets: vec![20, 30],
            },
            write: GoFn {
                entry: 40,
                rets: vec![50],
            },
        };
        assert_eq!(
            o.plan(),
            vec![
                ("go_tls_read_enter", 10),
                ("go_tls_exit", 20),
                ("go_tls_exit", 30),
                ("go_tls_write_enter", 40),
                ("go_tls_exit", 50),
            ]
        );
    }

    #[test]
    fn every_entry_has_its_return_probe() {
        let o = SslOffsets {
            read: 1,
            write: 2,
            read_ex: Some(3),
            write_ex: None,
            free: Some(5),
            ..Default::default()
        };
        let p = o.plan();
        for off in [1, 2, 3] {
            assert!(p.contains(&("ssl_exit", off)), "no return probe at {off}");
        }
        assert!(!p.iter().any(|&(_, o)| o == 4));
        assert_eq!(p.iter().filter(|(n, _)| *n == "ssl_free_enter").count(), 1);
    }

    #[test]
    fn a_shared_internal_function_replaces_both_forms() {
        let o = SslOffsets {
            read: 1,
            write: 2,
            read_ex: Some(3),
            write_ex: Some(4),
            free: Some(5),
            read_core: Some(6),
            write_core: None,
        };
        assert_eq!(
            o.plan(),
            vec![
                ("ssl_free_enter", 5),
                ("ssl_exit", 6),
                ("ssl_exit", 2),
                ("ssl_exit", 4),
                ("ssl_read_ex_enter", 6),
                ("ssl_write_enter", 2),
                ("ssl_write_ex_enter", 4),
            ]
        );
    }
}
