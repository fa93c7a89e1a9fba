//! The draft: "A workload MUST NOT use a transaction token to authenticate itself". An
//! authority that trusts its own tokens as callers (`allow_own_issuer`) still refuses its
//! Txn-Tokens as credentials, even one whose `sub` and `aud` a rule would accept.

use tonic::Code;

use super::{ask, edge, exchange_as, Idp, EDGE_SECRET, IDP_ISS, TRUST_DOMAIN};
use crate::{
    callers::{hex, issue_as},
    helpers::{config, DataDir, KnownKey, TestServer},
};
use token_authority_jose::crypto;

#[tokio::test]
async fn a_txn_token_never_authenticates_a_caller() {
    let idp = Idp::start().await;
    let dir = DataDir::new();
    let own = KnownKey::seed(&dir);
    let parent = dir.path.parent().unwrap();
    let jwks = parent.join("own-jwks.json");
    own.write_jwks(&jwks);
    let policy = format!(
        r#"
[[issuer]]
name = "idp"
issuer = "{IDP_ISS}"
jwks_uri = "{}"
audiences = ["api.example"]

[[issuer]]
name = "self"
issuer = "http://token-authority.test"
jwks_file = "{}"
audiences = ["{TRUST_DOMAIN}"]
allow_own_issuer = true

[[client]]
id = "edge"
secret_sha256 = "{}"

# Were a Txn-Token a credential, its subject would get tokens here.
[[rule]]
callers = ["user-1234"]
audiences = ["ledger"]

[txn]
trust_domain = "{TRUST_DOMAIN}"

[[txn_rule]]
callers = ["client:edge"]
scopes = ["orders.read"]
"#,
        idp.server.url("/.well-known/jwks.json"),
        jwks.display(),
        hex(&crypto::sha256(EDGE_SECRET.as_bytes())),
    );
    let policy_path = parent.join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let policy_arg = policy_path.display().to_string();
    let server = TestServer::start_with(config(&dir, &["--policy-file", &policy_arg])).await;
    let txn_token = exchange_as(
        &server,
        Some(&edge()),
        ask("orders.read", &idp.access_token("user-1234", "orders.read")),
    )
    .await
    .unwrap()
    .access_token;
    let status = issue_as(
        &server,
        Some(&format!("Bearer {txn_token}")),
        crate::callers::ask("user-1234", &["ledger"], None, ""),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "bearer token: a Txn-Token (typ txntoken+jwt) is not accepted where an access token is expected"
        )
    );
}
