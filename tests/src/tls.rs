//! Throwaway certificates: a self-signed one for the HTTPS peers, and a CA
//! with server and client certificates for the exporter's mTLS (openssl CLI).

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

/// A CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate it signed, and an unrelated CA (tests/fixtures/make-pki.sh,
/// shared with the agent's unit tests).
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    pub fn new() -> Result<Self> {
        let dir = TempDir::new("pki")?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/make-pki.sh");
        let out = Command::new("sh")
            .arg(script)
            .arg(dir.path())
            .output()
            .context("running make-pki.sh (apt-get install openssl)")?;
        ensure!(
            out.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(TestPki { dir })
    }

    /// `ca.pem`, `other-ca.pem`, `server.pem`/`.key`, `client.pem`/`.key`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Server TLS for the gRPC receiver, requiring a client certificate from the CA.
    pub fn grpc_server(&self) -> Result<tonic::transport::ServerTlsConfig> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |file| {
            let path = self.path(file);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(read("server.pem")?, read("server.key")?))
            .client_ca_root(Certificate::from_pem(read("ca.pem")?)))
    }
}
