//! Prometheus metrics, made with `prometheus-client` and served at `GET /metrics`.
//!
//! Every label combination is created once at start, and the hot paths keep plain handles to
//! them: recording a count is an atomic add, never a map lookup under a lock.

use std::{collections::HashMap, time::Duration};

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use token_authority_jose::{crypto::Algorithm, jwt::verify::Reason};

mod audit;
mod key_ages;
mod labels;
mod registry;
mod status;
mod tls_expiry;

pub(crate) use self::{
    audit::AuditMetrics,
    key_ages::KeyAges,
    labels::{
        ClosedReason, DecidedMethod, DecisionOutcome, JwksStatus, KeyEvent, LabelValue,
        ListenerName, Method, PerLabel, ReloadOutcome, ReloadedFile, WatcherEnd,
    },
    tls_expiry::CertificateExpiry,
};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Latency buckets from 100 µs to about 52 s.
fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// Doubling from 100 µs to 52.4 s: the last finite bucket is above the longest a call can
/// take (its deadline, at most 30 s, and the listener's backstop after it), so a call that
/// hangs until then is told from one that took 4 s, not lumped with it in `+Inf`.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 20)
}

fn latency_histogram_with_exemplars() -> HistogramWithExemplars<TraceExemplar> {
    HistogramWithExemplars::new(latency_buckets())
}

/// The exemplar of a latency bucket: the trace of a call that fell in it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct TraceExemplar {
    trace_id: String,
}

/// What the authority's state shows in the metrics, read from it at each scrape.
#[derive(Debug, Default)]
pub(crate) struct AuthorityState {
    pub(crate) sync_age: u64,
    pub(crate) history_rewinds: u64,
    pub(crate) refused_records: usize,
    /// Whether the signer answered its last call (always, for keys held in the process).
    pub(crate) signer_available: bool,
    /// The status lists' counts (zero when the authority keeps none).
    pub(crate) status: crate::authority::status::Census,
}

pub struct Metrics {
    registry: Registry,
    issued: HashMap<Algorithm, Counter>,
    signing: HashMap<Algorithm, Histogram>,
    valid: Counter,
    invalid: PerLabel<Reason, Counter>,
    rpc: PerLabel<Method, HistogramWithExemplars<TraceExemplar>>,
    rpc_requests: PerLabel<Method, PerLabel<tonic::Code, Counter>>,
    jwks: PerLabel<JwksStatus, Counter>,
    key_events: PerLabel<KeyEvent, Counter>,
    key_age: HashMap<Algorithm, Gauge>,
    until_rotation: HashMap<Algorithm, Gauge>,
    /// What the two gauges above are worked out from at each scrape.
    key_ages: KeyAges,
    decisions: PerLabel<DecidedMethod, PerLabel<DecisionOutcome, Counter>>,
    policy_reloads: PerLabel<ReloadOutcome, Counter>,
    jwks_fetch_failures: Family<Labels, Counter>,
    tls_reloads: Counter,
    tls_reload_failures: Counter,
    config_refused: PerLabel<ReloadedFile, Gauge>,
    tls_expiry: tls_expiry::TlsExpiryMetrics,
    /// Identifies the public key set served (from `key_ages`, at each scrape).
    key_set_fingerprint: Gauge,
    schedule_failures: Counter,
    store_sync_age: Gauge,
    store_history_rewinds: Counter,
    store_refused_records: Gauge,
    signer_available: Gauge,
    pub(crate) grpc_listener: ListenerMetrics,
    pub(crate) http_listener: ListenerMetrics,
    pub watchers: WatchMetrics,
    pub(crate) audit: AuditMetrics,
    status: status::StatusMetrics,
}

