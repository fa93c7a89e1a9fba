//! `/metrics`: scraped from the real server and parsed with the official Prometheus client's
//! OpenMetrics parser; the counts match what the test did.

use std::{collections::BTreeSet, io::Write as _, process::Stdio};

use serde_json::Value;
use token_authority::pb;

use crate::helpers::{admin, metric, DataDir, TestServer};

/// Parses OpenMetrics text with prometheus_client's strict parser: {sample name: [[labels, value]]}.
fn parse(text: &str) -> serde_json::Map<String, Value> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(crate::tools::python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the parser refused /metrics: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn value(samples: &serde_json::Map<String, Value>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let series = samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name}"));
    series
        .as_array()
        .unwrap()
        .iter()
        .find(|s| labels.iter().all(|(k, v)| s[0][*k] == *v))
        .unwrap_or_else(|| panic!("no {name} with {labels:?}: {series}"))[1]
        .as_f64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_parse_as_openmetrics() {
    let dir = DataDir::new();
    let server = TestServer::start_with(crate::helpers::config(
        &dir,
        &["--algorithms", "RS256,EdDSA"],
    ))
    .await;
    let token = server.issue("svc", &["api"]).await;
    server.issue("svc", &["api"]).await;
    server
        .client
        .clone()
        .issue_token(pb::IssueTokenRequest {
            subject: "s".into(),
            algorithm: "EdDSA".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(server.verify(&token.token, "api").await.valid);
    server.verify("garbage", "").await;
    server.verify(&token.token, "other").await;
    server.rotate().await;
    let url = server.url("/.well-known/jwks.json");
    let first = server.http.get(&url).send().await.unwrap();
    let etag = first.headers()["etag"].clone();
    server
        .http
        .get(&url)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    server
        .client
        .clone()
        .list_keys(admin(pb::ListKeysRequest {}))
        .await
        .unwrap();

    let response = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let samples = parse(&response.text().await.unwrap());
    let p = "token_authority_";
    assert_eq!(
        value(
            &samples,
            &format!("{p}tokens_issued_total"),
            &[("algorithm", "RS256")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}tokens_issued_total"),
            &[("algorithm", "EdDSA")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}signing_duration_seconds_count"),
            &[("algorithm", "RS256")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}verifications_total"),
            &[("outcome", "valid")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}verifications_total"),
            &[("outcome", "invalid"), ("reason", "MALFORMED")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}verifications_total"),
            &[("outcome", "invalid"), ("reason", "AUDIENCE_MISMATCH")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}key_events_total"),
            &[("event", "rotation")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}key_events_total"),
            &[("event", "revocation")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}jwks_responses_total"),
            &[("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}jwks_responses_total"),
            &[("status", "304")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}rpc_duration_seconds_count"),
            &[("method", "IssueToken")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}rpc_duration_seconds_count"),
            &[("method", "VerifyToken")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{p}rpc_duration_seconds_count"),
            &[("method", "ListKeys")]
        ),
        1.0
    );
    let age = value(
        &samples,
        &format!("{p}current_key_age_seconds"),
        &[("algorithm", "RS256")],
    );
    assert!((0.0..5.0).contains(&age), "{age}");
    let until = value(
        &samples,
        &format!("{p}seconds_until_next_rotation"),
        &[("algorithm", "EdDSA")],
    );
    assert!((86000.0..=86400.0).contains(&until), "{until}");
    server.stop().await;
}

/// `token_authority_key_set_fingerprint` identifies the JWKS served: the same keys give the
/// same value in another process (a restart here, a replica in production), other keys
/// another value, and a rotation, which publishes a new key, changes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_set_fingerprint_is_equal_for_the_same_keys_and_changes_with_them() {
    let name = "token_authority_key_set_fingerprint";
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let jwks = server.http_jwks().await;
    let fingerprint = metric(&server, name).await;
    assert!(
        fingerprint > 0.0 && fingerprint < 2f64.powi(52) && fingerprint.fract() == 0.0,
        "{fingerprint}"
    );
    server.stop().await;

    // The same keys in another process.
    let server = TestServer::start(&dir).await;
    assert_eq!(server.http_jwks().await, jwks);
    assert_eq!(metric(&server, name).await, fingerprint);

    // Other keys.
    let other_dir = DataDir::new();
    let other = TestServer::start(&other_dir).await;
    assert_ne!(other.http_jwks().await, jwks);
    assert_ne!(metric(&other, name).await, fingerprint);
    other.stop().await;

    // A rotation publishes a new next key, a revocation withdraws one: each time another
    // set, another fingerprint.
    let signing = server.issue("svc", &[]).await.key_id;
    server.rotate().await;
    assert_ne!(server.http_jwks().await, jwks);
    let rotated = metric(&server, name).await;
    assert_ne!(rotated, fingerprint);
    server
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: signing.clone(),
            reason: "fingerprint test".into(),
        }))
        .await
        .unwrap();
    assert!(!crate::helpers::kids(&server.http_jwks().await).contains(&signing));
    let revoked = metric(&server, name).await;
    assert!(revoked != rotated && revoked != fingerprint, "{revoked}");
    server.stop().await;
    let server = TestServer::start(&dir).await;
    assert_eq!(metric(&server, name).await, revoked);
    server.stop().await;
}

/// The reasons the README's metrics table lists for `verifications_total`.
fn documented_reasons() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let row = readme
        .lines()
        .find(|line| line.starts_with("| `token_authority_verifications_total` |"))
        .expect("the README's metrics table has a verifications row");
    row.split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| word.len() > 1 && word.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_owned)
        .collect()
}

