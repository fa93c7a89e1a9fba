use prost::Message as _;
use token_authority::pb;

use crate::helpers::{admin, kids, verify_independently, DataDir, KnownKey, TestServer};

#[tokio::test]
async fn restart_keeps_the_keys_and_old_tokens_verify() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let token = server.issue("svc", &["api"]).await;
    let kids_before = kids(&server.http_jwks().await);
    server.stop().await;

    let server = TestServer::start(&dir).await;
    let jwks = server.http_jwks().await;
    assert_eq!(kids(&jwks), kids_before);
    assert!(server.verify(&token.token, "api").await.valid);
    verify_independently(&jwks, &token.token, &server.issuer, "api").unwrap();
    // Still signing with the same key.
    assert_eq!(server.issue("svc", &[]).await.key_id, token.key_id);
    server.stop().await;
}

#[tokio::test]
async fn rotation_signs_with_a_new_key_and_keeps_the_old_one_verifying() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let old = server.issue("svc", &["api"]).await;

    let rotated = server.rotate().await;
    assert_eq!(rotated.previous_key_id, old.key_id);
    assert_ne!(rotated.current_key_id, old.key_id);
    let states: Vec<(String, i32)> = rotated
        .keys
        .iter()
        .map(|k| (k.key_id.clone(), k.state))
        .collect();
    assert!(states.contains(&(old.key_id.clone(), pb::KeyState::Retired as i32)));
    assert!(states.contains(&(rotated.current_key_id.clone(), pb::KeyState::Current as i32)));

    let new = server.issue("svc", &["api"]).await;
    assert_eq!(new.key_id, rotated.current_key_id);
    let jwks = server.http_jwks().await;
    let published = kids(&jwks);
    assert!(published.contains(&old.key_id) && published.contains(&new.key_id));
    for token in [&old.token, &new.token] {
        assert!(server.verify(token, "api").await.valid);
        verify_independently(&jwks, token, &server.issuer, "api").unwrap();
    }

    // The rotation is on disk: a restart serves the same set and signs with the new key.
    server.stop().await;
    let server = TestServer::start(&dir).await;
    assert_eq!(kids(&server.http_jwks().await), published);
    assert_eq!(
        server.issue("svc", &[]).await.key_id,
        rotated.current_key_id
    );
    assert!(server.verify(&old.token, "api").await.valid);
    server.stop().await;
}

#[tokio::test]
async fn list_keys_shows_every_key_with_state_and_times() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    server.rotate().await;
    server.rotate().await;
    let listed = server.list_keys().await;
    // Two retired, one current, one next.
    assert_eq!(listed.keys.len(), 4);
    for state in [pb::KeyState::Current, pb::KeyState::Next] {
        assert_eq!(
            listed
                .keys
                .iter()
                .filter(|k| k.state == state as i32)
                .count(),
            1
        );
    }
    for key in &listed.keys {
        let state = pb::KeyState::try_from(key.state).unwrap();
        assert_eq!(key.algorithm, "RS256");
        assert!(key.created_at.is_some() && key.published_at.is_some());
        assert_eq!(
            key.activated_at.is_some(),
            state != pb::KeyState::Next,
            "{key:?}"
        );
        assert_eq!(
            key.activates_at.is_some(),
            state == pb::KeyState::Next,
            "{key:?}"
        );
        assert_eq!(
            key.retired_at.is_some(),
            state == pb::KeyState::Retired,
            "{key:?}"
        );
        assert_eq!(
            key.delete_after.is_some(),
            state == pb::KeyState::Retired,
            "{key:?}"
        );
        assert!(!key.encrypted_at_rest);
    }
    let next = listed
        .keys
        .iter()
        .find(|k| k.state == pb::KeyState::Next as i32)
        .unwrap();
    // The default publish lead is 15 minutes.
    assert_eq!(
        next.activates_at.unwrap().seconds - next.published_at.unwrap().seconds,
        15 * 60
    );
    let retired = listed
        .keys
        .iter()
        .find(|k| k.state == pb::KeyState::Retired as i32)
        .unwrap();
    // Retention: retired_at + max ttl (24h) + leeway (60s).
    assert_eq!(
        retired.delete_after.unwrap().seconds - retired.retired_at.unwrap().seconds,
        86400 + 60
    );
    server.stop().await;
}

/// No RPC answer carries private key material, in any encoding.
#[tokio::test]
async fn no_response_carries_the_private_key() {
    let dir = DataDir::new();
    let known = KnownKey::seed(&dir);
    let server = TestServer::start(&dir).await;
    let mut client = server.client.clone();
    let issued = server.issue("svc", &[]).await;
    let mut wire: Vec<Vec<u8>> = vec![issued.encode_to_vec()];
    wire.push(server.verify(&issued.token, "").await.encode_to_vec());
    wire.push(
        client
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .encode_to_vec(),
    );
    wire.push(
        client
            .list_keys(admin(pb::ListKeysRequest {}))
            .await
            .unwrap()
            .into_inner()
            .encode_to_vec(),
    );
    wire.push(server.rotate().await.encode_to_vec());
    wire.push(
        server
            .http
            .get(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec(),
    );

    server.stop().await;
    let der = dir_private_der(&dir, &known.kid);
    // Any 24-byte window of the DER past the public header, raw or base64-encoded.
    let window = &der[der.len() - 64..der.len() - 40];
    let needles = [
        window.to_vec(),
        token_authority_jose::b64::encode(window).into_bytes()[4..28].to_vec(),
    ];
    for (i, bytes) in wire.iter().enumerate() {
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "response {i} carries private key bytes"
            );
        }
    }
}

fn dir_private_der(dir: &DataDir, kid: &str) -> Vec<u8> {
    let (_, records) =
        token_authority::store::KeyStore::open(&dir.path.join("keystore"), None).unwrap();
    records
        .into_iter()
        .find(|r| r.kid == kid)
        .unwrap()
        .private_key
        .as_bytes()
        .to_vec()
}
