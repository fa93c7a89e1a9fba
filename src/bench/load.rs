//! The load loop: `concurrency` tasks spread over `connections` gRPC channels (and one HTTP
//! client), each issuing requests back to back until the deadline and recording every
//! latency in its own HDR histogram; histograms and error counts are merged at the end.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tonic::transport::Channel;

use super::{as_duration, BenchError, Percentiles, Report};
use crate::{
    config::{BenchArgs, BenchMode},
    crypto::Algorithm,
    pb::{self, token_authority_client::TokenAuthorityClient},
};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// What every task shares.
struct Target {
    mode: BenchMode,
    algorithm: String,
    channels: Vec<Channel>,
    http: HttpClient,
    jwks_uri: hyper::Uri,
    etag: Option<String>,
    tokens: Vec<String>,
}

/// What one task saw.
struct Tally {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

impl Target {
    async fn request(&self, task: usize, iteration: u64) -> Result<(), String> {
        let mode = match self.mode {
            // 70% verify, 20% issue, 10% JWKS.
            BenchMode::Mixed => match iteration % 10 {
                0..=6 => BenchMode::Verify,
                7 | 8 => BenchMode::Issue,
                _ => BenchMode::Jwks,
            },
            mode => mode,
        };
        let channel = self.channels[task % self.channels.len()].clone();
        match mode {
            BenchMode::Issue | BenchMode::Mixed => {
                let request = pb::IssueTokenRequest {
                    subject: "bench".into(),
                    audience: vec!["bench".into()],
                    algorithm: self.algorithm.clone(),
                    ..Default::default()
                };
                TokenAuthorityClient::new(channel)
                    .issue_token(request)
                    .await
                    .map(|_| ())
                    .map_err(|status| format!("grpc {:?}", status.code()))
            }
            BenchMode::Verify => {
                let token = self.tokens[(task + iteration as usize) % self.tokens.len()].clone();
                let verdict = TokenAuthorityClient::new(channel)
                    .verify_token(pb::VerifyTokenRequest {
                        token,
                        audience: "bench".into(),
                    })
                    .await
                    .map_err(|status| format!("grpc {:?}", status.code()))?;
                if verdict.into_inner().valid {
                    Ok(())
                } else {
                    Err("verdict invalid".into())
                }
            }
            BenchMode::Health => tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| ())
                .map_err(|status| format!("grpc {:?}", status.code())),
            BenchMode::Jwks | BenchMode::Jwks304 => {
                let mut request = hyper::Request::get(self.jwks_uri.clone());
                if let (BenchMode::Jwks304, Some(etag)) = (mode, &self.etag) {
                    request = request.header(hyper::header::IF_NONE_MATCH, etag);
                }
                let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
                let response = self
                    .http
                    .request(request)
                    .await
                    .map_err(|e| format!("http {e}"))?;
                let status = response.status().as_u16();
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("http {e}"))?;
                let expected = if mode == BenchMode::Jwks304 && self.etag.is_some() {
                    304
                } else {
                    200
                };
                if status == expected {
                    Ok(())
                } else {
                    Err(format!("http {status}"))
                }
            }
        }
    }
}

async fn connect(target: &str) -> Result<Channel, BenchError> {
    let error = |reason: String| BenchError::Connect {
        target: target.to_owned(),
        reason,
    };
    Channel::from_shared(target.to_owned())
        .map_err(|e| error(e.to_string()))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| error(e.to_string()))
}

/// Runs the warm-up (not recorded) and then the measured phase.
pub async fn run(args: &BenchArgs, alg: Option<Algorithm>) -> Result<Report, BenchError> {
    let mut channels = Vec::with_capacity(args.connections.max(1));
    for _ in 0..args.connections.max(1) {
        channels.push(connect(&args.target).await?);
    }
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let jwks_uri: hyper::Uri = format!(
        "{}/.well-known/jwks.json",
        args.http_target.trim_end_matches('/')
    )
    .parse()
    .map_err(|e: hyper::http::uri::InvalidUri| BenchError::Connect {
        target: args.http_target.clone(),
        reason: e.to_string(),
    })?;
    let algorithm = alg.map(|a| a.name().to_owned()).unwrap_or_default();

    // Verification needs tokens: mint a pool first.
    let mut tokens = Vec::new();
    if matches!(args.mode, BenchMode::Verify | BenchMode::Mixed) {
        let mut client = TokenAuthorityClient::new(channels[0].clone());
        for i in 0..256 {
            let issued = client
                .issue_token(pb::IssueTokenRequest {
                    subject: format!("bench-{i}"),
                    audience: vec!["bench".into()],
                    algorithm: algorithm.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|status| {
                    BenchError::Prepare(format!("minting the token pool: {status}"))
                })?;
            tokens.push(issued.into_inner().token);
        }
    }
    let mut target = Target {
        mode: args.mode,
        algorithm,
        channels,
        http,
        jwks_uri,
        etag: None,
        tokens,
    };
    if args.mode == BenchMode::Jwks304 {
        let request = hyper::Request::get(target.jwks_uri.clone())
            .body(Empty::new())
            .map_err(|e| BenchError::Prepare(e.to_string()))?;
        let response = target
            .http
            .request(request)
            .await
            .map_err(|e| BenchError::Connect {
                target: args.http_target.clone(),
                reason: e.to_string(),
            })?;
        target.etag = response
            .headers()
            .get(hyper::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    let target = Arc::new(target);
    if !args.warmup.is_zero() {
        phase(&target, args.concurrency, args.warmup).await;
    }
    let started = Instant::now();
    let tallies = phase(&target, args.concurrency, args.duration).await;
    let elapsed = started.elapsed();

    let mut latency = histogram();
    let mut errors = BTreeMap::new();
    for tally in tallies {
        let _ = latency.add(&tally.latency);
        for (status, count) in tally.errors {
            *errors.entry(status).or_insert(0) += count;
        }
    }
    let requests = latency.len();
    Ok(Report {
        mode: format!("{:?}", args.mode).to_lowercase(),
        provider: crate::crypto::PROVIDER,
        algorithm: alg.map(|a| a.name().to_owned()),
        duration_s: as_duration(elapsed),
        concurrency: args.concurrency,
        connections: args.connections.max(1),
        requests,
        requests_per_s: requests as f64 / elapsed.as_secs_f64(),
        latency_us: Percentiles {
            p50: latency.value_at_quantile(0.5),
            p90: latency.value_at_quantile(0.9),
            p99: latency.value_at_quantile(0.99),
            p999: latency.value_at_quantile(0.999),
            max: latency.max(),
        },
        errors,
        reference_ops_per_s: None,
        ratio_to_reference: None,
    })
}

/// `concurrency` tasks sending back to back until `duration` is over. Successful requests
/// are recorded in the latency histogram; failures are counted by status.
async fn phase(target: &Arc<Target>, concurrency: usize, duration: Duration) -> Vec<Tally> {
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency.max(1) {
        let target = Arc::clone(target);
        tasks.spawn(async move {
            let mut tally = Tally {
                latency: histogram(),
                errors: BTreeMap::new(),
            };
            let mut iteration = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                match target.request(task, iteration).await {
                    Ok(()) => {
                        let micros = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                        let _ = tally.latency.record(micros);
                    }
                    Err(status) => *tally.errors.entry(status).or_insert(0) += 1,
                }
                iteration += 1;
            }
            tally
        });
    }
    let mut tallies = Vec::with_capacity(concurrency);
    while let Some(tally) = tasks.join_next().await {
        if let Ok(tally) = tally {
            tallies.push(tally);
        }
    }
    tallies
}