/// WatchKeys streams: how many are open, and how many the server refused or dropped.
#[derive(Clone, Debug)]
pub struct WatchMetrics {
    pub(crate) open: Gauge,
    /// Refused with RESOURCE_EXHAUSTED: --max-watchers were open.
    pub(crate) refused_at_limit: Counter,
    /// Refused with RESOURCE_EXHAUSTED: its address had --max-watchers-per-ip open.
    pub(crate) refused_at_peer_limit: Counter,
    /// Dropped and its stream reset: a message stayed untaken for --watch-send-timeout.
    pub(crate) dropped_slow: Counter,
}

/// The counts of one listener (`listener="grpc"` or `"http"`): what its limits did.
#[derive(Clone, Debug)]
pub(crate) struct ListenerMetrics {
    pub(crate) open: Gauge,
    /// Closed at accept: the listener was at --max-connections.
    pub(crate) refused_at_limit: Counter,
    /// No TLS handshake and first protocol bytes within --handshake-timeout.
    pub(crate) handshake_timeouts: Counter,
    /// A TLS handshake that failed (bad or untrusted client certificate, not TLS, ...), or
    /// first bytes that were not the protocol's.
    pub(crate) handshake_failures: Counter,
    /// Closed after --idle-timeout with no request in flight.
    pub(crate) closed_idle: Counter,
    /// Closed because the client stopped reading a response for --idle-timeout.
    pub(crate) closed_stalled: Counter,
    /// Closed at accept: the peer's address held --max-connections-per-ip already.
    pub(crate) refused_at_peer_limit: Counter,
    /// Asked to close (GOAWAY) at --max-connection-age.
    pub(crate) closed_max_age: Counter,
    /// Calls refused RESOURCE_EXHAUSTED before their credentials were read: their peer
    /// address failed authentication too often.
    pub(crate) calls_throttled: Counter,
}

