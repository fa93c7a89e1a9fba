//! `token-authority bench`: drives a running authority over real gRPC and HTTP and reports
//! requests/s and latency percentiles, optionally beside the machine's raw crypto ceiling
//! measured in the same run, so figures compare across noisy machines.
//!
//! # Layout
//! - `load`: the load loop, per-task HDR histograms, errors by status.
//! - `reference`: signing and verifying per algorithm on every core, with no server.

pub(crate) mod load;
pub(crate) mod reference;
mod target;
pub(crate) mod tls;

use std::time::Duration;

use serde::Serialize;

use crate::config::{BenchArgs, BenchMode};

#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("preparing the run failed: {0}")]
    Prepare(String),
    #[error("--algorithm {0:?} is not one of RS256, PS256, ES256, EdDSA")]
    Algorithm(String),
}

/// The outcome of one run, as printed (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) mode: String,
    /// The crypto provider of this binary, which computed the reference.
    pub(crate) provider: &'static str,
    pub(crate) algorithm: Option<String>,
    pub(crate) duration_s: f64,
    pub(crate) concurrency: usize,
    pub(crate) connections: usize,
    pub(crate) requests: u64,
    pub(crate) requests_per_s: f64,
    pub(crate) latency_us: Percentiles,
    /// Failed requests by gRPC code or HTTP status.
    pub(crate) errors: std::collections::BTreeMap<String, u64>,
    /// The in-process ceiling of this mode's crypto on every core, when `--reference`.
    pub(crate) reference_ops_per_s: Option<f64>,
    /// requests_per_s / reference_ops_per_s.
    pub(crate) ratio_to_reference: Option<f64>,
    /// With `--rotate-every`: the rotations forced during the run.
    pub(crate) rotations: Option<Rotations>,
}

/// Forced rotations during a run, and the requests that were in flight across one.
#[derive(Debug, Serialize)]
pub(crate) struct Rotations {
    pub(crate) performed: u64,
    pub(crate) failed: u64,
    pub(crate) requests_in_flight: u64,
    pub(crate) latency_us: Percentiles,
}

#[derive(Debug, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl Percentiles {
    pub(crate) fn of(histogram: &hdrhistogram::Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

/// Runs the benchmark `args` asks for.
pub(crate) async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let alg = match &args.algorithm {
        None => None,
        Some(name) => Some(
            token_authority_jose::crypto::Algorithm::from_name(name)
                .ok_or_else(|| BenchError::Algorithm(name.clone()))?,
        ),
    };
    let reference = if args.reference {
        let which = match args.mode {
            BenchMode::Issue => Some(reference::Operation::Sign),
            BenchMode::Verify => Some(reference::Operation::Verify),
            _ => None,
        };
        match which {
            Some(operation) => {
                let alg = alg.unwrap_or(token_authority_jose::crypto::Algorithm::RS256);
                let duration = args.reference_duration;
                Some(
                    tokio::task::spawn_blocking(move || {
                        reference::ops_per_second(alg, operation, duration)
                    })
                    .await
                    .map_err(|e| BenchError::Prepare(e.to_string()))??,
                )
            }
            None => None,
        }
    } else {
        None
    };
    let mut report = load::run(args, alg).await?;
    report.reference_ops_per_s = reference;
    report.ratio_to_reference = reference.map(|ceiling| report.requests_per_s / ceiling);
    Ok(report)
}

/// The human form of a report.
pub(crate) fn render(report: &Report) -> String {
    let mut out = format!(
        "{}{}: {} requests in {:.1}s, {:.0} req/s ({} connections, {} in flight)\n\
         latency us: p50 {} p90 {} p99 {} p99.9 {} max {}\n",
        report.mode,
        report
            .algorithm
            .as_deref()
            .map(|alg| format!(" {alg}"))
            .unwrap_or_default(),
        report.requests,
        report.duration_s,
        report.requests_per_s,
        report.connections,
        report.concurrency,
        report.latency_us.p50,
        report.latency_us.p90,
        report.latency_us.p99,
        report.latency_us.p999,
        report.latency_us.max,
    );
    if let (Some(ceiling), Some(ratio)) = (report.reference_ops_per_s, report.ratio_to_reference) {
        out.push_str(&format!(
            "reference ({}, crypto alone, every core, same run): {ceiling:.0} ops/s; service = {:.1}% of it\n",
            report.provider,
            ratio * 100.0
        ));
    }
    if let Some(rotations) = &report.rotations {
        out.push_str(&format!(
            "rotations forced: {} ({} failed); {} requests in flight across them: p50 {} p99 {} max {} us\n",
            rotations.performed,
            rotations.failed,
            rotations.requests_in_flight,
            rotations.latency_us.p50,
            rotations.latency_us.p99,
            rotations.latency_us.max,
        ));
    }
    if report.errors.is_empty() {
        out.push_str("errors: none\n");
    } else {
        for (status, count) in &report.errors {
            out.push_str(&format!("errors {status}: {count}\n"));
        }
    }
    out
}

pub(crate) fn as_duration(d: Duration) -> f64 {
    d.as_secs_f64()
}
