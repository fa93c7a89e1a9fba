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

use http_body_util::Empty;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use super::{
    as_duration,
    target::{
        caller_authorization, connect, histogram, with_authorization, HttpClient, Tally, Target,
    },
    tls::BenchTls,
    BenchError, Percentiles, Report, Rotations,
};
use crate::{
    config::{BenchArgs, BenchMode},
    pb::{self, token_authority_client::TokenAuthorityClient},
};
use token_authority_jose::crypto::Algorithm;

/// The subject tokens of `exchange`: read from `--subject-token-file`, or minted by the
/// target with a `scope` claim, `--subject-tokens` of them, 64 requests at a time.
async fn subject_tokens(
    args: &BenchArgs,
    channel: &tonic::transport::Channel,
    algorithm: &str,
    authorization: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Result<Vec<String>, BenchError> {
    if let Some(path) = &args.subject_token_file {
        return std::fs::read_to_string(path)
            .map(|text| vec![text.trim().to_owned()])
            .map_err(|e| BenchError::Prepare(format!("{}: {e}", path.display())));
    }
    let request = pb::IssueTokenRequest {
        subject: args.subject.clone(),
        audience: vec![args.audience.clone()],
        algorithm: algorithm.to_owned(),
        claims_json: serde_json::json!({ "scope": args.scope }).to_string(),
        ..Default::default()
    };
    let wanted = args.subject_tokens.max(1);
    let mut minting = tokio::task::JoinSet::new();
    for task in 0..wanted.min(64) {
        let mut client = TokenAuthorityClient::new(channel.clone());
        let request = request.clone();
        let authorization = authorization.cloned();
        let count = wanted / 64 + usize::from(task < wanted % 64);
        minting.spawn(async move {
            let mut tokens = Vec::with_capacity(count);
            for _ in 0..count {
                let issued = client
                    .issue_token(with_authorization(request.clone(), authorization.as_ref()))
                    .await
                    .map_err(|status| {
                        BenchError::Prepare(format!("minting the subject tokens: {status}"))
                    })?;
                tokens.push(issued.into_inner().token);
            }
            Ok::<_, BenchError>(tokens)
        });
    }
    let mut tokens = Vec::with_capacity(wanted);
    while let Some(minted) = minting.join_next().await {
        tokens.extend(minted.map_err(|e| BenchError::Prepare(e.to_string()))??);
    }
    Ok(tokens)
}

/// Runs the warm-up (not recorded) and then the measured phase.
pub(crate) async fn run(args: &BenchArgs, alg: Option<Algorithm>) -> Result<Report, BenchError> {
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
        None => rustls::ClientConfig::builder_with_provider(token_authority_jose::tls::provider())
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
    if args.mode == BenchMode::Exchange {
        tokens = subject_tokens(args, &channels[0], &algorithm, authorization.as_ref()).await?;
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
        scope: args.scope.clone(),
        trust_domain: args.trust_domain.clone(),
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
        provider: token_authority_jose::crypto::PROVIDER,
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
