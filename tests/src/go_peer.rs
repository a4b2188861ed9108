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

/// The executable built from `tests/peers/<name>`.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return Ok(path.clone());
    }
    let path = build(name)?;
    built.insert(name.to_string(), path.clone());
    Ok(path)
}

fn build(name: &str) -> Result<PathBuf> {
    let dir = workspace_dir().join("target/go-peers");
    let out = dir.join(name);
    let start = Instant::now();
    let result = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(peers_dir().join(name))
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .output()
        .context("running go (apt-get install golang-go)")?;
    ensure!(
        result.status.success(),
        "go build of tests/peers/{name} failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    eprintln!("[{name}] built in {:.1?}", start.elapsed());
    Ok(out)
}
