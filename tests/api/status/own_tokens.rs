//! A token of the authority's own, revoked one by one, proves nothing anywhere the
//! authority reads it: not as a caller's credential (an `[[issuer]]` with
//! `allow_own_issuer`), not as a Txn-Token's subject token, as VerifyToken refuses it.

use token_authority::pb::TokenStatus;
use token_authority_jose::crypto;
use tonic::Code;

use super::set_request;
use crate::{
    callers::{ask, basic, hex, issue_as},
    helpers::{admin, config, DataDir, KnownKey, TestServer},
    txn::{self, edge, exchange_as, EDGE_SECRET, TRUST_DOMAIN},
};

const BATCH_SECRET: &str = "batch-secret-0123456789";

#[tokio::test]
async fn a_revoked_token_of_its_own_is_neither_a_credential_nor_a_subject_token() {
    let dir = DataDir::new();
    let own = KnownKey::seed(&dir);
    let parent = dir.path.parent().unwrap();
    let jwks = parent.join("own-jwks.json");
    own.write_jwks(&jwks);
    let policy = format!(
        r#"
[[issuer]]
name = "self"
issuer = "http://token-authority.test"
jwks_file = "{}"
audiences = ["ledger"]
allow_own_issuer = true

[[client]]
id = "batch"
secret_sha256 = "{}"

[[client]]
id = "edge"
secret_sha256 = "{}"

# batch mints svc's tokens, with a status and a scope; svc, proven by one, gets tokens too.
[[rule]]
callers = ["client:batch"]
subjects = ["svc"]
audiences = ["ledger"]
claims = {{ scope = "orders.read" }}
status = "required"

[[rule]]
callers = ["svc"]
audiences = ["ledger"]

[txn]
trust_domain = "{TRUST_DOMAIN}"

[[txn_rule]]
callers = ["client:edge"]
scopes = ["orders.read"]
"#,
        jwks.display(),
        hex(&crypto::sha256(BATCH_SECRET.as_bytes())),
        hex(&crypto::sha256(EDGE_SECRET.as_bytes())),
    );
    let policy_path = parent.join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let policy_arg = policy_path.display().to_string();
    let server = TestServer::start_with(config(&dir, &["--policy-file", &policy_arg])).await;
    let minted = issue_as(
        &server,
        Some(&basic("batch", BATCH_SECRET)),
        ask("svc", &["ledger"], Some(3600), ""),
    )
    .await
    .unwrap();
    // batch's token names batch as the actor (act); svc's own, as a workload of this
    // authority would hold it, is the same token without act, signed with the same key.
    let mut claims = crate::callers::payload(&minted.token);
    claims.as_object_mut().unwrap().remove("act");
    let token = own.forge(&own.header(), &claims.to_string());
    let bearer = format!("Bearer {token}");

    // Valid: it proves svc, and is exchanged (twice, the second as the first).
    issue_as(&server, Some(&bearer), ask("svc", &["ledger"], None, ""))
        .await
        .unwrap();
    for _ in 0..2 {
        exchange_as(&server, Some(&edge()), txn::ask("orders.read", &token))
            .await
            .unwrap();
    }

    server
        .client
        .clone()
        .set_token_status(admin(set_request(&minted.jti, TokenStatus::Invalid)))
        .await
        .unwrap();
    let status = issue_as(&server, Some(&bearer), ask("svc", &["ledger"], None, ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("bearer token: the token was revoked"),
        "{status:?}"
    );
    let status = exchange_as(&server, Some(&edge()), txn::ask("orders.read", &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("invalid_grant: the subject token is refused: the token was revoked"),
        "{status:?}"
    );
    server.stop().await;
}
