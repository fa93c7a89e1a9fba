//! The trace context of a request: read from the caller, and set on its spans.

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator as _},
    trace::TraceContextExt as _,
    Context,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::enabled;

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
