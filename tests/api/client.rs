//! The client crate against the real server: its `Verifier` across rotations and a
//! revocation pushed by WatchKeys, its `TokenSource`'s single flight, both while the
//! authority is down and after it returns, and the two interceptors on a real gRPC service.
//! (The hostile-token table runs through the client's `Verifier` in `bad_tokens`. What
//! depends on time passing, the refresh ahead of expiry, expiry itself and verifying across
//! scheduled rotations, runs in process on paused time: the server's `server::tests`.)

use std::time::{Duration, Instant};

use token_authority::pb;
use token_authority_client::{
    interceptor::{verify_bearer_layer, AttachToken},
    ClientError, Credentials, Reason, TokenRequest, TokenSource, Verified, Verifier,
    VerifierSettings,
};
use tonic::{transport::Channel, Code};

use crate::helpers::{admin, config, endpoint, metric, DataDir, TestServer};

mod clock_skew;
mod jwks_polling;
mod replica_failover;
mod status_lists;
mod tokens;
mod txn_chain;
mod watch_open;

fn channel(server: &TestServer) -> Channel {
    endpoint(server.grpc_addr, None).connect_lazy()
}

async fn verifier(server: &TestServer) -> Verifier {
    Verifier::connect(
        channel(server),
        VerifierSettings::new(server.issuer.clone()),
    )
    .await
    .unwrap()
}

fn request(ttl: Option<Duration>) -> TokenRequest {
    TokenRequest {
        subject: "orders".into(),
        audience: vec!["ledger".into()],
        ttl,
        ..TokenRequest::default()
    }
}

#[tokio::test]
async fn verifies_across_forced_rotations_with_zero_failures() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let local = verifier(&server).await;
    let mut tokens = vec![server.issue("orders", &["ledger"]).await.token];
    for _ in 0..8 {
        server.rotate().await;
        // Signed by the key that was `next` until now: the verifier already holds it.
        tokens.push(server.issue("orders", &["ledger"]).await.token);
        for token in &tokens {
            let verified = local.verify_at(token, Some("ledger"), crate::helpers::now());
            assert!(verified.is_ok(), "{verified:?}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_within_a_second_of_revoke_key() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let local = verifier(&server).await;
    let issued = server.issue("orders", &["ledger"]).await;
    assert!(local.verify(&issued.token).is_ok());

    let started = Instant::now();
    server
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: issued.key_id.clone(),
            reason: "test".into(),
        }))
        .await
        .unwrap();
    // Only the local verifier is asked: the new set must be pushed to it.
    let refused = loop {
        match local.verify(&issued.token) {
            Err(rejection) => break rejection,
            Ok(_) if started.elapsed() < Duration::from_secs(1) => {
                tokio::time::sleep(Duration::from_millis(2)).await
            }
            Ok(_) => panic!("still accepted 1 s after RevokeKey"),
        }
    };
    let delay = started.elapsed();
    println!("RevokeKey -> client verifier refuses: {delay:?}");
    assert_eq!(refused.reason, Reason::RevokedKey, "{refused}");
    let remote = server.verify(&issued.token, "ledger").await;
    assert_eq!(remote.reason, pb::VerifyFailureReason::RevokedKey as i32);
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_token_calls_on_a_cold_cache_make_one_issue_token() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let issued = r#"token_authority_tokens_issued_total{algorithm="RS256"}"#;
    let before = metric(&server, issued).await;
    let source = TokenSource::new(channel(&server), request(None), Credentials::Channel);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let source = source.clone();
        calls.spawn(async move { source.token().await.unwrap() });
    }
    let tokens = calls.join_all().await;
    assert!(tokens.iter().all(|token| *token == tokens[0]));
    assert_eq!(metric(&server, issued).await - before, 1.0);
    // Steady state: no request at all.
    for _ in 0..10_000 {
        assert_eq!(source.token().await.unwrap(), tokens[0]);
    }
    assert_eq!(metric(&server, issued).await - before, 1.0);
    let local = verifier(&server).await;
    assert_eq!(local.verify(&tokens[0]).unwrap().subject, "orders");
    server.stop().await;
}

