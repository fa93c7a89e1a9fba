//! The client's `Verifier` and status lists: the lists arrive with the key set on
//! WatchKeys, so a token verifies at once, and a revocation or suspension set on the
//! authority is refused locally within a moment (pushed, not waited for by `ttl`); without
//! a stream the lists come over HTTP from the JWKS URL's origin. A token naming a list the
//! verifier holds no copy of is refused, never taken as valid.

use std::time::{Duration, Instant};

use token_authority::pb::{self, TokenStatus};
use token_authority_client::{Reason, Verifier, VerifierSettings};
use tonic::transport::Channel;

use super::verifier;
use crate::{
    helpers::{admin, config, DataDir, TestServer},
    status::{at_index, issue_for, list_id, reference, set_request, LONG, SHORT},
};

/// Waits up to `within` for `verifier` to say `expected` of `token`.
async fn until(verifier: &Verifier, token: &str, expected: Option<Reason>, within: Duration) {
    let started = Instant::now();
    loop {
        let got = verifier.verify(token).err().map(|r| r.reason);
        if got == expected {
            return;
        }
        assert!(
            started.elapsed() < within,
            "still {got:?} after {within:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn set(server: &TestServer, request: pb::SetTokenStatusRequest) {
    server
        .client
        .clone()
        .set_token_status(admin(request))
        .await
        .unwrap();
}

#[tokio::test]
async fn pushed_lists_refuse_a_revoked_token_within_a_moment() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let local = verifier(&server).await;
    // The list tokens will name, and the one after it, are held from the start.
    assert_eq!(local.status_lists_held(), 2);
    let revoked = issue_for(&server, "leaked", LONG).await;
    let suspended = issue_for(&server, "contractor", LONG).await;
    let short = issue_for(&server, "batch", SHORT).await;
    for token in [&revoked, &suspended, &short] {
        local.verify(&token.token).unwrap();
    }
    set(&server, set_request(&revoked.jti, TokenStatus::Invalid)).await;
    let at = reference(&suspended.token).unwrap();
    set(
        &server,
        at_index(list_id(&at), at.idx, TokenStatus::Suspended),
    )
    .await;
    let moment = Duration::from_secs(2);
    until(&local, &revoked.token, Some(Reason::RevokedToken), moment).await;
    until(
        &local,
        &suspended.token,
        Some(Reason::SuspendedToken),
        moment,
    )
    .await;
    set(&server, set_request(&suspended.jti, TokenStatus::Valid)).await;
    until(&local, &suspended.token, None, moment).await;
    assert_eq!(
        local.verify(&revoked.token).unwrap_err().reason,
        Reason::RevokedToken
    );
    local.verify(&short.token).unwrap();
    server.stop().await;
}

#[tokio::test]
async fn without_a_stream_lists_come_over_http() {
    let dir = DataDir::new();
    // Small lists, so a few tokens reach a list the verifier has not fetched yet.
    let server = TestServer::start_with(config(&dir, &["--status-list-size", "16"])).await;
    // A WatchKeys address that refuses every connection.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut settings = VerifierSettings::new(server.issuer.clone());
    settings.jwks_url = Some(server.url("/.well-known/jwks.json"));
    settings.jwks_poll_interval = Duration::from_secs(1);
    settings.unknown_kid_cooldown = Duration::from_millis(100);
    let local = Verifier::connect(channel, settings).await.unwrap();
    // Ready with the lists the aggregation named: a token verifies at once.
    assert_eq!(local.status_lists_held(), 2);
    let first = issue_for(&server, "svc", LONG).await;
    local.verify(&first.token).unwrap();
    // A token of a list made since: refused until its list is fetched, then valid.
    let mut later = first.clone();
    while list_id(&reference(&later.token).unwrap()) < 3 {
        later = issue_for(&server, "svc", LONG).await;
    }
    let refused = local.verify(&later.token).unwrap_err();
    assert_eq!(refused.reason, Reason::StatusUnavailable, "{refused:?}");
    let within = Duration::from_secs(4);
    until(&local, &later.token, None, within).await;
    set(&server, set_request(&first.jti, TokenStatus::Invalid)).await;
    until(&local, &first.token, Some(Reason::RevokedToken), within).await;
    server.stop().await;
}
