//! ExchangeToken over gRPC: the Txn-Token's header and claims field by field, VerifyToken
//! by type, the audit line, and every refusal with its code and message.

use serde_json::json;
use token_authority::pb;
use tonic::Code;

use super::{
    ask, edge, exchange_as, verify_as, Fixture, ACCESS_TYPE, IDP_ISS, STRANGER_SECRET, TRUST_DOMAIN,
};
use crate::{
    callers::{basic, payload},
    helpers::{config, now, DataDir, TestServer, ADMIN_TOKEN},
};
use token_authority_jose::b64;

fn header(token: &str) -> serde_json::Value {
    let segment = token.split('.').next().unwrap();
    serde_json::from_slice(&b64::decode(segment).unwrap()).unwrap()
}

#[tokio::test]
async fn a_txn_token_carries_the_drafts_claims_and_verifies_only_as_a_txn_token() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let user_token = fixture
        .idp
        .access_token("user-1234", "orders.read orders.write profile");
    let mut request = ask("orders.read", &user_token);
    request.request_details = r#"{"order_id":"o-42","price":"9.99"}"#.into();
    request.request_context =
        r#"{"req_ip":"69.151.72.123","authn":"urn:ietf:rfc:6749","user_agent":"curl"}"#.into();
    let before = now();
    let answer = exchange_as(server, Some(&edge()), request).await.unwrap();
    assert_eq!(answer.token_type, "N_A");
    assert_eq!(
        answer.issued_token_type,
        "urn:ietf:params:oauth:token-type:txn_token"
    );
    let token = &answer.access_token;

    let header = header(token);
    assert_eq!(header["typ"], "txntoken+jwt");
    assert_eq!(header["kid"], server.current_kid("RS256").await);
    let claims = payload(token);
    let iat = claims["iat"].as_u64().unwrap();
    assert!((before..=now()).contains(&iat));
    // [txn] sets no ttl: the default 60 s, within the rule's 5 minutes.
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 60);
    assert_eq!(answer.expires_at.unwrap().seconds as u64, iat + 60);
    assert_eq!(claims["aud"], TRUST_DOMAIN);
    let txn = claims["txn"].as_str().unwrap();
    assert_eq!(txn, answer.txn);
    assert_eq!(txn.len(), 36, "a UUID: {txn}");
    assert_eq!(claims["sub"], "user-1234");
    assert_eq!(claims["scope"], "orders.read");
    assert_eq!(claims["req_wl"], "client:edge");
    // Only the rule's keys: order_id into tctx; req_ip and authn (the default) into rctx.
    assert_eq!(claims["tctx"], json!({"order_id": "o-42"}));
    assert_eq!(
        claims["rctx"],
        json!({"req_ip": "69.151.72.123", "authn": "urn:ietf:rfc:6749"})
    );
    // The access token it came from is never inside it.
    assert!(!claims.to_string().contains(&user_token));
    assert!(!claims
        .to_string()
        .contains(user_token.split('.').nth(2).unwrap()));

    // A second exchange is a second transaction.
    let again = exchange_as(server, Some(&edge()), ask("orders.read", &user_token))
        .await
        .unwrap();
    assert_ne!(again.txn, answer.txn);
    assert!(payload(&again.access_token).get("tctx").is_none());

    // VerifyToken by type.
    let as_txn = verify_as(server, token, true).await;
    assert!(as_txn.valid, "{}", as_txn.detail);
    assert_eq!(as_txn.subject, "user-1234");
    let as_access = verify_as(server, token, false).await;
    assert_eq!(
        (
            as_access.valid,
            as_access.reason(),
            as_access.detail.as_str()
        ),
        (
            false,
            pb::VerifyFailureReason::WrongTokenType,
            "a Txn-Token (typ txntoken+jwt) is not accepted where an access token is expected"
        )
    );
    let access = super::access_token(server).await;
    let access_as_txn = verify_as(server, &access, true).await;
    assert_eq!(
        (
            access_as_txn.valid,
            access_as_txn.reason(),
            access_as_txn.detail.as_str()
        ),
        (
            false,
            pb::VerifyFailureReason::WrongTokenType,
            "not a Txn-Token: its typ is not txntoken+jwt"
        )
    );

    // The audit line names the txn and the token's SHA-256, never the token.
    let audit = std::fs::read_to_string(&fixture.audit_log).unwrap();
    assert!(!audit.contains(token.as_str()));
    assert!(!audit.contains(token.split('.').nth(2).unwrap()));
    assert!(!audit.contains(user_token.split('.').nth(2).unwrap()));
    let line: serde_json::Value = audit
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|line| line["txn"] == answer.txn)
        .expect("an audit line for the txn");
    assert_eq!(line["method"], "ExchangeToken");
    assert_eq!(line["caller"], "client:edge");
    assert_eq!(line["via"], "secret");
    assert_eq!(line["subject"], "user-1234");
    assert_eq!(line["detail"], "scope orders.read");
    assert_eq!(
        line["token_sha256"],
        hex::encode(token_authority_jose::crypto::sha256(token.as_bytes()))
    );
}

