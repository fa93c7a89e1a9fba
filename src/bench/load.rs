//! The load loop: `concurrency` tasks spread over `connections` gRPC channels (and one HTTP
//! client), each issuing requests back to back until the deadline and recording every
//! latency in its own HDR histogram; histograms and error counts are merged at the end.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, ClientTlsConfig},
    Request,
};

use super::{as_duration, tls::BenchTls, BenchError, Percentiles, Report, Rotations};
use crate::{
    config::{BenchArgs, BenchMode},
    crypto::Algorithm,
    pb::{self, token_authority_client::TokenAuthorityClient},
};

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// What every task shares.
struct Target {
    mode: BenchMode,
    algorithm: String,
    channels: Vec<Channel>,
    http: HttpClient,
    jwks_uri: hyper::Uri,
    healthz_uri: hyper::Uri,
    etag: Option<String>,
    tokens: Vec<String>,
    subject: String,
    audience: String,
    /// The caller's `authorization` value, when it proves itself by a token or a secret.
    authorization: Option<MetadataValue<Ascii>>,
    /// The latest forced rotation, in µs since `epoch`: start, and end (`u64::MAX` while it
    /// runs; `start` is `u64::MAX` before the first).
    rotation_start: AtomicU64,
    rotation_end: AtomicU64,
    epoch: Instant,
}

/// What one task saw.
struct Tally {
    latency: Histogram<u64>,
    /// The requests in flight while a forced rotation ran.
    around_rotations: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Target {
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Whether a request that ran from `started` to `ended` overlapped the latest rotation.
    /// Rotations are a second or more apart and requests milliseconds long, so the latest
    /// one is the only one a request can overlap.
    fn overlaps_rotation(&self, started: Instant, ended: Instant) -> bool {
        let start = self.rotation_start.load(Ordering::Acquire);
        let end = self.rotation_end.load(Ordering::Acquire);
        start != u64::MAX && self.micros(started) <= end && self.micros(ended) >= start
    }
}

fn with_authorization<T>(message: T, authorization: Option<&MetadataValue<Ascii>>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

/// The `authorization` value of `--bearer-token-file` or `--client-id` with
/// `--client-secret-file`, read once: a run is shorter than any caller token's life.
fn caller_authorization(args: &BenchArgs) -> Result<Option<MetadataValue<Ascii>>, BenchError> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|e| BenchError::Prepare(format!("{}: {e}", path.display())))
    };
    let value = match (
        &args.bearer_token_file,
        &args.client_id,
        &args.client_secret_file,
    ) {
        (Some(path), _, _) => format!("Bearer {}", read(path)?),
        (None, Some(id), Some(path)) => {
            use base64::Engine as _;
            let pair = format!("{id}:{}", read(path)?);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }
        _ => return Ok(None),
    };
    value.parse().map(Some).map_err(|_| {
        BenchError::Prepare("the caller credentials are not a valid header value".into())
    })
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

