//! Finished spans written straight into an OTLP `ExportTraceServiceRequest`, in protobuf.
//!
//! The message is the one `opentelemetry-proto` builds from the same spans (the tests decode
//! ours with its types and compare it with its conversion); it is written in one pass from
//! the spans as the SDK hands them over, with no copy of the batch and no string allocated
//! per name, attribute key or value. A nested message is written in place behind a one-byte
//! length that is widened once its body is known (`nested`): inner messages are nearly all
//! under 128 bytes, so the body rarely moves.
//!
//! Field numbers are those of `opentelemetry/proto/{collector/trace,trace,common,resource}/v1`.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::{
    trace::{SpanContext, SpanKind, Status},
    Array, InstrumentationScope, KeyValue, Value,
};
use opentelemetry_sdk::{trace::SpanData, Resource};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

/// `Span.flags`: the span's parent is known to be remote or local (always, for ours)...
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
/// ...and it is remote.
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The `Resource` of every span, written once: `ResourceSpans.resource` and its schema URL.
#[derive(Clone, Debug, Default)]
pub(crate) struct EncodedResource {
    message: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub(crate) fn new(resource: &Resource) -> EncodedResource {
        let mut message = Vec::new();
        for (key, value) in resource.iter() {
            nested(&mut message, 1, |buf| key_value(buf, key.as_str(), value));
        }
        EncodedResource {
            message,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// The request exporting `spans`, grouped by instrumentation scope in the order each scope
/// first appears (the spans of a scope keep their order).
pub(crate) fn export_request(spans: &[SpanData], resource: &EncodedResource) -> Vec<u8> {
    let mut scopes: Vec<&InstrumentationScope> = Vec::with_capacity(1);
    for span in spans {
        if !scopes.contains(&&span.instrumentation_scope) {
            scopes.push(&span.instrumentation_scope);
        }
    }
    // Nearly always one scope, the server's tracer: its spans need no second comparison.
    let one_scope = scopes.len() == 1;
    // About 400 bytes for a call's span with its attributes, under 100 for a child's.
    let mut buf = Vec::with_capacity(64 + spans.len() * 256);
    nested(&mut buf, 1, |buf| {
        nested(buf, 1, |buf| buf.extend_from_slice(&resource.message));
        for scope in &scopes {
            nested(buf, 2, |buf| {
                nested(buf, 1, |buf| instrumentation_scope(buf, scope));
                let in_scope =
                    |span: &&SpanData| one_scope || &span.instrumentation_scope == *scope;
                for span in spans.iter().filter(in_scope) {
                    nested(buf, 2, |buf| span_message(buf, span));
                }
                string(buf, 3, scope.schema_url().unwrap_or_default());
            });
        }
        string(buf, 3, &resource.schema_url);
    });
    buf
}

fn instrumentation_scope(buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    string(buf, 1, scope.name());
    string(buf, 2, scope.version().unwrap_or_default());
    for attribute in scope.attributes() {
        nested(buf, 3, |buf| attribute_message(buf, attribute));
    }
}

fn span_message(buf: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(buf, 1, &context.trace_id().to_bytes());
    bytes(buf, 2, &context.span_id().to_bytes());
    trace_state(buf, 3, context);
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes(buf, 4, &span.parent_span_id.to_bytes());
    }
    string(buf, 5, &span.name);
    uint(buf, 6, span_kind(&span.span_kind));
    fixed64(buf, 7, nanos(span.start_time));
    fixed64(buf, 8, nanos(span.end_time));
    for attribute in &span.attributes {
        nested(buf, 9, |buf| attribute_message(buf, attribute));
    }
    uint(buf, 10, span.dropped_attributes_count.into());
    for event in span.events.iter() {
        nested(buf, 11, |buf| {
            fixed64(buf, 1, nanos(event.timestamp));
            string(buf, 2, &event.name);
            for attribute in &event.attributes {
                nested(buf, 3, |buf| attribute_message(buf, attribute));
            }
            uint(buf, 4, event.dropped_attributes_count.into());
        });
    }
    uint(buf, 12, span.events.dropped_count.into());
    for link in span.links.iter() {
        nested(buf, 13, |buf| {
            let context = &link.span_context;
            bytes(buf, 1, &context.trace_id().to_bytes());
            bytes(buf, 2, &context.span_id().to_bytes());
            trace_state(buf, 3, context);
            for attribute in &link.attributes {
                nested(buf, 4, |buf| attribute_message(buf, attribute));
            }
            uint(buf, 5, link.dropped_attributes_count.into());
            fixed32(buf, 6, flags(context, context.is_remote()));
        });
    }
    uint(buf, 14, span.links.dropped_count.into());
    // Always present, as the SDK's exporter sends it: Unset is an empty message.
    nested(buf, 15, |buf| {
        let (code, message) = match &span.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        string(buf, 2, message);
        uint(buf, 3, code);
    });
    fixed32(buf, 16, flags(context, span.parent_span_is_remote));
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn flags(context: &SpanContext, remote: bool) -> u32 {
    let mut flags = u32::from(context.trace_flags().to_u8()) | CONTEXT_HAS_IS_REMOTE;
    if remote {
        flags |= CONTEXT_IS_REMOTE;
    }
    flags
}

fn trace_state(buf: &mut Vec<u8>, field: u32, context: &SpanContext) {
    let state = context.trace_state();
    // `header` allocates only for a state the caller sent.
    if *state != opentelemetry::trace::TraceState::NONE {
        string(buf, field, &state.header());
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

fn attribute_message(buf: &mut Vec<u8>, attribute: &KeyValue) {
    key_value(buf, attribute.key.as_str(), &attribute.value);
}

/// A `KeyValue` message's fields: the key, and the value as an `AnyValue`.
fn key_value(buf: &mut Vec<u8>, key: &str, value: &Value) {
    string(buf, 1, key);
    nested(buf, 2, |buf| any_value(buf, value));
}

/// An `AnyValue`'s one field. Its oneof is written even when the value is the default
/// (`false`, 0, ""), as prost does: the field's presence is the value's type.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(value) => {
            encode_key(1, WireType::LengthDelimited, buf);
            length_delimited(buf, value.as_str().as_bytes());
        }
        Value::Bool(value) => {
            encode_key(2, WireType::Varint, buf);
            encode_varint(u64::from(*value), buf);
        }
        Value::I64(value) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(*value as u64, buf);
        }
        Value::F64(value) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&value.to_bits().to_le_bytes());
        }
        Value::Array(array) => nested(buf, 5, |buf| match array {
            Array::Bool(values) => array_values(buf, values, |v| Value::Bool(*v)),
            Array::I64(values) => array_values(buf, values, |v| Value::I64(*v)),
            Array::F64(values) => array_values(buf, values, |v| Value::F64(*v)),
            Array::String(values) => {
                for value in values {
                    nested(buf, 1, |buf| {
                        encode_key(1, WireType::LengthDelimited, buf);
                        length_delimited(buf, value.as_str().as_bytes());
                    });
                }
            }
            // A kind of array added after this was written: sent as an empty array rather
            // than not at all.
            _ => {}
        }),
        // A kind of value added after this was written: the attribute goes with no value.
        _ => {}
    }
}

