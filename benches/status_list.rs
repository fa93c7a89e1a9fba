//! The status list of 1,048,576 tokens with 1% revoked, as the authority renders it: the
//! time to encode it (zlib at the highest level, base64url) and sign the Status List Token,
//! the median of RUNS runs, and its size on the wire (`cargo bench --bench status_list`).
//! The revoked indexes are spread by a fixed LCG, the same list every run; random ones
//! compress worst, so this is the expensive case.

use std::time::Instant;

use token_authority_jose::{
    crypto::{generate_pkcs8, Algorithm, SigningKey, PROVIDER},
    jwt::{sign_as, Signer, TokenType},
    status_list::{Status, StatusList},
};

const SIZE: u64 = 1 << 20;
const RUNS: usize = 11;

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: one run checks it works.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let runs = if quick { 1 } else { RUNS };
    let mut list = StatusList::new(2, SIZE).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..SIZE / 100 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        list.set((x >> 33) % SIZE, Status::Invalid).unwrap();
    }
    let revoked = (0..SIZE)
        .filter(|&i| list.get(i).unwrap() == Status::Invalid)
        .count();
    let key = SigningKey::from_pkcs8(Algorithm::ES256, &generate_pkcs8(Algorithm::ES256).unwrap())
        .unwrap();
    let signer = Signer::new("bench".into(), key);
    let uri = "https://token-authority.example/statuslists/1";
    let mut times = Vec::new();
    let mut token = String::new();
    for _ in 0..runs {
        let started = Instant::now();
        let claims = serde_json::json!({
            "iss": "https://token-authority.example", "sub": uri, "iat": 1_800_000_000u64,
            "exp": 1_800_000_600u64, "ttl": 60, "status_list": list.to_claim(),
        });
        token = sign_as(
            &signer,
            TokenType::StatusList,
            claims.as_object().unwrap(),
            1 << 24,
        )
        .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let lst = list.encode();
    println!(
        "status list ({PROVIDER}): {SIZE} statuses, {revoked} revoked ({:.2}%): {} bytes packed, lst {} bytes, token {} bytes on the wire; encode and sign: median {:.1} ms over {runs} runs",
        revoked as f64 * 100.0 / SIZE as f64,
        list.as_bytes().len(),
        lst.len(),
        token.len(),
        times[times.len() / 2],
    );
}