#[tokio::test]
async fn with_the_authority_down_cached_tokens_and_local_verification_work_then_recover() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let grpc = server.grpc_addr.to_string();
    let http = server.http_addr.to_string();
    let local = verifier(&server).await;
    let source = TokenSource::new(
        channel(&server),
        request(Some(Duration::from_secs(3))),
        Credentials::Channel,
    );
    let first = source.token().await.unwrap();
    server.stop().await;

    // Down: the cached token is served and verifies locally.
    assert_eq!(source.token().await.unwrap(), first);
    assert!(local.verify(&first).is_ok());
    // Once it expires there is nothing to serve, and the authority cannot be reached.
    let expires = local.verify(&first).unwrap().expires_at;
    while crate::helpers::now() < u64::try_from(expires).unwrap() + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its own attempt's error, or (while the background refresh was trying) that one's.
    match source.token().await {
        Err(ClientError::Rpc(status)) => assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "tcp connect error")
        ),
        Err(ClientError::Shared(shared)) => {
            assert!(shared.contains("tcp connect error"), "{shared}")
        }
        other => panic!("not the authority's failure: {other:?}"),
    }

    // Back on the same addresses, with the same keys: both recover by themselves.
    let server = TestServer::start_with(config(
        &dir,
        &["--grpc-listen", &grpc, "--http-listen", &http],
    ))
    .await;
    let second = source.token().await.unwrap();
    assert_ne!(second, first);
    assert!(local.verify(&second).is_ok());
    // The verifier's stream is back too: a new key it could only learn from the push.
    let rotated = server.rotate().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !local.key_set().kids().any(|kid| {
        rotated
            .keys
            .iter()
            .any(|k| k.key_id == kid && k.state == pb::KeyState::Next as i32)
    }) {
        assert!(Instant::now() < deadline, "the verifier did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

/// A tiny service that echoes the verified subject, behind the verifying layer.
#[derive(Clone)]
struct Echo;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Echo {
    async fn check(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        let verified = request
            .extensions()
            .get::<Verified>()
            .ok_or_else(|| tonic::Status::internal("no verified token in the extensions"))?;
        assert_eq!(verified.subject, "orders");
        Ok(tonic::Response::new(
            tonic_health::pb::HealthCheckResponse {
                status: tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            },
        ))
    }

    type WatchStream =
        tokio_stream::Empty<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
}

#[tokio::test]
async fn interceptors_attach_and_verify_bearer_tokens_between_two_services() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let local = verifier(&server).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(verify_bearer_layer(local))
            .add_service(tonic_health::pb::health_server::HealthServer::new(Echo))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let to_echo = endpoint(addr, None).connect_lazy();
    let check = tonic_health::pb::HealthCheckRequest::default();

    let source = TokenSource::new(channel(&server), request(None), Credentials::Channel);
    source.token().await.unwrap();
    let mut with_token = tonic_health::pb::health_client::HealthClient::with_interceptor(
        to_echo.clone(),
        AttachToken::new(source),
    );
    with_token.check(check.clone()).await.unwrap();

    let mut without = tonic_health::pb::health_client::HealthClient::new(to_echo.clone());
    let refused = without.check(check.clone()).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (
            Code::Unauthenticated,
            "authorization: Bearer <token> is required"
        )
    );

    // A token of another issuer's key: refused with the reason.
    let mut forged = tonic_health::pb::health_client::HealthClient::with_interceptor(
        to_echo,
        |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", "Bearer a.b.c".parse().unwrap());
            Ok(request)
        },
    );
    let refused = forged.check(check).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("Malformed"), "{refused:?}");

    let _ = stop.send(());
    service.await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn credentials_client_secret_and_a_token_file_reread_when_it_changes() {
    use crate::callers::{policy_text, Issuer, BATCH_SECRET, PAYMENTS_SA};

    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let (server, _) =
        crate::callers::start_with_policy(&dir, &policy_text(&issuer.jwks_uri()), &[]).await;
    let local = verifier(&server).await;
    let ask = |subject: &str| TokenRequest {
        subject: subject.into(),
        audience: vec!["ledger".into()],
        ..TokenRequest::default()
    };

    let secret = TokenSource::new(
        channel(&server),
        ask("client:legacy-batch"),
        Credentials::ClientSecret {
            id: "legacy-batch".into(),
            secret: BATCH_SECRET.into(),
        },
    );
    let token = secret.token().await.unwrap();
    assert_eq!(local.verify(&token).unwrap().subject, "client:legacy-batch");
    let wrong = TokenSource::new(
        channel(&server),
        ask("client:legacy-batch"),
        Credentials::ClientSecret {
            id: "legacy-batch".into(),
            secret: "guess".into(),
        },
    );
    match wrong.token().await {
        Err(token_authority_client::ClientError::Rpc(status)) => {
            assert_eq!(status.code(), Code::Unauthenticated)
        }
        other => panic!("{other:?}"),
    }

    // A projected service-account token file: an expired token first, then the kubelet's
    // replacement, which the next fetch reads.
    let file = dir.path.parent().unwrap().join("sa-token");
    let t = crate::helpers::now();
    std::fs::write(
        &file,
        issuer.token(PAYMENTS_SA, "token-authority", t - 3000, t - 120),
    )
    .unwrap();
    let projected = TokenSource::new(
        channel(&server),
        ask(PAYMENTS_SA),
        Credentials::BearerFile(file.clone()),
    );
    assert_eq!(
        rpc_error(projected.token().await),
        (
            Code::Unauthenticated,
            "bearer token: the token has expired".to_owned()
        )
    );
    std::fs::write(&file, issuer.good(PAYMENTS_SA) + "\n").unwrap();
    let token = projected.token().await.unwrap();
    assert_eq!(local.verify(&token).unwrap().subject, PAYMENTS_SA);
    server.stop().await;
    issuer.server.stop().await;
}

