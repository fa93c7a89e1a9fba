use serde_json::json;
use token_authority::pb;

use crate::helpers::{now, verify_independently, DataDir, TestServer};

#[tokio::test]
async fn issued_token_verifies_with_the_claims_asked_for() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let before = now();
    let issued = server
        .client
        .clone()
        .issue_token(pb::IssueTokenRequest {
            subject: "billing-service".into(),
            audience: vec!["ledger".into(), "audit".into()],
            ttl: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            claims_json: r#"{"tenant":"acme","scopes":["read","write"],"n":9007199254740993}"#
                .into(),
            algorithm: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let signed = issued.issued_at.unwrap();
    let issued_at = signed.seconds as u64;
    let expires_at = issued.expires_at.unwrap().seconds as u64;
    assert!(issued_at >= before && issued_at <= now());
    // issued_at is the signing instant to the nanosecond; the iat claim is its seconds.
    assert!((0..1_000_000_000).contains(&signed.nanos), "{signed:?}");
    assert_eq!(expires_at, issued_at + 600);
    assert_eq!(issued.token.split('.').count(), 3);

    let verdict = server.verify(&issued.token, "audit").await;
    assert!(verdict.valid, "{verdict:?}");
    assert_eq!(verdict.subject, "billing-service");
    assert_eq!(verdict.key_id, issued.key_id);
    assert_eq!(verdict.expires_at.unwrap().seconds as u64, expires_at);
    let claims: serde_json::Value = serde_json::from_str(&verdict.claims_json).unwrap();
    assert_eq!(claims["aud"], json!(["ledger", "audit"]));
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["scopes"], json!(["read", "write"]));
    // An integer above 2^53 survives: claims are JSON text, not a protobuf Struct.
    assert_eq!(claims["n"].as_u64(), Some(9007199254740993));
    assert_eq!(claims["jti"], issued.jti);
    assert_eq!(claims["iss"], server.issuer);
    assert_eq!(claims["exp"].as_u64(), Some(expires_at));
    assert_eq!(claims["iat"].as_u64(), Some(issued_at));
    server.stop().await;
}

#[tokio::test]
async fn default_ttl_applies_and_single_audience_is_a_string() {
    let dir = DataDir::new();
    let server =
        TestServer::start_with(crate::helpers::config(&dir, &["--default-ttl", "7m"])).await;
    let issued = server.issue("svc", &["one"]).await;
    assert_eq!(
        issued.expires_at.unwrap().seconds - issued.issued_at.unwrap().seconds,
        420
    );
    let verdict = server.verify(&issued.token, "").await;
    let claims: serde_json::Value = serde_json::from_str(&verdict.claims_json).unwrap();
    assert_eq!(claims["aud"], "one");
    let no_aud = server.issue("svc", &[]).await;
    let verdict = server.verify(&no_aud.token, "").await;
    assert!(verdict.valid);
    assert!(
        serde_json::from_str::<serde_json::Value>(&verdict.claims_json).unwrap()["aud"].is_null()
    );
    server.stop().await;
}

#[tokio::test]
async fn token_verifies_with_an_independent_jwt_library_from_the_http_jwks() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let issued = server.issue("svc", &["api"]).await;
    let jwks = server.http_jwks().await;
    let claims = verify_independently(&jwks, &issued.token, &server.issuer, "api").unwrap();
    assert_eq!(claims["sub"], "svc");
    // The same library rejects the wrong audience and a tampered token, so this can fail.
    assert_eq!(
        verify_independently(&jwks, &issued.token, &server.issuer, "other"),
        Err("InvalidAudience".to_owned())
    );
    let mut parts: Vec<String> = issued.token.split('.').map(str::to_owned).collect();
    parts[1] = token_authority_jose::b64::encode(br#"{"sub":"admin","iss":"x","exp":9999999999}"#);
    assert_eq!(
        verify_independently(&jwks, &parts.join("."), &server.issuer, "api"),
        Err("InvalidSignature".to_owned())
    );
    server.stop().await;
}

#[tokio::test]
async fn grpc_and_http_serve_the_same_jwks_without_private_members() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    server.rotate().await;
    let grpc = server.grpc_jwks().await;
    let http_body = server
        .http
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(grpc.jwks_json, http_body);
    let jwks: serde_json::Value = serde_json::from_str(&http_body).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    // retired + current + next
    assert_eq!(keys.len(), 3);
    assert_eq!(grpc.keys.len(), 3);
    for (key, structured) in keys.iter().zip(&grpc.keys) {
        let members: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for member in &members {
            assert!(
                ["kty", "kid", "use", "alg", "n", "e"].contains(member),
                "unexpected JWK member {member}"
            );
        }
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                key.get(private).is_none(),
                "private member {private} published"
            );
        }
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "RS256");
        assert_eq!(key["kid"], structured.kid);
        assert_eq!(key["n"], structured.n);
        assert_eq!(key["e"], structured.e);
    }
    server.stop().await;
}
