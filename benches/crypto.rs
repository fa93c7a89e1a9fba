//! The crypto operations alone, per algorithm, with whichever provider this build uses
//! (`cargo bench --bench crypto`, or `--features aws-lc-rs`): the floor under IssueToken
//! and VerifyToken.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use token_authority_jose::crypto::{generate_pkcs8, Algorithm, SigningKey, PROVIDER};

/// A signing input of the size IssueToken makes: header, dot, claims.
const MESSAGE: &[u8] = &[b'a'; 300];

fn sign_and_verify(c: &mut Criterion) {
    let mut sign = c.benchmark_group(format!("sign/{PROVIDER}"));
    let keys: Vec<SigningKey> = Algorithm::ALL
        .iter()
        .map(|&alg| SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap())
        .collect();
    for key in &keys {
        sign.bench_with_input(
            BenchmarkId::from_parameter(key.algorithm()),
            key,
            |b, key| b.iter(|| key.sign(MESSAGE).unwrap()),
        );
    }
    sign.finish();

    let mut verify = c.benchmark_group(format!("verify/{PROVIDER}"));
    for key in &keys {
        let verifier = key.verifying_key().unwrap();
        let signature = key.sign(MESSAGE).unwrap();
        verify.bench_with_input(
            BenchmarkId::from_parameter(key.algorithm()),
            &signature,
            |b, signature| b.iter(|| assert!(verifier.verify(MESSAGE, signature))),
        );
    }
    verify.finish();
}

criterion_group!(benches, sign_and_verify);
criterion_main!(benches);
