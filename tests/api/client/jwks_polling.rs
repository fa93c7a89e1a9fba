//! The `Verifier`'s HTTP fallback on its own clock: while WatchKeys is unavailable, the JWKS
//! is polled every `jwks_poll_interval` (2 s by default) with its ETag, however long the
//! server's `--jwks-max-age`, so a change shows within the interval and an unchanged set
//! costs a `304`; once a stream is back the polling stops.

use std::time::{Duration, Instant};

use token_authority::pb;
use token_authority_client::{Verifier, VerifierSettings};

use super::{channel, counter};
use crate::helpers::{config, metric, DataDir, TestServer};

/// The documented default, with the quarter of jitter it may get.
const POLL: Duration = Duration::from_secs(2);
const POLL_LATEST: Duration = Duration::from_millis(2500);
const OK: &str = r#"token_authority_jwks_responses_total{status="200"}"#;
const NOT_MODIFIED: &str = r#"token_authority_jwks_responses_total{status="304"}"#;
const WATCHERS: &str = "token_authority_key_watchers";

/// Every JWKS request the server answered.
async fn fetches(server: &TestServer) -> f64 {
    counter(server, OK).await + counter(server, NOT_MODIFIED).await
}

/// Rotates, then watches the verifier's set (never verifying a token, so no unknown kid
/// asks for a fetch) until the new `next` key shows; returns how long that took.
async fn rotate_and_wait_for_the_new_key(server: &TestServer, local: &Verifier) -> Duration {
    let rotated = server.rotate().await;
    let started = Instant::now();
    let next = rotated
        .keys
        .iter()
        .find(|k| k.state == pb::KeyState::Next as i32)
        .map(|k| k.key_id.clone())
        .unwrap();
    loop {
        if local.key_set().kids().any(|kid| kid == next) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < POLL_LATEST + Duration::from_secs(2),
            "the rotation did not show within the poll interval (the JWKS max-age is 300 s)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn without_watch_keys_the_jwks_is_polled_every_two_seconds_until_the_stream_is_back() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(
        &dir,
        &["--max-watchers", "1", "--jwks-max-age", "300s"],
    ))
    .await;
    // Another watcher holds the only slot: the verifier's WatchKeys is refused.
    let mut holder = server
        .client
        .clone()
        .watch_keys(pb::WatchKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    holder.message().await.unwrap();

    let mut settings = VerifierSettings::new(server.issuer.clone());
    assert_eq!(settings.jwks_poll_interval, POLL);
    settings.jwks_url = Some(server.url("/.well-known/jwks.json"));
    let local = Verifier::connect(channel(&server), settings).await.unwrap();
    // The first set came from the HTTP fetch connect waited for.
    assert_eq!(counter(&server, OK).await, 1.0);

    for period in 1..=3 {
        let shown = rotate_and_wait_for_the_new_key(&server, &local).await;
        println!("rotation {period} showed in the verifier after {shown:?}");
        assert_eq!(counter(&server, OK).await, 1.0 + f64::from(period));
    }

    // Nothing new: every poll is a conditional GET answered 304, one per interval.
    let before = (
        counter(&server, OK).await,
        counter(&server, NOT_MODIFIED).await,
    );
    // Under the 10 s after which the server closes an idle HTTP/1.1 connection, so the
    // test's own pooled connection to /metrics is not reused just as it closes.
    let window = Duration::from_secs(9);
    tokio::time::sleep(window).await;
    let polled = counter(&server, NOT_MODIFIED).await - before.1;
    println!("{polled} polls in {window:?}, all 304");
    assert_eq!(counter(&server, OK).await, before.0);
    assert!(
        (3.0..=6.0).contains(&polled),
        "{polled} polls in {window:?}"
    );

    // The slot is freed: the verifier's next reconnect (at most 5 s of backoff and a
    // quarter of jitter apart) takes it, and from then on the JWKS is not asked at all.
    drop(holder);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, WATCHERS).await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the verifier's stream did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = fetches(&server).await;
    tokio::time::sleep(POLL_LATEST * 3).await;
    assert_eq!(fetches(&server).await, back, "polled with the stream up");
    // And the stream is what carries changes now.
    let shown = rotate_and_wait_for_the_new_key(&server, &local).await;
    println!("with the stream back, a rotation showed after {shown:?}");
    assert_eq!(fetches(&server).await, back);
    server.stop().await;
}
