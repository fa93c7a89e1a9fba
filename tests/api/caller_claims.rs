//! A caller token's `cnf` and `act`, and the authority's own issuer: a token bound to a
//! client certificate proves a caller only over a connection presenting it; a token with
//! `act` (a delegation) proves one only where its issuer allows delegation, and its chain
//! then nests in the `act` of the token issued; trusting the authority's own `--issuer`
//! needs `allow_own_issuer`.

use token_authority::pb;
use token_authority_jose::{b64, crypto};
use tonic::{Code, Status};

use crate::{
    callers::{ask, issue_as, payload, with_auth, Issuer, CLUSTER_ISS, GATEWAY_SA, PAYMENTS_SA},
    helpers::{config, connect_tls, now, DataDir, TestServer, TlsSetup},
};

const ALICE: &str = "user:alice";

/// The cluster issuer (with `settings` added to its table), payments callers, users and a
/// gateway acting for users.
fn policy(jwks_uri: &str, settings: &str) -> String {
    format!(
        r#"
[[issuer]]
name = "cluster"
issuer = "{CLUSTER_ISS}"
jwks_uri = "{jwks_uri}"
audiences = ["token-authority"]
{settings}

[[rule]]
callers = ["system:serviceaccount:payments:*"]
audiences = ["ledger"]
bind = "mtls"

[[rule]]
callers = ["user:*"]
subjects = ["{{caller}}", "{{caller}}/job-*"]
audiences = ["orders"]

[[rule]]
callers = ["{GATEWAY_SA}"]
subjects = ["user:*"]
audiences = ["orders"]
"#
    )
}

/// The authority over TLS with client certificates, under `policy`, with `extra` flags.
async fn start(dir: &DataDir, tls: &TlsSetup, policy: &str, extra: &[&str]) -> TestServer {
    dir.create();
    let policy_path = dir.path.parent().unwrap().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let mut args = tls.args(true);
    args.extend([
        "--policy-file".to_owned(),
        policy_path.display().to_string(),
    ]);
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start_tls(config(dir, &args), tls.client(None)).await
}

/// A caller token of the cluster issuer for `sub`, with `extra` payload members.
fn token(issuer: &Issuer, sub: &str, extra: &str) -> String {
    let t = now();
    let payload = format!(
        r#"{{"iss":"{CLUSTER_ISS}","sub":"{sub}","aud":"token-authority","iat":{t},"exp":{}{extra}}}"#,
        t + 600
    );
    format!(
        "Bearer {}",
        issuer.key.forge(&issuer.key.header(), &payload)
    )
}

fn refused(result: Result<pb::IssueTokenResponse, Status>, name: &str) -> (Code, String) {
    let status = result.expect_err(name);
    (status.code(), status.message().to_owned())
}

