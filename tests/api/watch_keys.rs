//! WatchKeys over real gRPC streams: the set at once and at every change, revocation pushed
//! to every watcher within a second, the cap on watchers, a watcher that does not read
//! dropped, TLS with no caller identity, and streams ended by shutdown.

use std::time::{Duration, Instant};

use token_authority::pb::{self, watch_keys_response::Event};
use tonic::{transport::Channel, Code, Streaming};

use crate::helpers::{admin, config, endpoint, metric, DataDir, TestServer, TlsSetup};

async fn open(
    client: &mut pb::token_authority_client::TokenAuthorityClient<Channel>,
) -> Streaming<pb::WatchKeysResponse> {
    client
        .watch_keys(pb::WatchKeysRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The next key set on the stream, skipping keepalives.
async fn next_set(stream: &mut Streaming<pb::WatchKeysResponse>) -> pb::WatchedKeySet {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("no key set within 10 s")
            .unwrap()
            .expect("the stream ended");
        match message.event.expect("an event") {
            Event::KeySet(set) => return set,
            Event::Keepalive(_) | Event::StatusLists(_) => continue,
        }
    }
}

fn state_of(set: &pb::WatchedKeySet, kid: &str) -> Option<pb::KeyState> {
    set.keys
        .iter()
        .find(|key| key.key_id == kid)
        .map(|key| key.state())
}

async fn http_etag(server: &TestServer) -> String {
    let response = server
        .http
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    response.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn sends_the_public_set_at_once_and_at_every_rotation() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let mut stream = open(&mut server.client.clone()).await;

    let first = next_set(&mut stream).await;
    assert_eq!(first.jwks_json, server.grpc_jwks().await.jwks_json);
    assert_eq!(first.etag, http_etag(&server).await);
    assert_eq!(first.keepalive_interval.unwrap().seconds, 30);
    let current = server.current_kid("RS256").await;
    assert_eq!(state_of(&first, &current), Some(pb::KeyState::Current));
    let jwks: serde_json::Value = serde_json::from_str(&first.jwks_json).unwrap();
    for key in jwks["keys"].as_array().unwrap() {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(key.get(private).is_none(), "{private} published");
        }
    }

    let rotated = server.rotate().await;
    let second = next_set(&mut stream).await;
    assert_eq!(
        state_of(&second, &rotated.current_key_id),
        Some(pb::KeyState::Current)
    );
    assert_eq!(state_of(&second, &current), Some(pb::KeyState::Retired));
    let retired = second.keys.iter().find(|k| k.key_id == current).unwrap();
    assert!(retired.retired_at.is_some() && retired.delete_after.is_some());
    assert_ne!(second.etag, first.etag);
    assert_eq!(second.etag, http_etag(&server).await);
    server.stop().await;
}

#[tokio::test]
async fn revocation_reaches_every_watcher_within_a_second() {
    let dir = DataDir::new();
    // ES256: a revocation generates a new next key, and P-256 keys take microseconds.
    let server = TestServer::start_with(config(&dir, &["--algorithms", "ES256"])).await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let mut stream = open(&mut server.client.clone()).await;
        next_set(&mut stream).await;
        watchers.push(stream);
    }
    let mut delays = Vec::new();
    for _ in 0..100 {
        let kid = server.current_kid("ES256").await;
        let started = Instant::now();
        server
            .client
            .clone()
            .revoke_key(admin(pb::RevokeKeyRequest {
                key_id: kid.clone(),
                reason: "test".into(),
            }))
            .await
            .unwrap();
        for stream in &mut watchers {
            // A watcher skips to the latest set: the one that shows this revocation.
            loop {
                let set = next_set(stream).await;
                if state_of(&set, &kid) == Some(pb::KeyState::Revoked) {
                    assert!(
                        !set.jwks_json.contains(&kid),
                        "a revoked key stays published"
                    );
                    break;
                }
            }
            delays.push(started.elapsed());
        }
    }
    delays.sort();
    let p50 = delays[delays.len() / 2];
    let p99 = delays[delays.len() * 99 / 100];
    let max = delays[delays.len() - 1];
    println!(
        "RevokeKey -> watcher: p50 {p50:?}, p99 {p99:?}, max {max:?} over {} deliveries",
        delays.len()
    );
    assert!(
        max < Duration::from_secs(1),
        "a revocation took {max:?} to reach a watcher"
    );
    server.stop().await;
}

