//! Starting on a node as it comes. A freshly booted host need not have
//! tracefs mounted (nothing mounts it until some tool wants it): the agent
//! mounts it itself and traces. Seen failing on a fresh machine, when the
//! ring buffer check ran before the mount and aya kept its miss.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::ptr::null;

use anyhow::{ensure, Result};
use clew_e2e::peers::{curl_expect, PyService};
use clew_e2e::{Agent, Cgroup, Export, Protocol, Receiver, Select, SPAN_TIMEOUT};

/// Spawns `cmd` in a mount namespace of its own where neither tracefs
/// nor debugfs (whose `tracing` directory would mount tracefs on first
/// look) is mounted.
fn without_tracefs(cmd: &mut Command) -> Result<Child> {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Keep the unmounts below out of the host's namespace.
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(null(), c"/".as_ptr(), null(), flags, null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for dir in [c"/sys/kernel/tracing", c"/sys/kernel/debug"] {
                // EINVAL: nothing mounted there, as on a fresh host.
                libc::umount2(dir.as_ptr(), libc::MNT_DETACH);
            }
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

#[test]
fn an_agent_mounts_tracefs_where_the_host_has_not_and_traces() -> Result<()> {
    // The namespace really lacks tracefs.
    let status = without_tracefs(Command::new("sh").args([
        "-c",
        "test ! -e /sys/kernel/tracing/events && test ! -e /sys/kernel/debug/tracing",
    ]))?
    .wait()?;
    ensure!(
        status.success(),
        "tracefs still mounted in the test's namespace"
    );

    let cg = Cgroup::new("no-tracefs")?;
    let svc = PyService::start(&cg, "backend", None)?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let export = Export::Otlp {
        endpoint: &rx.endpoint(),
        protocol: Protocol::Grpc,
    };
    let mut agent =
        Agent::launch_spawned(&[Select::Cgroup(&cg)], export, &[], &[], without_tracefs)?;
    curl_expect(&cg, &svc.url("/work/fresh"), &[], 200)?;
    rx.wait_for(
        |s| {
            s.iter()
                .any(|s| s.is_server() && s.path() == Some("/work/fresh"))
        },
        SPAN_TIMEOUT,
    )?;
    agent.ensure_healthy()?;
    agent.stop()
}
