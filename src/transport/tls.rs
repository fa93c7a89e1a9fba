//! TLS for both listeners: loads the certificate chain, its key and the optional client CA
//! bundle from PEM files into rustls server configurations, and swaps in a new set when the
//! files change on disk, without a restart. Open connections keep their session, but a
//! client certificate is checked against the bundle in use at each request (see
//! `connection`).
//!
//! The files are polled and compared by content rather than watched: Kubernetes updates a
//! Secret volume by re-pointing a `..data` symlink, which inotify on the file names does not
//! report reliably, and a read every few seconds costs nothing. The three files are read as
//! one set and applied only if the whole set loads (a certificate renewed before its key is
//! retried at the next tick, never half-applied); a set that does not load keeps the
//! previous one in use, is logged (never with key bytes) and counted.

use std::{path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use rustls::{
    crypto::CryptoProvider,
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    RootCertStore, ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use x509_parser::{certificate::X509Certificate, prelude::FromDer as _};

use crate::{
    config::TlsFiles,
    metrics::{CertificateExpiry, Metrics, ReloadedFile},
    telemetry::chain,
};

/// Why a set of TLS files could not be loaded. Messages name the file and never include key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
    #[error("{path}: a PEM certificate is malformed: {detail}")]
    Certificate { path: String, detail: String },
    /// The PEM parser's own message is left out: it may quote bytes of the key file.
    #[error("{path}: no well-formed PEM private key (PKCS#8, PKCS#1 or SEC1) found")]
    Key { path: String },
    #[error("{cert} and {key} do not go together, or the key is not usable: {detail}")]
    CertifiedKey {
        cert: String,
        key: String,
        detail: String,
    },
    #[error("{path}: the client CA bundle is unusable: {detail}")]
    ClientCa { path: String, detail: String },
    /// Served, it would fail every client's handshake (and the metrics' scrape), where the
    /// set in use may still hold.
    #[error("{path}: the certificate expired {seconds_ago} s ago; renew it")]
    Expired { path: String, seconds_ago: i64 },
}

/// The server configurations of the two listeners, built from one set of files.
#[derive(Debug)]
pub(crate) struct TlsConfigs {
    /// ALPN `h2` only: gRPC needs HTTP/2.
    pub(crate) grpc: Arc<ServerConfig>,
    /// ALPN `http/1.1`: the HTTP endpoints are served over HTTP/1.1.
    pub(crate) http: Arc<ServerConfig>,
    /// The client CA bundle's verifier, when `--client-ca` is set: the listener checks each
    /// request's client certificate against the one current then, not only at the handshake.
    pub(crate) client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// When the serving certificate and the client CA bundle expire, for the metrics.
    expiry: CertificateExpiry,
}

/// The current configurations, swapped whole on reload; a handshake takes the set current
/// when it starts.
pub(crate) type SharedTlsConfigs = Arc<ArcSwap<TlsConfigs>>;

/// The contents of the files, compared at each tick to notice a change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Snapshot {
    fn read(files: &TlsFiles) -> Result<Snapshot, TlsError> {
        Ok(Snapshot {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::config::read::regular_file(path, crate::config::read::DOCUMENT_MAX).map_err(|source| {
        TlsError::Read {
            path: path.display().to_string(),
            source,
        }
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Certificate {
            path: path.display().to_string(),
            detail: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

fn build(files: &TlsFiles, snapshot: &Snapshot) -> Result<TlsConfigs, TlsError> {
    let provider = token_authority_jose::tls::provider();
    let chain = certificates(&files.cert, &snapshot.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&snapshot.key).map_err(|_| TlsError::Key {
        path: files.key.display().to_string(),
    })?;
    let client_ca = match (&files.client_ca, &snapshot.client_ca) {
        (Some(path), Some(pem)) => Some((path, certificates(path, pem)?)),
        _ => None,
    };
    let verifier = client_ca
        .as_ref()
        .map(|(path, roots)| client_verifier(path, roots, &provider))
        .transpose()?;
    if let Some(leaf) = not_after(&files.cert, &chain[0]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            });
        if leaf <= now {
            return Err(TlsError::Expired {
                path: files.cert.display().to_string(),
                seconds_ago: now - leaf,
            });
        }
    }
    let expiry = CertificateExpiry {
        // The chain is as good as its first certificate to expire, intermediates included:
        // clients refuse it then.
        serving: chain
            .iter()
            .filter_map(|cert| not_after(&files.cert, cert))
            .min(),
        // The bundle serves while one of its CAs does: a CA added beside an old one (a
        // rollover) is what the alert asks for, and an expired one left behind harms nothing.
        client_ca: client_ca
            .as_ref()
            .and_then(|(path, roots)| roots.iter().filter_map(|root| not_after(path, root)).max()),
    };
    let certified = |error: rustls::Error| TlsError::CertifiedKey {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        detail: match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the private key is not the certificate's".to_owned()
            }
            other => other.to_string(),
        },
    };
    let make = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(certified)?;
        let builder = match &verifier {
            Some(verifier) => builder.with_client_cert_verifier(Arc::clone(verifier)),
            None => builder.with_no_client_auth(),
        };
        // Checks that the key signs for the certificate's public key.
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(certified)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(TlsConfigs {
        grpc: make(b"h2")?,
        http: make(b"http/1.1")?,
        client_verifier: verifier,
        expiry,
    })
}

/// A certificate's notAfter (unix seconds). One whose validity cannot be read (rustls took
/// it, so this is unlikely) is logged and left out of the expiry metric, not refused.
fn not_after(path: &Path, der: &CertificateDer<'_>) -> Option<i64> {
    match X509Certificate::from_der(der) {
        Ok((_, certificate)) => Some(certificate.validity().not_after.timestamp()),
        Err(error) => {
            tracing::warn!(path = %path.display(), error = %error, "cannot read a certificate's notAfter: it is left out of token_authority_tls_certificate_expiry_seconds");
            None
        }
    }
}

/// Client certificates are optional at the handshake (token and secret callers connect
/// without one); one that is presented must chain to the bundle and be valid now.
fn client_verifier(
    path: &Path,
    certs: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let unusable = |detail: String| TlsError::ClientCa {
        path: path.display().to_string(),
        detail,
    };
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|e| unusable(e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| unusable(e.to_string()))
}

/// Owns the files' last applied contents and replaces the shared configurations when they
/// change.
#[derive(Debug)]
pub(crate) struct TlsReloader {
    files: TlsFiles,
    current: SharedTlsConfigs,
    applied: Snapshot,
    rejected: Option<Seen>,
}

impl TlsReloader {
    /// Loads the files once; at start-up a failure stops the server.
    pub(crate) fn load(files: &TlsFiles) -> Result<TlsReloader, TlsError> {
        let applied = Snapshot::read(files)?;
        let configs = build(files, &applied)?;
        Ok(TlsReloader {
            files: files.clone(),
            current: Arc::new(ArcSwap::from_pointee(configs)),
            applied,
            rejected: None,
        })
    }

    /// When the certificates of the set in use expire.
    pub(crate) fn expiry(&self) -> CertificateExpiry {
        self.current.load().expiry
    }

    /// The configurations the listeners take each handshake from.
    pub(crate) fn configs(&self) -> SharedTlsConfigs {
        Arc::clone(&self.current)
    }

    /// One check of the files: applies a changed set that loads, keeps the current one
    /// otherwise.
    fn check(&mut self, metrics: &Metrics) {
        let (seen, outcome) = match Snapshot::read(&self.files) {
            Err(error) => (Seen::Unreadable(error.to_string()), Err(error)),
            Ok(snapshot) if snapshot == self.applied => {
                self.rejected = None;
                metrics.config_refused(ReloadedFile::Tls, false);
                return;
            }
            Ok(snapshot) => {
                let outcome = build(&self.files, &snapshot);
                (Seen::Contents(snapshot), outcome)
            }
        };
        match (seen, outcome) {
            (Seen::Contents(snapshot), Ok(configs)) => {
                metrics.tls_in_use(configs.expiry);
                self.current.store(Arc::new(configs));
                self.applied = snapshot;
                self.rejected = None;
                metrics.tls_reloaded(true);
                metrics.config_refused(ReloadedFile::Tls, false);
                tracing::info!(cert = %self.files.cert.display(), "TLS files changed: the new set is in use");
            }
            (seen, outcome) => {
                if self.rejected.as_ref() == Some(&seen) {
                    return;
                }
                self.rejected = Some(seen);
                metrics.tls_reloaded(false);
                metrics.config_refused(ReloadedFile::Tls, true);
                if let Err(error) = outcome {
                    tracing::error!(error = %chain(&error), "TLS files changed but cannot be loaded; the previous set stays in use");
                }
            }
        }
    }

    /// Checks the files every `interval` until `stop` is cancelled.
    pub(crate) async fn watch(
        mut self,
        interval: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
            // Small files, but a network volume can stall a read: off the reactor.
            let metrics = Arc::clone(&metrics);
            self = match tokio::task::spawn_blocking(move || {
                self.check(&metrics);
                self
            })
            .await
            {
                Ok(reloader) => reloader,
                Err(error) => {
                    tracing::error!(error = %chain(&error), "the TLS reload task failed; the TLS files are no longer watched");
                    return;
                }
            };
        }
    }
}

/// What a failed check saw, so that one bad change is logged and counted once, not at every
/// tick.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Unreadable(String),
    Contents(Snapshot),
}
