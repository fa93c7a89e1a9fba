//! Prometheus metrics, made with `prometheus-client` and served at `GET /metrics`.
//!
//! Every label combination is created once at start, and the hot paths keep plain handles to
//! them: recording a count is an atomic add, never a map lookup under a lock.

use std::{collections::HashMap, time::Duration};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    crypto::Algorithm,
    jwt::verify::Reason,
    keys::{KeyRecord, KeyState},
    lifecycle::Timing,
};

mod audit;
mod registry;

pub use self::audit::AuditMetrics;

type Labels = Vec<(String, String)>;

/// The RPCs whose calls the caller policy decides.
pub const DECIDED_METHODS: [&str; 4] = ["IssueToken", "RotateKeys", "RevokeKey", "ListKeys"];

/// Decision outcomes: allowed, malformed, or the refusal's label (the field refused).
pub const DECISION_OUTCOMES: [&str; 13] = [
    "allowed",
    "malformed",
    "no_credentials",
    "bad_credentials",
    "no_rule",
    "subject",
    "audience",
    "ttl",
    "claims",
    "cnf",
    "not_admin",
    "admin_only",
    "throttled",
];

/// The RPC methods, for the latency histogram.
pub const METHODS: [&str; 7] = [
    "IssueToken",
    "VerifyToken",
    "GetJwks",
    "WatchKeys",
    "RotateKeys",
    "RevokeKey",
    "ListKeys",
];

const REASONS: [Reason; 11] = [
    Reason::Malformed,
    Reason::UnknownKey,
    Reason::BadSignature,
    Reason::AlgorithmNotAllowed,
    Reason::Expired,
    Reason::NotYetValid,
    Reason::IssuerMismatch,
    Reason::AudienceMismatch,
    Reason::RevokedKey,
    Reason::MissingClaim,
    Reason::UnsupportedHeader,
];

/// The reason label: the name the gRPC enum uses.
pub fn reason_label(reason: Reason) -> &'static str {
    match reason {
        Reason::Malformed => "MALFORMED",
        Reason::UnknownKey => "UNKNOWN_KEY",
        Reason::BadSignature => "BAD_SIGNATURE",
        Reason::AlgorithmNotAllowed => "ALGORITHM_NOT_ALLOWED",
        Reason::Expired => "EXPIRED",
        Reason::NotYetValid => "NOT_YET_VALID",
        Reason::IssuerMismatch => "ISSUER_MISMATCH",
        Reason::AudienceMismatch => "AUDIENCE_MISMATCH",
        Reason::RevokedKey => "REVOKED_KEY",
        Reason::MissingClaim => "MISSING_CLAIM",
        Reason::UnsupportedHeader => "UNSUPPORTED_HEADER",
        Reason::LifetimeTooLong => "LIFETIME_TOO_LONG",
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Latency buckets from 100 µs to about 3 s.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 16,
    ))
}

/// What the keystore's state shows in the metrics, read from the authority at each scrape.
#[derive(Debug, Default)]
pub struct StoreState {
    pub sync_age: u64,
    pub history_rewinds: u64,
    pub refused_records: usize,
}

pub struct Metrics {
    registry: Registry,
    issued: HashMap<Algorithm, Counter>,
    signing: HashMap<Algorithm, Histogram>,
    valid: Counter,
    invalid: HashMap<Reason, Counter>,
    rpc: HashMap<&'static str, Histogram>,
    jwks_200: Counter,
    jwks_304: Counter,
    rotations: Counter,
    revocations: Counter,
    deletions: Counter,
    key_age: HashMap<Algorithm, Gauge>,
    until_rotation: HashMap<Algorithm, Gauge>,
    decisions: HashMap<&'static str, HashMap<&'static str, Counter>>,
    policy_reloads_ok: Counter,
    policy_reloads_failed: Counter,
    jwks_fetch_failures: Family<Labels, Counter>,
    tls_reloads: Counter,
    tls_reload_failures: Counter,
    schedule_failures: Counter,
    store_sync_age: Gauge,
    store_history_rewinds: Counter,
    store_refused_records: Gauge,
    pub grpc_listener: ListenerMetrics,
    pub http_listener: ListenerMetrics,
    pub watchers: WatchMetrics,
    pub audit: AuditMetrics,
}

/// WatchKeys streams: how many are open, and how many the server refused or dropped.
#[derive(Clone, Debug)]
pub struct WatchMetrics {
    pub open: Gauge,
    /// Refused with RESOURCE_EXHAUSTED: --max-watchers were open.
    pub refused_at_limit: Counter,
    /// Refused with RESOURCE_EXHAUSTED: its address had --max-watchers-per-ip open.
    pub refused_at_peer_limit: Counter,
    /// Dropped and its stream reset: a message stayed untaken for --watch-send-timeout.
    pub dropped_slow: Counter,
}

