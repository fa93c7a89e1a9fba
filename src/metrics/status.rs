//! The status lists' metrics, set from the lists' census at each scrape.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{labels, Labels};
use crate::authority::status::Census;

#[derive(Clone, Debug, Default)]
pub(crate) struct StatusMetrics {
    lists: Gauge,
    revoked: Gauge,
    suspended: Gauge,
    without_status: Counter,
}

impl StatusMetrics {
    pub(super) fn register(registry: &mut Registry) -> StatusMetrics {
        let metrics = StatusMetrics::default();
        registry.register(
            "status_lists",
            "Status lists held and served (each a GET /statuslists/{id})",
            metrics.lists.clone(),
        );
        let tokens = Family::<Labels, Gauge>::default();
        registry.register(
            "status_list_tokens",
            "Statuses set in the lists held, by status (invalid: revoked, final; suspended)",
            tokens.clone(),
        );
        let family = |status| tokens.get_or_create_owned(&labels(&[("status", status)]));
        let metrics = StatusMetrics {
            revoked: family("invalid"),
            suspended: family("suspended"),
            ..metrics
        };
        registry.register(
            "tokens_issued_without_status",
            "Tokens issued without a status because no index could be reserved (the keystore unreachable): they can be withdrawn only by revoking their key",
            metrics.without_status.clone(),
        );
        metrics
    }

    /// Follows the lists' census (all zero when the authority keeps no lists).
    pub(super) fn set(&self, census: Census) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.lists.set(gauge(census.lists));
        self.revoked.set(gauge(census.revoked));
        self.suspended.set(gauge(census.suspended));
        // The lists count; the counter follows them (it only ever grows).
        self.without_status.inc_by(
            census
                .issued_without_status
                .saturating_sub(self.without_status.get()),
        );
    }
}
