//! OpenTelemetry traces over OTLP/gRPC, off unless an endpoint is configured.
//!
//! Each RPC and HTTP request is one span (`transport`), a child of the caller's when it sent
//! a W3C `traceparent`; signatures and store calls are spans under it. The spans are made
//! with the OpenTelemetry API (`spans`), apart from the log output: no log event or field
//! reaches a collector.
//!
//! The exporter never slows a request: a finished span is handed to a bounded queue that
//! the SDK's batch processor drains on its own thread; when the queue is full the span is
//! dropped and counted (`token_authority_trace_spans_dropped_total`), as are spans a failed
//! export lost and spans the collector reports rejecting. The batches are written and sent
//! by an exporter of our own (`otlp`).

use std::{
    path::PathBuf,
    sync::{Arc, LazyLock},
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
    Resource,
};
use prometheus_client::metrics::{counter::Counter, family::Family};

mod export;
mod otlp;
mod spans;

use export::{Admission, Bounded, Counted, LogLimit};
pub use otlp::CollectorHeaders;
pub(crate) use spans::{enabled, parent_from, record_signing_key, signing, Trace};

/// Finished spans waiting for export at most, unless `OTEL_BSP_MAX_QUEUE_SIZE` says
/// otherwise; beyond it they are dropped and counted.
pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 4096;
/// The most `OTEL_BSP_MAX_QUEUE_SIZE` may ask for (a span is a few hundred bytes queued).
pub(crate) const MAX_QUEUE_CAPACITY: usize = 1 << 20;
/// An export call that takes longer fails (its spans counted as lost).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last spans may take to leave at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Where traces go, from the flags or the standard `OTEL_*` variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC endpoint, `http://host:4317` or `https://...`.
    pub endpoint: String,
    /// CAs that sign the collector's certificate (else the public web roots).
    pub ca_file: Option<PathBuf>,
    /// Finished spans waiting for export at most.
    pub queue_capacity: usize,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`): the collector's credentials.
    pub headers: CollectorHeaders,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read the collector's CA file {path}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the collector's CA file {path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("cannot set up the OTLP exporter to {endpoint}")]
    Exporter {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Why a span never reached the collector, as the metric labels it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct DropReason {
    reason: &'static str,
}

/// Spans lost, by reason: registered with the other metrics whether tracing is on or not,
/// each reason shown from the start.
pub(crate) static SPANS_DROPPED: LazyLock<Family<DropReason, Counter>> = LazyLock::new(|| {
    let family = Family::default();
    for reason in ["queue_full", "export_failed", "rejected"] {
        family.get_or_create_owned(&DropReason { reason });
    }
    family
});

fn dropped(reason: &'static str) -> Counter {
    SPANS_DROPPED.get_or_create_owned(&DropReason { reason })
}

/// The provider behind the spans, kept to flush its last spans at shutdown.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the exporter and provider. Needs a Tokio runtime (tonic's channel is made
    /// here); connecting is lazy, so a collector that is down does not stop the server.
    pub(crate) fn start(settings: &TraceSettings) -> Result<Traces, TraceError> {
        let exporter_error = |source| TraceError::Exporter {
            endpoint: settings.endpoint.clone(),
            source,
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
            .map_err(exporter_error)?
            .timeout(EXPORT_TIMEOUT);
        if settings.endpoint.starts_with("https://") {
            let tls = tonic::transport::ClientTlsConfig::new();
            let tls = match &settings.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| TraceError::CaFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                    // Else every export would fail its handshake, and only a counter say so.
                    if !holds_a_certificate(&pem) {
                        return Err(TraceError::NoCertificate {
                            path: path.display().to_string(),
                        });
                    }
                    tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                None => tls.with_webpki_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(exporter_error)?;
        }
        let exporter =
            otlp::OtlpExporter::new(endpoint.connect_lazy(), &settings.headers, EXPORT_TIMEOUT);
        let admission = Arc::new(Admission::new(settings.queue_capacity));
        let processor = BatchSpanProcessor::builder(Counted {
            inner: exporter,
            admission: Arc::clone(&admission),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(settings.queue_capacity)
                .build(),
        )
        .build();
        let mut resource = Resource::builder();
        if !service_named(|name| std::env::var(name).ok()) {
            resource = resource.with_service_name("token-authority");
        }
        // The sampler comes from OTEL_TRACES_SAMPLER (default: the caller's decision, else
        // every trace).
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: processor,
                admission,
            })
            .with_resource(resource.build())
            .build();
        spans::install(provider.tracer("token-authority"));
        Ok(Traces { provider })
    }

    /// Sends what is queued, waiting at most a few seconds (the collector may be gone).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "the last spans could not be exported");
        }
    }
}

/// Whether `pem` holds at least one well-formed certificate.
fn holds_a_certificate(pem: &[u8]) -> bool {
    use rustls_pki_types::{pem::PemObject as _, CertificateDer};
    CertificateDer::pem_slice_iter(pem).any(|cert| cert.is_ok())
}

/// Whether the environment names the service, for the SDK's default detectors to read: a
/// non-empty `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`. Either
/// wins over ours; an empty one does not (the SDK would call the service `unknown_service`).
fn service_named(env: impl Fn(&str) -> Option<String>) -> bool {
    env("OTEL_SERVICE_NAME").is_some_and(|name| !name.is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
            attributes.split(',').any(|pair| {
                pair.split_once('=').is_some_and(|(key, value)| {
                    key.trim() == "service.name" && !value.trim().is_empty()
                })
            })
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_service_is_named_by_the_environment_only_when_it_gives_a_name() {
        for (service_name, attributes, named) in [
            (None, None, false),
            (Some(""), None, false),
            (Some("orders-tts"), None, true),
            (None, Some("service.name=from-attributes"), true),
            (
                None,
                Some("deployment.environment=prod, service.name = tts"),
                true,
            ),
            (None, Some("service.name="), false),
            (None, Some("service.namespace=auth"), false),
            (Some(""), Some("service.name=tts"), true),
        ] {
            let env = |name: &str| match name {
                "OTEL_SERVICE_NAME" => service_name.map(str::to_owned),
                "OTEL_RESOURCE_ATTRIBUTES" => attributes.map(str::to_owned),
                _ => None,
            };
            assert_eq!(
                super::service_named(env),
                named,
                "{service_name:?} {attributes:?}"
            );
        }
    }
}
