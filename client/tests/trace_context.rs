//! The client's spans and the trace context it sends, with an application's tracer: a
//! `tracing-opentelemetry` layer over an SDK tracer provider exporting to memory, and the
//! W3C propagator installed globally (once: this file is its own process, and every test
//! here wants it). Each test sets its subscriber as the default of its own thread, on a
//! current-thread runtime, so the client's background tasks run under it too.

mod support;

use std::{
    collections::HashMap,
    sync::Once,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    propagation::TextMapPropagator as _,
    trace::{SpanId, SpanKind, Status, TraceContextExt as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SpanData};
use support::{attribute, parse_traceparent, spans, texts, Authority, Behaviour, Watch};
use token_authority_client::{
    keys::KeySet,
    txn::{TxnExchanger, TxnRequest},
    Credentials, TokenRequest, TokenSource, Verifier, VerifierSettings,
};
use token_authority_jose::{
    crypto::{generate_pkcs8, Algorithm, SigningKey},
    jwk::{render_jwks, PublicJwk},
    jwt::{sign, sign_as, Signer, TokenType},
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The trace id, span id and trace state of the request the application is serving.
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_PARENT: &str = "00f067aa0ba902b7";
const INCOMING_STATE: &str = "vendor=opaque-value";

fn propagate() {
    static ONCE: Once = Once::new();
    ONCE.call_once(
        || opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new()),
    );
}

/// The application's span for a request it serves, a child of the caller's trace as the
/// application's own server instrumentation would make it.
fn request_span() -> tracing::Span {
    let incoming = HashMap::from([
        (
            "traceparent".to_owned(),
            format!("00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"),
        ),
        ("tracestate".to_owned(), INCOMING_STATE.to_owned()),
    ]);
    let parent = TraceContextPropagator::new().extract(&incoming);
    let span = tracing::info_span!(target: "app", "handle_request");
    span.set_parent(parent).unwrap();
    span
}

/// The trace id and span id of a live `tracing` span, as hex.
fn ids(span: &tracing::Span) -> (String, SpanId) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    assert!(span_context.is_valid());
    (span_context.trace_id().to_string(), span_context.span_id())
}

fn request(audience: &[&str]) -> TokenRequest {
    TokenRequest {
        subject: "orders-subject".into(),
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        ttl: Some(Duration::from_secs(600)),
        claims_json: r#"{"tenant":"tenant-claim-value"}"#.into(),
        algorithm: String::new(),
    }
}

/// What no span may contain: the token issued, the credential, the subject, audiences and
/// claims asked for, the authority's refusal message.
const SECRETS: &[&str] = &[
    support::ISSUED_TOKEN,
    "eyJhbGciOiJFUzI1NiJ9",
    "eyJzdWIiOiJvcmRlcnMifQ",
    "c2lnbmF0dXJl",
    "client-secret-value",
    "orders-client",
    "orders-subject",
    "ledger-audience",
    "audit-audience",
    "tenant-claim-value",
    support::REFUSAL,
];

fn assert_keeps_secrets(span: &SpanData, secrets: &[&str]) {
    for text in texts(span) {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "span {} carries {secret:?} in {text:?}",
                span.name
            );
        }
    }
}

fn credentials() -> Credentials {
    Credentials::ClientSecret {
        id: "orders-client".into(),
        secret: "client-secret-value".into(),
    }
}

