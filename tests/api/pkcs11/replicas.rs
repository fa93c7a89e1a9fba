//! Two replicas on one PostgreSQL database and one token: a replica in this process and the
//! real binary, both on the same SoftHSM token. The store names each key's objects by CKA_ID,
//! so each replica signs with keys the other made, and a revocation on one destroys objects
//! the other created.

use token_authority::pb;

use super::{args, private_objects, signer_flags, softhsm};
use crate::{
    binary::spawn_binary,
    helpers::{admin, connect, DataDir, TestServer},
    postgres::Store,
};

async fn current(
    client: &mut pb::token_authority_client::TokenAuthorityClient<tonic::transport::Channel>,
    alg: &str,
) -> String {
    let keys = client
        .list_keys(admin(pb::ListKeysRequest {}))
        .await
        .unwrap()
        .into_inner()
        .keys;
    keys.iter()
        .find(|k| k.state == pb::KeyState::Current as i32 && k.algorithm == alg)
        .map(|k| k.key_id.clone())
        .unwrap()
}

async fn issue(
    client: &mut pb::token_authority_client::TokenAuthorityClient<tonic::transport::Channel>,
    alg: &str,
) -> pb::IssueTokenResponse {
    client
        .issue_token(pb::IssueTokenRequest {
            subject: "svc".into(),
            audience: vec!["api".into()],
            algorithm: alg.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn valid(
    client: &mut pb::token_authority_client::TokenAuthorityClient<tonic::transport::Channel>,
    token: &str,
) -> bool {
    client
        .verify_token(pb::VerifyTokenRequest {
            token: token.into(),
            audience: "api".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .valid
}

/// Waits (at most 10 s) until `client`'s current key of `alg` is `kid`.
async fn until_current(
    client: &mut pb::token_authority_client::TokenAuthorityClient<tonic::transport::Channel>,
    alg: &str,
    kid: &str,
) {
    let started = std::time::Instant::now();
    while current(client, alg).await != kid {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{kid} never became current"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_token_each_sign_with_keys_the_other_made() {
    let shared = Store::postgres().await;
    let label = softhsm::new_token("replicas");
    let (dir_a, dir_b) = (DataDir::new(), DataDir::new());
    let mut flags = signer_flags(&dir_a, &label);
    let at = flags.iter().position(|f| f == "--algorithms").unwrap();
    flags[at + 1] = "ES256,RS256".into();
    flags.extend(shared.args());
    flags.extend(["--issuer".into(), "http://token-authority.test".into()]);
    // Replica A, in this process, makes the first keys in the token.
    let a = TestServer::start_with(crate::helpers::config(&dir_a, &args(&flags))).await;
    let mut to_a = a.client.clone();
    // Replica B, the binary (SOFTHSM2_CONF inherited), finds them by CKA_ID.
    let b = tokio::task::block_in_place(|| spawn_binary(&dir_b, &args(&flags)));
    let mut to_b = connect(&b.grpc).await;

    for alg in ["ES256", "RS256"] {
        let from_a = issue(&mut to_a, alg).await;
        let from_b = issue(&mut to_b, alg).await;
        assert_eq!(from_a.key_id, from_b.key_id, "{alg}: one key set");
        assert!(valid(&mut to_b, &from_a.token).await, "{alg}");
        assert!(valid(&mut to_a, &from_b.token).await, "{alg}");
    }

    // B rotates: A's next key signs on both, and B makes the new next key in the token; a
    // rotation on A then promotes the key B made.
    let first = to_b
        .rotate_keys(admin(pb::RotateKeysRequest {
            algorithm: "ES256".into(),
            force: true,
        }))
        .await
        .unwrap()
        .into_inner();
    until_current(&mut to_a, "ES256", &first.current_key_id).await;
    let made_by_b = a
        .list_keys()
        .await
        .keys
        .into_iter()
        .find(|k| k.state == pb::KeyState::Next as i32 && k.algorithm == "ES256")
        .unwrap()
        .key_id;
    assert_eq!(private_objects(&label, &made_by_b).len(), 1);
    let second = to_a
        .rotate_keys(admin(pb::RotateKeysRequest {
            algorithm: "ES256".into(),
            force: true,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.current_key_id, made_by_b);
    let signed_by_a = issue(&mut to_a, "ES256").await;
    assert_eq!(signed_by_a.key_id, made_by_b, "A signs with the key B made");
    assert!(valid(&mut to_b, &signed_by_a.token).await);
    until_current(&mut to_b, "ES256", &made_by_b).await;
    let signed_by_b = issue(&mut to_b, "ES256").await;
    assert_eq!(signed_by_b.key_id, made_by_b);
    assert!(valid(&mut to_a, &signed_by_b.token).await);

    // A revokes the key B made: its objects leave the token, and B refuses its tokens.
    a.client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: made_by_b.clone(),
            reason: "test".into(),
        }))
        .await
        .unwrap();
    assert!(private_objects(&label, &made_by_b).is_empty());
    let started = std::time::Instant::now();
    while valid(&mut to_b, &signed_by_b.token).await {
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after = issue(&mut to_b, "ES256").await;
    assert_ne!(after.key_id, made_by_b);
    assert!(valid(&mut to_a, &after.token).await);

    // The database holds no private half: every row names its token object and public key.
    let stored = shared.pg().psql("SELECT record FROM ta_keys");
    let records: Vec<serde_json::Value> = stored
        .lines()
        .filter(|line| line.trim_start().starts_with('{'))
        .map(|line| serde_json::from_str(line.trim()).unwrap())
        .collect();
    assert!(records.len() >= 4, "{stored}");
    for record in &records {
        assert!(
            record
                .get("private_key")
                .is_none_or(|key| key.is_null() || key == ""),
            "{record}"
        );
        assert_eq!(
            record["token"]["object_id"].as_str().map(str::len),
            Some(32),
            "{record}"
        );
    }

    let mut b = b;
    b.terminate();
    a.stop().await;
}

/// A key whose retention ended while no replica ran is deleted by the first replica to
/// start, in the transaction that opens it; its objects then leave the token too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_as_a_replica_starts_leaves_the_token() {
    let shared = Store::postgres().await;
    let label = softhsm::new_token("retention");
    let dir = DataDir::new();
    let mut flags = signer_flags(&dir, &label);
    let at = flags.iter().position(|f| f == "--algorithms").unwrap();
    flags[at + 1] = "ES256".into();
    flags.extend(shared.args());
    flags.extend(["--max-ttl", "1s", "--default-ttl", "1s", "--leeway", "0s"].map(String::from));
    let server = TestServer::start_with(crate::helpers::config(&dir, &args(&flags))).await;
    let retired = server.rotate().await.previous_key_id;
    assert_eq!(private_objects(&label, &retired).len(), 1);
    server.stop().await;

    // Past its retention (1 s of max ttl, no leeway) with every replica down.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let server = TestServer::start_with(crate::helpers::config(&dir, &args(&flags))).await;
    assert!(
        !server
            .list_keys()
            .await
            .keys
            .iter()
            .any(|k| k.key_id == retired),
        "the retired key is still listed"
    );
    assert!(private_objects(&label, &retired).is_empty());
    server.stop().await;
}
