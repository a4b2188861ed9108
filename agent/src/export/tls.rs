//! Reads the PEM files of [`TlsFiles`] into the TLS settings of tonic and reqwest.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::config::TlsFiles;

/// File contents, read once at start-up so a missing file is a start-up
/// error that names it, not a failure on every export.
pub(super) struct TlsPem {
    ca: Option<Vec<u8>>,
    /// Certificate chain and key, for mTLS.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsPem {
    pub(super) fn read(files: &TlsFiles) -> Result<Self> {
        let identity = match (&files.client_cert, &files.client_key) {
            (Some(cert), Some(key)) => Some((read(cert, "client certificate")?, read(key, "client key")?)),
            (None, None) => None,
            _ => bail!(
                "mTLS needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY"
            ),
        };
        Ok(TlsPem {
            ca: files
                .ca
                .as_deref()
                .map(|ca| read(ca, "CA certificate"))
                .transpose()?,
            identity,
        })
    }

    pub(super) fn grpc(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }

    pub(super) fn http(
        &self,
        mut builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder> {
        if let Some(ca) = &self.ca {
            // A file may hold several CAs (a bundle).
            for cert in
                reqwest::Certificate::from_pem_bundle(ca).context("parsing the CA certificate")?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &self.identity {
            // reqwest's rustls identity wants chain and key in one PEM buffer.
            let pem = [cert.as_slice(), b"\n", key.as_slice()].concat();
            let identity = reqwest::Identity::from_pem(&pem)
                .context("parsing the client certificate and key")?;
            builder = builder.identity(identity);
        }
        Ok(builder.use_rustls_tls())
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the OTLP {what} {}", path.display()))
}
