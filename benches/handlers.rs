//! The in-process paths without the network: the IssueToken and VerifyToken handlers as
//! tonic calls them (validation, signing or verifying, metrics, the response), the JWT
//! sign and verify steps under them, the bare signature check under those (on the same
//! token), and the JWKS render a key-set change pays once.
//! `cargo bench --bench handlers`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use token_authority::pb::{self, token_authority_server::TokenAuthority};
use token_authority_jose::{
    b64,
    crypto::Algorithm,
    jwk::{render_jwks, PublicJwk},
    jwt::verify::KeyLookup as _,
};

use tonic::Request;

mod common;

use common::{service, ALGORITHMS};

fn issue_request(alg: Algorithm) -> pb::IssueTokenRequest {
    pb::IssueTokenRequest {
        subject: "service-a".into(),
        audience: vec!["service-b".into()],
        algorithm: alg.name().into(),
        claims_json: r#"{"scope":"read write","tenant":"t-42"}"#.into(),
        ..Default::default()
    }
}

fn handlers(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (service, authority) = service(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut issue = c.benchmark_group("IssueToken handler");
    for alg in ALGORITHMS {
        issue.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| {
                runtime
                    .block_on(service.issue_token(Request::new(issue_request(alg))))
                    .unwrap()
            })
        });
    }
    issue.finish();

    // One token per algorithm for every verify group, so each measures the same bytes.
    let tokens: Vec<(Algorithm, String)> = ALGORITHMS
        .iter()
        .map(|&alg| {
            let token = runtime
                .block_on(service.issue_token(Request::new(issue_request(alg))))
                .unwrap()
                .into_inner()
                .token;
            (alg, token)
        })
        .collect();

    let mut verify = c.benchmark_group("VerifyToken handler");
    for (alg, token) in &tokens {
        verify.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| {
                let verdict = runtime
                    .block_on(service.verify_token(Request::new(pb::VerifyTokenRequest {
                        token: token.clone(),
                        audience: "service-b".into(),
                        ..Default::default()
                    })))
                    .unwrap()
                    .into_inner();
                assert!(verdict.valid, "{}", verdict.detail);
            })
        });
    }
    verify.finish();

    // The verification rules alone (no gRPC types, no metrics): what VerifyToken adds
    // around the signature check.
    let mut rules = c.benchmark_group("jwt verify");
    for (alg, token) in &tokens {
        rules.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| {
                authority
                    .verify(token, Some("service-b"), authority.clock().unix_now())
                    .unwrap()
            })
        });
    }
    rules.finish();

    // The bare signature check inside each of the above, on the same token and key: the
    // floor the handler's overhead is measured against, in the same run.
    let keys = authority.keys();
    let mut bare = c.benchmark_group("signature only");
    for (alg, token) in &tokens {
        let header: serde_json::Value =
            serde_json::from_slice(&b64::decode(token.split('.').next().unwrap()).unwrap())
                .unwrap();
        let key = keys.verifying_key(header["kid"].as_str().unwrap()).unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature = b64::decode(signature).unwrap();
        bare.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| assert!(key.verify(input.as_bytes(), &signature)))
        });
    }
    bare.finish();

    let published: Vec<PublicJwk> = keys.jwks().keys.clone();
    c.bench_function(&format!("JWKS render ({} keys)", published.len()), |b| {
        b.iter(|| render_jwks(&published))
    });
}

criterion_group!(benches, handlers);
criterion_main!(benches);
