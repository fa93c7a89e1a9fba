//! Every supported algorithm over the real server: RS256, PS256, ES256 and EdDSA keys side by
//! side, each with its own lifecycle, each verified by an independent library.

use token_authority::pb;
use tonic::Code;

use crate::helpers::{admin, config, verify_independently, DataDir, TestServer};

const ALL: [&str; 4] = ["RS256", "PS256", "ES256", "EdDSA"];

async fn issue_with(
    server: &TestServer,
    alg: &str,
) -> Result<pb::IssueTokenResponse, tonic::Status> {
    server
        .client
        .clone()
        .issue_token(pb::IssueTokenRequest {
            subject: format!("svc-{alg}"),
            audience: vec!["api".into()],
            algorithm: alg.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn every_algorithm_issues_tokens_any_library_verifies() {
    let dir = DataDir::new();
    let server =
        TestServer::start_with(config(&dir, &["--algorithms", "ES256,RS256,PS256,EdDSA"])).await;
    let jwks = server.http_jwks().await;
    let keys = jwks["keys"].as_array().unwrap();
    // A current and a next key per algorithm.
    assert_eq!(keys.len(), 8);
    for key in keys {
        let members: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let expected: &[&str] = match key["kty"].as_str().unwrap() {
            "RSA" => &["kty", "kid", "use", "alg", "n", "e"],
            "EC" => &["kty", "kid", "use", "alg", "crv", "x", "y"],
            "OKP" => &["kty", "kid", "use", "alg", "crv", "x"],
            other => panic!("unexpected kty {other}"),
        };
        assert_eq!(members.len(), expected.len(), "{key}");
        assert!(members.iter().all(|m| expected.contains(m)), "{key}");
        match key["alg"].as_str().unwrap() {
            "ES256" => assert_eq!(key["crv"], "P-256"),
            "EdDSA" => assert_eq!(key["crv"], "Ed25519"),
            "RS256" | "PS256" => assert_eq!(key["kty"], "RSA"),
            other => panic!("unexpected alg {other}"),
        }
    }
    for alg in ALL {
        let issued = issue_with(&server, alg).await.unwrap();
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(format!("{:?}", header.alg), alg);
        let verdict = server.verify(&issued.token, "api").await;
        assert!(verdict.valid, "{alg}: {verdict:?}");
        assert_eq!(verdict.subject, format!("svc-{alg}"));
        let claims = verify_independently(&jwks, &issued.token, &server.issuer, "api").unwrap();
        assert_eq!(claims["sub"], format!("svc-{alg}"));
        // Tampering is caught by both.
        let mut parts: Vec<&str> = issued.token.split('.').collect();
        let forged_payload = token_authority_jose::b64::encode(format!(
            r#"{{"iss":"{}","sub":"admin","aud":"api","exp":9999999999}}"#,
            server.issuer
        ));
        parts[1] = &forged_payload;
        let forged = parts.join(".");
        assert_eq!(
            server.verify(&forged, "api").await.reason,
            pb::VerifyFailureReason::BadSignature as i32,
            "{alg}"
        );
        assert_eq!(
            verify_independently(&jwks, &forged, &server.issuer, "api"),
            Err("InvalidSignature".to_owned()),
            "{alg}"
        );
    }
    // The default is the first configured.
    let default = server.issue("svc", &[]).await;
    assert_eq!(
        format!(
            "{:?}",
            jsonwebtoken::decode_header(&default.token).unwrap().alg
        ),
        "ES256"
    );
    let discovery: serde_json::Value = server.http_json("/.well-known/openid-configuration").await;
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256", "RS256", "PS256", "EdDSA"])
    );
    server.stop().await;
}

#[tokio::test]
async fn algorithm_requests_are_checked_and_rotation_is_per_algorithm() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(&dir, &["--algorithms", "RS256,EdDSA"])).await;
    for (alg, message) in [
        (
            "ES256",
            "algorithm: ES256 is not configured on this authority (configured: RS256, EdDSA)",
        ),
        (
            "HS256",
            "algorithm: \"HS256\" is not a supported algorithm (RS256, PS256, ES256, EdDSA)",
        ),
        (
            "rs256",
            "algorithm: \"rs256\" is not a supported algorithm (RS256, PS256, ES256, EdDSA)",
        ),
        (
            "none",
            "algorithm: \"none\" is not a supported algorithm (RS256, PS256, ES256, EdDSA)",
        ),
    ] {
        let status = issue_with(&server, alg).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, message),
            "{alg}"
        );
    }
    let rs = issue_with(&server, "RS256").await.unwrap();
    let ed = issue_with(&server, "EdDSA").await.unwrap();
    let rotated = server
        .client
        .clone()
        .rotate_keys(admin(pb::RotateKeysRequest {
            force: true,
            algorithm: "EdDSA".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.previous_key_id, ed.key_id);
    assert_eq!(
        issue_with(&server, "EdDSA").await.unwrap().key_id,
        rotated.current_key_id
    );
    assert_eq!(
        issue_with(&server, "RS256").await.unwrap().key_id,
        rs.key_id,
        "RS256 rotated too"
    );
    // A token whose header claims another algorithm than its key's is refused.
    let parts: Vec<&str> = ed.token.split('.').collect();
    let header =
        token_authority_jose::b64::encode(format!(r#"{{"alg":"RS256","kid":"{}"}}"#, ed.key_id));
    let confused = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(
        server.verify(&confused, "").await.reason,
        pb::VerifyFailureReason::AlgorithmNotAllowed as i32
    );
    server.stop().await;
}
