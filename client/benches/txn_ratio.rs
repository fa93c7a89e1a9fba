//! `Verifier::verify_txn` against the bare signature check it contains, per algorithm,
//! measured interleaved (`cargo bench -p token-authority-client --bench txn_ratio`): on a
//! shared machine, two criterion groups run one after the other drift apart by more than
//! the 10% compared here, so each round times both back to back, in alternating order, and
//! the figure is the median of the rounds' ratios.

use std::time::Instant;

use token_authority_client::{keys::KeySet, Verifier, VerifierSettings};
use token_authority_jose::{
    b64,
    crypto::{generate_pkcs8, Algorithm, SigningKey, PROVIDER},
    jwk::{render_jwks, PublicJwk},
    jwt::{sign_as, Signer, TokenType},
};

const ISSUER: &str = "https://token-authority.bench";
const NOW: u64 = 1_800_000_000;
const ROUNDS: usize = 41;
const CALLS: u32 = 400;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: one quick round checks it works.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let (rounds, calls) = if quick { (1, 2) } else { (ROUNDS, CALLS) };
    println!("client verify_txn vs signature only ({PROVIDER}), {rounds} interleaved rounds of {calls} calls");
    for &alg in Algorithm::ALL {
        let key = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
        let public = key.verifying_key().unwrap();
        let kid = format!("bench-{}", alg.name());
        let jwks = render_jwks(&[PublicJwk::new(&kid, alg, public.components())]);
        let claims = serde_json::json!({
            "iss": ISSUER, "iat": NOW, "exp": NOW + 60, "aud": "example.internal",
            "txn": "97053963-771d-49cc-a4e3-20aad399c312", "sub": "user-1234",
            "scope": "orders.read", "req_wl": "spiffe://example.internal/ns/edge/sa/gateway",
            "tctx": {"order_id": "o-42"}, "rctx": {"req_ip": "69.151.72.123"},
        });
        let token = sign_as(
            &Signer::new(kid, key),
            TokenType::Txn,
            claims.as_object().unwrap(),
            8 * 1024,
        )
        .unwrap();
        let verifier = Verifier::with_keys(
            KeySet::from_jwks(&jwks, String::new()).unwrap(),
            VerifierSettings::new(ISSUER),
        );
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature = b64::decode(signature).unwrap();
        let time_verify = || {
            let started = Instant::now();
            for _ in 0..calls {
                let txn = verifier
                    .verify_txn_at(&token, "example.internal", NOW)
                    .unwrap();
                assert_eq!(txn.subject(), "user-1234");
            }
            started.elapsed().as_nanos() as f64 / f64::from(calls)
        };
        let time_signature = || {
            let started = Instant::now();
            for _ in 0..calls {
                assert!(public.verify(input.as_bytes(), &signature));
            }
            started.elapsed().as_nanos() as f64 / f64::from(calls)
        };
        let (mut full, mut bare, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (v, s) = if round % 2 == 0 {
                let v = time_verify();
                (v, time_signature())
            } else {
                let s = time_signature();
                (time_verify(), s)
            };
            full.push(v);
            bare.push(s);
            ratios.push(v / s);
        }
        println!(
            "{:5}: verify_txn median {:7.1} us, signature only median {:7.1} us, median ratio {:.3}",
            alg.name(),
            median(&mut full) / 1000.0,
            median(&mut bare) / 1000.0,
            median(&mut ratios)
        );
    }
}
