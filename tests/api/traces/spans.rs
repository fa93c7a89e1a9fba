//! A request's spans: children of the caller's, with the caller, decision, kid and
//! algorithm, and never a token.

use serde_json::Value;
use token_authority::pb;

use super::{attribute, traced_binary, traceparent, with_parent, Receiver};
use crate::helpers::{admin, connect, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_children_of_the_callers_with_their_attributes_and_no_token() {
    let receiver = Receiver::start(&[]);
    let dir = crate::helpers::DataDir::new();
    let mut process = traced_binary(&dir, &receiver, "token_authority=debug");
    let mut client = connect(&process.grpc).await;

    let issue_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let issue_parent = "00f067aa0ba902b7";
    let issued = client
        .issue_token(with_parent(
            pb::IssueTokenRequest {
                subject: "svc".into(),
                audience: vec!["api".into()],
                ..Default::default()
            },
            issue_trace,
            issue_parent,
        ))
        .await
        .unwrap()
        .into_inner();
    let verify_trace = "0af7651916cd43dd8448eb211c80319c";
    let verified = client
        .verify_token(with_parent(
            pb::VerifyTokenRequest {
                token: issued.token.clone(),
                audience: "api".into(),
                ..Default::default()
            },
            verify_trace,
            "b7ad6b7169203331",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid);
    let rotate_trace = "5b8efff798038103d269b633813fc60c";
    let mut rotate = admin(pb::RotateKeysRequest {
        force: true,
        ..Default::default()
    });
    rotate
        .metadata_mut()
        .insert("traceparent", traceparent(rotate_trace, "eee19b7ec3c1b174"));
    client.rotate_keys(rotate).await.unwrap();
    let http_trace = "a3ce929d0e0e47364bf92f3577b34da6";
    let jwks = reqwest::Client::new()
        .get(format!("http://{}/.well-known/jwks.json", process.http))
        .header(
            "traceparent",
            format!("00-{http_trace}-00f067aa0ba902b8-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);

    let rpc = receiver.span("of IssueToken", |s| {
        s["trace_id"] == issue_trace && s["name"] == "tokenauthority.v1.TokenAuthority/IssueToken"
    });
    assert_eq!(rpc["parent_span_id"], issue_parent, "{rpc:#}");
    assert_eq!(rpc["kind"], 2, "SPAN_KIND_SERVER: {rpc:#}");
    assert_eq!(rpc["service"], "token-authority");
    assert_eq!(attribute(&rpc, "kid"), issued.key_id.as_str(), "{rpc:#}");
    assert_eq!(attribute(&rpc, "alg"), "RS256", "{rpc:#}");
    // An open authority (no policy) knows no caller.
    assert!(attribute(&rpc, "caller").is_null(), "{rpc:#}");
    assert_eq!(attribute(&rpc, "decision"), "allowed", "{rpc:#}");
    assert_eq!(attribute(&rpc, "rpc.grpc.status_code"), 0, "{rpc:#}");
    let sign = receiver.span("of the signature", |s| {
        s["trace_id"] == issue_trace && s["name"] == "sign"
    });
    assert_eq!(sign["parent_span_id"], rpc["span_id"], "{sign:#}");
    // It repeats nothing of its parent's, which has the key and the algorithm.
    assert_eq!(sign["attributes"], serde_json::json!({}), "{sign:#}");

    let verify = receiver.span("of VerifyToken", |s| {
        s["trace_id"] == verify_trace && s["name"] == "tokenauthority.v1.TokenAuthority/VerifyToken"
    });
    assert_eq!(attribute(&verify, "decision"), "valid", "{verify:#}");
    assert_eq!(attribute(&verify, "kid"), issued.key_id.as_str());

    let rotate = receiver.span("of RotateKeys", |s| {
        s["trace_id"] == rotate_trace && s["name"] == "tokenauthority.v1.TokenAuthority/RotateKeys"
    });
    assert_eq!(attribute(&rotate, "caller"), "admin", "{rotate:#}");
    let store = receiver.span("of the store's change", |s| {
        s["trace_id"] == rotate_trace && s["name"] == "store"
    });
    assert_eq!(store["parent_span_id"], rotate["span_id"], "{store:#}");
    assert_eq!(attribute(&store, "op"), "transact");
    assert_eq!(attribute(&store, "backend"), "sled");

    let http = receiver.span("of the JWKS request", |s| s["trace_id"] == http_trace);
    assert_eq!(http["name"], "GET /.well-known/jwks.json", "{http:#}");
    assert_eq!(http["parent_span_id"], "00f067aa0ba902b8");
    assert_eq!(attribute(&http, "http.response.status_code"), 200);

    // The request's log lines carry its trace id, and so does its latency bucket.
    let metrics = super::metrics_text(&process).await;
    assert!(
        metrics.lines().any(|line| line
            .starts_with("token_authority_rpc_duration_seconds_bucket{")
            && line.contains(r#"method="IssueToken""#)
            && line.contains(&format!(r#"# {{trace_id="{issue_trace}"}}"#))),
        "no exemplar of the IssueToken trace:\n{metrics}"
    );
    let log = process.terminate();
    assert!(
        log.iter().any(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            event["span"]["trace_id"] == issue_trace
        }),
        "no log line of the IssueToken call carries its trace id:\n{}",
        log.join("\n")
    );

    // Never a token, a part of one, or the admin token, in any span.
    let spans = receiver.spans.lock().unwrap().clone();
    let text = serde_json::to_string(&spans).unwrap();
    let mut secrets: Vec<&str> = issued.token.split('.').collect();
    secrets.extend([issued.token.as_str(), ADMIN_TOKEN]);
    for secret in secrets {
        assert!(!text.contains(secret), "a span carries {secret}");
    }
}

/// A `traceparent` not of the W3C form, or two of them, is ignored (and the `tracestate` with
/// it): the call succeeds in a trace of its own. Several `tracestate` headers are one list. The SDK's propagator alone reads several of these, such
/// as `00-1-2-01`, as a parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_not_of_the_w3c_form_starts_a_trace_of_its_own() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let receiver = Receiver::start(&[]);
    let dir = crate::helpers::DataDir::new();
    let process = traced_binary(&dir, &receiver, "token_authority=info");
    let mut client = connect(&process.grpc).await;
    // (case, traceparent, read as the parent)
    let cases = [
        ("W3C, version 00", format!("00-{TRACE}-{PARENT}-01"), true),
        (
            "W3C, a later version with more",
            format!("cc-{TRACE}-{PARENT}-01-next"),
            true,
        ),
        ("short ids", "00-1-2-01".to_owned(), false),
        (
            "a one-digit version",
            format!("0-{TRACE}-{PARENT}-01"),
            false,
        ),
        (
            "a signed trace id",
            format!("00-+{}-{PARENT}-01", &TRACE[1..]),
            false,
        ),
        (
            "a trace id of 31 digits",
            format!("00-{}-{PARENT}-01", &TRACE[1..]),
            false,
        ),
        (
            "a one-digit flags field",
            format!("00-{TRACE}-{PARENT}-1"),
            false,
        ),
        ("version ff", format!("ff-{TRACE}-{PARENT}-01"), false),
        (
            "version 00 with more",
            format!("00-{TRACE}-{PARENT}-01-extra"),
            false,
        ),
    ];
    let name = "tokenauthority.v1.TokenAuthority/GetJwks";
    for (n, (case, traceparent, read)) in cases.iter().enumerate() {
        let mut request = tonic::Request::new(pb::GetJwksRequest {});
        let metadata = request.metadata_mut();
        metadata.insert("traceparent", traceparent.parse().unwrap());
        // Two headers, one list.
        metadata.append("tracestate", "vendor=caller".parse().unwrap());
        metadata.append("tracestate", "other=2".parse().unwrap());
        client
            .get_jwks(request)
            .await
            .unwrap_or_else(|status| panic!("{case}: {status:?}"));
        // Calls one at a time: the (n+1)th span of GetJwks to arrive is this call's.
        let span = nth_span(&receiver, name, n, case);
        if *read {
            assert_eq!(span["trace_id"], TRACE, "{case}: {span:#}");
            assert_eq!(span["parent_span_id"], PARENT, "{case}: {span:#}");
            assert_eq!(
                span["trace_state"], "vendor=caller,other=2",
                "{case}: {span:#}"
            );
        } else {
            assert_a_trace_of_its_own(&span, traceparent, case);
        }
    }
    // Two W3C traceparents: neither is read.
    let mut request = tonic::Request::new(pb::GetJwksRequest {});
    let other = format!("00-{TRACE}-{PARENT}-01");
    let first = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    request
        .metadata_mut()
        .append("traceparent", first.parse().unwrap());
    request
        .metadata_mut()
        .append("traceparent", other.parse().unwrap());
    request
        .metadata_mut()
        .insert("tracestate", "vendor=caller".parse().unwrap());
    client.get_jwks(request).await.unwrap();
    let span = nth_span(&receiver, name, cases.len(), "two traceparents");
    assert_a_trace_of_its_own(&span, &format!("{first} {other}"), "two traceparents");
    // The HTTP side reads its headers the same way.
    let jwks = reqwest::Client::new()
        .get(format!("http://{}/.well-known/jwks.json", process.http))
        .header("traceparent", "00-1-2-01")
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    let http = receiver.span("of the JWKS request", |s| {
        s["name"] == "GET /.well-known/jwks.json"
    });
    assert_eq!(http["parent_span_id"], "", "a parent was read: {http:#}");
    assert_ne!(http["trace_id"], format!("{:032x}", 1), "{http:#}");
}

/// `span` has no parent, no `tracestate` and a trace id not from `headers`.
fn assert_a_trace_of_its_own(span: &Value, headers: &str, case: &str) {
    assert_eq!(
        span["parent_span_id"], "",
        "{case}: a parent was read: {span:#}"
    );
    let trace_id = span["trace_id"].as_str().unwrap();
    assert!(
        trace_id.len() == 32 && !headers.contains(trace_id.trim_start_matches('0')),
        "{case}: the trace id {trace_id} came from the header"
    );
    assert_eq!(
        span["trace_state"], "",
        "{case}: its tracestate was read: {span:#}"
    );
}

/// The `n`th span named `name` to arrive (from 0), once it has (30 s at most).
fn nth_span(receiver: &Receiver, name: &str, n: usize, case: &str) -> Value {
    nth_span_where(receiver, |s| s["name"] == name, n, case)
}

/// The `n`th span that is `wanted` to arrive (from 0), once it has (30 s at most).
fn nth_span_where(
    receiver: &Receiver,
    wanted: impl Fn(&Value) -> bool,
    n: usize,
    case: &str,
) -> Value {
    let started = std::time::Instant::now();
    loop {
        let spans = receiver.spans.lock().unwrap();
        if let Some(span) = spans.iter().filter(|s| wanted(s)).nth(n) {
            return span.clone();
        }
        drop(spans);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{case}: no span of its call arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A client may send any token as an HTTP method: one not of the standard nine is recorded
/// as `_OTHER` and names its span `HTTP <route>`, as HTTP's semantic conventions ask; the
/// client's own word reaches no collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_of_the_clients_own_names_no_span_and_is_not_exported() {
    let receiver = Receiver::start(&[]);
    let dir = crate::helpers::DataDir::new();
    let process = traced_binary(&dir, &receiver, "token_authority=info");
    let long = "M".repeat(5000);
    let client = reqwest::Client::new();
    let url = format!("http://{}/.well-known/jwks.json", process.http);
    // (method sent, status, recorded as, span name)
    let cases = [
        ("GET", 200, "GET", "GET /.well-known/jwks.json"),
        ("FOO", 405, "_OTHER", "HTTP /.well-known/jwks.json"),
        (long.as_str(), 405, "_OTHER", "HTTP /.well-known/jwks.json"),
    ];
    let jwks_request = |s: &Value| {
        s["kind"] == 2
            && s["name"]
                .as_str()
                .is_some_and(|name| name.ends_with(" /.well-known/jwks.json"))
    };
    for (n, (method, status, recorded, name)) in cases.iter().enumerate() {
        let case = &method[..3];
        let response = client
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), *status, "{case}");
        // Requests one at a time: the (n+1)th span of a JWKS request is this one's.
        let span = nth_span_where(&receiver, jwks_request, n, case);
        assert_eq!(span["name"], *name, "{case}: {span:#}");
        assert_eq!(
            attribute(&span, "http.request.method"),
            *recorded,
            "{case}: {span:#}"
        );
        assert_eq!(
            attribute(&span, "http.response.status_code"),
            *status,
            "{case}"
        );
    }
    let spans = serde_json::to_string(&*receiver.spans.lock().unwrap()).unwrap();
    for method in ["FOO", &long] {
        assert!(
            !spans.contains(method),
            "a span carries the method {}",
            &method[..3]
        );
    }
}
