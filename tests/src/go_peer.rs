//! Go peers under `tests/peers/<name>` (standard library only), built with
//! the system's Go once per test process into `target/go-peers`; `go build`
//! is incremental, so later runs reuse its cache.

use crate::env::{peers_dir, workspace_dir};
use anyhow::{ensure, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// How a Go peer is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Symbols {
    Kept,
    /// `-ldflags=-s -w`: no symbol table, no DWARF, as many images ship.
    Stripped,
    /// Symbols kept, statically linked (`CGO_ENABLED=0`): runs alone in an
    /// empty root filesystem.
    Static,
}

/// The executable built from `tests/peers/<name>`.
pub fn binary(name: &str) -> Result<PathBuf> {
    build_once(name, Symbols::Kept)
}

/// [`binary`], linked as `symbols` says.
pub fn build_once(name: &str, symbols: Symbols) -> Result<PathBuf> {
    static BUILT: Mutex<Option<HashMap<(String, Symbols), PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    let key = (name.to_string(), symbols);
    if let Some(path) = built.get(&key) {
        return Ok(path.clone());
    }
    let path = build(name, symbols)?;
    built.insert(key, path.clone());
    Ok(path)
}

fn build(name: &str, symbols: Symbols) -> Result<PathBuf> {
    let dir = workspace_dir().join("target/go-peers");
    let (out, ldflags) = match symbols {
        Symbols::Kept => (dir.join(name), ""),
        Symbols::Stripped => (dir.join(format!("{name}_stripped")), "-s -w"),
        Symbols::Static => (dir.join(format!("{name}_static")), ""),
    };
    let cgo = if symbols == Symbols::Static { "0" } else { "1" };
    let start = Instant::now();
    let result = Command::new("go")
        .args(["build", "-ldflags", ldflags, "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(peers_dir().join(name))
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", cgo)
        .output()
        .context("running go (apt-get install golang-go)")?;
    ensure!(
        result.status.success(),
        "go build of tests/peers/{name} failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    eprintln!("[{name}] built ({symbols:?}) in {:.1?}", start.elapsed());
    Ok(out)
}
