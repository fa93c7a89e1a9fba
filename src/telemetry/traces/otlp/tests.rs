//! The request `encode` writes, decoded with `opentelemetry-proto`'s types, against that
//! crate's own conversion of the same spans (what `opentelemetry-otlp` sends).

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    Array, InstrumentationScope, KeyValue, StringValue, Value,
};
use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
};
use opentelemetry_sdk::{
    trace::{SpanData, SpanEvents, SpanLinks},
    Resource,
};
use prost::Message as _;

use super::encode::{export_request, EncodedResource};

fn at(seconds: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(seconds, nanos)
}

/// A value of every kind, defaults among them (their presence is their type).
fn every_kind_of_attribute() -> Vec<KeyValue> {
    vec![
        KeyValue::new("caller", "spiffe://example.org/ns/payments/sa/api"),
        KeyValue::new("empty", ""),
        KeyValue::new("yes", true),
        KeyValue::new("no", false),
        KeyValue::new("zero", 0_i64),
        KeyValue::new("negative", -42_i64),
        KeyValue::new("big", i64::MAX),
        KeyValue::new("ratio", 0.25_f64),
        KeyValue::new("nan-free zero", 0.0_f64),
        KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
        KeyValue::new("ints", Value::Array(Array::I64(vec![0, -1, 7]))),
        KeyValue::new("floats", Value::Array(Array::F64(vec![1.5, -0.0]))),
        KeyValue::new(
            "strings",
            Value::Array(Array::String(vec![
                StringValue::from("a"),
                StringValue::from(""),
            ])),
        ),
        KeyValue::new("no items", Value::Array(Array::I64(Vec::new()))),
        KeyValue::new(String::from("an owned key"), String::from("an owned value")),
    ]
}

fn span(
    trace: u128,
    id: u64,
    parent: u64,
    scope: &InstrumentationScope,
    edit: impl FnOnce(&mut SpanData),
) -> SpanData {
    let mut span = SpanData {
        span_context: SpanContext::new(
            TraceId::from(trace),
            SpanId::from(id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::from(parent),
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Borrowed("sign"),
        start_time: at(1_790_000_000, 123_456_789),
        end_time: at(1_790_000_000, 223_456_789),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    };
    edit(&mut span);
    span
}

fn batch() -> Vec<SpanData> {
    let ours = InstrumentationScope::builder("token-authority").build();
    let other = InstrumentationScope::builder("another")
        .with_version("1.2.3")
        .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
        .with_attributes([KeyValue::new("scope.attribute", 3_i64)])
        .build();
    let caller_state = TraceState::from_key_value([("vendor", "a"), ("other", "b:c")]).unwrap();
    vec![
        // A call's span, child of a caller's: every field the encoder writes.
        span(0xabc, 1, 0x77, &ours, |span| {
            span.span_context = SpanContext::new(
                TraceId::from(0xabc),
                SpanId::from(1),
                TraceFlags::SAMPLED,
                false,
                caller_state.clone(),
            );
            span.parent_span_is_remote = true;
            span.span_kind = SpanKind::Server;
            span.name = Cow::Owned("tokenauthority.v1.TokenAuthority/IssueToken".into());
            span.attributes = every_kind_of_attribute();
            span.dropped_attributes_count = 2;
            let mut events = SpanEvents::default();
            events.events = vec![
                Event::new(
                    "retry",
                    at(1_790_000_000, 150_000_000),
                    vec![KeyValue::new("n", 1_i64)],
                    1,
                ),
                Event::new("", UNIX_EPOCH, Vec::new(), 0),
            ];
            events.dropped_count = 3;
            span.events = events;
            let mut links = SpanLinks::default();
            links.links = vec![
                Link::new(
                    SpanContext::new(
                        TraceId::from(0xdef),
                        SpanId::from(9),
                        TraceFlags::default(),
                        true,
                        caller_state.clone(),
                    ),
                    vec![KeyValue::new("why", "batch")],
                    4,
                ),
                Link::with_context(SpanContext::new(
                    TraceId::from(0x123),
                    SpanId::from(10),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::NONE,
                )),
            ];
            links.dropped_count = 5;
            span.links = links;
            span.status = Status::error("the policy refused the caller");
        }),
        // A root span of another scope, between two of ours: grouping keeps the order.
        span(0x1, 2, 0, &other, |span| {
            span.span_kind = SpanKind::Client;
            span.status = Status::Ok;
            // Before 1970: no time is written.
            span.start_time = UNIX_EPOCH - Duration::from_secs(1);
        }),
        span(0xabc, 3, 1, &ours, |span| {
            span.span_kind = SpanKind::Producer;
        }),
        // Bodies past 127 and 16,383 bytes: their lengths take two and three bytes, at
        // every level of nesting.
        span(0x2, 4, 0, &other, |span| {
            span.span_kind = SpanKind::Consumer;
            span.attributes = vec![
                KeyValue::new("medium", "m".repeat(200)),
                KeyValue::new("large", "l".repeat(20_000)),
            ];
        }),
    ]
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_schema_url(
            [
                KeyValue::new("service.name", "token-authority"),
                KeyValue::new("service.instance.id", "pod-0"),
                KeyValue::new("replicas", 3_i64),
            ],
            "https://opentelemetry.io/schemas/1.30.0",
        )
        .build()
}

fn reference(spans: Vec<SpanData>, resource: &Resource) -> ExportTraceServiceRequest {
    let resource = ResourceAttributesWithSchema::from(resource);
    ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(spans, &resource),
    }
}

#[test]
fn the_request_is_the_one_opentelemetry_proto_makes_of_the_same_spans() {
    let resource = resource();
    let spans = batch();
    let written = export_request(&spans, &EncodedResource::new(&resource));
    let decoded = ExportTraceServiceRequest::decode(written.as_slice()).unwrap();
    assert_eq!(decoded, reference(spans, &resource));
}

#[test]
fn each_span_alone_and_no_span_at_all_are_the_same_too() {
    let resource = resource();
    let encoded = EncodedResource::new(&resource);
    for span in batch() {
        let written = export_request(std::slice::from_ref(&span), &encoded);
        let decoded = ExportTraceServiceRequest::decode(written.as_slice()).unwrap();
        assert_eq!(
            decoded,
            reference(vec![span.clone()], &resource),
            "{span:?}"
        );
    }
    let written = export_request(&[], &encoded);
    let decoded = ExportTraceServiceRequest::decode(written.as_slice()).unwrap();
    assert_eq!(decoded, reference(Vec::new(), &resource));
    // The empty resource the exporter starts with, before the provider sets its own.
    let empty = Resource::builder_empty().build();
    let written = export_request(&batch(), &EncodedResource::default());
    let decoded = ExportTraceServiceRequest::decode(written.as_slice()).unwrap();
    assert_eq!(decoded, reference(batch(), &empty));
}
