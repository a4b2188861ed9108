//! Test certificates (tests/fixtures/make-pki.sh, at test time) and TLS
//! listeners that require a client certificate, for the exporter's TLS tests.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A CA with a server certificate for 127.0.0.1 and a client certificate,
/// in a directory removed on drop.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// `name` keeps concurrent tests apart. The certificates come from the
    /// script the end-to-end tests use too.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("clew-pki-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/make-pki.sh");
        let out = Command::new("sh")
            .arg(script)
            .arg(&dir)
            .output()
            .expect("running make-pki.sh (needs the openssl CLI)");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Server TLS for tonic, requiring a client certificate signed by the CA.
    pub fn grpc_server(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |file| std::fs::read(self.path(file)).unwrap();
        ServerTlsConfig::new()
            .identity(Identity::from_pem(read("server.pem"), read("server.key")))
            .client_ca_root(Certificate::from_pem(read("ca.pem")))
    }

    /// The same for any other server: a listener that hands out TLS streams.
    pub fn listener(&self, tcp: TcpListener) -> TlsListener {
        let certs = |file: &str| -> Vec<CertificateDer<'static>> {
            CertificateDer::pem_file_iter(self.path(file))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(certs("ca.pem"));
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path("server.key")).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs("server.pem"), key)
            .unwrap();
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    /// Failed handshakes (no or a wrong client certificate) are skipped:
    /// the test sees them as requests that never arrive.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
