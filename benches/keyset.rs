//! What a key-set change costs a replica with many retained keys: the next `KeySet` built
//! from scratch (every key parsed) against `KeySet::rebuild` from the set served (only the
//! keys the change touched parsed). 160 retired ES256 keys plus the current and next, one
//! forced rotation. `cargo bench --bench keyset`.

use criterion::{criterion_group, criterion_main, Criterion};
use token_authority::{
    authority::keys,
    authority::keyset::KeySet,
    authority::lifecycle::{self, Timing},
    authority::signers::Signers,
};
use token_authority_jose::crypto::Algorithm;

const TIMING: Timing = Timing {
    publish_lead: 60,
    rotation_period: 3600,
    max_ttl: 86_400,
    leeway: 60,
};
const ALGS: [Algorithm; 1] = [Algorithm::ES256];
const RETAINED: u64 = 160;

fn keyset(c: &mut Criterion) {
    let mut generate = keys::generate;
    let mut records = lifecycle::due(&[], &ALGS, TIMING, 1000, &mut generate)
        .unwrap()
        .apply_to(&[]);
    for at in 0..RETAINED {
        records = lifecycle::rotate(
            &records,
            Algorithm::ES256,
            true,
            TIMING,
            1001 + at,
            &mut generate,
        )
        .unwrap()
        .apply_to(&records);
    }
    let served = KeySet::build(&records, &Signers::InProcess, &ALGS, false, TIMING).unwrap();
    let rotated = lifecycle::rotate(
        &records,
        Algorithm::ES256,
        true,
        TIMING,
        2000,
        &mut generate,
    )
    .unwrap()
    .apply_to(&records);
    let mut group = c.benchmark_group(format!(
        "next key set ({} keys, one rotation)",
        rotated.len()
    ));
    group.bench_function("build", |b| {
        b.iter(|| KeySet::build(&rotated, &Signers::InProcess, &ALGS, false, TIMING).unwrap())
    });
    group.bench_function("rebuild", |b| {
        b.iter(|| {
            served
                .rebuild(
                    &records,
                    &rotated,
                    &Signers::InProcess,
                    &ALGS,
                    false,
                    TIMING,
                )
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, keyset);
criterion_main!(benches);
