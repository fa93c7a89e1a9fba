//! The client crate's time-driven promises against the authority in process, on paused
//! time: the `TokenSource` refreshes ahead of expiry by itself, serves its cached token
//! while the authority is down until the token expires and never after, and recovers by
//! itself; the `Verifier` refuses a token once the clock passes its `exp` plus the leeway.

use std::time::Duration;

use token_authority_client::{
    ClientError, Credentials, Reason, TokenRequest, TokenSource, Verifier, VerifierSettings,
};
use tokio::time::Instant;

use super::{clock_at, InProcess, AUDIENCE, ISSUER, T0};
use crate::authority::Settings;
use token_authority_jose::clock::Clock;

const STEP: Duration = Duration::from_millis(10);

fn settings(clock: Clock) -> Settings {
    Settings {
        default_ttl: 600,
        ..super::settings(clock)
    }
}

/// A verifier following the authority's WatchKeys, with `leeway`.
async fn verifier(server: &InProcess, clock: Clock, leeway: u64) -> Verifier {
    let settings = VerifierSettings {
        audience: Some(AUDIENCE.into()),
        leeway,
        clock,
        ..VerifierSettings::new(ISSUER)
    };
    Verifier::connect(server.channel(), settings).await.unwrap()
}

/// Three-second tokens fetched late in a second: `iat` is whole seconds, so the first one
/// lives 2.1 s of its 3. Nobody calls `token()`: the background task replaces it at 80% of
/// that less up to 5% of jitter (1.575 to 1.68 s), and until then the token cached is one
/// that has not expired, checked every 10 ms with no leeway. With the authority down, the
/// cached token is served to the instant it expires and not after; a verifier with a 60 s
/// leeway accepts it for exactly 60 s more. Back up, the source fetches a token by itself.
#[tokio::test(start_paused = true)]
async fn the_token_source_refreshes_before_expiry_and_never_serves_an_expired_token() {
    let clock = clock_at(900);
    let server = InProcess::start(settings(clock));
    let strict = verifier(&server, clock, 0).await;
    let lenient = verifier(&server, clock, 60).await;
    let source = TokenSource::new(
        server.channel(),
        TokenRequest {
            subject: "orders".into(),
            audience: vec![AUDIENCE.into()],
            ttl: Some(Duration::from_secs(3)),
            ..TokenRequest::default()
        },
        Credentials::Channel,
    );
    let first = source.token().await.unwrap();
    let fetched = Instant::now();
    assert_eq!(strict.verify(&first).unwrap().expires_at, T0 as i64 + 3);
    assert_eq!(server.issued(), 1.0);

    let second = loop {
        match source.cached_token() {
            Some(token) if token != first => break token,
            Some(token) => {
                let verdict = strict.verify(&token);
                assert!(verdict.is_ok(), "an expired token served: {verdict:?}");
            }
            None => panic!("the token expired before it was refreshed"),
        }
        tokio::time::sleep(STEP).await;
    };
    // At 75 to 80% of 2.1 s, seen within a step.
    let refreshed_after = fetched.elapsed();
    assert!(
        (Duration::from_millis(1575)..=Duration::from_millis(1680) + STEP)
            .contains(&refreshed_after),
        "refreshed {refreshed_after:?} after the fetch, for a token of 2.1 s"
    );
    assert_eq!(server.issued(), 2.0);
    let expires_at = strict.verify(&second).unwrap().expires_at;

    // Down: the refresh fails and is retried; the cached token is served while it lasts.
    server
        .down
        .store(true, std::sync::atomic::Ordering::Release);
    while let Some(token) = source.cached_token() {
        assert_eq!(token, second);
        let verdict = strict.verify(&token);
        assert!(verdict.is_ok(), "an expired token served: {verdict:?}");
        tokio::time::sleep(STEP).await;
    }
    assert_eq!(clock.unix_now(), u64::try_from(expires_at).unwrap());
    assert_eq!(strict.verify(&second).unwrap_err().reason, Reason::Expired);
    // (The background retry may be under way: then its failure is this call's too.)
    match source.token().await {
        Err(ClientError::Rpc(status)) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }
        Err(ClientError::Shared(failure)) => {
            assert!(failure.contains("the authority is down"), "{failure}");
        }
        other => panic!("{other:?}"),
    }
    // The leeway: accepted up to its last second, refused from `exp + 60` on.
    let expires_at = u64::try_from(expires_at).unwrap();
    tokio::time::sleep(clock.until(expires_at + 59)).await;
    assert!(lenient.verify(&second).is_ok());
    tokio::time::sleep(clock.until(expires_at + 60)).await;
    assert_eq!(lenient.verify(&second).unwrap_err().reason, Reason::Expired);

    // Back: the retries (10 s apart at most) fetch a token with no call to `token()`.
    server
        .down
        .store(false, std::sync::atomic::Ordering::Release);
    let back = Instant::now();
    let third = loop {
        if let Some(token) = source.cached_token() {
            break token;
        }
        assert!(back.elapsed() < Duration::from_secs(15), "no fetch");
        tokio::time::sleep(STEP).await;
    };
    assert!(strict.verify(&third).is_ok());
    assert_eq!(server.issued(), 3.0);
    server.stop().await;
}