/// (a) A token fetched inside the application's span: the IssueToken call carries a
/// `traceparent` of the application's trace whose parent is the client's `token_refresh`
/// span, itself a child of the application's span, and the trace state along.
#[tokio::test]
async fn a_refresh_in_an_application_span_sends_its_trace_and_is_its_child() {
    propagate();
    let (exporter, _provider, subscriber) = support::tracer();
    let _default = tracing::subscriber::set_default(subscriber);
    let (authority, channel) = Authority::start(Behaviour::default()).await;
    let tokens = TokenSource::new(
        channel,
        request(&["ledger-audience", "audit-audience"]),
        credentials(),
    );

    let app = request_span();
    let (trace, app_span) = ids(&app);
    assert_eq!(trace, INCOMING_TRACE);
    let token = tokens.token().instrument(app.clone()).await.unwrap();
    assert_eq!(token, support::ISSUED_TOKEN);
    drop(app);

    let calls = authority.calls("IssueToken");
    assert_eq!(calls.len(), 1);
    let traceparent = calls[0].traceparent.as_deref().expect("a traceparent");
    let (sent_trace, sent_parent) = parse_traceparent(traceparent);
    assert_eq!(sent_trace, INCOMING_TRACE);
    assert_eq!(calls[0].tracestate.as_deref(), Some(INCOMING_STATE));

    let refreshes = spans(&exporter, "token_refresh");
    assert_eq!(refreshes.len(), 1);
    let refresh = &refreshes[0];
    assert_eq!(refresh.span_context.trace_id().to_string(), INCOMING_TRACE);
    assert_eq!(refresh.parent_span_id, app_span);
    // The authority's span will be the child of the client's.
    assert_eq!(refresh.span_context.span_id().to_string(), sent_parent);
    assert_eq!(refresh.span_kind, SpanKind::Client);
    assert_eq!(attribute(refresh, "level").as_deref(), Some("INFO"));
    assert_eq!(attribute(refresh, "trigger").as_deref(), Some("caller"));
    assert_eq!(attribute(refresh, "audiences").as_deref(), Some("2"));
    assert_eq!(attribute(refresh, "outcome").as_deref(), Some("issued"));
    assert_eq!(
        attribute(refresh, "rpc.method").as_deref(),
        Some("IssueToken")
    );
    assert_eq!(
        attribute(refresh, "rpc.service").as_deref(),
        Some("tokenauthority.v1.TokenAuthority")
    );
    assert_eq!(
        attribute(refresh, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_keeps_secrets(refresh, SECRETS);
    // The application's span ended with the request: the client keeps no handle on it.
    assert_eq!(spans(&exporter, "handle_request").len(), 1);
}

/// The background refresh belongs to no request: its span is the root of a trace of its
/// own, and that trace is what its IssueToken carries.
#[tokio::test]
async fn a_background_refresh_is_the_root_of_its_own_trace() {
    propagate();
    let (exporter, _provider, subscriber) = support::tracer();
    let _default = tracing::subscriber::set_default(subscriber);
    let (authority, channel) = Authority::start(Behaviour {
        // Refreshed at 80% of its life, less up to 5%: within 1.6 s.
        token_life: Some(Duration::from_secs(2)),
        ..Behaviour::default()
    })
    .await;
    let tokens = TokenSource::new(channel, request(&["ledger-audience"]), credentials());
    let app = request_span();
    tokens.token().instrument(app.clone()).await.unwrap();
    drop(app);

    let deadline = Instant::now() + Duration::from_secs(10);
    while authority.calls("IssueToken").len() < 2 {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its span ends just after the answer.
    let background = loop {
        let found = spans(&exporter, "token_refresh")
            .into_iter()
            .find(|span| attribute(span, "trigger").as_deref() == Some("background"));
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no background refresh span");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(background.parent_span_id, SpanId::INVALID);
    let background_trace = background.span_context.trace_id().to_string();
    assert_ne!(background_trace, INCOMING_TRACE);
    let calls = authority.calls("IssueToken");
    let (sent_trace, sent_parent) =
        parse_traceparent(calls[1].traceparent.as_deref().expect("a traceparent"));
    assert_eq!(sent_trace, background_trace);
    assert_eq!(sent_parent, background.span_context.span_id().to_string());
    assert_eq!(calls[1].tracestate, None);
    assert_eq!(attribute(&background, "outcome").as_deref(), Some("issued"));
    assert_keeps_secrets(&background, SECRETS);
    drop(tokens);
}

/// A refused IssueToken: the span says it failed, with the gRPC code and an error status,
/// never the authority's message (it may name the caller or what it asked for).
#[tokio::test]
async fn a_refused_refresh_records_the_code_not_the_message() {
    propagate();
    let (exporter, _provider, subscriber) = support::tracer();
    let _default = tracing::subscriber::set_default(subscriber);
    let (authority, channel) = Authority::start(Behaviour {
        refuse_issues: 1,
        ..Behaviour::default()
    })
    .await;
    let tokens = TokenSource::new(channel, request(&["ledger-audience"]), credentials());
    let refused = tokens.token().instrument(request_span()).await;
    assert!(refused.is_err());
    assert!(authority.calls("IssueToken")[0].traceparent.is_some());

    let refreshes = spans(&exporter, "token_refresh");
    assert_eq!(refreshes.len(), 1);
    let refresh = &refreshes[0];
    assert_eq!(attribute(refresh, "outcome").as_deref(), Some("failed"));
    assert_eq!(attribute(refresh, "error").as_deref(), Some("rpc"));
    // PERMISSION_DENIED
    assert_eq!(
        attribute(refresh, "rpc.grpc.status_code").as_deref(),
        Some("7")
    );
    assert!(
        matches!(refresh.status, Status::Error { .. }),
        "{:?}",
        refresh.status
    );
    assert_keeps_secrets(refresh, SECRETS);
}

/// A credential that cannot be read: the span names the kind of failure, not the file.
#[tokio::test]
async fn a_refresh_without_its_credential_file_records_the_kind_not_the_path() {
    propagate();
    let (exporter, _provider, subscriber) = support::tracer();
    let _default = tracing::subscriber::set_default(subscriber);
    let (authority, channel) = Authority::start(Behaviour::default()).await;
    let path = std::env::temp_dir().join("missing-credential-file-path");
    let tokens = TokenSource::new(
        channel,
        request(&["ledger-audience"]),
        Credentials::BearerFile(path),
    );
    assert!(tokens.token().instrument(request_span()).await.is_err());
    assert!(authority.calls("IssueToken").is_empty());
    let refreshes = spans(&exporter, "token_refresh");
    assert_eq!(refreshes.len(), 1);
    assert_eq!(
        attribute(&refreshes[0], "outcome").as_deref(),
        Some("failed")
    );
    assert_eq!(
        attribute(&refreshes[0], "error").as_deref(),
        Some("token_file")
    );
    assert_keeps_secrets(&refreshes[0], &["missing-credential-file-path"]);
}

/// (b) The WatchKeys call `Verifier::connect` makes inside the application's span carries
/// that trace, from a `watch_keys` span that is the application span's child; once the
/// verifier is ready the application's span is free to end, and a reconnect (the first
/// stream ends) is the root of a trace of its own.
#[tokio::test]
async fn watch_keys_carries_the_connecting_trace_and_a_reconnect_its_own() {
    propagate();
    let (exporter, _provider, subscriber) = support::tracer();
    let _default = tracing::subscriber::set_default(subscriber);
    let (authority, channel) = Authority::start(Behaviour {
        watches: [Watch::End].into(),
        ..Behaviour::default()
    })
    .await;
    let app = request_span();
    let (_, app_span) = ids(&app);
    let verifier = Verifier::connect(channel, VerifierSettings::new(support::ISSUER))
        .instrument(app.clone())
        .await
        .unwrap();
    drop(app);

    let deadline = Instant::now() + Duration::from_secs(10);
    while authority.calls("WatchKeys").len() < 2 || spans(&exporter, "watch_keys").len() < 2 {
        assert!(Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = authority.calls("WatchKeys");
    let watches = spans(&exporter, "watch_keys");
    let (first_trace, first_parent) =
        parse_traceparent(calls[0].traceparent.as_deref().expect("a traceparent"));
    assert_eq!(first_trace, INCOMING_TRACE);
    assert_eq!(calls[0].tracestate.as_deref(), Some(INCOMING_STATE));
    let first = watches
        .iter()
        .find(|span| span.span_context.span_id().to_string() == first_parent)
        .expect("the first watch_keys span");
    assert_eq!(first.parent_span_id, app_span);
    assert_eq!(first.span_kind, SpanKind::Client);
    assert_eq!(attribute(first, "level").as_deref(), Some("INFO"));
    assert_eq!(attribute(first, "outcome").as_deref(), Some("opened"));
    assert_eq!(
        attribute(first, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(attribute(first, "rpc.method").as_deref(), Some("WatchKeys"));
    assert_eq!(attribute(first, "replica").as_deref(), Some("0"));

    let (again_trace, again_parent) =
        parse_traceparent(calls[1].traceparent.as_deref().expect("a traceparent"));
    assert_ne!(again_trace, INCOMING_TRACE);
    let again = watches
        .iter()
        .find(|span| span.span_context.span_id().to_string() == again_parent)
        .expect("the reconnect's watch_keys span");
    assert_eq!(again.parent_span_id, SpanId::INVALID);
    assert_eq!(again.span_context.trace_id().to_string(), again_trace);
    // The application's span ended although the verifier lives on, and so did the span
    // of the stream still open.
    assert_eq!(spans(&exporter, "handle_request").len(), 1);
    drop(verifier);
}

/// Until the verifier is ready every attempt to open the stream is part of the connecting
/// caller's trace: one refused, one that timed out, then the one opened.
#[tokio::test]
async fn every_open_until_ready_is_a_child_of_the_connecting_span() {
    propagate();
    let (exporter, _provider, subscriber) = support::tracer();
    let _default = tracing::subscriber::set_default(subscriber);
    let (authority, channel) = Authority::start(Behaviour {
        watches: [Watch::Refuse, Watch::Stall].into(),
        ..Behaviour::default()
    })
    .await;
    let settings = VerifierSettings {
        watch_open_timeout: Duration::from_millis(300),
        ..VerifierSettings::new(support::ISSUER)
    };
    let app = request_span();
    let (_, app_span) = ids(&app);
    let _verifier = Verifier::connect(channel, settings)
        .instrument(app.clone())
        .await
        .unwrap();
    drop(app);

    let calls = authority.calls("WatchKeys");
    assert_eq!(calls.len(), 3);
    let mut watches = spans(&exporter, "watch_keys");
    watches.sort_by_key(|span| span.start_time);
    // outcome, gRPC code, an error status; "-": not recorded.
    let outcomes: Vec<String> = watches
        .iter()
        .map(|span| {
            let error = matches!(span.status, Status::Error { .. });
            ["outcome", "rpc.grpc.status_code"]
                .map(|key| attribute(span, key).unwrap_or_else(|| "-".into()))
                .join(" ")
                + if error { " error" } else { "" }
        })
        .collect();
    // 14: UNAVAILABLE
    assert_eq!(
        outcomes,
        ["refused 14 error", "timed_out - error", "opened 0"]
    );
    for (span, call) in watches.iter().zip(&calls) {
        assert_eq!(span.parent_span_id, app_span);
        let (trace, parent) = parse_traceparent(call.traceparent.as_deref().unwrap());
        assert_eq!(trace, INCOMING_TRACE);
        assert_eq!(parent, span.span_context.span_id().to_string());
    }
}

/// A signer, and a verifier over its key requiring the audience `ledger`.
fn keys() -> (Signer, Verifier) {
    let key = SigningKey::from_pkcs8(Algorithm::ES256, &generate_pkcs8(Algorithm::ES256).unwrap())
        .unwrap();
    let public = key.verifying_key().unwrap();
    let jwks = render_jwks(&[PublicJwk::new(
        support::KID,
        Algorithm::ES256,
        public.components(),
    )]);
    let verifier = Verifier::with_keys(
        KeySet::from_jwks(&jwks, String::new()).unwrap(),
        VerifierSettings::new(support::ISSUER),
    );
    (Signer::new(support::KID.into(), key), verifier)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token and the texts no span may carry: the token, its three segments, its claims.
fn token(signer: &Signer, exp: u64) -> (String, Vec<String>) {
    let claims = serde_json::json!({
        "iss": support::ISSUER, "sub": "subject-claim-value", "aud": "ledger",
        "iat": exp - 600, "exp": exp, "jti": "jti-claim-value-AAAAAA", "scope": "scope-claim-value",
    });
    let token = sign(signer, claims.as_object().unwrap(), 8 * 1024).unwrap();
    let mut secrets: Vec<String> = token.split('.').map(str::to_owned).collect();
    secrets.push(token.clone());
    secrets.extend(
        [
            "subject-claim-value",
            "jti-claim-value",
            "scope-claim-value",
        ]
        .map(str::to_owned),
    );
    (token, secrets)
}

/// (c) Every local verification is a `verify_token` span, a child of the span it was made
/// in, naming the token type, the key's algorithm and kid, the outcome and a rejection's
/// reason; no attribute, event or status carries the token, any part of it, or a claim.
/// A kid the key set does not know is not recorded: it is the sender's text.
#[tokio::test]
async fn verification_spans_name_alg_kid_and_outcome_never_the_token() {
    propagate();
    let (exporter, _provider, subscriber) = support::tracer();
    let _default = tracing::subscriber::set_default(subscriber);
    let (signer, verifier) = keys();
    let now = now();
    let (valid, mut secrets) = token(&signer, now + 600);
    let (expired, more) = token(&signer, now - 3600);
    secrets.extend(more);
    // Signed by a key the verifier does not know, under a kid chosen by its sender.
    let stranger =
        SigningKey::from_pkcs8(Algorithm::ES256, &generate_pkcs8(Algorithm::ES256).unwrap())
            .unwrap();
    let (unknown, more) = token(
        &Signer::new("sender-chosen-kid".into(), stranger),
        now + 600,
    );
    secrets.extend(more);
    secrets.push("sender-chosen-kid".into());
    let txn_claims = serde_json::json!({
        "iss": support::ISSUER, "iat": now, "exp": now + 60, "aud": "example.internal",
        "txn": "txn-claim-value", "sub": "txn-subject-value", "scope": "orders.read",
        "req_wl": "spiffe://example.internal/ns/edge/sa/gateway",
        "tctx": {"order_id": "tctx-claim-value"},
    });
    let txn = sign_as(
        &signer,
        TokenType::Txn,
        txn_claims.as_object().unwrap(),
        8 * 1024,
    )
    .unwrap();
    secrets.extend(txn.split('.').map(str::to_owned));
    secrets.push(txn.clone());
    secrets.extend(["txn-claim-value", "txn-subject-value", "tctx-claim-value"].map(str::to_owned));

    let app = request_span();
    let (_, app_span) = ids(&app);
    app.in_scope(|| {
        assert!(verifier.verify(&valid).is_ok());
        assert!(verifier.verify_at(&valid, Some("ledger"), now).is_ok());
        assert!(verifier.verify_at(&expired, Some("ledger"), now).is_err());
        assert!(verifier.verify_at(&unknown, Some("ledger"), now).is_err());
        assert!(verifier.verify_at(&valid, Some("elsewhere"), now).is_err());
        assert!(verifier.verify_at("not-a-token", None, now).is_err());
        assert!(verifier
            .verify_txn_at(&txn, "example.internal", now)
            .is_ok());
    });
    drop(app);

    let verifications = spans(&exporter, "verify_token");
    assert_eq!(verifications.len(), 7);
    // token_type, alg, kid, outcome, reason; "-": not recorded.
    let fields = |span: &SpanData| {
        ["token_type", "alg", "kid", "outcome", "reason"]
            .map(|key| attribute(span, key).unwrap_or_else(|| "-".into()))
            .join(" ")
    };
    let expected = [
        "access ES256 trace-test valid -",
        "access ES256 trace-test valid -",
        "access ES256 trace-test rejected EXPIRED",
        "access - - rejected UNKNOWN_KEY",
        "access ES256 trace-test rejected AUDIENCE_MISMATCH",
        "access - - rejected MALFORMED",
        "txn ES256 trace-test valid -",
    ];
    for (span, expected) in verifications.iter().zip(expected) {
        assert_eq!(fields(span), expected);
        assert_eq!(span.parent_span_id, app_span);
        assert_eq!(attribute(span, "level").as_deref(), Some("INFO"));
        assert!(span.events.is_empty());
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        assert_keeps_secrets(span, &secrets);
    }
}

/// With the propagator installed but no tracer (no OpenTelemetry layer in the
/// subscriber), there is no trace to send: the calls carry no trace context, and work.
#[tokio::test]
async fn with_a_propagator_but_no_tracer_nothing_is_sent() {
    propagate();
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
    let (authority, channel) = Authority::start(Behaviour::default()).await;
    let tokens = TokenSource::new(
        channel.clone(),
        request(&["ledger-audience"]),
        credentials(),
    );
    let app = tracing::info_span!(target: "app", "handle_request");
    let token = tokens.token().instrument(app.clone()).await.unwrap();
    assert_eq!(token, support::ISSUED_TOKEN);
    let _verifier = Verifier::connect(channel, VerifierSettings::new(support::ISSUER))
        .instrument(app)
        .await
        .unwrap();
    let calls = [authority.calls("IssueToken"), authority.calls("WatchKeys")].concat();
    assert_eq!(calls.len(), 2);
    for call in calls {
        assert_eq!(call.traceparent, None, "{call:?}");
        assert_eq!(call.tracestate, None, "{call:?}");
    }
}

/// An exchange for a Txn-Token inside the application's span: the ExchangeToken call
/// carries a `traceparent` of the application's trace whose parent is the client's
/// `txn_exchange` span, itself a child of the application's span. A refused exchange
/// records the code, not the message. Neither span carries the access token, the
/// Txn-Token, the credential or the scope asked for.
#[tokio::test]
async fn an_exchange_sends_its_trace_and_is_a_child_of_the_applications_span() {
    propagate();
    let (exporter, _provider, subscriber) = support::tracer();
    let _default = tracing::subscriber::set_default(subscriber);
    let (authority, channel) = Authority::start(Behaviour {
        refuse_exchanges: 1,
        ..Behaviour::default()
    })
    .await;
    let verifier = Verifier::with_keys(
        KeySet::from_jwks(authority.jwks().as_bytes(), String::new()).unwrap(),
        VerifierSettings::new(support::ISSUER),
    );
    let exchanger = TxnExchanger::new(channel, credentials(), verifier, support::TRUST_DOMAIN);
    let access_token = "access-token-value.part-two.part-three";
    let asked = TxnRequest {
        scope: "scope-asked-value".into(),
        request_details: Some(serde_json::json!({"order_id": "order-detail-value"})),
        request_context: None,
    };

    let refused = exchanger
        .exchange(access_token, &asked)
        .instrument(request_span())
        .await;
    assert!(refused.is_err());
    let app = request_span();
    let (trace, app_span) = ids(&app);
    let txn = exchanger
        .exchange(access_token, &asked)
        .instrument(app.clone())
        .await
        .unwrap();
    drop(app);

    let calls = authority.calls("ExchangeToken");
    assert_eq!(calls.len(), 2);
    let (sent_trace, sent_parent) =
        parse_traceparent(calls[1].traceparent.as_deref().expect("a traceparent"));
    assert_eq!(sent_trace, trace);
    assert_eq!(calls[1].tracestate.as_deref(), Some(INCOMING_STATE));

    let exchanges = spans(&exporter, "txn_exchange");
    assert_eq!(exchanges.len(), 2);
    let (failed, exchanged) = (&exchanges[0], &exchanges[1]);
    assert_eq!(
        exchanged.span_context.trace_id().to_string(),
        INCOMING_TRACE
    );
    assert_eq!(exchanged.parent_span_id, app_span);
    assert_eq!(exchanged.span_context.span_id().to_string(), sent_parent);
    assert_eq!(exchanged.span_kind, SpanKind::Client);
    assert_eq!(
        attribute(exchanged, "outcome").as_deref(),
        Some("exchanged")
    );
    assert_eq!(
        attribute(exchanged, "rpc.method").as_deref(),
        Some("ExchangeToken")
    );
    assert_eq!(
        attribute(exchanged, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(attribute(failed, "outcome").as_deref(), Some("failed"));
    assert_eq!(attribute(failed, "error").as_deref(), Some("rpc"));
    assert_eq!(
        attribute(failed, "rpc.grpc.status_code").as_deref(),
        Some("7")
    );
    assert!(matches!(failed.status, Status::Error { .. }));

    let mut secrets: Vec<&str> = SECRETS.to_vec();
    secrets.extend(access_token.split('.'));
    secrets.extend(txn.as_str().split('.'));
    secrets.extend([
        "scope-asked-value",
        "order-detail-value",
        "txn-subject-value",
        "txn-id-value",
    ]);
    for span in [failed, exchanged] {
        assert_keeps_secrets(span, &secrets);
    }
}
