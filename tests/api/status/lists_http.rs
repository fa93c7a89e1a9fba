//! `GET /statuslists/{id}`: a Status List Token an independent JWT library verifies against
//! the JWKS, whose `lst` shows each change at once, with an ETag and a Cache-Control within
//! its `ttl`; and the refusals (404, 406).

use reqwest::{header, StatusCode};
use token_authority::pb::TokenStatus;
use token_authority_jose::status_list::{Status, StatusList, DEFAULT_MAX_INFLATED};

use super::{header as jws_header, issue_for, list_id, payload, reference, set_request, LONG};
use crate::helpers::{admin, DataDir, TestServer};

/// The list token's claims, verified by `jsonwebtoken` against the HTTP JWKS.
async fn fetch_verified(
    server: &TestServer,
    uri: &str,
) -> (serde_json::Value, reqwest::header::HeaderMap) {
    let path = uri.strip_prefix(&server.issuer).unwrap();
    let response = server.http.get(server.url(path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    let token = response.text().await.unwrap();
    let jwks = server.http_jwks().await;
    let kid = jws_header(&token)["kid"].as_str().unwrap().to_owned();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let jwk = set.find(&kid).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let alg: jsonwebtoken::Algorithm = jwk
        .common
        .key_algorithm
        .unwrap()
        .to_string()
        .parse()
        .unwrap();
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.validate_aud = false;
    validation.set_issuer(&[&server.issuer]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims, payload(&token));
    assert_eq!(jws_header(&token)["typ"], "statuslist+jwt");
    (claims, headers)
}

#[tokio::test]
async fn lists_show_each_change_at_once() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let a = issue_for(&server, "svc-a", LONG).await;
    let b = issue_for(&server, "svc-b", LONG).await;
    let (ra, rb) = (reference(&a.token).unwrap(), reference(&b.token).unwrap());
    assert_eq!(ra.uri, rb.uri);
    assert_ne!(ra.idx, rb.idx);

    let (claims, headers) = fetch_verified(&server, &ra.uri).await;
    assert_eq!(headers[header::CONTENT_TYPE], "application/statuslist+jwt");
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    let cache = headers[header::CACHE_CONTROL].to_str().unwrap().to_owned();
    let max_age: u64 = cache
        .strip_prefix("public, max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((30..=60).contains(&max_age), "{cache}");
    assert_eq!(claims["sub"], ra.uri.as_str());
    assert_eq!(claims["ttl"], 60);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 600);
    let aggregation_uri = format!("{}/statuslists", server.issuer);
    assert_eq!(
        claims["status_list"]["aggregation_uri"],
        aggregation_uri.as_str()
    );
    let list = StatusList::from_claim(&claims["status_list"], DEFAULT_MAX_INFLATED).unwrap();
    assert_eq!(list.bits(), 2);
    assert_eq!(list.size(), 1 << 20);
    assert_eq!(list.get(ra.idx).unwrap(), Status::Valid);

    // Unchanged: 304 on the ETag.
    let again = server
        .http
        .get(server.url(ra.uri.strip_prefix(&server.issuer).unwrap()))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    // The ETag is the SHA-256 of the bytes served: it names that token on every replica
    // and across restarts, never another rendering.
    let raw = server
        .http
        .get(server.url(ra.uri.strip_prefix(&server.issuer).unwrap()))
        .send()
        .await
        .unwrap();
    let tag = raw.headers()[header::ETAG].to_str().unwrap().to_owned();
    let body = raw.text().await.unwrap();
    assert_eq!(
        tag,
        format!(
            "\"{}\"",
            hex::encode(token_authority_jose::crypto::sha256(body.as_bytes()))
        )
    );

    // A revocation shows at the next fetch, with a new ETag.
    let mut client = server.client.clone();
    client
        .set_token_status(admin(set_request(&a.jti, TokenStatus::Invalid)))
        .await
        .unwrap();
    client
        .set_token_status(admin(set_request(&b.jti, TokenStatus::Suspended)))
        .await
        .unwrap();
    let changed = server
        .http
        .get(server.url(ra.uri.strip_prefix(&server.issuer).unwrap()))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()[header::ETAG].to_str().unwrap(), etag);
    let (claims, _) = fetch_verified(&server, &ra.uri).await;
    let list = StatusList::from_claim(&claims["status_list"], DEFAULT_MAX_INFLATED).unwrap();
    assert_eq!(list.get(ra.idx).unwrap(), Status::Invalid);
    assert_eq!(list.get(rb.idx).unwrap(), Status::Suspended);
    let others = (0..list.size())
        .filter(|&i| i != ra.idx && i != rb.idx)
        .filter(|&i| list.get(i).unwrap() != Status::Valid)
        .count();
    assert_eq!(others, 0);

    // The Status List Aggregation names every list: the one in use and the one made
    // ahead of it; the discovery document names the aggregation.
    let id = list_id(&ra);
    let aggregation: serde_json::Value = server
        .http
        .get(server.url("/statuslists"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next = format!("{}/statuslists/{}", server.issuer, id + 1);
    assert_eq!(
        aggregation,
        serde_json::json!({ "status_lists": [ra.uri.as_str(), next.as_str()] })
    );
    let discovery = server.http_json("/.well-known/openid-configuration").await;
    assert_eq!(
        discovery["status_list_aggregation_endpoint"],
        aggregation_uri.as_str()
    );

    // Refusals.
    for (path, accept, status) in [
        (
            format!("/statuslists/{}", id + 99),
            None,
            StatusCode::NOT_FOUND,
        ),
        (format!("/statuslists/0{id}"), None, StatusCode::NOT_FOUND),
        ("/statuslists/abc".to_owned(), None, StatusCode::NOT_FOUND),
        (
            format!("/statuslists/{id}"),
            Some("application/statuslist+cwt"),
            StatusCode::NOT_ACCEPTABLE,
        ),
        (
            format!("/statuslists/{id}"),
            Some("application/statuslist+jwt"),
            StatusCode::OK,
        ),
    ] {
        let mut request = server.http.get(server.url(&path));
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{path} {accept:?}");
    }
    server.stop().await;
}
