//! `cargo xtask run -- ARGS`: build, then replace this process with the
//! agent (through `sudo -E` unless already root), so signals such as Ctrl-C
//! reach it directly and its exit status is ours.

use std::{ffi::OsString, os::unix::process::CommandExt, process::Command};

use anyhow::{Context, Result};

use crate::{build, cmd, paths::Paths};

pub fn run(paths: &Paths, release: bool, args: Vec<OsString>) -> Result<()> {
    let built = build::build(paths, release)?;
    let mut agent = if cmd::is_root()? {
        Command::new(&built.agent)
    } else {
        eprintln!("[run] not root: the agent loads eBPF programs, running it through sudo -E");
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&built.agent);
        sudo
    };
    agent.args(args);
    eprintln!("$ {}", cmd::display(&agent));
    let err = agent.exec();
    Err(err).with_context(|| format!("could not execute {}", built.agent.display()))
}
