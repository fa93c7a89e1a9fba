//! The audit log's metrics: whether it can be written now, and what was refused because it
//! could not.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

/// The audit log's counts, handed to its writer and to the request path.
#[derive(Clone, Debug, Default)]
pub(crate) struct AuditMetrics {
    /// 1 while the last write succeeded (or none was tried), 0 after a failed one.
    pub(crate) writable: Gauge,
    /// Lines the writer could not write (each one cut back whole).
    pub(crate) write_failures: Counter,
    /// Decisions not carried out because their line could not be written (UNAVAILABLE).
    pub(crate) unrecorded: Counter,
    /// Times the chain's head could not be recorded in the keystore.
    pub(crate) head_failures: Counter,
}

impl AuditMetrics {
    pub(super) fn register(registry: &mut Registry) -> AuditMetrics {
        let metrics = AuditMetrics::default();
        metrics.writable.set(1);
        registry.register(
            "audit_log_writable",
            "1 while the audit log takes lines, 0 after a write failed (IssueToken and admin RPCs answer UNAVAILABLE until a write succeeds)",
            metrics.writable.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit lines that could not be written (each cut back whole, the chain intact)",
            metrics.write_failures.clone(),
        );
        registry.register(
            "audit_unrecorded_decisions",
            "Calls answered UNAVAILABLE because their audit line could not be written (nothing was carried out)",
            metrics.unrecorded.clone(),
        );
        registry.register(
            "audit_head_record_failures",
            "Times the audit chain's head could not be recorded in the keystore",
            metrics.head_failures.clone(),
        );
        metrics
    }
}
