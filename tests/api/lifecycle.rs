//! The key lifecycle invariants over the real server: publish before sign, retention,
//! revocation, and a schedule that survives restarts. Each test that does not open the sled
//! files itself runs on sled and again on PostgreSQL (`mod on_postgres`).

use token_authority::pb;
use tonic::Code;

use crate::{
    helpers::{admin, config, kids, now, verify_independently, DataDir, KnownKey, TestServer},
    postgres::Store,
};

/// Each named test, on PostgreSQL: the same function, given a `Store::Postgres`.
macro_rules! on_postgres {
    ($($name:ident => $body:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$body(&crate::postgres::Store::postgres().await).await;
                }
            )*
        }
    };
}

on_postgres!(
    publish_before_sign_a_cached_jwks_verifies_tokens_after_rotations => publish_before_sign_a_cached_jwks_verifies_tokens_after_rotations_on,
    early_rotation_is_refused_unless_forced => early_rotation_is_refused_unless_forced_on,
    retention_old_tokens_verify_across_rotations => retention_old_tokens_verify_across_rotations_on,
    revocation_withdraws_the_key_at_once_and_is_remembered => revocation_withdraws_the_key_at_once_and_is_remembered_on,
    restart_keeps_the_schedule => restart_keeps_the_schedule_on,
    jwks_max_age_follows_the_schedule => jwks_max_age_follows_the_schedule_on,
    the_schedule_rotates_and_deletes_on_its_own => the_schedule_rotates_and_deletes_on_its_own_on,
);

/// A verifier that cached the JWKS before a rotation verifies every token issued after it.
#[tokio::test]
async fn publish_before_sign_a_cached_jwks_verifies_tokens_after_rotations() {
    publish_before_sign_a_cached_jwks_verifies_tokens_after_rotations_on(&Store::Sled).await;
}

async fn publish_before_sign_a_cached_jwks_verifies_tokens_after_rotations_on(store: &Store) {
    let dir = DataDir::new();
    let server = TestServer::start_with(store.config(&dir, &[])).await;
    let cached = server.http_jwks().await;
    let rotated = server.rotate().await;
    assert!(
        kids(&cached).contains(&rotated.current_key_id),
        "the new signer was not published before"
    );
    let token = server.issue("svc", &["api"]).await;
    assert_eq!(token.key_id, rotated.current_key_id);
    verify_independently(&cached, &token.token, &server.issuer, "api").unwrap();
    // Every token returned carries a kid both JWKS views already serve.
    let grpc_jwks = server.grpc_jwks().await;
    assert!(grpc_jwks.keys.iter().any(|k| k.kid == token.key_id));
    server.stop().await;
}

/// A manual rotation before the next key has been published for the lead is refused with
/// when it will be safe.
#[tokio::test]
async fn early_rotation_is_refused_unless_forced() {
    early_rotation_is_refused_unless_forced_on(&Store::Sled).await;
}

