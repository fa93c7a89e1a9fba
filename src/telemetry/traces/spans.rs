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
/// header map underneath), as the recommendation asks where the SDK's propagator does not:
/// - a `traceparent` not of the W3C form is not read (the SDK would take `00-1-2-01` as
///   trace 1 under span 2), nor are two of them: the request starts a trace of its own, and
///   its `tracestate` is ignored with it;
/// - several `tracestate` headers are one list, in their order (the SDK reads the first);
/// - a `tracestate` longer than 512 characters is cut down (`bounded_tracestate`): every span
///   keeps it, so a caller's 16 KiB of it would be copied into each of its spans, swell the
///   export queue's memory, and take batches past what collectors accept.
struct Headers<'a> {
    map: &'a axum::http::HeaderMap,
    /// The `tracestate` list as read: borrowed when one header holds it whole.
    tracestate: Option<Cow<'a, str>>,
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
/// The `tracestate` kept at most, in characters: what the recommendation asks every
/// vendor to propagate.
const TRACESTATE_MAX: usize = 512;
/// List members longer than this are the first to go when the list is cut.
const TRACESTATE_MEMBER_MAX: usize = 128;

impl<'a> Headers<'a> {
    fn new(map: &'a axum::http::HeaderMap) -> Headers<'a> {
        let mut values = map.get_all(TRACESTATE).iter();
        let tracestate = match (values.next(), values.next()) {
            (None, _) => None,
            (Some(one), None) => one.to_str().ok().map(Cow::Borrowed),
            (Some(_), Some(_)) => Some(Cow::Owned(
                map.get_all(TRACESTATE)
                    .iter()
                    .map(|value| value.to_str())
                    .collect::<Result<Vec<_>, _>>()
                    // A value that is not visible ASCII spoils the list, as it would alone.
                    .map_or_else(|_| String::new(), |values| values.join(",")),
            )),
        };
        Headers {
            map,
            tracestate: tracestate.map(bounded_tracestate),
        }
    }
}

/// `list` cut to `TRACESTATE_MAX` characters as W3C Trace Context (section 3.3.1.5) says:
/// members longer than `TRACESTATE_MEMBER_MAX` go first, then members from the end.
fn bounded_tracestate(list: Cow<'_, str>) -> Cow<'_, str> {
    if list.len() <= TRACESTATE_MAX {
        return list;
    }
    let mut kept: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|member| !member.is_empty() && member.len() <= TRACESTATE_MEMBER_MAX)
        .collect();
    let joined_len = |members: &[&str]| {
        members.iter().map(|m| m.len()).sum::<usize>() + members.len().saturating_sub(1)
    };
    while joined_len(&kept) > TRACESTATE_MAX {
        kept.pop();
    }
    Cow::Owned(kept.join(","))
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => {
                let mut values = self.map.get_all(key).iter();
                let value = values.next()?.to_str().ok()?;
                (values.next().is_none() && is_w3c_traceparent(value.trim())).then_some(value)
            }
            TRACESTATE => self.tracestate.as_deref(),
            _ => self.map.get(key).and_then(|value| value.to_str().ok()),
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.map.keys().map(|name| name.as_str()).collect()
    }
}

/// Whether `value` is a `traceparent` of the W3C Trace Context form:
/// `version-traceid-parentid-flags` in lowercase hex of 2, 32, 16 and 2 digits, neither id all
/// zeros, version `ff` invalid. Version `00` is exactly that; a later version may go on after
/// a `-`, which is ignored.
fn is_w3c_traceparent(value: &str) -> bool {
    fn hex(field: &[u8]) -> bool {
        field
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    }
    fn zeros(field: &[u8]) -> bool {
        field.iter().all(|&b| b == b'0')
    }
    let value = value.as_bytes();
    if value.len() < 55 {
        return false;
    }
    let (head, rest) = value.split_at(55);
    let (version, trace_id, parent_id, flags) =
        (&head[0..2], &head[3..35], &head[36..52], &head[53..55]);
    let dashes = head[2] == b'-' && head[35] == b'-' && head[52] == b'-';
    let tail_allowed = match version {
        b"00" => rest.is_empty(),
        _ => rest.is_empty() || rest[0] == b'-',
    };
    dashes
        && tail_allowed
        && [version, trace_id, parent_id, flags].into_iter().all(hex)
        && version != b"ff"
        && !zeros(trace_id)
        && !zeros(parent_id)
}

