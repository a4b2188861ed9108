//! Network namespaces joined by a veth pair: two "nodes" on one machine.
//!
//! Everything is named after the test process's pid, lives only inside the
//! namespaces (the root namespace never sees the veth), and is removed on
//! drop, even when the test fails.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A named network namespace (`ip netns add`) with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    // Held open so that `enter` can setns() into it from a forked child.
    file: File,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    pub fn create(tag: &str) -> Result<Self> {
        crate::env::require_root()?;
        let name = format!("clew-e2e-{}-{tag}", std::process::id());
        // Left over by an earlier run that died with the same pid.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(e).context("opening the new network namespace");
            }
        };
        let ns = Netns { name, file };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Makes `cmd`'s child enter this namespace before exec (combine with
    /// `Cgroup::spawn`, which moves it into a cgroup the same way).
    pub fn enter(&self, cmd: &mut Command) {
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; fd stays open in the child (no CLOEXEC needed before exec).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The namespace (and the veth end in it) goes away once its last process exits.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Two namespaces with a veth pair between them: `a` has `addr_a`/24, `b` has `addr_b`/24.
pub struct TwoNodes {
    pub a: Netns,
    pub b: Netns,
    pub addr_a: String,
    pub addr_b: String,
}

impl TwoNodes {
    pub fn create(addr_a: &str, addr_b: &str) -> Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let a = Netns::create(&format!("{seq}a"))?;
        let b = Netns::create(&format!("{seq}b"))?;
        // Interface names are at most 15 bytes.
        let (va, vb) = ("veth-clew-a", "veth-clew-b");
        // Created inside `a` with its peer moved straight to `b`: the root
        // namespace never holds either end.
        a.ip(&[
            "link",
            "add",
            va,
            "type",
            "veth",
            "peer",
            "name",
            vb,
            "netns",
            b.name(),
        ])?;
        a.ip(&["addr", "add", &format!("{addr_a}/24"), "dev", va])?;
        b.ip(&["addr", "add", &format!("{addr_b}/24"), "dev", vb])?;
        a.ip(&["link", "set", va, "up"])?;
        b.ip(&["link", "set", vb, "up"])?;
        Ok(TwoNodes {
            a,
            b,
            addr_a: addr_a.into(),
            addr_b: addr_b.into(),
        })
    }
}
