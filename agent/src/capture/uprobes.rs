//! The TLS library probes: loaded with the other programs, attached per
//! library file on demand (see [`crate::tls`]).

use anyhow::{Context, Result};
use aya::{
    maps::ProgramArray,
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        UProbe,
    },
};
use std::path::Path;

use super::{program, Capture};

/// File offsets of the OpenSSL entry points in one library or executable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslOffsets {
    pub read: u64,
    pub write: u64,
    /// OpenSSL ≥ 1.1.1.
    pub read_ex: Option<u64>,
    pub write_ex: Option<u64>,
    pub free: Option<u64>,
}

/// Which program goes on which function; every call returns through `ssl_exit`.
fn plan(o: &SslOffsets) -> Vec<(&'static str, u64)> {
    let mut p = vec![
        ("ssl_read_enter", o.read),
        ("ssl_exit", o.read),
        ("ssl_write_enter", o.write),
        ("ssl_exit", o.write),
    ];
    if let Some(x) = o.read_ex {
        p.extend([("ssl_read_ex_enter", x), ("ssl_exit", x)]);
    }
    if let Some(x) = o.write_ex {
        p.extend([("ssl_write_ex_enter", x), ("ssl_exit", x)]);
    }
    if let Some(x) = o.free {
        p.push(("ssl_free_enter", x));
    }
    p
}

/// Links of one hooked file, to detach when no traced process uses it.
#[derive(Debug)]
pub struct SslLinks(Vec<(&'static str, UProbeLinkId)>);

const PROGRAMS: &[&str] = &[
    "ssl_read_enter",
    "ssl_read_ex_enter",
    "ssl_write_enter",
    "ssl_write_ex_enter",
    "ssl_free_enter",
    "ssl_exit",
];

impl Capture {
    /// Loads the TLS probes and their tail call, attached to nothing yet.
    pub(super) fn load_uprobes(&mut self) -> Result<()> {
        for name in PROGRAMS.iter().chain(["observe_tls"].iter()) {
            let p: &mut UProbe = program(&mut self.ebpf, name)?;
            p.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        let p: &mut UProbe = program(&mut self.ebpf, "observe_tls")?;
        let fd = p.fd()?.try_clone()?;
        let mut tail = ProgramArray::try_from(
            self.ebpf
                .map_mut("TLS_TAIL")
                .context("TLS_TAIL map missing")?,
        )?;
        tail.set(0, &fd, 0)
            .context("installing the observe_tls tail call")?;
        Ok(())
    }

    /// Hooks OpenSSL in `file` for every process that maps it (the
    /// programs themselves skip processes that are not selected).
    pub fn attach_ssl(&mut self, file: &Path, offsets: &SslOffsets) -> Result<SslLinks> {
        let mut links = SslLinks(Vec::new());
        for (name, offset) in plan(offsets) {
            let p: &mut UProbe = program(&mut self.ebpf, name)?;
            match p.attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                file,
                UProbeScope::AllProcesses,
            ) {
                Ok(id) => links.0.push((name, id)),
                Err(e) => {
                    self.detach_ssl(links);
                    return Err(e)
                        .with_context(|| format!("attaching {name} to {}", file.display()));
                }
            }
        }
        Ok(links)
    }

    pub fn detach_ssl(&mut self, links: SslLinks) {
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
    fn every_entry_has_its_return_probe() {
        let o = SslOffsets {
            read: 1,
            write: 2,
            read_ex: Some(3),
            write_ex: None,
            free: Some(5),
        };
        let p = plan(&o);
        for off in [1, 2, 3] {
            assert!(p.contains(&("ssl_exit", off)), "no return probe at {off}");
        }
        assert!(!p.iter().any(|&(_, o)| o == 4));
        assert_eq!(p.iter().filter(|(n, _)| *n == "ssl_free_enter").count(), 1);
    }
}