/// The counts of one listener (`listener="grpc"` or `"http"`): what its limits did.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    pub open: Gauge,
    /// Closed at accept: the listener was at --max-connections.
    pub refused_at_limit: Counter,
    /// No TLS handshake and first protocol bytes within --handshake-timeout.
    pub handshake_timeouts: Counter,
    /// A TLS handshake that failed (bad or untrusted client certificate, not TLS, ...), or
    /// first bytes that were not the protocol's.
    pub handshake_failures: Counter,
    /// Closed after --idle-timeout with no request in flight.
    pub closed_idle: Counter,
    /// Closed because the client stopped reading a response for --idle-timeout.
    pub closed_stalled: Counter,
    /// Closed at accept: the peer's address held --max-connections-per-ip already.
    pub refused_at_peer_limit: Counter,
    /// Asked to close (GOAWAY) at --max-connection-age.
    pub closed_max_age: Counter,
    /// Calls refused RESOURCE_EXHAUSTED before their credentials were read: their peer
    /// address failed authentication too often.
    pub calls_throttled: Counter,
}

impl ListenerMetrics {
    fn new(
        listener: &str,
        open: &Family<Labels, Gauge>,
        closed: &Family<Labels, Counter>,
        throttled: &Family<Labels, Counter>,
    ) -> ListenerMetrics {
        let closed_by = |reason: &str| {
            closed.get_or_create_owned(&labels(&[("listener", listener), ("reason", reason)]))
        };
        ListenerMetrics {
            open: open.get_or_create_owned(&labels(&[("listener", listener)])),
            refused_at_limit: closed_by("limit"),
            handshake_timeouts: closed_by("handshake_timeout"),
            handshake_failures: closed_by("handshake_failed"),
            closed_idle: closed_by("idle"),
            closed_stalled: closed_by("stalled"),
            refused_at_peer_limit: closed_by("peer_limit"),
            closed_max_age: closed_by("max_age"),
            calls_throttled: throttled.get_or_create_owned(&labels(&[("listener", listener)])),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

/// One handle per configured algorithm, created up front so that the hot path only looks
/// one up and never takes the family's lock.
impl Metrics {
    pub fn token_issued(&self, alg: Algorithm, signing: Duration) {
        if let Some(counter) = self.issued.get(&alg) {
            counter.inc();
        }
        if let Some(histogram) = self.signing.get(&alg) {
            histogram.observe(signing.as_secs_f64());
        }
    }

    pub fn verified(&self, rejection: Option<Reason>) {
        match rejection {
            None => {
                self.valid.inc();
            }
            Some(reason) => {
                if let Some(counter) = self.invalid.get(&reason) {
                    counter.inc();
                }
            }
        };
    }

    pub fn rpc(&self, method: &str, latency: Duration) {
        if let Some(histogram) = self.rpc.get(method) {
            histogram.observe(latency.as_secs_f64());
        }
    }

    /// One caller decision; `outcome` is one of `DECISION_OUTCOMES`.
    pub fn decision(&self, method: &str, outcome: &str) {
        if let Some(counter) = self.decisions.get(method).and_then(|m| m.get(outcome)) {
            counter.inc();
        }
    }

    pub fn policy_reload(&self, ok: bool) {
        if ok {
            self.policy_reloads_ok.inc();
        } else {
            self.policy_reloads_failed.inc();
        }
    }

    /// Not a hot path: issuer names come from the policy, so the label set is created here.
    pub fn caller_jwks_fetch_failed(&self, issuer: &str) {
        self.jwks_fetch_failures
            .get_or_create(&labels(&[("issuer", issuer)]))
            .inc();
    }

    pub fn jwks_response(&self, not_modified: bool) {
        if not_modified {
            self.jwks_304.inc();
        } else {
            self.jwks_200.inc();
        }
    }

    pub fn key_events(&self, rotations: usize, revocations: usize, deletions: usize) {
        self.rotations.inc_by(rotations as u64);
        self.revocations.inc_by(revocations as u64);
        self.deletions.inc_by(deletions as u64);
    }

    pub fn scheduled_step_failed(&self) {
        self.schedule_failures.inc();
    }

    pub fn tls_reloaded(&self, ok: bool) {
        if ok {
            self.tls_reloads.inc();
        } else {
            self.tls_reload_failures.inc();
        }
    }

    /// Renders the OpenMetrics text, first setting the gauges that follow from the key set
    /// and the store's state.
    pub fn render(
        &self,
        records: &[KeyRecord],
        timing: Timing,
        store: &StoreState,
        now: u64,
    ) -> String {
        self.store_sync_age
            .set(i64::try_from(store.sync_age).unwrap_or(i64::MAX));
        // The authority counts; the counter follows it (it only ever grows).
        self.store_history_rewinds.inc_by(
            store
                .history_rewinds
                .saturating_sub(self.store_history_rewinds.get()),
        );
        self.store_refused_records
            .set(i64::try_from(store.refused_records).unwrap_or(i64::MAX));
        for record in records.iter().filter(|r| r.state == KeyState::Current) {
            let activated = record.activated_at.unwrap_or(record.created_at);
            if let Some(gauge) = self.key_age.get(&record.alg) {
                gauge.set(now.saturating_sub(activated) as i64);
            }
            if let Some(gauge) = self.until_rotation.get(&record.alg) {
                let due = activated + timing.rotation_period;
                gauge.set(due.saturating_sub(now) as i64);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
