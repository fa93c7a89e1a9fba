//! How many IssueToken calls a `TokenSource` makes while it serves a steady stream of
//! `token()` calls: it drives one source at `--rate` calls a second for `--seconds`, then
//! prints the calls made, their latency, and the IssueToken calls the authority counted
//! (its /metrics, read before and after) per minute, next to what one fetch per refresh
//! would be for the token's `--ttl`.
//!
//! Run an authority first, in release (IssueToken is open on its loopback listener):
//!
//! ```sh
//! cargo build --release --bin token-authority
//! mkdir -m 700 /tmp/ta-rate && target/release/token-authority serve --data-dir /tmp/ta-rate &
//! cargo run --release -p token-authority-client --example token_rate -- \
//!     --rate 10000 --seconds 120 --ttl 60
//! ```
//!
//! `--grpc` (default `http://127.0.0.1:50051`) and `--metrics`
//! (default `http://127.0.0.1:8080/metrics`) say where the authority is; `--tasks` (4)
//! spreads the calls over that many tasks, as a service's handlers would.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use token_authority_client::{Credentials, TokenRequest, TokenSource};
use tonic::transport::Channel;

/// The command line: `--name value` pairs.
struct Args {
    grpc: String,
    metrics: String,
    rate: u64,
    seconds: u64,
    ttl: u64,
    tasks: u64,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            grpc: "http://127.0.0.1:50051".into(),
            metrics: "http://127.0.0.1:8080/metrics".into(),
            rate: 10_000,
            seconds: 60,
            ttl: 60,
            tasks: 4,
        };
        let mut argv = std::env::args().skip(1);
        while let Some(name) = argv.next() {
            let value = argv.next().ok_or(format!("{name} needs a value"))?;
            let number = || value.parse::<u64>().map_err(|e| format!("{name}: {e}"));
            match name.as_str() {
                "--grpc" => args.grpc = value.clone(),
                "--metrics" => args.metrics = value.clone(),
                "--rate" => args.rate = number()?,
                "--seconds" => args.seconds = number()?,
                "--ttl" => args.ttl = number()?,
                "--tasks" => args.tasks = number()?.max(1),
                _ => return Err(format!("unknown option {name}")),
            }
        }
        Ok(args)
    }
}

/// The sum of the samples of `name` (all label sets) in the authority's /metrics.
async fn metric(url: &str, name: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(url.parse()?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(std::str::from_utf8(&body)?
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Calls `token()` at `rate` a second until `end`; returns each call's latency in
/// nanoseconds.
async fn drive(
    source: TokenSource,
    rate: u64,
    start: Instant,
    end: Instant,
    failed: Arc<AtomicU64>,
) -> Vec<u32> {
    let mut latencies = Vec::with_capacity(usize::try_from(rate * 130).unwrap_or(0));
    let mut made = 0u64;
    // A tick a millisecond, each making the calls the schedule is owed: the rate holds
    // even when a tick comes late.
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if now >= end {
            return latencies;
        }
        let owed = ((now - start).as_secs_f64() * rate as f64) as u64;
        while made < owed {
            let called = Instant::now();
            if source.token().await.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            latencies.push(u32::try_from(called.elapsed().as_nanos()).unwrap_or(u32::MAX));
            made += 1;
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_nanos(sorted.get(index).copied().unwrap_or(0).into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse()?;
    const ISSUED: &str = "token_authority_tokens_issued_total";
    const CALLS: &str = "token_authority_rpc_duration_seconds_count{method=\"IssueToken\"}";
    let issued_before = metric(&args.metrics, ISSUED).await?;
    let calls_before = metric(&args.metrics, CALLS).await?;

    let source = TokenSource::new(
        Channel::from_shared(args.grpc.clone())?.connect_lazy(),
        TokenRequest {
            subject: "token-rate".into(),
            audience: vec!["bench".into()],
            ttl: Some(Duration::from_secs(args.ttl)),
            ..TokenRequest::default()
        },
        Credentials::Channel,
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.tasks {
        let rate = args.rate / args.tasks;
        tasks.spawn(drive(source.clone(), rate, start, end, Arc::clone(&failed)));
    }
    let mut latencies: Vec<u32> = tasks.join_all().await.concat();
    let elapsed = start.elapsed().as_secs_f64();
    let issued = metric(&args.metrics, ISSUED).await? - issued_before;
    let calls = metric(&args.metrics, CALLS).await? - calls_before;
    latencies.sort_unstable();

    // The source refreshes at 80% of the token's life minus up to 5% of jitter, counted from
    // `iat`, which is whole seconds: up to 1 s earlier than the fetch.
    let ttl = args.ttl as f64;
    let (shortest, longest) = (ttl * 0.75 - 1.0, ttl * 0.8);
    let fewest = 1.0 + (elapsed / longest).floor();
    let most = 1.0 + (elapsed / shortest.max(0.001)).floor();
    let average = (shortest + longest) / 2.0;
    let minutes = elapsed / 60.0;
    println!(
        "token() calls: {} in {elapsed:.1} s ({:.0}/s over {} tasks), {} failed",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        args.tasks,
        failed.load(Ordering::Relaxed)
    );
    println!(
        "token() latency: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "IssueToken: {calls} calls ({issued} tokens issued) = {:.2}/min; one per refresh \
         (ttl {} s, a refresh every {shortest:.1}-{longest:.1} s): {fewest}-{most} calls \
         (steady state {:.2}/min)",
        calls / minutes,
        args.ttl,
        60.0 / average
    );
    Ok(())
}