impl ListenerMetrics {
    fn new(
        listener: ListenerName,
        open: &Family<Labels, Gauge>,
        closed: &Family<Labels, Counter>,
        throttled: &Family<Labels, Counter>,
    ) -> ListenerMetrics {
        let listener_label = labels(&[("listener", listener.as_str())]);
        // Each reason's handle is made here, so none is left out of the series shown at 0.
        let closed = PerLabel::new(|reason: ClosedReason| {
            closed.get_or_create_owned(&labels(&[
                ("listener", listener.as_str()),
                ("reason", reason.as_str()),
            ]))
        });
        let closed_by = |reason| closed.get(reason).clone();
        ListenerMetrics {
            open: open.get_or_create_owned(&listener_label),
            refused_at_limit: closed_by(ClosedReason::Limit),
            handshake_timeouts: closed_by(ClosedReason::HandshakeTimeout),
            handshake_failures: closed_by(ClosedReason::HandshakeFailed),
            closed_idle: closed_by(ClosedReason::Idle),
            closed_stalled: closed_by(ClosedReason::Stalled),
            refused_at_peer_limit: closed_by(ClosedReason::PeerLimit),
            closed_max_age: closed_by(ClosedReason::MaxAge),
            calls_throttled: throttled.get_or_create_owned(&listener_label),
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
    pub(crate) fn token_issued(&self, alg: Algorithm, signing: Duration) {
        if let Some(counter) = self.issued.get(&alg) {
            counter.inc();
        }
        if let Some(histogram) = self.signing.get(&alg) {
            histogram.observe(signing.as_secs_f64());
        }
    }

    pub(crate) fn verified(&self, rejection: Option<Reason>) {
        match rejection {
            None => {
                self.valid.inc();
            }
            Some(reason) => {
                self.invalid.get(reason).inc();
            }
        };
    }

    /// One RPC answered with `code` after `latency`; `trace_id`, of a sampled trace,
    /// becomes its latency bucket's exemplar.
    pub(crate) fn rpc(
        &self,
        method: Method,
        code: tonic::Code,
        latency: Duration,
        trace_id: Option<String>,
    ) {
        self.rpc_requests.get(method).get(code).inc();
        self.rpc.get(method).observe(
            latency.as_secs_f64(),
            trace_id.map(|trace_id| TraceExemplar { trace_id }),
            None,
        );
    }

    /// The RPCs of `method` answered with `code` so far.
    #[cfg(test)]
    pub(crate) fn rpc_count(&self, method: Method, code: tonic::Code) -> u64 {
        self.rpc_requests.get(method).get(code).get()
    }

    /// One caller decision.
    pub(crate) fn decision(&self, method: DecidedMethod, outcome: DecisionOutcome) {
        self.decisions.get(method).get(outcome).inc();
    }

    pub(crate) fn policy_reload(&self, ok: bool) {
        let outcome = if ok {
            ReloadOutcome::Ok
        } else {
            ReloadOutcome::Failed
        };
        self.policy_reloads.get(outcome).inc();
    }

    /// Not a hot path: issuer names come from the policy, so the label set is created here.
    pub(crate) fn caller_jwks_fetch_failed(&self, issuer: &str) {
        self.jwks_fetch_failures
            .get_or_create(&labels(&[("issuer", issuer)]))
            .inc();
    }

    pub(crate) fn jwks_response(&self, not_modified: bool) {
        let status = if not_modified {
            JwksStatus::NotModified
        } else {
            JwksStatus::Full
        };
        self.jwks.get(status).inc();
    }

    pub(crate) fn key_events(&self, rotations: usize, revocations: usize, deletions: usize) {
        for (event, count) in [
            (KeyEvent::Rotation, rotations),
            (KeyEvent::Revocation, revocations),
            (KeyEvent::Deletion, deletions),
        ] {
            self.key_events.get(event).inc_by(count as u64);
        }
    }

    /// Where the key-age gauges' inputs are set: handed to whoever serves key sets.
    pub(crate) fn key_ages(&self) -> KeyAges {
        self.key_ages.clone()
    }

    pub(crate) fn scheduled_step_failed(&self) {
        self.schedule_failures.inc();
    }

    /// The TLS set whose certificates expire at these times is in use from now on.
    pub(crate) fn tls_in_use(&self, expiry: CertificateExpiry) {
        self.tls_expiry.in_use(expiry);
    }

    /// Whether `file`'s content on disk is one that was refused (the one in force is older).
    pub(crate) fn config_refused(&self, file: ReloadedFile, refused: bool) {
        self.config_refused.get(file).set(i64::from(refused));
    }

    pub(crate) fn tls_reloaded(&self, ok: bool) {
        if ok {
            self.tls_reloads.inc();
        } else {
            self.tls_reload_failures.inc();
        }
    }

    /// Renders the OpenMetrics text, first setting the gauges that follow from the key set
    /// served (its activation times, at `now`), the TLS certificates in use (their expiry, at
    /// `now`) and the store's state.
    pub(crate) fn render(&self, store: &AuthorityState, now: u64) -> String {
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
        self.signer_available.set(i64::from(store.signer_available));
        self.status.set(store.status);
        self.tls_expiry.set(now);
        if let Some(fingerprint) = self.key_ages.fingerprint() {
            self.key_set_fingerprint
                .set(i64::try_from(fingerprint).unwrap_or(i64::MAX));
        }
        for (alg, ages) in self.key_ages.at(now) {
            if let Some(gauge) = self.key_age.get(&alg) {
                gauge.set(ages.age as i64);
            }
            if let Some(gauge) = self.until_rotation.get(&alg) {
                gauge.set(ages.until_rotation as i64);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_buckets_reach_past_the_longest_call() {
        let longest = crate::transport::listener::GRPC_REQUEST_TIMEOUT + Duration::from_secs(1);
        let buckets: Vec<f64> = latency_buckets().collect();
        assert!(buckets[0] <= 0.0001);
        assert!(
            buckets[buckets.len() - 2] < longest.as_secs_f64()
                && buckets[buckets.len() - 1] > longest.as_secs_f64(),
            "{buckets:?}"
        );
    }
}