/// Every reason of the gRPC enum is in the README, and is a series at 0 from the start,
/// before any token was verified: none is left out until its first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_shows_at_zero_from_the_start() {
    let reasons: BTreeSet<String> = (1..)
        .map_while(|value| pb::VerifyFailureReason::try_from(value).ok())
        .map(|reason| reason.as_str_name().to_owned())
        .collect();
    assert_eq!(reasons.len(), 16, "{reasons:?}");
    assert_eq!(documented_reasons(), reasons, "the README's reasons");

    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse(&text);
    let name = "token_authority_verifications_total";
    let shown: BTreeSet<String> = samples[name]
        .as_array()
        .unwrap()
        .iter()
        .filter(|sample| sample[0]["outcome"] == "invalid")
        .map(|sample| sample[0]["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown, reasons, "the reasons /metrics shows at start");
    for reason in &reasons {
        assert_eq!(
            value(
                &samples,
                name,
                &[("outcome", "invalid"), ("reason", reason)]
            ),
            0.0
        );
    }
    server.stop().await;
}

/// The README's metrics table lists every family `/metrics` serves, and nothing it does not
/// (a counter under its `_total` name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_lists_every_metric_family_served() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `token_authority_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("token_authority_{name}"))
        .collect();
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.stop().await;
    let mut served: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|line| match line.split_once(' ') {
            Some((name, "counter")) => format!("{name}_total"),
            Some((name, _)) => name.to_owned(),
            None => line.to_owned(),
        })
        .collect();
    // Served only with a policy that trusts an issuer, as its row says.
    served.insert("token_authority_caller_jwks_fetch_failures_total".to_owned());
    // Served only with TLS, as its row says (tls::the_certificate_expiry_metrics_...).
    served.insert("token_authority_tls_certificate_expiry_seconds".to_owned());
    let missing: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "served but not in the README's table: {missing:?}; in the table but not served: {stale:?}"
    );
}

/// `token_authority_rpc_requests_total` counts each answer by method and gRPC code. Every
/// method's every code is there from the start at 0, so the first failure is already a rate
/// (a series that appears at 1 would hide it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_method_and_code_from_zero() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let count = |method: &'static str, code: &'static str| {
        let name =
            format!(r#"token_authority_rpc_requests_total{{method="{method}",code="{code}"}}"#);
        let server = &server;
        async move { metric(server, &name).await }
    };
    for (method, code) in [
        ("IssueToken", "OK"),
        ("IssueToken", "INVALID_ARGUMENT"),
        ("IssueToken", "UNAVAILABLE"),
        ("RotateKeys", "UNAUTHENTICATED"),
        ("SetTokenStatus", "DATA_LOSS"),
    ] {
        assert_eq!(count(method, code).await, 0.0, "{method} {code} at start");
    }

    server.issue("svc", &["api"]).await;
    server.issue("svc", &["api"]).await;
    let mut client = server.client.clone();
    let refused = client
        .issue_token(pb::IssueTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let refused = client
        .rotate_keys(pb::RotateKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    client
        .list_keys(admin(pb::ListKeysRequest {}))
        .await
        .unwrap();

    for (method, code, expected) in [
        ("IssueToken", "OK", 2.0),
        ("IssueToken", "INVALID_ARGUMENT", 1.0),
        ("IssueToken", "UNAVAILABLE", 0.0),
        ("RotateKeys", "UNAUTHENTICATED", 1.0),
        ("RotateKeys", "OK", 0.0),
        ("ListKeys", "OK", 1.0),
    ] {
        assert_eq!(count(method, code).await, expected, "{method} {code}");
    }
    server.stop().await;
}