/// An identity provider that follows RFC 9068 types its access tokens `at+jwt` (or in
/// full, `application/at+jwt`): they are exchanged like any other.
#[tokio::test]
async fn an_rfc_9068_access_token_is_exchanged() {
    let fixture = Fixture::start().await;
    let idp = &fixture.idp;
    let t = now();
    for typ in ["at+jwt", "application/at+jwt"] {
        let header = idp
            .key
            .header()
            .replace(r#""typ":"JWT""#, &format!(r#""typ":"{typ}""#));
        let token = idp.key.forge(
            &header,
            &format!(
                r#"{{"iss":"{IDP_ISS}","sub":"user-1234","aud":"api.example","scope":"orders.read","iat":{},"exp":{}}}"#,
                t - 5,
                t + 600
            ),
        );
        let answer = exchange_as(&fixture.server, Some(&edge()), ask("orders.read", &token))
            .await
            .unwrap_or_else(|status| panic!("{typ}: {status:?}"));
        assert_eq!(payload(&answer.access_token)["sub"], "user-1234", "{typ}");
    }
}

#[tokio::test]
async fn each_refused_request_gets_its_rfc_6749_error_and_grpc_code() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let idp = &fixture.idp;
    let t = now();
    let good = idp.access_token("user-1234", "orders.read");
    let edge = edge();
    let with = |change: &dyn Fn(&mut pb::ExchangeTokenRequest)| {
        let mut request = ask("orders.read", &good);
        change(&mut request);
        request
    };
    let expired = idp.token(&format!(
        r#""sub":"user-1234","aud":"api.example","scope":"orders.read","iat":{},"exp":{}"#,
        t - 600,
        t - 10
    ));
    let wrong_audience = idp.token(&format!(
        r#""sub":"user-1234","aud":"elsewhere","scope":"orders.read","iat":{},"exp":{}"#,
        t - 5,
        t + 600
    ));
    let no_scope = idp.token(&format!(
        r#""sub":"user-1234","aud":"api.example","iat":{},"exp":{}"#,
        t - 5,
        t + 600
    ));
    let foreign = idp.key.forge(
        &idp.key.header(),
        &format!(
            r#"{{"iss":"https://foreign.test","sub":"user-1234","aud":"api.example","scope":"orders.read","iat":{},"exp":{}}}"#,
            t - 5,
            t + 600
        ),
    );
    let txn_token = super::exchange_as(server, Some(&edge), ask("orders.read", &good))
        .await
        .unwrap()
        .access_token;
    let stranger = basic("stranger", STRANGER_SECRET);
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let wrong_secret = basic("edge", "nope");
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        pb::ExchangeTokenRequest,
        Code,
        String,
    );
    let cases: Vec<Case> = vec![
        ("no credentials", None, with(&|_| {}), Code::Unauthenticated,
            "invalid_client: the token endpoint needs the requesting workload's credentials: a client certificate, `authorization: Bearer <token of a trusted issuer>` or `authorization: Basic <base64 of id:secret>`".into()),
        ("a wrong secret", Some(&wrong_secret), with(&|_| {}), Code::Unauthenticated,
            "invalid_client: the client id or secret is not valid".into()),
        ("the admin token", Some(&admin), with(&|_| {}), Code::PermissionDenied,
            "unauthorized_client: the admin token is for admin RPCs; Txn-Tokens go to workloads a [[txn_rule]] names".into()),
        ("a caller no rule names", Some(&stranger), with(&|_| {}), Code::PermissionDenied,
            "unauthorized_client: caller \"client:stranger\" may not request Txn-Tokens: no [[txn_rule]] names it".into()),
        ("no grant_type", Some(&edge), with(&|r| r.grant_type.clear()), Code::InvalidArgument,
            "invalid_request: grant_type is required".into()),
        ("another grant_type", Some(&edge), with(&|r| r.grant_type = "client_credentials".into()), Code::InvalidArgument,
            "unsupported_grant_type: grant_type must be urn:ietf:params:oauth:grant-type:token-exchange".into()),
        ("another requested type", Some(&edge), with(&|r| r.requested_token_type = ACCESS_TYPE.into()), Code::InvalidArgument,
            "invalid_request: requested_token_type must be urn:ietf:params:oauth:token-type:txn_token: this endpoint issues Txn-Tokens only".into()),
        ("no audience", Some(&edge), with(&|r| r.audience.clear()), Code::InvalidArgument,
            "invalid_request: audience is required: the trust domain".into()),
        ("another trust domain", Some(&edge), with(&|r| r.audience = "other.internal".into()), Code::InvalidArgument,
            "invalid_target: audience is not the trust domain of this Transaction Token Service".into()),
        ("no scope", Some(&edge), with(&|r| r.scope.clear()), Code::InvalidArgument,
            "invalid_request: scope is required".into()),
        ("a scope the rule lacks", Some(&edge), with(&|r| r.scope = "orders.read ledger.write".into()), Code::PermissionDenied,
            "invalid_scope: scope \"ledger.write\" is not one caller \"client:edge\" may request".into()),
        ("a scope wider than the subject token's", Some(&edge), with(&|r| r.scope = "orders.read orders.write".into()), Code::PermissionDenied,
            "invalid_scope: scope \"orders.write\" is wider than the subject token's scope".into()),
        ("a subject token with no scope", Some(&edge), with(&|r| r.subject_token = no_scope.clone()), Code::PermissionDenied,
            "invalid_scope: the subject token carries no scope (scope or scp), so a Txn-Token could not be kept within it".into()),
        ("no subject token", Some(&edge), with(&|r| r.subject_token.clear()), Code::InvalidArgument,
            "invalid_request: subject_token is required".into()),
        ("a refresh token", Some(&edge), with(&|r| r.subject_token_type = "urn:ietf:params:oauth:token-type:refresh_token".into()), Code::InvalidArgument,
            "invalid_request: a refresh token is never exchanged for a Txn-Token".into()),
        ("an unsigned JSON subject", Some(&edge), with(&|r| r.subject_token_type = "urn:ietf:params:oauth:token-type:unsigned_json".into()), Code::InvalidArgument,
            "invalid_request: subject_token_type is not one this service accepts: access_token, jwt, id_token or txn_token (urn:ietf:params:oauth:token-type:...)".into()),
        ("an expired subject token", Some(&edge), with(&|r| r.subject_token = expired.clone()), Code::InvalidArgument,
            "invalid_grant: the subject token is refused: the token has expired".into()),
        ("a subject token for another audience", Some(&edge), with(&|r| r.subject_token = wrong_audience.clone()), Code::InvalidArgument,
            "invalid_grant: the subject token is refused: aud does not contain the expected audience".into()),
        ("a foreign subject token", Some(&edge), with(&|r| r.subject_token = foreign.clone()), Code::InvalidArgument,
            "invalid_grant: the subject token is refused: its iss is not a trusted [[issuer]]".into()),
        ("a Txn-Token given as an access token", Some(&edge), with(&|r| r.subject_token = txn_token.clone()), Code::InvalidArgument,
            "invalid_grant: the subject token is refused: its iss is not a trusted [[issuer]]".into()),
        ("request_details that are not an object", Some(&edge), with(&|r| r.request_details = "[1]".into()), Code::InvalidArgument,
            "invalid_request: request_details: not a JSON object".into()),
        ("request_context too long", Some(&edge), with(&|r| r.request_context = format!(r#"{{"x":"{}"}}"#, "a".repeat(5000))), Code::InvalidArgument,
            "invalid_request: request_context is longer than 4096 bytes".into()),
    ];
    for (name, authorization, request, code, message) in cases {
        let status = exchange_as(server, authorization, request)
            .await
            .expect_err(name);
        assert_eq!(
            (status.code(), status.message()),
            (code, message.as_str()),
            "{name}"
        );
    }
    let _ = IDP_ISS;
}

/// Without `[txn]`, Txn-Tokens do not exist: ExchangeToken is UNIMPLEMENTED, `POST /token`
/// is not found, and VerifyToken cannot check one.
#[tokio::test]
async fn without_a_txn_table_the_service_is_off() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(&dir, &[])).await;
    let status = exchange_as(&server, None, super::ask("orders.read", "x"))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unimplemented,
            "Txn-Tokens are off: the policy has no [txn] table"
        )
    );
    let response = server
        .http
        .post(server.url("/token"))
        .form(&[("grant_type", super::GRANT)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let status = server
        .client
        .clone()
        .verify_token(pb::VerifyTokenRequest {
            token: "x".into(),
            audience: String::new(),
            expected_type: pb::TokenType::Txn as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::FailedPrecondition,
            "Txn-Tokens are off: the policy has no [txn] table"
        )
    );
}

/// A Txn-Token is a token the authority minted: counted in `tokens_issued_total` (by its
/// algorithm) and timed in the signing histogram, as IssueToken's are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_token_is_counted_with_the_tokens_issued() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let user = fixture.idp.access_token("user-1234", "orders.read");
    let issued = |server| async move {
        let mut sum = 0.0;
        for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
            let name = format!(r#"token_authority_tokens_issued_total{{algorithm="{alg}"}}"#);
            sum += crate::helpers::metric_sample(server, &name)
                .await
                .unwrap_or(0.0);
        }
        sum
    };
    let before = issued(server).await;
    for _ in 0..3 {
        exchange_as(server, Some(&edge()), ask("orders.read", &user))
            .await
            .unwrap();
    }
    assert_eq!(issued(server).await - before, 3.0);
}

