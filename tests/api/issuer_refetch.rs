//! An issuer whose JWKS endpoint stalls while a refetch (caused by an unknown kid) is in
//! flight: other callers of that issuer are not held for the fetch's timeout. A caller with
//! a known kid is answered at once; one that would need the fetch waits at most the short
//! join bound (250 ms) and is judged with the last good key set.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{watch, Notify},
};
use tonic::Code;

use crate::{
    callers::{ask, issue_as, policy_text, with_auth, Issuer, CLUSTER_ISS, PAYMENTS_SA},
    helpers::{now, DataDir},
};

/// What the keys server does: answer, or hold each request until released.
struct Stall {
    on: AtomicBool,
    arrived: Notify,
    release: watch::Sender<bool>,
}

/// Serves `jwks` at `http://127.0.0.1:PORT/keys`; returns that URL.
async fn serve_keys(jwks: String, stall: Arc<Stall>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (jwks, stall) = (jwks.clone(), Arc::clone(&stall));
            let service = service_fn(move |_: Request<Incoming>| {
                let (jwks, stall) = (jwks.clone(), Arc::clone(&stall));
                async move {
                    if stall.on.load(Ordering::SeqCst) {
                        let mut released = stall.release.subscribe();
                        stall.arrived.notify_one();
                        let _ = released.wait_for(|released| *released).await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(jwks))))
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_refetch_holds_no_other_caller_of_the_issuer() {
    let issuer = Issuer::start().await;
    let jwks = issuer.server.http_jwks().await.to_string();
    let stall = Arc::new(Stall {
        on: AtomicBool::new(false),
        arrived: Notify::new(),
        release: watch::channel(false).0,
    });
    let jwks_uri = serve_keys(jwks, Arc::clone(&stall)).await;
    let dir = DataDir::new();
    let (server, _) = crate::callers::start_with_policy(&dir, &policy_text(&jwks_uri), &[]).await;
    let unknown_kid = |kid: &str| {
        let t = now();
        format!(
            "Bearer {}",
            issuer.key.forge(
                &format!(r#"{{"alg":"RS256","kid":"{kid}","typ":"JWT"}}"#),
                &format!(r#"{{"iss":"{CLUSTER_ISS}","sub":"{PAYMENTS_SA}","aud":"token-authority","iat":{t},"exp":{}}}"#, t + 60),
            )
        )
    };
    let known = format!("Bearer {}", issuer.good(PAYMENTS_SA));

    // The first unknown kid starts a refetch, which the keys server holds.
    stall.on.store(true, Ordering::SeqCst);
    let mut client = server.client.clone();
    let first = unknown_kid("first-unknown-kid");
    let stalled = tokio::spawn(async move {
        client
            .issue_token(with_auth(
                ask(PAYMENTS_SA, &["ledger"], None, ""),
                Some(&first),
            ))
            .await
    });
    tokio::time::timeout(Duration::from_secs(10), stall.arrived.notified())
        .await
        .expect("the refetch reaches the keys server");

    // Meanwhile: answered within a bound far below the fetch timeout (10 s), with the last
    // good set. The bound is 250 ms; the assertion leaves room for a loaded machine.
    let cases = [
        ("a known kid", known, None),
        (
            "another unknown kid",
            unknown_kid("second-unknown-kid"),
            Some("bearer token: its kid is not a key of the issuer's JWKS"),
        ),
    ];
    for (name, authorization, refusal) in cases {
        let started = Instant::now();
        let outcome = issue_as(
            &server,
            Some(&authorization),
            ask(PAYMENTS_SA, &["ledger"], None, ""),
        )
        .await;
        let elapsed = started.elapsed();
        match refusal {
            None => assert!(outcome.is_ok(), "{name}: {outcome:?}"),
            Some(message) => {
                let status = outcome.expect_err(name);
                assert_eq!(
                    (status.code(), status.message()),
                    (Code::Unauthenticated, message),
                    "{name}"
                );
            }
        }
        assert!(elapsed < Duration::from_secs(2), "{name}: {elapsed:?}");
    }

    // Released, the fetch ends and its own caller gets its answer (its kid is not there).
    stall.release.send_replace(true);
    let status = stalled.await.unwrap().expect_err("an unknown kid");
    assert_eq!(
        status.message(),
        "bearer token: its kid is not a key of the issuer's JWKS"
    );
    server.stop().await;
    issuer.server.stop().await;
}
