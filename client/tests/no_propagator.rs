//! (d) An application that installed no propagator (OpenTelemetry's global default is a
//! no-op): IssueToken and WatchKeys carry no trace context, and work, with or without a
//! tracer. A file of its own: `trace_context.rs` installs the W3C propagator for its whole
//! process.
//!
//! The two tests take turns, each setting its subscriber only for its turn: one runs with
//! no subscriber at all, and `tracing` caches per process whether a callsite is enabled,
//! asking, while a single thread-scoped subscriber exists, the subscriber of the thread
//! that reaches the callsite first. A callsite first reached on the thread with none, while
//! the other test's subscriber is set, would be cached as disabled for that one too (a
//! property of `tracing`'s cache with thread-scoped subscribers, not of the client).

mod support;

use std::{
    future::Future,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use support::{Authority, Behaviour};
use token_authority_client::{Credentials, TokenRequest, TokenSource, Verifier, VerifierSettings};
use tracing::Instrument as _;

fn request() -> TokenRequest {
    TokenRequest {
        subject: "orders".into(),
        audience: vec!["ledger".into()],
        ttl: Some(Duration::from_secs(600)),
        ..TokenRequest::default()
    }
}

/// Fetches a token and connects a verifier, inside an application span; returns the calls
/// the authority received.
async fn token_and_verifier() -> Vec<support::Call> {
    let (authority, channel) = Authority::start(Behaviour::default()).await;
    let tokens = TokenSource::new(channel.clone(), request(), Credentials::Channel);
    let app = tracing::info_span!(target: "app", "handle_request");
    let token = tokens.token().instrument(app.clone()).await.unwrap();
    assert_eq!(token, support::ISSUED_TOKEN);
    let verifier = Verifier::connect(channel, VerifierSettings::new(support::ISSUER))
        .instrument(app)
        .await
        .unwrap();
    assert!(verifier.key_set().kids().any(|kid| kid == support::KID));
    [authority.calls("IssueToken"), authority.calls("WatchKeys")].concat()
}

/// Runs `test` on a current-thread runtime, one test at a time, with `subscriber` as the
/// default of its thread when given.
fn serially<F: Future>(
    subscriber: Option<impl tracing::Subscriber + Send + Sync + 'static>,
    test: F,
) -> F::Output {
    static TURN: Mutex<()> = Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let _default = subscriber.map(tracing::subscriber::set_default);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test)
}

#[test]
fn without_a_tracer_or_propagator_calls_carry_no_trace_context_and_work() {
    let calls = serially(
        None::<tracing::subscriber::NoSubscriber>,
        token_and_verifier(),
    );
    assert_eq!(calls.len(), 2);
    for call in calls {
        assert_eq!(call.traceparent, None, "{call:?}");
        assert_eq!(call.tracestate, None, "{call:?}");
    }
}

/// A tracer but no propagator: the client's spans are recorded, nothing is sent.
#[test]
fn with_a_tracer_but_no_propagator_spans_are_recorded_and_nothing_is_sent() {
    let (exporter, _provider, subscriber) = support::tracer();
    let calls = serially(Some(subscriber), token_and_verifier());
    assert_eq!(calls.len(), 2);
    for call in calls {
        assert_eq!(call.traceparent, None, "{call:?}");
        assert_eq!(call.tracestate, None, "{call:?}");
    }
    assert_eq!(support::spans(&exporter, "token_refresh").len(), 1);
    assert_eq!(support::spans(&exporter, "watch_keys").len(), 1);
}
