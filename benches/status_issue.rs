//! The IssueToken handler with a status (an index, the `status` claim, the jti that carries
//! the index) against without, per algorithm, in process: two authorities over their own
//! sled keystores, one with status lists (every token gets an index: 15-minute tokens,
//! `--status-min-ttl` 10 minutes; blocks of 1,024 indexes reserved on the way, each flushed
//! to disk), one without. Each round times both back to back, in alternating order, and the
//! figure is the median of the rounds' ratios (`cargo bench --bench status_issue`). Without
//! the network and the load generator, the difference is not lost in their noise.

use std::time::Instant;

use token_authority::{
    config::StatusConfig,
    pb::{self, token_authority_server::TokenAuthority},
    server::open_status_lists,
};
use token_authority_jose::crypto::{Algorithm, PROVIDER};
use tonic::Request;

mod common;

use common::{service, ALGORITHMS, ISSUER};

const ROUNDS: usize = 41;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn request(alg: Algorithm) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        subject: "service-a".into(),
        audience: vec!["service-b".into()],
        algorithm: alg.name().into(),
        ttl: Some(prost_types::Duration {
            seconds: 900,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: one quick round checks it works.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (with_dir, without_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (with, authority) = runtime.block_on(async { service(with_dir.path()) });
    let (without, _) = runtime.block_on(async { service(without_dir.path()) });
    let status = StatusConfig {
        min_ttl: Some(600),
        list_size: 1 << 20,
        list_ttl: 60,
    };
    runtime
        .block_on(open_status_lists(status, &authority, ISSUER))
        .unwrap();
    println!("IssueToken handler with a status vs without ({PROVIDER}), interleaved rounds");
    for alg in ALGORITHMS {
        // RSA signs in about a millisecond: fewer calls a round.
        let calls: u32 = match (quick, alg) {
            (true, _) => 2,
            (false, Algorithm::RS256 | Algorithm::PS256) => 50,
            (false, _) => 400,
        };
        let rounds = if quick { 1 } else { ROUNDS };
        let time = |service: &token_authority::transport::grpc::GrpcService| {
            let started = Instant::now();
            for _ in 0..calls {
                runtime
                    .block_on(service.issue_token(Request::new(request(alg))))
                    .unwrap();
            }
            started.elapsed().as_nanos() as f64 / f64::from(calls)
        };
        // Each side issues what it says: a status, or none.
        for (service, status) in [(&with, true), (&without, false)] {
            let token = runtime
                .block_on(service.issue_token(Request::new(request(alg))))
                .unwrap()
                .into_inner()
                .token;
            let payload = token.split('.').nth(1).unwrap();
            let claims = token_authority_jose::b64::decode(payload).unwrap();
            let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
            assert_eq!(claims.get("status").is_some(), status, "{claims}");
        }
        let (mut full, mut bare, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (w, o) = if round % 2 == 0 {
                let w = time(&with);
                (w, time(&without))
            } else {
                let o = time(&without);
                (time(&with), o)
            };
            full.push(w);
            bare.push(o);
            ratios.push(o / w);
        }
        println!(
            "{:5}  with status {:8.1} µs  without {:8.1} µs  throughput ratio {:.3} ({rounds} rounds of {calls} calls)",
            alg.name(),
            median(&mut full) / 1000.0,
            median(&mut bare) / 1000.0,
            median(&mut ratios)
        );
    }
}
