//! `Verifier::verify` against the bare signature check it contains, per algorithm
//! (`cargo bench -p token-authority-client --bench verify`): what the rules, the parsing and
//! the key lookup add on top of the cryptography.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use token_authority_client::{keys::KeySet, Verifier, VerifierSettings};
use token_authority_jose::{
    b64,
    crypto::{generate_pkcs8, Algorithm, SigningKey, PROVIDER},
    jwk::{render_jwks, PublicJwk},
    jwt::{sign, Signer},
};

const ISSUER: &str = "https://token-authority.bench";
const NOW: u64 = 1_800_000_000;

fn verify(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("client-verify/{PROVIDER}"));
    for &alg in Algorithm::ALL {
        let key = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
        let public = key.verifying_key().unwrap();
        let kid = format!("bench-{}", alg.name());
        let jwks = render_jwks(&[PublicJwk::new(&kid, alg, public.components())]);
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "orders", "aud": "ledger", "iat": NOW, "nbf": NOW,
            "exp": NOW + 900, "jti": "AAAAAAAAAAAAAAAAAAAAAA", "scope": "read write",
        });
        let token = sign(
            &Signer::new(kid, key),
            claims.as_object().unwrap(),
            8 * 1024,
        )
        .unwrap();
        let verifier = Verifier::with_keys(
            KeySet::from_jwks(&jwks, String::new()).unwrap(),
            VerifierSettings::new(ISSUER),
        );
        group.bench_function(BenchmarkId::new("Verifier::verify", alg.name()), |b| {
            b.iter(|| verifier.verify_at(&token, Some("ledger"), NOW).unwrap())
        });
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature = b64::decode(signature).unwrap();
        group.bench_function(BenchmarkId::new("signature only", alg.name()), |b| {
            b.iter(|| assert!(public.verify(input.as_bytes(), &signature)))
        });
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
