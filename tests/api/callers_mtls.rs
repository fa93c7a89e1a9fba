//! mTLS callers over the real TLS listener: the client certificate's SPIFFE URI SAN (else
//! DNS SAN) is the caller; `bind = "mtls"` puts the certificate's RFC 8705 thumbprint in
//! `cnf`; an untrusted or expired certificate never reaches the policy, and one whose names
//! break the SPIFFE ID or host name rules proves nobody.

use token_authority::pb;
use token_authority_jose::{b64, crypto};
use tonic::Code;

use crate::{
    callers::{ask, payload, with_auth},
    helpers::{config, connect_tls, DataDir, TestServer, TlsSetup, ADMIN_TOKEN},
    pki::Pki,
};

const SPIFFE: &str = "spiffe://prod.example/ns/payments/sa/api";
const DNS: &str = "api.gateway.svc";

fn policy() -> String {
    format!(
        r#"
[[rule]]
callers = ["spiffe://prod.example/ns/payments/*"]
audiences = ["ledger"]
bind = "mtls"

[[rule]]
callers = ["{DNS}"]
subjects = ["user:*"]
audiences = ["orders"]
"#
    )
}

async fn start(dir: &DataDir, tls: &TlsSetup) -> TestServer {
    dir.create();
    let policy_path = dir.path.parent().unwrap().join("policy.toml");
    std::fs::write(&policy_path, policy()).unwrap();
    let mut args = tls.args(true);
    args.extend([
        "--policy-file".to_owned(),
        policy_path.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start_tls(config(dir, &args), tls.client(None)).await
}

#[tokio::test]
async fn certificate_callers_get_cnf_and_act_and_nothing_else() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = start(&dir, &tls).await;

    // A SPIFFE caller whose rule binds: cnf carries the thumbprint of its certificate.
    let spiffe_identity = tls.pki.client(Some(SPIFFE), Some("also-a-dns-name.svc"));
    let thumbprint = b64::encode(crypto::sha256(&spiffe_identity.der));
    let mut spiffe_client = connect_tls(server.grpc_addr, &tls.client(Some(spiffe_identity)))
        .await
        .unwrap();
    let issued = spiffe_client
        .issue_token(ask(SPIFFE, &["ledger"], None, ""))
        .await
        .unwrap()
        .into_inner();
    let claims = payload(&issued.token);
    assert_eq!(claims["sub"], SPIFFE);
    assert_eq!(claims["cnf"], serde_json::json!({ "x5t#S256": thumbprint }));
    let verified = server.verify(&issued.token, "ledger").await;
    assert!(verified.valid);
    let returned: serde_json::Value = serde_json::from_str(&verified.claims_json).unwrap();
    assert_eq!(returned["cnf"]["x5t#S256"], thumbprint.as_str());

    // A DNS-SAN caller acting for a user: act, and no cnf (its rule does not bind).
    let mut dns_client = connect_tls(
        server.grpc_addr,
        &tls.client(Some(tls.pki.client(None, Some(DNS)))),
    )
    .await
    .unwrap();
    let issued = dns_client
        .issue_token(ask("user:bob", &["orders"], None, ""))
        .await
        .unwrap()
        .into_inner();
    let claims = payload(&issued.token);
    assert_eq!(claims["sub"], "user:bob");
    assert_eq!(claims["act"], serde_json::json!({ "sub": DNS }));
    assert!(claims.get("cnf").is_none());

    let bearer =
        |message: pb::IssueTokenRequest| with_auth(message, Some("Bearer some.caller.jwt"));
    let cases = [
        ("certificate, another subject", spiffe_client.issue_token(ask("spiffe://prod.example/ns/payments/sa/other", &["ledger"], None, "")).await,
            Code::PermissionDenied, format!("subject: \"spiffe://prod.example/ns/payments/sa/other\" is not allowed for caller \"{SPIFFE}\"")),
        ("certificate, setting cnf itself", spiffe_client.issue_token(ask(SPIFFE, &["ledger"], None, r#"{"cnf":{"x5t#S256":"forged"}}"#)).await,
            Code::InvalidArgument, "claims_json: sets the reserved claim \"cnf\"; the authority sets act and cnf from the caller's identity".to_owned()),
        ("certificate and a bearer token", spiffe_client.issue_token(bearer(ask(SPIFFE, &["ledger"], None, ""))).await,
            Code::Unauthenticated, "present one credential: the call carries both a client certificate and an authorization header".to_owned()),
        ("TLS without a certificate", server.client.clone().issue_token(ask(SPIFFE, &["ledger"], None, "")).await,
            Code::Unauthenticated, "IssueToken needs credentials: a client certificate, `authorization: Bearer <token of a trusted issuer>` or `authorization: Basic <base64 of id:secret>`".to_owned()),
    ];
    for (name, result, code, message) in cases {
        let status = result.expect_err(name);
        assert_eq!(
            (status.code(), status.message()),
            (code, message.as_str()),
            "{name}"
        );
    }
    // The admin token still works over an mTLS connection.
    spiffe_client
        .list_keys(with_auth(
            pb::ListKeysRequest {},
            Some(&format!("Bearer {ADMIN_TOKEN}")),
        ))
        .await
        .unwrap();
    // ...while the certificate alone is no admin.
    let status = spiffe_client
        .list_keys(pb::ListKeysRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            format!("caller \"{SPIFFE}\" may not call admin RPCs").as_str()
        )
    );
    server.stop().await;
}

/// A certificate of another CA, or an expired one, is refused at the handshake: the call
/// never gets a gRPC answer from the policy.
#[tokio::test]
async fn untrusted_and_expired_certificates_never_reach_the_policy() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = start(&dir, &tls).await;
    let cases = [
        (
            "another CA",
            Pki::named("untrusted CA").client(Some(SPIFFE), None),
        ),
        ("expired", tls.pki.client_expired(Some(SPIFFE), None)),
    ];
    for (name, identity) in cases {
        let outcome = match connect_tls(server.grpc_addr, &tls.client(Some(identity))).await {
            Err(error) => format!("connect: {error}"),
            Ok(mut client) => match client.issue_token(ask(SPIFFE, &["ledger"], None, "")).await {
                Ok(_) => "issued".to_owned(),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            },
        };
        // The TLS alert closes the connection: the client sees a transport error, never a
        // gRPC status of the server.
        assert_eq!(outcome, "Unknown: transport error", "{name}");
    }
    for outcome in ["allowed", "no_credentials", "bad_credentials", "no_rule"] {
        let sample = format!(
            r#"token_authority_caller_decisions_total{{method="IssueToken",outcome="{outcome}"}}"#
        );
        assert_eq!(
            crate::helpers::metric(&server, &sample).await,
            0.0,
            "{outcome}"
        );
    }
    server.stop().await;
}

/// Certificates the CA signed but whose names are hostile: the handshake passes (the chain
/// is good), and every call is refused UNAUTHENTICATED naming what is wrong.
#[tokio::test]
async fn hostile_certificate_names_are_refused_through_mtls() {
    use rcgen::SanType;
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = start(&dir, &tls).await;
    let uri = |s: &str| SanType::URI(s.try_into().unwrap());
    let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
    let cases = [
        (
            vec![uri("spiffe://prod.example/ns/payments/sa/../../ops/sa/admin")],
            "client certificate: its SPIFFE ID has a . or .. path segment",
        ),
        (
            vec![uri("spiffe://prod.example/ns/payments/sa/%2e%2e")],
            "client certificate: its SPIFFE ID is percent-encoded",
        ),
        (
            vec![uri(SPIFFE), uri("spiffe://prod.example/ns/ops/sa/admin")],
            "client certificate: an X.509-SVID must have exactly one URI SAN, and this one has several",
        ),
        (
            vec![dns("system:serviceaccount:payments:api")],
            "client certificate: its DNS SAN is not a host name (labels of a-z, 0-9 and -, joined by dots)",
        ),
    ];
    for (sans, message) in cases {
        let identity = tls.pki.client_with_sans(sans);
        let mut client = connect_tls(server.grpc_addr, &tls.client(Some(identity)))
            .await
            .unwrap();
        let status = client
            .issue_token(ask(SPIFFE, &["ledger"], None, ""))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, message)
        );
    }
    server.stop().await;
}