/// A Txn-Token too large to sign is one decision, as an IssueToken too large is: the policy
/// allowed it (counted `allowed`, so allowed outrunning tokens issued shows it), then nothing
/// was issued (its audit line says `failed`), and it is not counted `malformed` on top.
#[tokio::test]
async fn a_txn_token_too_large_to_sign_is_one_decision_allowed_then_failed() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let user_token = fixture.idp.access_token("user-1234", "orders.read");
    let mut request = ask("orders.read", &user_token);
    request.request_details = format!(r#"{{"order_id":"{}"}}"#, "o".repeat(4000));
    request.request_context = format!(r#"{{"req_ip":"{}"}}"#, "1".repeat(4000));
    let decisions = || async {
        let mut counts = Vec::new();
        for outcome in ["allowed", "malformed"] {
            counts.push(
                crate::helpers::metric(
                    server,
                    &format!(
                        r#"token_authority_caller_decisions_total{{method="ExchangeToken",outcome="{outcome}"}}"#
                    ),
                )
                .await,
            );
        }
        counts
    };
    let before = decisions().await;
    let status = exchange_as(server, Some(&edge()), request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("invalid_request: request_details: the token would be"),
        "{status:?}"
    );
    let after = decisions().await;
    assert_eq!(
        (after[0] - before[0], after[1] - before[1]),
        (1.0, 0.0),
        "ExchangeToken decisions (allowed, malformed) counted for one call"
    );
    let audit = std::fs::read_to_string(&fixture.audit_log).unwrap();
    let line: serde_json::Value = audit
        .lines()
        .rev()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|line| line["method"] == "ExchangeToken")
        .expect("an audit line for the call");
    assert_eq!(
        (&line["outcome"], &line["caller"]),
        (&json!("failed"), &json!("client:edge"))
    );
}
