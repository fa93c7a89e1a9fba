//! The spans of a request's trace, made with the OpenTelemetry API itself.
//!
//! Not through `tracing`: a bridge layer builds every span twice (once in the `tracing`
//! registry, once for OpenTelemetry) and puts a per-layer filter in front of every span and
//! event of every crate. Measured on IssueToken ES256, that was most of what traces cost
//! (see the README's Performance section). The log lines keep their own `tracing` span,
//! which carries the trace id.

use std::{
    borrow::Cow,
    future::Future,
    sync::{Arc, OnceLock},
};

use opentelemetry::{
    context::FutureExt as _,
    propagation::{Extractor, TextMapPropagator as _},
    trace::{SpanBuilder, SpanKind, Status, TraceContextExt as _, Tracer as _},
    Context, KeyValue, Value,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracer};

/// The tracer of the exporting provider. The first server of a process to start traces
/// installs it; it is never replaced (tests start several servers in one process).
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

pub(super) fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// True once traces are exported: the request paths skip all trace work otherwise.
pub(crate) fn enabled() -> bool {
    TRACER.get().is_some()
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

/// A span of a request's trace, or nothing with traces off. Clones share the span; it ends
/// at `end`, or when the last clone is dropped.
#[derive(Clone, Debug, Default)]
pub(crate) struct Trace(Option<Context>);

impl Trace {
    /// A request's span, of kind server: a child of the caller's (`parent`, from its
    /// `traceparent`), else the root of a new trace. The sampler decides here, once.
    pub(crate) fn server(
        name: impl FnOnce() -> Cow<'static, str>,
        parent: Option<Context>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Trace {
        let Some(tracer) = TRACER.get() else {
            return Trace(None);
        };
        let parent = parent.unwrap_or_default();
        let builder = SpanBuilder::from_name(name())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes());
        let span = tracer.build_with_context(builder, &parent);
        Trace(Some(parent.with_span(span)))
    }

    /// The span of the request this runs in (see `in_scope`), for the handlers to set what
    /// they decided on. Outside a request, a new trace's spans start under it.
    pub(crate) fn current() -> Trace {
        if !enabled() {
            return Trace(None);
        }
        Trace(Some(Context::current()))
    }

    /// A span under this one, started now. Made only with traces on: without them it
    /// would be work for nothing on every request.
    pub(crate) fn child(
        &self,
        name: &'static str,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Trace {
        let (Some(parent), Some(tracer)) = (&self.0, TRACER.get()) else {
            return Trace(None);
        };
        let builder = SpanBuilder::from_name(name).with_attributes(attributes());
        let span = tracer.build_with_context(builder, parent);
        Trace(Some(parent.with_span(span)))
    }

    /// Sets an attribute (nothing if the span is not sampled).
    pub(crate) fn set(&self, key: &'static str, value: impl Into<Value>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed.
    pub(crate) fn set_error(&self, description: String) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(description));
        }
    }

    /// Its trace id, for the log lines of the request (sampled or not), in the W3C form:
    /// 32 lowercase hex digits.
    pub(crate) fn trace_id(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let span = cx.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return None;
        }
        // `hex` writes the digits straight into the buffer; the `Display` of a `u128`
        // is several times the instructions, on every traced call.
        let mut digits = [0u8; 32];
        hex::encode_to_slice(span_context.trace_id().to_bytes(), &mut digits).ok()?;
        String::from_utf8(digits.to_vec()).ok()
    }

    /// Whether the span is exported.
    pub(crate) fn is_sampled(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|cx| cx.span().span_context().is_sampled())
    }

    /// Ends the span now; it is exported once ended.
    pub(crate) fn end(&self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }

    /// Runs `future` with this span current, so what it calls finds it (`Trace::current`).
    pub(crate) async fn in_scope<F: Future>(&self, future: F) -> F::Output {
        match &self.0 {
            Some(cx) => future.with_context(cx.clone()).await,
            None => future.await,
        }
    }
}

/// Runs `sign` in a `sign` span under the call's span `rpc`, wherever it runs: the signing
/// pool's threads are in no request of their own. The span repeats nothing of its parent's
/// (the call's span carries the key and the algorithm): each attribute is copied and
/// converted again by the exporter, which is most of what a trace costs (see the README's
/// Performance section).
pub(crate) fn signing<T, E>(rpc: &Trace, sign: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let span = rpc.child("sign", Vec::new);
    let signed = sign();
    span.end();
    signed
}

/// Records on the current call's span the key it signed with (shared with the signer, not
/// copied).
pub(crate) fn record_signing_key(kid: &Arc<str>, alg: &'static str) {
    if enabled() {
        let rpc = Trace::current();
        rpc.set("kid", Arc::clone(kid));
        rpc.set("alg", alg);
    }
}