async fn early_rotation_is_refused_unless_forced_on(store: &Store) {
    let dir = DataDir::new();
    let server = TestServer::start_with(store.config(&dir, &["--publish-lead", "10m"])).await;
    let status = server
        .client
        .clone()
        .rotate_keys(admin(pb::RotateKeysRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("publish lead") && status.message().contains("set force"),
        "{}",
        status.message()
    );
    let forced = server.rotate().await;
    assert!(!forced.current_key_id.is_empty());
    // A zero lead rotates at once.
    server.stop().await;
    let server = TestServer::start_with(store.config(&dir, &["--publish-lead", "0s"])).await;
    server
        .client
        .clone()
        .rotate_keys(admin(pb::RotateKeysRequest::default()))
        .await
        .unwrap();
    server.stop().await;
}

/// A token stays verifiable until its own exp across several rotations.
#[tokio::test]
async fn retention_old_tokens_verify_across_rotations() {
    retention_old_tokens_verify_across_rotations_on(&Store::Sled).await;
}

async fn retention_old_tokens_verify_across_rotations_on(store: &Store) {
    let dir = DataDir::new();
    let server = TestServer::start_with(store.config(&dir, &[])).await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(server.issue("svc", &["api"]).await);
        server.rotate().await;
    }
    let jwks = server.http_jwks().await;
    for token in &tokens {
        assert!(server.verify(&token.token, "api").await.valid);
        verify_independently(&jwks, &token.token, &server.issuer, "api").unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn revocation_withdraws_the_key_at_once_and_is_remembered() {
    revocation_withdraws_the_key_at_once_and_is_remembered_on(&Store::Sled).await;
}

async fn revocation_withdraws_the_key_at_once_and_is_remembered_on(store: &Store) {
    let dir = DataDir::new();
    let server = TestServer::start_with(store.config(&dir, &[])).await;
    let token = server.issue("svc", &["api"]).await;
    let before = server.http_jwks().await;
    let revoked = server
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: token.key_id.clone(),
            reason: "private key leaked".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    // No other replica to wait for: both counts are 0, with sled and with one replica on
    // PostgreSQL alike.
    assert_eq!((revoked.replicas_confirmed, revoked.replicas_live), (0, 0));
    // The next key, already published, signs at once.
    assert_ne!(revoked.current_key_id, token.key_id);
    assert!(kids(&before).contains(&revoked.current_key_id));
    let http = server.http_jwks().await;
    let grpc = server.grpc_jwks().await;
    assert!(!kids(&http).contains(&token.key_id));
    assert!(!grpc.keys.iter().any(|k| k.kid == token.key_id));
    let verdict = server.verify(&token.token, "api").await;
    assert!(!verdict.valid);
    assert_eq!(verdict.reason, pb::VerifyFailureReason::RevokedKey as i32);
    assert_eq!(
        server.issue("svc", &[]).await.key_id,
        revoked.current_key_id
    );
    let info = revoked
        .keys
        .iter()
        .find(|k| k.key_id == token.key_id)
        .unwrap();
    assert_eq!(info.state, pb::KeyState::Revoked as i32);
    assert_eq!(info.revoked_reason, "private key leaked");

    let unknown = server
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: "no-such-kid".into(),
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (Code::NotFound, "no key no-such-kid")
    );

    // Remembered across a restart: never back in the JWKS, its tokens still rejected.
    server.stop().await;
    let server = TestServer::start_with(store.config(&dir, &[])).await;
    assert!(!kids(&server.http_jwks().await).contains(&token.key_id));
    assert_eq!(
        server.verify(&token.token, "api").await.reason,
        pb::VerifyFailureReason::RevokedKey as i32
    );
    server.stop().await;
    // The revoked key's private half is erased from the keystore; its record stays.
    match store {
        Store::Sled => {
            let (_, records) =
                token_authority::store::KeyStore::open(&dir.path.join("keystore"), None).unwrap();
            let record = records.iter().find(|r| r.kid == token.key_id).unwrap();
            assert!(record.private_key.as_bytes().is_empty());
        }
        Store::Postgres { pg, .. } => {
            let sealed = pg.psql(&format!(
                "SELECT coalesce(record::json->>'private_key', 'erased') FROM ta_keys WHERE kid = '{}'",
                token.key_id
            ));
            assert_eq!(sealed.trim(), "erased");
        }
    }
}

/// The schedule is computed from stored times: a restart neither rotates early nor forgets
/// a rotation that fell due while the server was down.
#[tokio::test]
async fn restart_keeps_the_schedule() {
    restart_keeps_the_schedule_on(&Store::Sled).await;
}

async fn restart_keeps_the_schedule_on(store: &Store) {
    let dir = DataDir::new();
    let server = TestServer::start_with(store.config(&dir, &["--rotation-period", "1h"])).await;
    let signer = server.issue("svc", &[]).await.key_id;
    server.stop().await;
    let server = TestServer::start_with(store.config(&dir, &["--rotation-period", "1h"])).await;
    assert_eq!(
        server.issue("svc", &[]).await.key_id,
        signer,
        "rotated early on restart"
    );
    server.stop().await;

    // A key current for two days under a one-day period: the start performs the rotation.
    // (Seeded into sled's files: the shared store's start runs the same `due` plan.)
    if !matches!(store, Store::Sled) {
        return;
    }
    let dir = DataDir::new();
    let old = KnownKey::seed_activated(&dir, now() - 2 * 86400);
    let server = TestServer::start_with(config(&dir, &["--publish-lead", "0s"])).await;
    let listed = server.list_keys().await;
    let old_info = listed.keys.iter().find(|k| k.key_id == old.kid).unwrap();
    assert_eq!(old_info.state, pb::KeyState::Retired as i32, "{listed:?}");
    assert_ne!(server.issue("svc", &[]).await.key_id, old.kid);
    server.stop().await;
}

/// The JWKS max-age never reaches past the next scheduled change of the set.
#[tokio::test]
async fn jwks_max_age_follows_the_schedule() {
    jwks_max_age_follows_the_schedule_on(&Store::Sled).await;
}

async fn jwks_max_age_follows_the_schedule_on(store: &Store) {
    let dir = DataDir::new();
    let server = TestServer::start_with(
        store.config(&dir, &["--rotation-period", "100s", "--publish-lead", "0s"]),
    )
    .await;
    let response = server
        .http
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    let cache_control = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    let max_age: u64 = cache_control
        .split(", ")
        .find_map(|part| part.strip_prefix("max-age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(max_age <= 100, "{cache_control}");
    assert!(
        cache_control.contains("stale-while-revalidate=")
            && cache_control.contains("stale-if-error=")
    );
    server.stop().await;
}

/// The background schedule rotates a running server's keys and deletes retired keys once
/// their tokens have expired, with no request asking. Short timings stand in for days; the
/// test watches for the change (with a deadline) rather than sleeping a fixed time. This is
/// the binary's wiring of the schedule; its steps over months, on paused time, are
/// `server::tests::schedule`.
#[tokio::test]
async fn the_schedule_rotates_and_deletes_on_its_own() {
    the_schedule_rotates_and_deletes_on_its_own_on(&Store::Sled).await;
}

async fn the_schedule_rotates_and_deletes_on_its_own_on(store: &Store) {
    let dir = DataDir::new();
    let server = TestServer::start_with(store.config(
        &dir,
        &[
            "--rotation-period",
            "2s",
            "--publish-lead",
            "0s",
            "--jwks-max-age",
            "0s",
            "--max-ttl",
            "1s",
            "--default-ttl",
            "1s",
            "--leeway",
            "0s",
        ],
    ))
    .await;
    let first = server.issue("svc", &[]).await.key_id;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut rotated, mut deleted) = (false, false);
    while !(rotated && deleted) {
        assert!(
            std::time::Instant::now() < deadline,
            "rotated: {rotated}, deleted: {deleted}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let listed = server.list_keys().await;
        let first_state = listed
            .keys
            .iter()
            .find(|k| k.key_id == first)
            .map(|k| k.state);
        rotated |= first_state == Some(pb::KeyState::Retired as i32);
        deleted |= rotated && first_state.is_none();
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
    }
    assert!(!kids(&server.http_jwks().await).contains(&first));
    server.stop().await;
}
