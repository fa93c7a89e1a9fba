//! `POST /token` driven by Python `requests`, as an edge service posts the RFC 8693 form:
//! the draft's response field by field, each RFC 6749 error with its HTTP status, and the
//! Txn-Token verified by PyJWT and by jose (Node), both requiring its `typ`.

use serde_json::{json, Value};

use super::{edge, Fixture, ACCESS_TYPE, GRANT, STRANGER_SECRET, TRUST_DOMAIN, TXN_TYPE};
use crate::{callers::basic, clients::run_client, tools};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_gets_the_drafts_answers_and_pyjwt_and_jose_verify_the_token() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let user = fixture
        .idp
        .access_token("user-1234", "orders.read orders.write");
    let form = |changes: &[(&str, Option<&str>)]| {
        let mut fields = vec![
            ("grant_type", GRANT.to_owned()),
            ("requested_token_type", TXN_TYPE.to_owned()),
            ("audience", TRUST_DOMAIN.to_owned()),
            ("scope", "orders.read".to_owned()),
            ("subject_token", user.clone()),
            ("subject_token_type", ACCESS_TYPE.to_owned()),
            ("request_details", r#"{"order_id":"o-42"}"#.to_owned()),
        ];
        for (name, value) in changes {
            fields.retain(|(field, _)| field != name);
            if let Some(value) = value {
                fields.push((name, (*value).to_owned()));
            }
        }
        Value::Array(fields.into_iter().map(|(n, v)| json!([n, v])).collect())
    };
    let edge = edge();
    let stranger = basic("stranger", STRANGER_SECRET);
    let mut duplicated = form(&[]);
    duplicated
        .as_array_mut()
        .unwrap()
        .push(json!(["scope", "orders.write"]));
    // (name, case, status, error)
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "granted",
            json!({"authorization": edge, "form": form(&[])}),
            200,
            None,
        ),
        (
            "no credentials",
            json!({"form": form(&[])}),
            401,
            Some("invalid_client"),
        ),
        (
            "a caller no rule names",
            json!({"authorization": stranger, "form": form(&[])}),
            400,
            Some("unauthorized_client"),
        ),
        (
            "another grant_type",
            json!({"authorization": edge, "form": form(&[("grant_type", Some("client_credentials"))])}),
            400,
            Some("unsupported_grant_type"),
        ),
        (
            "no subject_token",
            json!({"authorization": edge, "form": form(&[("subject_token", None)])}),
            400,
            Some("invalid_request"),
        ),
        (
            "a refresh token",
            json!({"authorization": edge, "form": form(&[("subject_token_type", Some("urn:ietf:params:oauth:token-type:refresh_token"))])}),
            400,
            Some("invalid_request"),
        ),
        (
            "a parameter twice",
            json!({"authorization": edge, "form": duplicated}),
            400,
            Some("invalid_request"),
        ),
        (
            "another trust domain",
            json!({"authorization": edge, "form": form(&[("audience", Some("other.internal"))])}),
            400,
            Some("invalid_target"),
        ),
        (
            "a wider scope",
            json!({"authorization": edge, "form": form(&[("scope", Some("orders.read ledger.write"))])}),
            400,
            Some("invalid_scope"),
        ),
        (
            "a forged subject token",
            json!({"authorization": edge, "form": form(&[("subject_token", Some(&crate::clients::tamper(&user)))])}),
            400,
            Some("invalid_grant"),
        ),
        (
            "not a form",
            json!({"authorization": edge, "form": {"grant_type": GRANT}, "content_type": "application/json"}),
            400,
            Some("invalid_request"),
        ),
        // The credentials are checked first, whatever the body.
        (
            "not a form, and no credentials",
            json!({"form": {"grant_type": GRANT}, "content_type": "application/json"}),
            401,
            Some("invalid_client"),
        ),
        // RFC 6749 section 3.2: an empty parameter counts as absent, but it is still sent
        // once at most (else a proxy reading the first value sees another request).
        (
            "an empty parameter, then the same again",
            json!({"authorization": edge, "form": form(&[("scope", None)]), "append": "scope=&scope=orders.read"}),
            400,
            Some("invalid_request"),
        ),
        // Bytes that are not UTF-8 would otherwise reach tctx as U+FFFD.
        (
            "a value not UTF-8",
            json!({"authorization": edge, "form": form(&[("request_details", None)]), "append": "request_details=%7B%22order_id%22%3A%22o%FF%22%7D"}),
            400,
            Some("invalid_request"),
        ),
        // A compressed body is refused for what it is, not read as form text.
        (
            "a gzip Content-Encoding",
            json!({"authorization": edge, "form": form(&[]), "headers": {"Content-Encoding": "gzip"}}),
            400,
            Some("invalid_request"),
        ),
        // RFC 8693 allows several audiences; a Txn-Token has one, the trust domain.
        (
            "a second audience",
            json!({"authorization": edge, "form": form(&[]), "append": "audience=other.example"}),
            400,
            Some("invalid_target"),
        ),
        // RFC 8693 delegation is not offered: asked for, it is refused, not dropped.
        (
            "an actor token",
            json!({"authorization": edge, "form": form(&[("actor_token", Some("eyJ.x.y")), ("actor_token_type", Some("urn:ietf:params:oauth:token-type:jwt"))])}),
            400,
            Some("invalid_request"),
        ),
        // A parser would round it, and the Txn-Token assert a value never asked for.
        (
            "an integer beyond 64 bits",
            json!({"authorization": edge, "form": form(&[("request_details", Some(r#"{"order_id":123456789012345678901234567890}"#))])}),
            400,
            Some("invalid_request"),
        ),
    ];
    let request = json!({
        "url": server.url("/token"),
        "jwks_uri": server.url("/.well-known/jwks.json"),
        "issuer": server.issuer,
        "trust_domain": TRUST_DOMAIN,
        "cases": cases.iter().map(|(_, case, _, _)| case.clone()).collect::<Vec<_>>(),
    });
    let python = tokio::task::block_in_place(tools::python);
    let clients = tokio::task::block_in_place(tools::node_clients);
    let answers = tokio::task::block_in_place(|| {
        run_client(python, clients.join("txn_exchange.py"), &request)
    });
    assert_eq!(answers.len(), cases.len());
    for ((name, _, status, error), answer) in cases.iter().zip(&answers) {
        assert_eq!(answer["status"], *status, "{name}: {answer}");
        assert_eq!(answer["content_type"], "application/json", "{name}");
        assert_eq!(answer["cache_control"], "no-store", "{name}");
        let body = answer["body"].as_object().unwrap();
        match error {
            None => {
                let mut fields: Vec<&str> = body.keys().map(String::as_str).collect();
                fields.sort_unstable();
                assert_eq!(
                    fields,
                    [
                        "access_token",
                        "expires_in",
                        "issued_token_type",
                        "token_type"
                    ],
                    "never a refresh_token"
                );
                assert_eq!(body["token_type"], "N_A");
                assert_eq!(body["issued_token_type"], TXN_TYPE);
                // From the answer's moment: 60, or 59 when a second ticked since signing.
                let expires_in = body["expires_in"].as_u64().unwrap();
                assert!((59..=60).contains(&expires_in), "{expires_in}");
                let verified = &answer["verified"];
                assert_eq!(verified["sub"], "user-1234", "PyJWT: {verified}");
                assert_eq!(verified["aud"], TRUST_DOMAIN);
                assert_eq!(verified["req_wl"], "client:edge");
                assert_eq!(verified["tctx"], json!({"order_id": "o-42"}));
            }
            Some(error) => {
                assert_eq!(body["error"], *error, "{name}: {answer}");
                let description = body["error_description"].as_str().unwrap();
                assert!(
                    description.bytes().all(|b| b == b' '
                        || b == b'!'
                        || (0x23..=0x5b).contains(&b)
                        || (0x5d..=0x7e).contains(&b)),
                    "{name}: {description}"
                );
                assert!(
                    !description.contains(user.split('.').nth(2).unwrap()),
                    "{name}"
                );
            }
        }
        let challenge = answer["www_authenticate"].as_str();
        assert_eq!(challenge.is_some(), *status == 401, "{name}");
    }
    // Every request has its audit line, those refused before their form was read too.
    let audit = std::fs::read_to_string(&fixture.audit_log).unwrap();
    let outcomes: Vec<(String, String)> = audit
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["method"] == "ExchangeToken")
        .map(|line| {
            (
                line["caller"].as_str().unwrap_or("").to_owned(),
                line["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(outcomes.len(), cases.len(), "{outcomes:?}");
    assert_eq!(
        outcomes[cases.len() - 1],
        ("client:edge".to_owned(), "malformed".to_owned())
    );

    // jose, given typ, accepts the Txn-Token; it refuses an access token of the same
    // authority and key, which has another typ.
    let txn_token = answers[0]["body"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let access = super::access_token(server).await;
    let verdicts = tokio::task::block_in_place(|| {
        run_client(
            std::path::PathBuf::from("node"),
            clients.join("txn_verify.js"),
            &json!({
                "jwks_uri": server.url("/.well-known/jwks.json"),
                "issuer": server.issuer,
                "trust_domain": TRUST_DOMAIN,
                "algorithms": ["RS256"],
                "tokens": [txn_token, access],
            }),
        )
    });
    assert_eq!(verdicts[0]["valid"], true, "{}", verdicts[0]);
    assert_eq!(verdicts[0]["sub"], "user-1234");
    assert_eq!(verdicts[1]["valid"], false);
    assert!(
        verdicts[1]["error"].as_str().unwrap().contains("typ"),
        "{}",
        verdicts[1]
    );

    // Any other method is refused with the methods allowed.
    let response = server.http.get(server.url("/token")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
}

/// An address refused for failing authentication too often hears when to come back: 429,
/// `slow_down` (RFC 8628's code, which RFC 6749 clients retry), and `Retry-After` in
/// seconds (RFC 9110 section 10.2.3), as gRPC callers read it in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_address_is_told_when_to_retry() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let post = |authorization: String| {
        server
            .http
            .post(server.url("/token"))
            .header("authorization", authorization)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type={GRANT}"))
            .send()
    };
    let mut failures = 0;
    let throttled = loop {
        let response = post(basic("edge", "guess")).await.unwrap();
        match response.status().as_u16() {
            401 => failures += 1,
            _ => break response,
        }
        assert!(failures < 200, "never slowed down");
    };
    assert_eq!(throttled.status().as_u16(), 429);
    assert_eq!(
        throttled
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        throttled.json::<Value>().await.unwrap(),
        json!({
            "error": "slow_down",
            "error_description": "too many failed authentications from this address; retry in 1s",
        })
    );
    // The good secret from the same address is slowed too, and told the same.
    let response = post(edge()).await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
}
