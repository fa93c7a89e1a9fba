use reqwest::{header, Method, StatusCode};

use crate::helpers::{DataDir, TestServer};

#[tokio::test]
async fn jwks_has_cache_headers_a_strong_etag_and_answers_304() {
    let dir = DataDir::new();
    let server =
        TestServer::start_with(crate::helpers::config(&dir, &["--jwks-max-age", "120s"])).await;
    let url = server.url("/.well-known/jwks.json");
    let first = server.http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        first.headers()[header::CACHE_CONTROL],
        "public, max-age=120, stale-while-revalidate=60, stale-if-error=86400"
    );
    let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"),
        "{etag}"
    );

    let cases: Vec<(&str, String, StatusCode)> = vec![
        ("same tag", etag.clone(), StatusCode::NOT_MODIFIED),
        (
            "weak form of the same tag",
            format!("W/{etag}"),
            StatusCode::NOT_MODIFIED,
        ),
        (
            "in a list",
            format!("\"other\", {etag}"),
            StatusCode::NOT_MODIFIED,
        ),
        ("star", "*".into(), StatusCode::NOT_MODIFIED),
        ("other tag", "\"other\"".into(), StatusCode::OK),
    ];
    for (name, value, status) in cases {
        let response = server
            .http
            .get(&url)
            .header(header::IF_NONE_MATCH, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{name}");
        assert_eq!(response.headers()[header::ETAG], etag.as_str(), "{name}");
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "public, max-age=120, stale-while-revalidate=60, stale-if-error=86400",
            "{name}"
        );
        if status == StatusCode::NOT_MODIFIED {
            assert!(
                response.bytes().await.unwrap().is_empty(),
                "{name}: 304 with a body"
            );
        }
    }

    // The ETag changes exactly when the key set does.
    let again = server.http.get(&url).send().await.unwrap();
    assert_eq!(again.headers()[header::ETAG], etag.as_str());
    server.rotate().await;
    let rotated = server
        .http
        .get(&url)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    assert_ne!(rotated.headers()[header::ETAG], etag.as_str());
    server.stop().await;
}

#[tokio::test]
async fn http_routes_methods_and_status_codes() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let cases: Vec<(Method, &str, StatusCode)> = vec![
        (Method::GET, "/.well-known/jwks.json", StatusCode::OK),
        (Method::HEAD, "/.well-known/jwks.json", StatusCode::OK),
        (
            Method::GET,
            "/.well-known/openid-configuration",
            StatusCode::OK,
        ),
        (Method::GET, "/healthz", StatusCode::OK),
        (Method::GET, "/readyz", StatusCode::OK),
        (Method::GET, "/", StatusCode::NOT_FOUND),
        (Method::GET, "/.well-known/jwks", StatusCode::NOT_FOUND),
        (Method::GET, "/keys", StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/.well-known/jwks.json",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::PUT,
            "/.well-known/jwks.json",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::DELETE,
            "/.well-known/openid-configuration",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (Method::POST, "/healthz", StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (method, path, status) in cases {
        let response = server
            .http
            .request(method.clone(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn discovery_document_points_at_the_jwks() {
    let dir = DataDir::new();
    let server = TestServer::start_with(crate::helpers::config(
        &dir,
        &["--issuer", "https://tokens.example.internal"],
    ))
    .await;
    let doc: serde_json::Value = server.http_json("/.well-known/openid-configuration").await;
    assert_eq!(doc["issuer"], "https://tokens.example.internal");
    assert_eq!(
        doc["jwks_uri"],
        "https://tokens.example.internal/.well-known/jwks.json"
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    // The members OpenID Connect Discovery 1.0 section 3 requires of a provider that only
    // issues tokens (no authorization or token endpoint), as Kubernetes' service-account
    // issuer publishes them.
    assert_eq!(
        doc["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(
        doc["subject_types_supported"],
        serde_json::json!(["public"])
    );
    for member in [
        "issuer",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ] {
        assert!(!doc[member].is_null(), "{member} missing");
    }
    // The jwks_uri answers with the JWKS.
    let jwks_path = doc["jwks_uri"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://tokens.example.internal");
    let jwks = server.http.get(server.url(jwks_path)).send().await.unwrap();
    assert_eq!(jwks.status(), 200);
    let issued = server.issue("svc", &[]).await;
    let verdict = server.verify(&issued.token, "").await;
    let claims: serde_json::Value = serde_json::from_str(&verdict.claims_json).unwrap();
    assert_eq!(claims["iss"], doc["issuer"]);
    server.stop().await;
}
