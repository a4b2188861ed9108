//! A throwaway self-signed certificate for the HTTPS peers (openssl CLI).

use crate::process::TempDir;
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use std::process::Command;

#[derive(Debug)]
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: TempDir,
}

impl TestCert {
    /// An RSA certificate for `localhost` / 127.0.0.1 (also as subject
    /// alternative names) and the netns addresses.
    pub fn new() -> Result<Self> {
        let dir = TempDir::new("tls")?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            // gRPC's TLS checks the subject alternative names.
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl (apt-get install openssl)")?;
        ensure!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(TestCert {
            cert,
            key,
            _dir: dir,
        })
    }
}