/// The caller's trace context, if tracing is on (else nothing is read).
pub(crate) fn parent_from(headers: &axum::http::HeaderMap) -> Option<Context> {
    if !enabled() {
        return None;
    }
    Some(TraceContextPropagator::new().extract(&Headers::new(headers)))
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

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};
    use opentelemetry::propagation::Extractor as _;

    use super::{is_w3c_traceparent, Headers};

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    #[test]
    fn only_a_traceparent_of_the_w3c_form_is_read() {
        let valid = format!("00-{TRACE}-{PARENT}-01");
        let cases: Vec<(&str, String, bool)> = vec![
            ("sampled", valid.clone(), true),
            ("not sampled", format!("00-{TRACE}-{PARENT}-00"), true),
            ("unknown flags", format!("00-{TRACE}-{PARENT}-ff"), true),
            ("a later version", format!("01-{TRACE}-{PARENT}-01"), true),
            (
                "a later version, more after a dash",
                format!("cc-{TRACE}-{PARENT}-01-what-next"),
                true,
            ),
            (
                "version 00 with more after it",
                format!("{valid}-extra"),
                false,
            ),
            (
                "a later version, more without a dash",
                format!("01-{TRACE}-{PARENT}-01x"),
                false,
            ),
            ("version ff", format!("ff-{TRACE}-{PARENT}-01"), false),
            (
                "a one-digit version",
                format!("0-{TRACE}-{PARENT}-01"),
                false,
            ),
            ("short ids", "00-1-2-01".into(), false),
            (
                "a trace id of 31 digits",
                format!("00-{}-{PARENT}-01", &TRACE[1..]),
                false,
            ),
            (
                "a trace id of 33 digits",
                format!("00-{TRACE}0-{PARENT}-01"),
                false,
            ),
            (
                "a parent id of 15 digits",
                format!("00-{TRACE}-{}-01", &PARENT[1..]),
                false,
            ),
            (
                "a signed trace id",
                format!("00-+{}-{PARENT}-01", &TRACE[1..]),
                false,
            ),
            (
                "uppercase hex",
                format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
                false,
            ),
            (
                "a non-hex digit",
                format!("00-{}g-{PARENT}-01", &TRACE[1..]),
                false,
            ),
            (
                "an all-zero trace id",
                format!("00-{}-{PARENT}-01", "0".repeat(32)),
                false,
            ),
            (
                "an all-zero parent id",
                format!("00-{TRACE}-{}-01", "0".repeat(16)),
                false,
            ),
            (
                "a one-digit flags field",
                format!("00-{TRACE}-{PARENT}-1"),
                false,
            ),
            ("underscores for dashes", valid.replace('-', "_"), false),
            ("empty", String::new(), false),
            ("a kilobyte of dashes", "-".repeat(1024), false),
        ];
        for (case, value, read) in cases {
            assert_eq!(is_w3c_traceparent(&value), read, "{case}: {value:?}");
        }
    }

    /// (case, traceparent values, tracestate values, traceparent read, tracestate read)
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        &'a [&'a [u8]],
        Option<&'a str>,
        Option<&'a str>,
    );

    #[test]
    fn two_traceparents_are_not_read_and_several_tracestates_are_one_list() {
        let one = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cases: [Case; 6] = [
            (
                "one of each",
                &[one],
                &[b"a=1,b=2"],
                Some(one),
                Some("a=1,b=2"),
            ),
            ("no tracestate", &[one], &[], Some(one), None),
            (
                "two traceparents",
                &[one, other],
                &[b"a=1"],
                None,
                Some("a=1"),
            ),
            ("the same traceparent twice", &[one, one], &[], None, None),
            (
                "three tracestates",
                &[one],
                &[b"a=1", b"b=2,c=3", b"d=4"],
                Some(one),
                Some("a=1,b=2,c=3,d=4"),
            ),
            (
                "one of them not ASCII",
                &[one],
                &[b"a=1", b"b=\xff"],
                Some(one),
                Some(""),
            ),
        ];
        for (case, traceparents, tracestates, traceparent, tracestate) in cases {
            let mut map = HeaderMap::new();
            for value in traceparents {
                map.append("traceparent", HeaderValue::from_str(value).unwrap());
            }
            for value in tracestates {
                map.append("tracestate", HeaderValue::from_bytes(value).unwrap());
            }
            let headers = Headers::new(&map);
            assert_eq!(headers.get("traceparent"), traceparent, "{case}");
            assert_eq!(headers.get("tracestate"), tracestate, "{case}");
        }
    }

    /// A caller's `tracestate` is kept to 512 characters: members over 128 go first, then
    /// members from the end, the order of the rest kept; a list within bounds is untouched.
    #[test]
    fn a_long_tracestate_is_cut_as_w3c_trace_context_says() {
        let long = |key: &str| format!("{key}={}", "v".repeat(200));
        let short = |n: usize| format!("k{n:02}={}", "x".repeat(36));
        // 40-character members: twelve fit in 512 with their commas, a thirteenth does not.
        let mut members: Vec<String> = (0..20).map(short).collect();
        members.insert(1, long("first-long"));
        members.insert(5, long("second-long"));
        let sent = members.join(",");
        let within: Vec<String> = (0..12).map(short).collect();
        for (case, header, kept) in [
            ("long", sent.clone(), within.join(",")),
            ("within bounds", within.join(","), within.join(",")),
            (
                "a long member alone within bounds",
                long("only"),
                long("only"),
            ),
            (
                "thirty members of 500 characters",
                (0..30)
                    .map(|n| long(&format!("m{n}")))
                    .collect::<Vec<_>>()
                    .join(","),
                String::new(),
            ),
        ] {
            let mut map = HeaderMap::new();
            map.append("tracestate", HeaderValue::from_str(&header).unwrap());
            let headers = Headers::new(&map);
            let read = headers.get("tracestate").unwrap();
            assert!(read.len() <= 512, "{case}: {} characters", read.len());
            assert_eq!(read, kept, "{case}");
        }
    }
}
