//! The `Verifier`'s HTTP fallback on its own clock: while WatchKeys is unavailable, the JWKS
//! is fetched again when the `Cache-Control: max-age` of the last answer runs out (the
//! server's `--jwks-max-age`), with no unknown kid to prompt it, and not before.

use std::time::{Duration, Instant};

use token_authority::pb;
use token_authority_client::{Verifier, VerifierSettings};

use super::{channel, counter};
use crate::helpers::{config, DataDir, TestServer};

const MAX_AGE: Duration = Duration::from_secs(3);
const OK: &str = r#"token_authority_jwks_responses_total{status="200"}"#;
const NOT_MODIFIED: &str = r#"token_authority_jwks_responses_total{status="304"}"#;

/// Every JWKS request the server answered.
async fn fetches(server: &TestServer) -> f64 {
    counter(server, OK).await + counter(server, NOT_MODIFIED).await
}

/// Rotates, then watches the verifier's set (never verifying a token, so no unknown kid
/// asks for a fetch) until the new `next` key shows; returns when it did.
async fn rotate_and_wait_for_the_new_key(server: &TestServer, local: &Verifier) -> Instant {
    let rotated = server.rotate().await;
    let next = rotated
        .keys
        .iter()
        .find(|k| k.state == pb::KeyState::Next as i32)
        .map(|k| k.key_id.clone())
        .unwrap();
    let deadline = Instant::now() + MAX_AGE * 3;
    loop {
        if local.key_set().kids().any(|kid| kid == next) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "the rotation never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_watch_keys_a_rotation_shows_when_the_jwks_max_age_runs_out_and_not_before() {
    let dir = DataDir::new();
    let max_age = format!("{}s", MAX_AGE.as_secs());
    let server = TestServer::start_with(config(
        &dir,
        &["--max-watchers", "1", "--jwks-max-age", &max_age],
    ))
    .await;
    // Another watcher holds the only slot: the verifier's WatchKeys is refused throughout.
    let mut holder = server
        .client
        .clone()
        .watch_keys(pb::WatchKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    holder.message().await.unwrap();

    let mut settings = VerifierSettings::new(server.issuer.clone());
    settings.jwks_url = Some(server.url("/.well-known/jwks.json"));
    let local = Verifier::connect(channel(&server), settings).await.unwrap();
    // The first set came from the HTTP fetch connect waited for.
    let mut fetched = Instant::now();
    assert_eq!(fetches(&server).await, 1.0);

    for period in 1..=3 {
        let shown = rotate_and_wait_for_the_new_key(&server, &local).await;
        let after = shown - fetched;
        println!("period {period}: the rotation showed {after:?} after the last fetch");
        assert!(
            after > MAX_AGE - Duration::from_millis(300),
            "fetched before max-age ran out: {after:?}"
        );
        assert!(
            after < MAX_AGE + Duration::from_millis(1500),
            "not fetched when max-age ran out: {after:?}"
        );
        // One fetch per max-age: no polling in between.
        assert_eq!(fetches(&server).await, 1.0 + f64::from(period));
        assert_eq!(counter(&server, OK).await, 1.0 + f64::from(period));
        fetched = shown;
    }

    // With nothing new, the next fetch is a conditional one, again one per max-age.
    tokio::time::sleep(MAX_AGE + Duration::from_millis(700)).await;
    assert_eq!(counter(&server, NOT_MODIFIED).await, 1.0);
    assert_eq!(fetches(&server).await, 5.0);
    drop(holder);
    server.stop().await;
}
