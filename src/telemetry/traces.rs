//! OpenTelemetry traces over OTLP/gRPC, off unless an endpoint is configured.
//!
//! Each RPC and HTTP request is one span (`transport`), a child of the caller's when it sent
//! a W3C `traceparent`; signatures and store calls are spans under it. Only spans of this
//! crate are exported, never log events, so no log line's fields reach a collector.
//!
//! The exporter never slows a request: a finished span is handed to a bounded queue that
//! the SDK's batch processor drains on its own thread; when the queue is full the span is
//! dropped and counted (`token_authority_trace_spans_dropped_total`), as are spans a failed
//! export lost.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, LazyLock,
    },
    time::Duration,
};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
    Context,
};
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter},
    Resource,
};
use prometheus_client::metrics::{counter::Counter, family::Family};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Finished spans waiting for export at most; beyond it they are dropped and counted.
const QUEUE_CAPACITY: usize = 4096;
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
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read the collector's CA file {path}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the OTLP exporter to {endpoint}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
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
    for reason in ["queue_full", "export_failed"] {
        family.get_or_create_owned(&DropReason { reason });
    }
    family
});

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True once traces are exported: the request paths skip all trace work otherwise.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn dropped(reason: &'static str) -> Counter {
    SPANS_DROPPED.get_or_create_owned(&DropReason { reason })
}

/// The provider behind the tracing layer, kept to flush its last spans at shutdown.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the exporter and provider. Needs a Tokio runtime (tonic's channel is made
    /// here); connecting is lazy, so a collector that is down does not stop the server.
    pub(crate) fn start(
        settings: &TraceSettings,
    ) -> Result<(Traces, opentelemetry_sdk::trace::Tracer), TraceError> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT);
        if settings.endpoint.starts_with("https://") {
            let tls = tonic::transport::ClientTlsConfig::new();
            let tls = match &settings.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| TraceError::CaFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                    tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                None => tls.with_webpki_roots(),
            };
            builder = builder.with_tls_config(tls);
        }
        let exporter = builder.build().map_err(|source| TraceError::Exporter {
            endpoint: settings.endpoint.clone(),
            source,
        })?;
        let admission = Arc::new(Admission::default());
        let processor = BatchSpanProcessor::builder(Counted {
            inner: exporter,
            admission: Arc::clone(&admission),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE_CAPACITY)
                .build(),
        )
        .build();
        let mut resource = Resource::builder();
        // OTEL_SERVICE_NAME, read by the default detectors, wins over ours.
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
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
        let tracer = provider.tracer("token-authority");
        ENABLED.store(true, Ordering::Relaxed);
        Ok((Traces { provider }, tracer))
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

/// Spans handed to the batch processor and not yet through an export. The processor's own
/// queue holds at most as many, so it never drops one itself: every drop is counted here.
#[derive(Debug, Default)]
struct Admission {
    pending: AtomicUsize,
}

/// Admits a finished span only while fewer than the queue's capacity are pending.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    admission: Arc<Admission>,
}

impl opentelemetry_sdk::trace::SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.admission.pending.fetch_add(1, Ordering::AcqRel) >= QUEUE_CAPACITY {
            self.admission.pending.fetch_sub(1, Ordering::AcqRel);
            dropped("queue_full").inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, giving back its batch's admissions when the export ends, however it
/// ends (an abandoned export drops its future).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    admission: Arc<Admission>,
}

/// Gives back `spans` admissions when dropped; counts them lost unless `exported`.
struct Release {
    admission: Arc<Admission>,
    spans: usize,
    exported: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.admission
            .pending
            .fetch_sub(self.spans, Ordering::AcqRel);
        if !self.exported {
            dropped("export_failed").inc_by(self.spans as u64);
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let release = Release {
            admission: Arc::clone(&self.admission),
            spans: batch.len(),
            exported: false,
        };
        let export = self.inner.export(batch);
        async move {
            let mut release = release;
            let result = export.await;
            release.exported = result.is_ok();
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Reads W3C trace context from gRPC metadata or HTTP headers (tonic's metadata is an HTTP
/// header map underneath).
struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// The caller's trace context, if tracing is on (else nothing is read).
pub(crate) fn parent_from(headers: &axum::http::HeaderMap) -> Option<Context> {
    if !enabled() {
        return None;
    }
    Some(TraceContextPropagator::new().extract(&Headers(headers)))
}

/// Makes `span` a child of the caller's span and records its trace id on it, so the log
/// lines of the request carry it. Returns the trace id, for the latency exemplar.
pub(crate) fn adopt(span: &tracing::Span, parent: Option<Context>) -> Option<String> {
    let parent = parent?;
    // Fails only without the layer (tracing off): nothing to adopt then.
    let _ = span.set_parent(parent);
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    let trace_id = span_context.trace_id().to_string();
    span.record("trace_id", trace_id.as_str());
    span_context.is_sampled().then_some(trace_id)
}

/// The target of spans made for traces only (`sign`, `store`): the log output leaves them
/// out, so they cost it nothing.
pub(crate) const TRACES_ONLY: &str = "token_authority::traced";

/// Sets an attribute of `span` in its trace, with traces on. Straight into the exported span:
/// a span field recorded after the span is made would also be re-rendered by the JSON log
/// output at every record, for lines that do not show it.
pub(crate) fn set(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if enabled() {
        span.set_attribute(key, value);
    }
}

/// Marks `span` failed in its trace, with traces on.
pub(crate) fn set_error(span: &tracing::Span, description: String) {
    if enabled() {
        span.set_status(opentelemetry::trace::Status::error(description));
    }
}

/// A child span made only while traces are exported: the log lines do not use these, and
/// without traces they would be work for nothing on every request.
pub(crate) fn child(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if enabled() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// A signature's span under the call's span `rpc` (with traces on), wherever the signature
/// runs: the signing pool's threads have no span of their own.
pub(crate) fn sign_span(rpc: &tracing::Span, alg: &'static str) -> tracing::Span {
    child(|| tracing::info_span!(target: TRACES_ONLY, parent: rpc, "sign", alg))
}
