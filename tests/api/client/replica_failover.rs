//! Two replicas on PostgreSQL, and the one the `Verifier`s watch killed (SIGKILL: the real
//! binary). A verifier given only that replica falls back on the JWKS of the live one
//! (`--jwks-max-age 300s`) and refuses a key revoked there within its poll interval, not at
//! the end of the max-age; a verifier given both replicas moves its stream to the live one
//! and has the revocation pushed. Dead replicas ahead of a live one in the list cost a short
//! backoff each, not a doubling one.

use std::time::{Duration, Instant};

use token_authority::pb;
use token_authority_client::{Reason, Verifier, VerifierSettings};
use tonic::transport::Channel;

use crate::{
    binary::spawn_binary,
    helpers::{admin, config, wait_for_metric, DataDir, TestServer},
    postgres::Store,
};

const ISSUER: &str = "http://token-authority.test";
const OK: &str = r#"token_authority_jwks_responses_total{status="200"}"#;
const WATCHERS: &str = "token_authority_key_watchers";
/// The poll interval (2 s and up to a quarter of jitter) and a wide margin: well under the
/// 300 s max-age the fallback honoured alone.
const REFUSED_WITHIN: Duration = Duration::from_secs(8);

fn channel_to(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_a_live_replica_is_refused_within_seconds_of_the_watched_one_dying() {
    let shared = Store::postgres().await;
    let store = shared.args();
    let mut args: Vec<&str> = store.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--issuer", ISSUER, "--algorithms", "ES256"]);
    args.extend_from_slice(&["--jwks-max-age", "300s"]);
    let dir_a = DataDir::new();
    let mut a = tokio::task::block_in_place(|| spawn_binary(&dir_a, &args));
    let dir_b = DataDir::new();
    let b = TestServer::start_with(config(&dir_b, &args)).await;

    // `alone` watches A only, with B's JWKS as its fallback (as a Service URL would reach a
    // live replica); `both` is given both replicas and no fallback.
    let mut settings = VerifierSettings::new(ISSUER);
    settings.jwks_url = Some(b.url("/.well-known/jwks.json"));
    let alone = Verifier::connect(channel_to(&a.grpc), settings)
        .await
        .unwrap();
    let both = Verifier::connect_replicas(
        [channel_to(&a.grpc), channel_to(&b.grpc_addr.to_string())],
        VerifierSettings::new(ISSUER),
    )
    .await
    .unwrap();
    let issued = b.issue("orders", &["ledger"]).await;
    assert!(alone.verify(&issued.token).is_ok());
    assert!(both.verify(&issued.token).is_ok());
    assert_eq!(crate::helpers::metric(&b, WATCHERS).await, 0.0);

    let killed = Instant::now();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // `alone` fetched B's JWKS at once, while it still held the key; `both` now watches B.
    wait_for_metric(&b, OK, 1.0).await;
    wait_for_metric(&b, WATCHERS, 1.0).await;
    println!(
        "SIGKILL -> the stream on the other replica: {:?}",
        killed.elapsed()
    );
    assert!(alone.verify(&issued.token).is_ok());

    let revoked = Instant::now();
    let response = b
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: issued.key_id.clone(),
            reason: "test".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let answered = revoked.elapsed();
    // A was killed without leaving: B waited for it (up to 2 s) and says it did not confirm.
    assert_eq!(
        (response.replicas_confirmed, response.replicas_live),
        (0, 1)
    );
    let mut alone_refused = None;
    let mut both_refused = None;
    while alone_refused.is_none() || both_refused.is_none() {
        if alone_refused.is_none() {
            if let Err(rejection) = alone.verify(&issued.token) {
                // The JWKS lists no revoked keys: through the fallback the kid is unknown.
                assert_eq!(rejection.reason, Reason::UnknownKey, "{rejection}");
                alone_refused = Some(revoked.elapsed());
            }
        }
        if both_refused.is_none() {
            if let Err(rejection) = both.verify(&issued.token) {
                // Pushed by B's WatchKeys, which reports the revocation itself.
                assert_eq!(rejection.reason, Reason::RevokedKey, "{rejection}");
                both_refused = Some(revoked.elapsed());
            }
        }
        assert!(
            revoked.elapsed() < REFUSED_WITHIN,
            "still accepted {:?} after RevokeKey on the live replica: watching A only {}, \
             watching both {}",
            revoked.elapsed(),
            if alone_refused.is_some() {
                "refused"
            } else {
                "accepted"
            },
            if both_refused.is_some() {
                "refused"
            } else {
                "accepted"
            },
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "RevokeKey on B -> refused: watching A only (HTTP fallback) {:?}, watching both \
         (pushed) {:?}",
        alone_refused.unwrap(),
        both_refused.unwrap()
    );
    // Pushed before RevokeKey answered: refused at the first look after the answer.
    assert!(both_refused.unwrap() < answered + Duration::from_millis(500));
    b.stop().await;
}

#[tokio::test]
async fn dead_replicas_ahead_in_the_list_cost_one_short_backoff_each() {
    let dir = DataDir::new();
    let live = TestServer::start(&dir).await;
    // Ports bound then released: nothing listens there, connections are refused at once.
    let mut replicas = Vec::new();
    for _ in 0..5 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        replicas.push(channel_to(&listener.local_addr().unwrap().to_string()));
    }
    replicas.push(channel_to(&live.grpc_addr.to_string()));
    let started = Instant::now();
    let local = Verifier::connect_replicas(replicas, VerifierSettings::new(live.issuer.clone()))
        .await
        .unwrap();
    let took = started.elapsed();
    println!("five dead replicas, then a live one: first key set after {took:?}");
    // 100 ms (and jitter) per dead one; a backoff doubling at each of them would take
    // 100 + 200 + 400 + 800 + 1600 ms.
    assert!(took < Duration::from_secs(2), "{took:?}");
    let token = live.issue("orders", &["ledger"]).await.token;
    assert!(local.verify(&token).is_ok());
    live.stop().await;
}
