//! `Verifier::verify` of a token with a status (checked against a cached list of 1,048,576
//! statuses, 1% revoked) against the same token without one, per algorithm, measured
//! interleaved (`cargo bench -p token-authority-client --bench status_ratio`): each round
//! times both back to back, in alternating order, and the figure is the median of the
//! rounds' ratios.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use token_authority_client::{keys::KeySet, Verifier, VerifierSettings};
use token_authority_jose::{
    crypto::{generate_pkcs8, Algorithm, SigningKey, PROVIDER},
    jwk::{render_jwks, PublicJwk},
    jwt::{sign, sign_as, Signer, TokenType},
    status_list::{Status, StatusList},
};

const ISSUER: &str = "https://token-authority.bench";
const URI: &str = "https://token-authority.bench/statuslists/1";
const SIZE: u64 = 1 << 20;
const ROUNDS: usize = 41;
const CALLS: u32 = 400;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// 1% of `SIZE` revoked, spread by a fixed LCG (the same list every run).
fn list() -> StatusList {
    let mut list = StatusList::new(2, SIZE).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..SIZE / 100 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        list.set((x >> 33) % SIZE, Status::Invalid).unwrap();
    }
    list
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: one quick round checks it works.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let (rounds, calls) = if quick { (1, 2) } else { (ROUNDS, CALLS) };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let statuses = list();
    // An index the list says is VALID.
    let idx = (0..SIZE)
        .find(|&i| statuses.get(i).unwrap() == Status::Valid)
        .unwrap();
    println!("client verify with a status vs without ({PROVIDER}), list of {SIZE} statuses, {rounds} interleaved rounds of {calls} calls");
    for &alg in Algorithm::ALL {
        let key = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap();
        let public = key.verifying_key().unwrap();
        let kid = format!("bench-{}", alg.name());
        let jwks = render_jwks(&[PublicJwk::new(&kid, alg, public.components())]);
        let signer = Signer::new(kid, key);
        let claims = |status: bool| {
            let mut claims = serde_json::json!({
                "iss": ISSUER, "sub": "orders", "aud": "ledger", "iat": now, "nbf": now,
                "exp": now + 3600, "jti": "AAAAAAAAAAAAAAAAAAAAAA",
            });
            if status {
                claims["status"] = serde_json::json!({"status_list": {"idx": idx, "uri": URI}});
            }
            claims
        };
        let with = sign(&signer, claims(true).as_object().unwrap(), 8192).unwrap();
        let without = sign(&signer, claims(false).as_object().unwrap(), 8192).unwrap();
        let list_claims = serde_json::json!({
            "iss": ISSUER, "sub": URI, "iat": now, "exp": now + 600, "ttl": 60,
            "status_list": statuses.to_claim(),
        });
        let list_token = sign_as(
            &signer,
            TokenType::StatusList,
            list_claims.as_object().unwrap(),
            1 << 24,
        )
        .unwrap();
        let mut settings = VerifierSettings::new(ISSUER);
        settings.audience = Some("ledger".into());
        let verifier =
            Verifier::with_keys(KeySet::from_jwks(&jwks, String::new()).unwrap(), settings);
        verifier.hold_status_list(URI, &list_token).unwrap();
        let time = |token: &str| {
            let started = Instant::now();
            for _ in 0..calls {
                assert_eq!(verifier.verify(token).unwrap().subject, "orders");
            }
            started.elapsed().as_nanos() as f64 / f64::from(calls)
        };
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
            ratios.push(w / o);
        }
        println!(
            "{:5}  with status {:8.0} ns  without {:8.0} ns  ratio {:.3}",
            alg.name(),
            median(&mut full),
            median(&mut bare),
            median(&mut ratios)
        );
    }
}
