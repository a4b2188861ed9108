//! Which socket-call programs the agent runs. Where the kernel lets a
//! tracepoint read the thread's saved registers (Linux 5.15), one program
//! per call (`exit_io_regs`); the fallback with a program at each end
//! costs twice as much, and the agent only logs a warning when the
//! verifier refuses the one-program form. A change that pushes it past
//! the verifier's budget would go unnoticed without this test.

use std::collections::BTreeSet;

use anyhow::{ensure, Result};
use clew_e2e::bpf::{prog_ids_of, programs};
use clew_e2e::{Agent, Cgroup, Export, Protocol, Receiver, Select};

/// Names of the BPF programs the agent holds.
fn held_by(agent: &Agent) -> Result<BTreeSet<String>> {
    let ids = prog_ids_of(agent.pid())?;
    Ok(programs()?
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .map(|p| p.name)
        .collect())
}

/// The running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> Result<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok((ma, mi) >= (major, minor))
}

fn socket_programs(extra_args: &[&str]) -> Result<BTreeSet<String>> {
    let cg = Cgroup::new("programs")?;
    let rx = Receiver::start(Protocol::Grpc)?;
    let export = Export::Otlp {
        endpoint: &rx.endpoint(),
        protocol: Protocol::Grpc,
    };
    let mut agent = Agent::launch(&[Select::Cgroup(&cg)], export, extra_args)?;
    let held = held_by(&agent)?;
    agent.ensure_healthy()?;
    agent.stop()?;
    Ok(held.into_iter().filter(|n| n.contains("_io")).collect())
}

#[test]
fn socket_calls_cost_one_program_where_the_kernel_allows_it() -> Result<()> {
    let held = socket_programs(&[])?;
    let want: &[&str] = if kernel_at_least(5, 15)? {
        &["exit_io_regs"]
    } else {
        &["enter_io", "exit_io"]
    };
    ensure!(
        held.iter().map(String::as_str).eq(want.iter().copied()),
        "socket-call programs held by the agent: {held:?}, expected {want:?} on this kernel"
    );
    Ok(())
}

#[test]
fn arguments_kept_at_entry_cost_two_programs() -> Result<()> {
    let held = socket_programs(&["--syscall-arguments", "enter"])?;
    ensure!(
        held.iter().map(String::as_str).eq(["enter_io", "exit_io"]),
        "socket-call programs held by the agent: {held:?}"
    );
    Ok(())
}
