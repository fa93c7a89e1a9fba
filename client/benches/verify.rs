//! `Verifier::verify` and `Verifier::verify_txn` against the bare signature check they
//! contain, per algorithm (`cargo bench -p token-authority-client --bench verify`): what the
//! rules, the parsing and the key lookup add on top of the cryptography.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use token_authority_client::{keys::KeySet, Verifier, VerifierSettings};
use token_authority_jose::{
    b64,
    crypto::{generate_pkcs8, Algorithm, SigningKey, PROVIDER},
    jwk::{render_jwks, PublicJwk},
    jwt::{sign, sign_as, Signer, TokenType},
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
        let signer = Signer::new(kid, key);
        let token = sign(&signer, claims.as_object().unwrap(), 8 * 1024).unwrap();
        // A Txn-Token as the authority signs one, with a tctx and an rctx.
        let txn_claims = serde_json::json!({
            "iss": ISSUER, "iat": NOW, "exp": NOW + 60, "aud": "example.internal",
            "txn": "97053963-771d-49cc-a4e3-20aad399c312", "sub": "user-1234",
            "scope": "orders.read", "req_wl": "spiffe://example.internal/ns/edge/sa/gateway",
            "tctx": {"order_id": "o-42"}, "rctx": {"req_ip": "69.151.72.123"},
        });
        let txn_token = sign_as(
            &signer,
            TokenType::Txn,
            txn_claims.as_object().unwrap(),
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
        group.bench_function(BenchmarkId::new("Verifier::verify_txn", alg.name()), |b| {
            b.iter(|| {
                let txn = verifier
                    .verify_txn_at(&txn_token, "example.internal", NOW)
                    .unwrap();
                assert_eq!(txn.subject(), "user-1234");
            })
        });
        let (txn_input, txn_signature) = txn_token.rsplit_once('.').unwrap();
        let txn_signature = b64::decode(txn_signature).unwrap();
        group.bench_function(
            BenchmarkId::new("Txn-Token signature only", alg.name()),
            |b| b.iter(|| assert!(public.verify(txn_input.as_bytes(), &txn_signature))),
        );
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
