//! TLS for the load generator, so a TLS deployment can be measured as clients see it: the
//! CA to trust and an optional client certificate, for the gRPC channels (tonic's client
//! TLS) and the HTTP client (hyper-rustls), both on the crate's rustls provider.

use std::{path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::BenchError;
use crate::config::BenchArgs;

/// The PEM files given on the command line.
#[derive(Clone, Debug)]
pub(crate) struct BenchTls {
    ca: Vec<u8>,
    /// (certificate, key)
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn read(path: &Path) -> Result<Vec<u8>, BenchError> {
    std::fs::read(path).map_err(|e| BenchError::Prepare(format!("{}: {e}", path.display())))
}

impl BenchTls {
    /// `None` when no target is https; an https target needs `--tls-ca`.
    pub(crate) fn load(args: &BenchArgs) -> Result<Option<BenchTls>, BenchError> {
        let https = args
            .target
            .iter()
            .chain([&args.http_target])
            .any(|target| target.starts_with("https://"));
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => {
                return Err(BenchError::Prepare(
                    "--tls-cert and --tls-key go together".into(),
                ))
            }
        };
        match (&args.tls_ca, https) {
            (Some(ca), _) => Ok(Some(BenchTls {
                ca: read(ca)?,
                identity,
            })),
            (None, true) => Err(BenchError::Prepare(
                "an https:// target needs --tls-ca (the CA that signed the server certificate)"
                    .into(),
            )),
            (None, false) => Ok(None),
        }
    }

    /// For the gRPC channels (applied by tonic to https:// targets).
    pub(crate) fn grpc(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }

    /// For the HTTP client (hyper-rustls sets ALPN itself: http/1.1).
    pub(crate) fn http(&self) -> Result<rustls::ClientConfig, BenchError> {
        let bad = |what: &str, e: String| BenchError::Prepare(format!("{what}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca) {
            let cert = cert.map_err(|e| bad("--tls-ca", e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| bad("--tls-ca", e.to_string()))?;
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(token_authority_jose::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| bad("TLS", e.to_string()))?
                .with_root_certificates(Arc::new(roots));
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("--tls-cert", e.to_string()))?;
                // The parser's message may quote key bytes: left out.
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|_| bad("--tls-key", "no well-formed PEM private key".into()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("--tls-cert/--tls-key", e.to_string()))?
            }
        };
        Ok(config)
    }
}
