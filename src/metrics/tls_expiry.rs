//! When the TLS certificates in use expire: the serving chain's first to expire, and the
//! latest of the client CA bundle. Whoever loads a TLS set says when they expire (their notAfter); a scrape
//! works the seconds left out from its own clock, so the gauges count down between reloads.

use std::sync::{Mutex, PoisonError};

use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{labels, Labels};

/// The notAfter times (unix seconds) of the certificates a TLS set puts in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CertificateExpiry {
    /// The earliest of the serving chain's certificates (leaf and intermediates); `None` if
    /// no validity can be read.
    pub(crate) serving: Option<i64>,
    /// The latest of the client CA bundle's certificates; `None` without `--client-ca`.
    pub(crate) client_ca: Option<i64>,
}

#[derive(Debug, Default)]
pub(super) struct TlsExpiryMetrics {
    seconds: Family<Labels, Gauge>,
    /// The set in use; `None` without TLS (and then no series).
    in_use: Mutex<Option<CertificateExpiry>>,
}

impl TlsExpiryMetrics {
    pub(super) fn register(registry: &mut Registry) -> TlsExpiryMetrics {
        let metrics = TlsExpiryMetrics::default();
        registry.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the TLS certificate in use expires (negative once it has), by certificate: serving (the first of its chain to expire), or client_ca (the latest of the --client-ca bundle)",
            metrics.seconds.clone(),
        );
        metrics
    }

    /// A TLS set is in use from now on.
    pub(super) fn in_use(&self, expiry: CertificateExpiry) {
        *self.in_use.lock().unwrap_or_else(PoisonError::into_inner) = Some(expiry);
    }

    /// Sets the gauges to the seconds left at `now` (unix seconds), for the certificates in
    /// use; a certificate without a notAfter has no series.
    pub(super) fn set(&self, now: u64) {
        let Some(expiry) = *self.in_use.lock().unwrap_or_else(PoisonError::into_inner) else {
            return;
        };
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        for (certificate, not_after) in
            [("serving", expiry.serving), ("client_ca", expiry.client_ca)]
        {
            let set = labels(&[("certificate", certificate)]);
            match not_after {
                Some(not_after) => {
                    self.seconds
                        .get_or_create(&set)
                        .set(not_after.saturating_sub(now));
                }
                None => {
                    self.seconds.remove(&set);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(metrics: &TlsExpiryMetrics, registry: &Registry, now: u64) -> Vec<String> {
        metrics.set(now);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn the_seconds_left_count_down_at_each_scrape_and_go_negative_once_expired() {
        let mut registry = Registry::default();
        let metrics = TlsExpiryMetrics::register(&mut registry);
        // No TLS: no series.
        assert!(scrape(&metrics, &registry, 1_000).is_empty());

        metrics.in_use(CertificateExpiry {
            serving: Some(5_000),
            client_ca: Some(3_000),
        });
        assert_eq!(
            scrape(&metrics, &registry, 1_000),
            [
                "tls_certificate_expiry_seconds{certificate=\"client_ca\"} 2000",
                "tls_certificate_expiry_seconds{certificate=\"serving\"} 4000",
            ]
        );
        assert_eq!(
            scrape(&metrics, &registry, 4_000),
            [
                "tls_certificate_expiry_seconds{certificate=\"client_ca\"} -1000",
                "tls_certificate_expiry_seconds{certificate=\"serving\"} 1000",
            ]
        );

        // A reload to a set without a client CA bundle: its series goes.
        metrics.in_use(CertificateExpiry {
            serving: Some(90_000),
            client_ca: None,
        });
        assert_eq!(
            scrape(&metrics, &registry, 4_000),
            ["tls_certificate_expiry_seconds{certificate=\"serving\"} 86000"]
        );
    }
}
