//! Every metric registered once at start, each label combination created then, so the hot
//! paths hold plain handles.

use std::collections::HashMap;

use prometheus_client::{
    metrics::{
        counter::Counter,
        exemplar::HistogramWithExemplars,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use super::{
    labels, latency_histogram, latency_histogram_with_exemplars, DecidedMethod, DecisionOutcome,
    JwksStatus, KeyEvent, LabelValue, Labels, ListenerMetrics, ListenerName, Method, Metrics,
    PerLabel, ReloadOutcome, ReloadedFile, TraceExemplar, WatchMetrics, WatcherEnd,
};
use token_authority_jose::{crypto::Algorithm, jwt::verify::Reason};

fn per_algorithm<M: Clone, C: MetricConstructor<M>>(
    family: &Family<Labels, M, C>,
    algorithms: &[Algorithm],
) -> HashMap<Algorithm, M> {
    algorithms
        .iter()
        .map(|alg| {
            let set = labels(&[("algorithm", alg.name())]);
            (*alg, family.get_or_create_owned(&set))
        })
        .collect()
}

impl Metrics {
    pub fn new(algorithms: &[Algorithm]) -> Metrics {
        let mut registry = Registry::with_prefix("token_authority");
        let audit = super::AuditMetrics::register(&mut registry);
        let status = super::status::StatusMetrics::register(&mut registry);
        let tls_expiry = super::tls_expiry::TlsExpiryMetrics::register(&mut registry);

        let issued_family = Family::<Labels, Counter>::default();
        registry.register(
            "tokens_issued",
            "Tokens issued, by algorithm",
            issued_family.clone(),
        );
        let signing_family = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "signing_duration_seconds",
            "Time to sign a token, by algorithm",
            signing_family.clone(),
        );
        let verified_family = Family::<Labels, Counter>::default();
        registry.register(
            "verifications",
            "VerifyToken answers, by outcome and reason",
            verified_family.clone(),
        );
        let rpc_family =
            Family::<Labels, HistogramWithExemplars<TraceExemplar>>::new_with_constructor(
                latency_histogram_with_exemplars as fn() -> HistogramWithExemplars<TraceExemplar>,
            );
        registry.register(
            "rpc_duration_seconds",
            "gRPC request latency, by method (with traces on, a trace id per bucket as exemplar)",
            rpc_family.clone(),
        );
        let requests_family = Family::<Labels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC requests answered, by method and status code (OK, INVALID_ARGUMENT, UNAVAILABLE, ...)",
            requests_family.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans that never reached the collector: the export queue was full, or an export failed",
            crate::telemetry::traces::SPANS_DROPPED.clone(),
        );
        let jwks_family = Family::<Labels, Counter>::default();
        registry.register(
            "jwks_responses",
            "JWKS HTTP responses, by status",
            jwks_family.clone(),
        );
        let lifecycle_family = Family::<Labels, Counter>::default();
        registry.register(
            "key_events",
            "Key lifecycle events: rotations, revocations, deletions",
            lifecycle_family.clone(),
        );
        let age_family = Family::<Labels, Gauge>::default();
        registry.register(
            "current_key_age_seconds",
            "How long the current key has been signing, by algorithm",
            age_family.clone(),
        );
        let until_family = Family::<Labels, Gauge>::default();
        registry.register(
            "seconds_until_next_rotation",
            "Time until the scheduled rotation, by algorithm (0: due, waiting for the next key's publish lead)",
            until_family.clone(),
        );
        let tls_reloads = Counter::default();
        registry.register(
            "tls_reloads",
            "TLS certificate, key and client CA sets loaded after a change on disk",
            tls_reloads.clone(),
        );
        let tls_reload_failures = Counter::default();
        registry.register(
            "tls_reload_failures",
            "Changed TLS files that could not be loaded (the previous set stays in use)",
            tls_reload_failures.clone(),
        );
        let refused_family = Family::<Labels, Gauge>::default();
        registry.register(
            "config_refused",
            "1 while a reloaded file (policy, tls) holds a content that was refused: the one in force is older, and a restart would not start with it",
            refused_family.clone(),
        );
        let config_refused = PerLabel::new(|file: ReloadedFile| {
            refused_family.get_or_create_owned(&labels(&[("file", file.as_str())]))
        });
        let key_set_fingerprint = Gauge::default();
        registry.register(
            "key_set_fingerprint",
            "Identifies the public key set (JWKS) served: equal on replicas that serve the same keys, different otherwise; only equality means anything",
            key_set_fingerprint.clone(),
        );
        let schedule_failures = Counter::default();
        registry.register(
            "scheduled_key_step_failures",
            "Scheduled rotations and deletions that failed (retried with backoff from 1 s to 1 min; the key set in memory keeps signing)",
            schedule_failures.clone(),
        );
        let store_sync_age = Gauge::default();
        registry.register(
            "store_sync_age_seconds",
            "Seconds since the key set in memory was last known to match the keystore (with a shared store, it grows while the database is unreachable)",
            store_sync_age.clone(),
        );
        let store_history_rewinds = Counter::default();
        registry.register(
            "store_history_rewinds",
            "Times the shared keystore database was found to have gone back in time (a restore, a point-in-time recovery, a failover that lost commits) or to be another database",
            store_history_rewinds.clone(),
        );
        let signer_available = Gauge::default();
        registry.register(
            "signer_available",
            "1 while the signer answers: always with --signer process; with --signer pkcs11, whether the token answered its last call (checked every 5 s). At 0 IssueToken answers UNAVAILABLE; verification and the JWKS carry on",
            signer_available.clone(),
        );
        let store_refused_records = Gauge::default();
        registry.register(
            "store_refused_records",
            "Rows of the shared keystore the last read refused: edited by hand, written back from a backup, or unreadable; neither served nor changed",
            store_refused_records.clone(),
        );
        let open_family = Family::<Labels, Gauge>::default();
        registry.register(
            "open_connections",
            "Connections open now, by listener",
            open_family.clone(),
        );
        let closed_family = Family::<Labels, Counter>::default();
        registry.register(
            "connections_closed_by_server",
            "Connections the listener closed on its own, by listener and reason",
            closed_family.clone(),
        );
        let throttled_family = Family::<Labels, Counter>::default();
        registry.register(
            "calls_throttled",
            "Calls refused RESOURCE_EXHAUSTED without reading their credentials, because their peer address failed authentication too often, by listener",
            throttled_family.clone(),
        );

        let watchers_open = Gauge::default();
        registry.register(
            "key_watchers",
            "WatchKeys streams open now",
            watchers_open.clone(),
        );
        let watchers_ended = Family::<Labels, Counter>::default();
        registry.register(
            "key_watchers_refused_or_dropped",
            "WatchKeys streams the server refused (limit, peer_limit) or dropped (slow), by reason",
            watchers_ended.clone(),
        );

        let decision_family = Family::<Labels, Counter>::default();
        registry.register(
            "caller_decisions",
            "Caller policy decisions, by method and outcome (allowed, malformed, or the refused field)",
            decision_family.clone(),
        );
        let reload_family = Family::<Labels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy file reloads, by outcome (a failed one keeps the policy in force)",
            reload_family.clone(),
        );
        let jwks_fetch_failures = Family::<Labels, Counter>::default();
        registry.register(
            "caller_jwks_fetch_failures",
            "Failed fetches of a trusted issuer's JWKS, by issuer name (the last good set is kept)",
            jwks_fetch_failures.clone(),
        );
        let decisions = PerLabel::new(|method: DecidedMethod| {
            PerLabel::new(|outcome: DecisionOutcome| {
                let set = labels(&[("method", method.as_str()), ("outcome", outcome.as_str())]);
                decision_family.get_or_create_owned(&set)
            })
        });
        let watchers_ended = PerLabel::new(|reason: WatcherEnd| {
            watchers_ended.get_or_create_owned(&labels(&[("reason", reason.as_str())]))
        });
        let listener =
            |name| ListenerMetrics::new(name, &open_family, &closed_family, &throttled_family);

        Metrics {
            decisions,
            policy_reloads: PerLabel::new(|outcome: ReloadOutcome| {
                reload_family.get_or_create_owned(&labels(&[("outcome", outcome.as_str())]))
            }),
            jwks_fetch_failures,
            tls_reloads,
            tls_reload_failures,
            config_refused,
            tls_expiry,
            key_set_fingerprint,
            schedule_failures,
            store_sync_age,
            store_history_rewinds,
            store_refused_records,
            signer_available,
            grpc_listener: listener(ListenerName::Grpc),
            http_listener: listener(ListenerName::Http),
            audit,
            status,
            watchers: WatchMetrics {
                open: watchers_open,
                refused_at_limit: watchers_ended.get(WatcherEnd::Limit).clone(),
                refused_at_peer_limit: watchers_ended.get(WatcherEnd::PeerLimit).clone(),
                dropped_slow: watchers_ended.get(WatcherEnd::Slow).clone(),
            },
            issued: per_algorithm(&issued_family, algorithms),
            signing: per_algorithm(&signing_family, algorithms),
            valid: verified_family
                .get_or_create_owned(&labels(&[("outcome", "valid"), ("reason", "")])),
            invalid: PerLabel::new(|reason: Reason| {
                let set = labels(&[("outcome", "invalid"), ("reason", reason.as_str())]);
                verified_family.get_or_create_owned(&set)
            }),
            rpc: PerLabel::new(|method: Method| {
                rpc_family.get_or_create_owned(&labels(&[("method", method.as_str())]))
            }),
            rpc_requests: PerLabel::new(|method: Method| {
                PerLabel::new(|code: tonic::Code| {
                    let set = labels(&[("method", method.as_str()), ("code", code.as_str())]);
                    requests_family.get_or_create_owned(&set)
                })
            }),
            jwks: PerLabel::new(|status: JwksStatus| {
                jwks_family.get_or_create_owned(&labels(&[("status", status.as_str())]))
            }),
            key_events: PerLabel::new(|event: KeyEvent| {
                lifecycle_family.get_or_create_owned(&labels(&[("event", event.as_str())]))
            }),
            key_age: per_algorithm(&age_family, algorithms),
            until_rotation: per_algorithm(&until_family, algorithms),
            key_ages: super::KeyAges::default(),
            registry,
        }
    }
}
