//! ExchangeToken's spans: the caller, the decision, the key and its signature, as for
//! IssueToken; never the subject token, the Txn-Token or the client's secret.

use std::time::Duration;

use super::{attribute, traceparent, Receiver, FAST_BATCHES};
use crate::{
    binary::spawn_binary_with_env,
    callers::with_auth,
    helpers::{connect, DataDir},
    txn::{ask, edge, write_policy, Idp, EDGE_SECRET},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_is_traced_with_its_caller_key_and_signature_and_no_token() {
    let receiver = Receiver::start(&[]);
    let idp = Idp::start().await;
    let dir = DataDir::new();
    let policy_arg = write_policy(&dir, &idp);
    let endpoint = receiver.endpoint();
    let mut process = tokio::task::block_in_place(|| {
        spawn_binary_with_env(
            &dir,
            &[
                "--otlp-endpoint",
                &endpoint,
                "--policy-file",
                &policy_arg,
                "--algorithms",
                "ES256",
            ],
            &[FAST_BATCHES],
        )
    });
    let mut client = connect(&process.grpc).await;

    let subject_token = idp.access_token("alice", "orders.read");
    let mut allowed = with_auth(ask("orders.read", &subject_token), Some(&edge()));
    let allowed_trace = "6e0c63257de34c92bf9efcd03927272e";
    allowed.metadata_mut().insert(
        "traceparent",
        traceparent(allowed_trace, "00f067aa0ba902b9"),
    );
    let issued = client.exchange_token(allowed).await.unwrap().into_inner();
    let kid = {
        let header = issued.access_token.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };

    // A scope no rule grants the edge: refused, and traced as such.
    let mut refused = with_auth(ask("orders.admin", &subject_token), Some(&edge()));
    let refused_trace = "7f1d74368ef45da3c0a0fde14a38383f";
    refused.metadata_mut().insert(
        "traceparent",
        traceparent(refused_trace, "00f067aa0ba902ba"),
    );
    let status = client.exchange_token(refused).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    let name = "tokenauthority.v1.TokenAuthority/ExchangeToken";
    let rpc = receiver.span("of the exchange", |s| {
        s["trace_id"] == allowed_trace && s["name"] == name
    });
    assert_eq!(rpc["parent_span_id"], "00f067aa0ba902b9", "{rpc:#}");
    assert_eq!(attribute(&rpc, "caller"), "client:edge", "{rpc:#}");
    assert_eq!(attribute(&rpc, "decision"), "allowed", "{rpc:#}");
    assert_eq!(attribute(&rpc, "kid"), kid.as_str(), "{rpc:#}");
    assert_eq!(attribute(&rpc, "alg"), "ES256", "{rpc:#}");
    assert_eq!(attribute(&rpc, "rpc.grpc.status_code"), 0, "{rpc:#}");
    let sign = receiver.span("of the Txn-Token's signature", |s| {
        s["trace_id"] == allowed_trace && s["name"] == "sign"
    });
    assert_eq!(sign["parent_span_id"], rpc["span_id"], "{sign:#}");
    assert_eq!(sign["attributes"], serde_json::json!({}), "{sign:#}");

    let refusal = receiver.span("of the refused exchange", |s| {
        s["trace_id"] == refused_trace && s["name"] == name
    });
    assert_eq!(attribute(&refusal, "caller"), "client:edge", "{refusal:#}");
    assert_eq!(attribute(&refusal, "decision"), "scope", "{refusal:#}");
    assert_eq!(
        attribute(&refusal, "rpc.grpc.status_code"),
        7,
        "{refusal:#}"
    );
    assert!(attribute(&refusal, "kid").is_null(), "{refusal:#}");
    // A refusal signs nothing.
    std::thread::sleep(Duration::from_millis(500));
    let spans = receiver.spans.lock().unwrap().clone();
    assert!(
        !spans
            .iter()
            .any(|s| s["trace_id"] == refused_trace && s["name"] == "sign"),
        "a refused exchange has a signature's span"
    );

    // Never the subject token, the Txn-Token, a part of either, or the client's secret.
    let text = serde_json::to_string(&spans).unwrap();
    let authorization = edge();
    let mut secrets: Vec<&str> = subject_token.split('.').collect();
    secrets.extend(issued.access_token.split('.'));
    secrets.extend([EDGE_SECRET, authorization.as_str()]);
    for secret in secrets {
        assert!(!text.contains(secret), "a span carries {secret}");
    }
    tokio::task::block_in_place(|| process.terminate());
}