fn array_values<T>(buf: &mut Vec<u8>, values: &[T], value: impl Fn(&T) -> Value) {
    for item in values {
        nested(buf, 1, |buf| any_value(buf, &value(item)));
    }
}

/// A length-delimited field holding a message that `body` writes: written in place, behind
/// a length of one byte that is widened (moving the body) when the body is 128 bytes or more.
fn nested(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(field, WireType::LengthDelimited, buf);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = buf.len() - at - 1;
    let width = encoded_len_varint(len as u64);
    if width > 1 {
        let end = buf.len();
        buf.resize(end + width - 1, 0);
        buf.copy_within(at + 1..end, at + width);
    }
    let mut prefix = &mut buf[at..at + width];
    encode_varint(len as u64, &mut prefix);
}

fn length_delimited(buf: &mut Vec<u8>, value: &[u8]) {
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

/// A `string` field, left out when empty (proto3's default).
fn string(buf: &mut Vec<u8>, field: u32, value: &str) {
    bytes(buf, field, value.as_bytes());
}

/// A `bytes` field, left out when empty.
fn bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        encode_key(field, WireType::LengthDelimited, buf);
        length_delimited(buf, value);
    }
}

/// A varint field (`uint32`, an enum), left out when 0.
fn uint(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        encode_key(field, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

fn fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        encode_key(field, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        encode_key(field, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}