impl Target {
    /// `message` with the caller's credentials, if any.
    fn authorized<T>(&self, message: T) -> Request<T> {
        with_authorization(message, self.authorization.as_ref())
    }

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
                    subject: self.subject.clone(),
                    audience: vec![self.audience.clone()],
                    algorithm: self.algorithm.clone(),
                    ..Default::default()
                };
                TokenAuthorityClient::new(channel)
                    .issue_token(self.authorized(request))
                    .await
                    .map(|_| ())
                    .map_err(|status| format!("grpc {:?}", status.code()))
            }
            BenchMode::Verify => {
                let token = self.tokens[(task + iteration as usize) % self.tokens.len()].clone();
                let verdict = TokenAuthorityClient::new(channel)
                    .verify_token(self.authorized(pb::VerifyTokenRequest {
                        token,
                        audience: self.audience.clone(),
                    }))
                    .await
                    .map_err(|status| format!("grpc {:?}", status.code()))?;
                if verdict.into_inner().valid {
                    Ok(())
                } else {
                    Err("verdict invalid".into())
                }
            }
            BenchMode::Health => tonic_health::pb::health_client::HealthClient::new(channel)
                .check(self.authorized(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                }))
                .await
                .map(|_| ())
                .map_err(|status| format!("grpc {:?}", status.code())),
            BenchMode::Jwks | BenchMode::Jwks304 | BenchMode::Healthz => {
                let uri = if mode == BenchMode::Healthz {
                    &self.healthz_uri
                } else {
                    &self.jwks_uri
                };
                let mut request = hyper::Request::get(uri.clone());
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

async fn connect(target: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, BenchError> {
    let error = |reason: String| BenchError::Connect {
        target: target.to_owned(),
        reason,
    };
    let mut endpoint = Channel::from_shared(target.to_owned())
        .map_err(|e| error(e.to_string()))?
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| error(e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| error(e.to_string()))
}

/// Runs the warm-up (not recorded) and then the measured phase.
pub async fn run(args: &BenchArgs, alg: Option<Algorithm>) -> Result<Report, BenchError> {
    let tls = BenchTls::load(args)?;
    let grpc_tls = tls.as_ref().map(BenchTls::grpc);
    // At least one connection per target; connections go to the targets in turn, and
    // requests to the connections in turn, so every replica gets an equal share.
    let connections = args.connections.max(args.target.len()).max(1);
    let mut channels = Vec::with_capacity(connections);
    for target in args.target.iter().cycle().take(connections) {
        channels.push(connect(target, grpc_tls.as_ref()).await?);
    }
    if channels.is_empty() {
        return Err(BenchError::Prepare("no --target given".into()));
    }
    // Plain http:// targets go through the same connector; with no --tls-ca it trusts nobody.
    let http_tls = match &tls {
        Some(tls) => tls.http()?,
        None => rustls::ClientConfig::builder_with_provider(crate::transport::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| BenchError::Prepare(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(http_tls)
        .https_or_http()
        .enable_http1()
        .build();
    let http: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let http_uri = |path: &str| -> Result<hyper::Uri, BenchError> {
        format!("{}{path}", args.http_target.trim_end_matches('/'))
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| BenchError::Connect {
                target: args.http_target.clone(),
                reason: e.to_string(),
            })
    };
    let jwks_uri = http_uri("/.well-known/jwks.json")?;
    let healthz_uri = http_uri("/healthz")?;
    let admin_token = match (&args.rotate_every, &args.admin_token_file) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(BenchError::Prepare(
                "--rotate-every needs --admin-token-file".into(),
            ))
        }
        (Some(_), Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| BenchError::Prepare(format!("{}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
    };
    let algorithm = alg.map(|a| a.name().to_owned()).unwrap_or_default();
    let authorization = caller_authorization(args)?;

    // Verification needs tokens: mint a pool first.
    let mut tokens = Vec::new();
    if matches!(args.mode, BenchMode::Verify | BenchMode::Mixed) {
        let mut client = TokenAuthorityClient::new(channels[0].clone());
        for _ in 0..256 {
            let issued = client
                .issue_token(with_authorization(
                    pb::IssueTokenRequest {
                        subject: args.subject.clone(),
                        audience: vec![args.audience.clone()],
                        algorithm: algorithm.clone(),
                        ..Default::default()
                    },
                    authorization.as_ref(),
                ))
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
        healthz_uri,
        etag: None,
        tokens,
        subject: args.subject.clone(),
        audience: args.audience.clone(),
        authorization,
        rotation_start: AtomicU64::new(u64::MAX),
        rotation_end: AtomicU64::new(u64::MAX),
        epoch: Instant::now(),
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
    let rotator = match (args.rotate_every, admin_token) {
        (Some(every), Some(token)) => Some(tokio::spawn(rotate(
            Arc::clone(&target),
            every,
            args.duration,
            token,
        ))),
        _ => None,
    };
    let started = Instant::now();
    let tallies = phase(&target, args.concurrency, args.duration).await;
    let elapsed = started.elapsed();
    let rotations = match rotator {
        Some(rotator) => Some(
            rotator
                .await
                .map_err(|e| BenchError::Prepare(e.to_string()))?,
        ),
        None => None,
    };

    let mut latency = histogram();
    let mut around_rotations = histogram();
    let mut errors = BTreeMap::new();
    for tally in tallies {
        let _ = latency.add(&tally.latency);
        let _ = around_rotations.add(&tally.around_rotations);
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
        latency_us: Percentiles::of(&latency),
        errors,
        rotations: rotations.map(|(performed, failed)| Rotations {
            performed,
            failed,
            requests_in_flight: around_rotations.len(),
            latency_us: Percentiles::of(&around_rotations),
        }),
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
                around_rotations: histogram(),
                errors: BTreeMap::new(),
            };
            let mut iteration = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                match target.request(task, iteration).await {
                    Ok(()) => {
                        let ended = Instant::now();
                        let micros = (ended - started).as_micros().clamp(1, 60_000_000) as u64;
                        let _ = tally.latency.record(micros);
                        if target.overlaps_rotation(started, ended) {
                            let _ = tally.around_rotations.record(micros);
                        }
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

/// Forces a rotation every `every` until `duration` is over, recording each one's window;
/// returns (performed, failed).
async fn rotate(
    target: Arc<Target>,
    every: Duration,
    duration: Duration,
    token: String,
) -> (u64, u64) {
    let deadline = Instant::now() + duration;
    let mut client = TokenAuthorityClient::new(target.channels[0].clone());
    let (mut performed, mut failed) = (0, 0);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let mut request = tonic::Request::new(pb::RotateKeysRequest {
            force: true,
            algorithm: target.algorithm.clone(),
        });
        let Ok(bearer) = format!("Bearer {token}").parse() else {
            failed += 1;
            break;
        };
        request.metadata_mut().insert("authorization", bearer);
        target.rotation_end.store(u64::MAX, Ordering::Release);
        target
            .rotation_start
            .store(target.micros(Instant::now()), Ordering::Release);
        let outcome = client.rotate_keys(request).await;
        target
            .rotation_end
            .store(target.micros(Instant::now()), Ordering::Release);
        match outcome {
            Ok(_) => performed += 1,
            Err(_) => failed += 1,
        }
    }
    (performed, failed)
}