/// A counter of the server's /metrics, zero before its first sample.
/// The code and message of the authority's answer in `result`, which must be that error.
fn rpc_error(result: Result<String, ClientError>) -> (Code, String) {
    match result {
        Err(ClientError::Rpc(status)) => (status.code(), status.message().to_owned()),
        other => panic!("not an error of the authority: {other:?}"),
    }
}

async fn counter(server: &TestServer, name: &str) -> f64 {
    crate::helpers::metric_sample(server, name)
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn without_watch_keys_the_http_jwks_is_used_with_its_etag_and_an_unknown_kid_refetches() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(&dir, &["--max-watchers", "1"])).await;
    // Another watcher holds the only slot: the verifier's WatchKeys is refused.
    let mut holder = server
        .client
        .clone()
        .watch_keys(pb::WatchKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    holder.message().await.unwrap();
    let ok = r#"token_authority_jwks_responses_total{status="200"}"#;
    let not_modified = r#"token_authority_jwks_responses_total{status="304"}"#;

    let mut settings = VerifierSettings::new(server.issuer.clone());
    settings.jwks_url = Some(server.url("/.well-known/jwks.json"));
    settings.unknown_kid_cooldown = Duration::from_secs(2);
    // No polling in the way: every fetch here is one an unknown kid asked for.
    settings.jwks_poll_interval = Duration::from_secs(3600);
    let local = Verifier::connect(channel(&server), settings).await.unwrap();
    assert_eq!(counter(&server, ok).await, 1.0);
    let first = server.issue("orders", &["ledger"]).await.token;
    assert!(local.verify(&first).is_ok());

    // Two forced rotations: the signing key was generated after the verifier's fetch.
    server.rotate().await;
    server.rotate().await;
    let newer = server.issue("orders", &["ledger"]).await.token;
    let refused = local.verify(&newer).unwrap_err();
    assert_eq!(refused.reason, Reason::UnknownKey);
    let refetched_at = Instant::now();
    while local.verify(&newer).is_err() {
        assert!(
            refetched_at.elapsed() < Duration::from_secs(5),
            "no refetch for the unknown kid"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counter(&server, ok).await, 2.0);
    assert!(local.verify(&first).is_ok(), "a retired key was lost");

    // Made-up kids within the cooldown: no request at all.
    let segments: Vec<&str> = newer.split('.').collect();
    let made_up = format!(
        "{}.{}.{}",
        token_authority_jose::b64::encode(r#"{"alg":"RS256","kid":"made-up","typ":"JWT"}"#),
        segments[1],
        segments[2]
    );
    for _ in 0..100 {
        assert_eq!(
            local.verify(&made_up).unwrap_err().reason,
            Reason::UnknownKey
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counter(&server, ok).await, 2.0);
    assert_eq!(counter(&server, not_modified).await, 0.0);

    // After the cooldown, one more unknown kid asks again: the set is unchanged, so the
    // ETag earns a 304.
    while refetched_at.elapsed() < Duration::from_millis(2100) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        local.verify(&made_up).unwrap_err().reason,
        Reason::UnknownKey
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(&server, not_modified).await < 1.0 {
        assert!(Instant::now() < deadline, "no conditional refetch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counter(&server, ok).await, 2.0);
    assert!(local.verify(&newer).is_ok());
    drop(holder);
    server.stop().await;
}

#[tokio::test]
async fn callers_waiting_on_a_failed_request_share_its_failure() {
    // An "authority" that accepts connections and closes them: every attempt fails, and
    // each attempt is one connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    let acceptor = tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let source = TokenSource::new(
        endpoint(addr, None).connect_lazy(),
        request(None),
        Credentials::Channel,
    );
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let source = source.clone();
        calls.spawn(async move { source.token().await });
    }
    let results = calls.join_all().await;
    assert!(results.iter().all(Result::is_err));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    acceptor.abort();
}

/// Over mTLS the caller is proven by its certificate alone: the `TokenSource` needs no
/// credential of its own, and a verifier over TLS needs no identity. (The refresh ahead of
/// expiry runs on paused time, in process: `server::tests::client`.)
#[tokio::test]
async fn over_mtls_the_token_source_is_proven_by_its_certificate_alone() {
    const CALLER: &str = "spiffe://prod.example/ns/orders/sa/api";
    let dir = DataDir::new();
    let tls = crate::helpers::TlsSetup::new();
    dir.create();
    let policy = dir.path.parent().unwrap().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\ncallers = [\"spiffe://prod.example/ns/orders/*\"]\naudiences = [\"ledger\"]\n",
    )
    .unwrap();
    let mut args = tls.args(true);
    args.extend(["--policy-file".to_owned(), policy.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start_tls(config(&dir, &args), tls.client(None)).await;

    let identity = tls.pki.client(Some(CALLER), None);
    let source = TokenSource::new(
        endpoint(server.grpc_addr, Some(&tls.client(Some(identity)))).connect_lazy(),
        TokenRequest {
            subject: CALLER.into(),
            audience: vec!["ledger".into()],
            ttl: Some(Duration::from_secs(60)),
            ..TokenRequest::default()
        },
        Credentials::Channel,
    );
    let local = Verifier::connect(
        endpoint(server.grpc_addr, Some(&tls.client(None))).connect_lazy(),
        VerifierSettings::new(server.issuer.clone()),
    )
    .await
    .unwrap();
    let issued = r#"token_authority_tokens_issued_total{algorithm="RS256"}"#;
    let token = source.token().await.unwrap();
    assert_eq!(local.verify(&token).unwrap().subject, CALLER);
    // Served from the cache: one IssueToken.
    assert_eq!(source.token().await.unwrap(), token);
    assert_eq!(metric(&server, issued).await, 1.0);
    server.stop().await;
}