#[tokio::test]
async fn watchers_beyond_the_cap_are_refused_until_one_leaves() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(
        &dir,
        &["--max-watchers", "2", "--max-watchers-per-ip", "2"],
    ))
    .await;
    let mut first = open(&mut server.client.clone()).await;
    let mut second = open(&mut server.client.clone()).await;
    next_set(&mut first).await;
    next_set(&mut second).await;

    let refused = server
        .client
        .clone()
        .watch_keys(pb::WatchKeysRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (
            Code::ResourceExhausted,
            "this server already has 2 key watchers; retry later or use GetJwks"
        )
    );
    assert_eq!(metric(&server, "token_authority_key_watchers").await, 2.0);
    assert_eq!(
        metric(
            &server,
            r#"token_authority_key_watchers_refused_or_dropped_total{reason="limit"}"#
        )
        .await,
        1.0
    );

    // The slot is freed once the server sees the stream reset; that takes a round trip.
    drop(first);
    let mut third = watch_once_a_slot_frees(&server, "no slot freed").await;
    next_set(&mut third).await;
    server.stop().await;
}

/// Opens a watch, retrying while the server answers RESOURCE_EXHAUSTED (a slot is freed
/// once the server has seen the stream end, a round trip later); panics with `stuck` after
/// 5 s.
async fn watch_once_a_slot_frees(
    server: &TestServer,
    stuck: &str,
) -> tonic::Streaming<pb::WatchKeysResponse> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match server
            .client
            .clone()
            .watch_keys(pb::WatchKeysRequest {})
            .await
        {
            Ok(stream) => return stream.into_inner(),
            Err(status)
                if status.code() == Code::ResourceExhausted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{stuck}: {status:?}"),
        }
    }
}

#[tokio::test]
async fn a_watcher_that_does_not_read_is_dropped_and_its_slot_freed() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(
        &dir,
        &[
            "--algorithms",
            "ES256",
            "--max-watchers",
            "1",
            "--watch-send-timeout",
            "300ms",
        ],
    ))
    .await;
    // A client whose HTTP/2 window holds 64 bytes: the server can hand it almost nothing
    // until it reads.
    let channel = endpoint(server.grpc_addr, None)
        .initial_stream_window_size(64)
        .connect()
        .await
        .unwrap();
    let mut slow = open(&mut pb::token_authority_client::TokenAuthorityClient::new(
        channel,
    ))
    .await;
    // Changes it does not read: one waits in the watcher's slot, the next finds it full.
    for _ in 0..3 {
        server.rotate().await;
    }
    let mut fresh = watch_once_a_slot_frees(&server, "the slow watcher kept its slot").await;
    next_set(&mut fresh).await;

    // Its stream was reset when it was dropped (a status would wait behind the data it does
    // not take): it reads what was handed over, then the reset.
    let ended = loop {
        match slow.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the slow watcher's stream ended without a reason"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Cancelled, "{ended:?}");
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&ended);
    let reset = std::iter::from_fn(|| {
        let this = cause?;
        cause = this.source();
        Some(this)
    })
    .find_map(|e| e.downcast_ref::<h2::Error>()?.reason());
    assert_eq!(reset, Some(h2::Reason::CANCEL), "{ended:?}");
    assert_eq!(
        metric(
            &server,
            r#"token_authority_key_watchers_refused_or_dropped_total{reason="slow"}"#
        )
        .await,
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn works_over_tls_with_a_policy_and_no_credentials() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let policy = tls.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\ncallers = [\"spiffe://example.org/nobody\"]\n",
    )
    .unwrap();
    let server = tls
        .start(&dir, true, &["--policy-file", policy.to_str().unwrap()])
        .await;
    // No client certificate, no authorization metadata.
    let mut stream = open(&mut server.client.clone()).await;
    let set = next_set(&mut stream).await;
    assert_eq!(set.jwks_json, server.grpc_jwks().await.jwks_json);
    // The same caller may not issue: the policy is in force.
    let refused = server
        .client
        .clone()
        .issue_token(pb::IssueTokenRequest {
            subject: "s".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::Unauthenticated, "IssueToken needs credentials: a client certificate, `authorization: Bearer <token of a trusted issuer>` or `authorization: Basic <base64 of id:secret>`")
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(&dir, &["--shutdown-grace", "30s"])).await;
    let mut stream = open(&mut server.client.clone()).await;
    next_set(&mut stream).await;
    let started = Instant::now();
    server.stop().await;
    // Well under the grace period: the stream did not hold the drain.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a reason"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
}