#[tokio::test]
async fn a_cnf_bound_caller_token_needs_its_certificate() {
    let issuer = Issuer::start().await;
    let tls = TlsSetup::new();
    let dir = DataDir::new();
    let server = start(&dir, &tls, &policy(&issuer.jwks_uri(), ""), &[]).await;
    let right = tls
        .pki
        .client(Some("spiffe://prod.example/ns/payments/sa/api"), None);
    let thumbprint = b64::encode(crypto::sha256(&right.der));
    let wrong = tls
        .pki
        .client(Some("spiffe://prod.example/ns/payments/sa/api"), None);
    let bound = token(
        &issuer,
        PAYMENTS_SA,
        &format!(r#","cnf":{{"x5t#S256":"{thumbprint}"}}"#),
    );
    let unbound = token(&issuer, PAYMENTS_SA, "");
    let other_method = token(
        &issuer,
        PAYMENTS_SA,
        r#","cnf":{"jkt":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}"#,
    );
    let mut with_right = connect_tls(server.grpc_addr, &tls.client(Some(right)))
        .await
        .unwrap();
    let mut with_wrong = connect_tls(server.grpc_addr, &tls.client(Some(wrong)))
        .await
        .unwrap();
    let mut without = server.client.clone();
    let request = |authorization: &str| {
        with_auth(ask(PAYMENTS_SA, &["ledger"], None, ""), Some(authorization))
    };
    let unwrap = |result: Result<tonic::Response<pb::IssueTokenResponse>, Status>| {
        result.map(tonic::Response::into_inner)
    };
    let cases = [
        ("bound token, no certificate", unwrap(without.issue_token(request(&bound)).await), Code::Unauthenticated,
            "bearer token: its cnf binds it to a client certificate, and the call presented none"),
        ("bound token, another certificate", unwrap(with_wrong.issue_token(request(&bound)).await), Code::Unauthenticated,
            "bearer token: its cnf binds it to another client certificate than the call's"),
        ("a cnf of another method, with a certificate", unwrap(with_right.issue_token(request(&other_method)).await), Code::Unauthenticated,
            "bearer token: its cnf is not a client certificate thumbprint (x5t#S256), the only binding checked here"),
        ("an unbound token with a certificate", unwrap(with_right.issue_token(request(&unbound)).await), Code::Unauthenticated,
            "present one credential: the call carries both a client certificate and an authorization header"),
        // An unbound token alone proves the caller; its rule binds, and there is no certificate.
        ("an unbound token, no certificate", unwrap(without.issue_token(request(&unbound)).await), Code::PermissionDenied,
            "cnf: tokens for caller \"system:serviceaccount:payments:api\" are bound to its client certificate, and the call presented none"),
    ];
    for (name, result, code, message) in cases {
        assert_eq!(refused(result, name), (code, message.to_owned()), "{name}");
    }
    // With its certificate: the caller is the token's sub, and the rule binds the new token
    // to that same certificate.
    let issued = with_right
        .issue_token(request(&bound))
        .await
        .unwrap()
        .into_inner();
    let claims = payload(&issued.token);
    assert_eq!(claims["sub"], PAYMENTS_SA);
    assert_eq!(claims["cnf"], serde_json::json!({ "x5t#S256": thumbprint }));
    server.stop().await;
    issuer.server.stop().await;
}

/// A token a gateway got for a user (its `act` names the gateway), replayed as a caller
/// credential: refused unless the issuer allows delegation; then the chain is kept.
#[tokio::test]
async fn a_delegated_caller_token_needs_allow_delegation_and_its_act_nests() {
    let issuer = Issuer::start().await;
    let tls = TlsSetup::new();
    let gateway_act = format!(r#","act":{{"sub":"{GATEWAY_SA}"}}"#);
    let replayed = token(&issuer, ALICE, &gateway_act);
    let two_hops = token(
        &issuer,
        ALICE,
        &format!(r#","act":{{"sub":"{GATEWAY_SA}","act":{{"sub":"edge-proxy","exp":1}}}}"#),
    );
    let for_alice = || ask(ALICE, &["orders"], None, "");

    let dir = DataDir::new();
    let server = start(&dir, &tls, &policy(&issuer.jwks_uri(), ""), &[]).await;
    let message = "bearer token: it carries act: a delegation (RFC 8693), not a caller's own token, and the [[issuer]] \"cluster\" does not set allow_delegation";
    for (name, authorization) in [
        ("replayed gateway token", &replayed),
        ("two hops", &two_hops),
    ] {
        assert_eq!(
            refused(
                issue_as(&server, Some(authorization), for_alice()).await,
                name
            ),
            (Code::Unauthenticated, message.to_owned()),
            "{name}"
        );
    }
    // The gateway itself, with its own token, still acts for users.
    let issued = issue_as(&server, Some(&token(&issuer, GATEWAY_SA, "")), for_alice())
        .await
        .unwrap();
    assert_eq!(
        payload(&issued.token)["act"],
        serde_json::json!({ "sub": GATEWAY_SA })
    );
    server.stop().await;

    let dir = DataDir::new();
    let allowed = policy(&issuer.jwks_uri(), "allow_delegation = true");
    let server = start(&dir, &tls, &allowed, &[]).await;
    let job = format!("{ALICE}/job-1");
    let cases = [
        (
            "replayed, for the user",
            &replayed,
            ALICE,
            serde_json::json!({ "sub": GATEWAY_SA }),
        ),
        (
            "replayed, for a job of the user",
            &replayed,
            job.as_str(),
            serde_json::json!({ "sub": ALICE, "act": { "sub": GATEWAY_SA } }),
        ),
        (
            "two hops, for the user",
            &two_hops,
            ALICE,
            serde_json::json!({ "sub": GATEWAY_SA, "act": { "sub": "edge-proxy" } }),
        ),
        (
            "two hops, for a job of the user",
            &two_hops,
            job.as_str(),
            serde_json::json!({ "sub": ALICE, "act": { "sub": GATEWAY_SA, "act": { "sub": "edge-proxy" } } }),
        ),
    ];
    for (name, authorization, subject, act) in cases {
        let issued = issue_as(
            &server,
            Some(authorization),
            ask(subject, &["orders"], None, ""),
        )
        .await
        .expect(name);
        let claims = payload(&issued.token);
        assert_eq!(
            (&claims["sub"], &claims["act"]),
            (&serde_json::json!(subject), &act),
            "{name}"
        );
    }
    let bad_act = token(&issuer, ALICE, r#","act":"gateway""#);
    assert_eq!(
        refused(
            issue_as(&server, Some(&bad_act), for_alice()).await,
            "act not an object"
        ),
        (
            Code::Unauthenticated,
            "bearer token: its act is not a JSON object".to_owned()
        )
    );
    server.stop().await;
    issuer.server.stop().await;
}

/// The authority started with the issuer's own `--issuer` value: its `[[issuer]]` entry needs
/// `allow_own_issuer`.
#[tokio::test]
async fn trusting_the_authoritys_own_issuer_needs_allow_own_issuer() {
    let issuer = Issuer::start().await;
    let tls = TlsSetup::new();
    let own = ["--issuer", CLUSTER_ISS];
    let caller = token(&issuer, ALICE, "");
    let cases = [
        ("", &own[..], Err((Code::Unauthenticated, "bearer token: its issuer is this authority's own --issuer, and the [[issuer]] \"cluster\" does not set allow_own_issuer"))),
        ("allow_own_issuer = true", &own[..], Ok(())),
        // Another authority's issuer needs nothing.
        ("", &[][..], Ok(())),
    ];
    for (settings, extra, expected) in cases {
        let dir = DataDir::new();
        let server = start(&dir, &tls, &policy(&issuer.jwks_uri(), settings), extra).await;
        let outcome = issue_as(&server, Some(&caller), ask(ALICE, &["orders"], None, ""))
            .await
            .map(|_| ())
            .map_err(|status| (status.code(), status.message().to_owned()));
        assert_eq!(
            outcome,
            expected.map_err(|(code, message)| (code, message.to_owned())),
            "{settings} {extra:?}"
        );
        server.stop().await;
    }
    issuer.server.stop().await;
}

/// `policy check` cannot know the server's `--issuer`; it warns wherever the setting is on.
#[test]
fn policy_check_warns_about_allow_own_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let text = |settings: &str| {
        format!(
            "[[issuer]]\nname = \"own\"\nissuer = \"https://ta.example\"\njwks_file = \"{}\"\naudiences = [\"a\"]\n{settings}\n",
            jwks.display()
        )
    };
    let warning = "  warning: issuer own: allow_own_issuer = true: where https://ta.example is this authority's own --issuer, a token it minted for a subject proves that subject as a caller to whoever holds it\n";
    for (settings, warned) in [("allow_own_issuer = true", true), ("", false)] {
        let (code, stdout, stderr) = crate::policy_command::check(&text(settings));
        assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
        assert_eq!(stdout.contains(warning), warned, "{settings}: {stdout}");
    }
}
