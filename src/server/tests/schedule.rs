//! The schedule over three months of paused time: a 30-day rotation period, a day's publish
//! lead, one-hour tokens. Every hour of it a token is issued per algorithm and checked
//! against what verifiers hold; every key set the authority serves is checked as it is
//! served. A wall-clock wait for this would take three months.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use serde_json::Map;
use token_authority_client::{keys::KeySet as FetchedJwks, Verifier, VerifierSettings};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{clock_at, InProcess, AUDIENCE, HOUR, ISSUER, LEEWAY, T0};
use crate::authority::{domain::IssueRequest, keys::KeyState, keyset::KeySet, Authority, Settings};
use token_authority_jose::{clock::Clock, crypto::Algorithm};

const DAY: u64 = 24 * HOUR;
const PERIOD: u64 = 30 * DAY;
const LEAD: u64 = DAY;
/// Three rotations (days 30, 60 and 90) and the deletions after them.
const SPAN: u64 = 95 * DAY;
const ALGORITHMS: [Algorithm; 2] = [Algorithm::ES256, Algorithm::EdDSA];

fn settings(clock: Clock) -> Settings {
    Settings {
        algorithms: ALGORITHMS.to_vec(),
        publish_lead: LEAD,
        rotation_period: PERIOD,
        ..super::settings(clock)
    }
}

fn verifier_settings(clock: Clock) -> VerifierSettings {
    VerifierSettings {
        audience: Some(AUDIENCE.into()),
        leeway: LEEWAY,
        clock,
        ..VerifierSettings::new(ISSUER)
    }
}

/// Exactly one current and one next key per algorithm, and the key that signs is in the
/// JWKS of the same set.
fn one_current_one_next_and_the_signer_published(keys: &KeySet, when: &str) {
    for alg in ALGORITHMS {
        for state in [KeyState::Current, KeyState::Next] {
            let count = keys
                .infos()
                .iter()
                .filter(|r| r.alg == alg && r.state == state)
                .count();
            assert_eq!(count, 1, "{when}: {count} {alg} keys in state {state:?}");
        }
        let signer = &keys.signer(alg).unwrap().kid;
        assert!(
            keys.jwks().keys.iter().any(|jwk| *jwk.kid == **signer),
            "{when}: the {alg} signer {signer} is not in the JWKS served with it"
        );
    }
}

/// Checks every key set the authority serves, as it is served, until `done`; returns how
/// many there were after the first.
async fn every_set_served(
    mut sets: watch::Receiver<Arc<KeySet>>,
    clock: Clock,
    done: CancellationToken,
) -> usize {
    let mut served = 0;
    loop {
        tokio::select! {
            changed = sets.changed() => changed.unwrap(),
            () = done.cancelled() => return served,
        }
        let set = Arc::clone(&sets.borrow_and_update());
        let when = format!("the set served at {}", clock.unix_now());
        one_current_one_next_and_the_signer_published(&set, &when);
        served += 1;
    }
}

fn issue(authority: &Authority, alg: Algorithm, now: u64) -> (String, String) {
    let request = IssueRequest {
        subject: "orders".into(),
        audiences: vec![AUDIENCE.into()],
        ttl: HOUR,
        ttl_is_default: true,
        claims: Map::new(),
    };
    let issued = authority
        .issue(&request, &Map::new(), Some(alg), now, None)
        .unwrap();
    (issued.kid.to_string(), issued.token)
}

/// With nothing but the schedule running, keys rotate when their period is over, retire,
/// and are deleted once their last tokens have expired. At every hour: exactly one current
/// and one next key per algorithm; the key that signs was already in the JWKS a verifier
/// fetched a publish lead earlier (publish before sign), so that verifier accepts the token,
/// as does one following WatchKeys; and the token issued an hour ago, at its `exp` now,
/// still verifies (a retired key stays published until its tokens have expired).
#[tokio::test(start_paused = true)]
async fn over_three_months_the_schedule_rotates_retires_and_deletes_on_its_own() {
    let clock = clock_at(0);
    let server = InProcess::start(settings(clock));
    let authority = &server.authority;
    let done = CancellationToken::new();
    let sets = tokio::spawn(every_set_served(authority.subscribe(), clock, done.clone()));
    let watching = Verifier::connect(server.channel(), verifier_settings(clock))
        .await
        .unwrap();
    // The JWKS as a verifier fetched it at each of the last `LEAD` hours, oldest first.
    let mut fetched: VecDeque<FetchedJwks> = VecDeque::new();
    let mut signers: HashMap<Algorithm, Vec<String>> = HashMap::new();
    let mut an_hour_ago: Vec<String> = Vec::new();
    for hour in 0..=SPAN / HOUR {
        let now = clock.unix_now();
        assert_eq!(now, T0 + hour * HOUR, "the clock follows tokio's time");
        let when = format!("hour {hour}");
        let keys = authority.keys();
        one_current_one_next_and_the_signer_published(&keys, &when);
        let jwks = FetchedJwks::from_jwks(&keys.jwks().body, keys.jwks().etag.clone()).unwrap();
        // From the first day on: a verifier whose JWKS is a publish lead old.
        let cached = (fetched.len() as u64 == LEAD / HOUR)
            .then(|| fetched.pop_front())
            .flatten()
            .map(|old| Verifier::with_keys(old, verifier_settings(clock)));
        let mut tokens = Vec::new();
        for alg in ALGORITHMS {
            let (kid, token) = issue(authority, alg, now);
            if let Some(cached) = &cached {
                let verdict = cached.verify(&token);
                assert!(
                    verdict.is_ok(),
                    "{when}: {alg} signed by {kid}, refused with the JWKS of a day ago: {verdict:?}"
                );
            }
            let verdict = watching.verify(&token);
            assert!(verdict.is_ok(), "{when}: WatchKeys: {verdict:?}");
            let kids = signers.entry(alg).or_default();
            if kids.last() != Some(&kid) {
                kids.push(kid);
            }
            tokens.push(token);
        }
        for token in std::mem::replace(&mut an_hour_ago, tokens) {
            let verdict = authority.verify(&token, Some(AUDIENCE), now);
            assert!(verdict.is_ok(), "{when}: an hour-old token: {verdict:?}");
            let verdict = watching.verify(&token);
            assert!(verdict.is_ok(), "{when}: an hour-old token: {verdict:?}");
        }
        fetched.push_back(jwks);
        tokio::time::sleep(Duration::from_secs(HOUR)).await;
    }

    // Four signers in turn per algorithm: the schedule rotated on days 30, 60 and 90.
    for alg in ALGORITHMS {
        assert_eq!(signers[&alg].len(), 4, "{alg} signers: {:?}", signers[&alg]);
    }
    // The three that retired are deleted, from the store and from what verifiers hold.
    let keys = authority.keys();
    let states: Vec<_> = keys.infos().iter().map(|r| (r.alg, r.state)).collect();
    assert_eq!(states.len(), 2 * ALGORITHMS.len(), "{states:?}");
    let held: Vec<String> = watching.key_set().kids().map(str::to_owned).collect();
    for retired in signers.values().flat_map(|kids| &kids[..3]) {
        assert!(!keys.infos().iter().any(|r| &r.kid == retired));
        assert!(!held.contains(retired), "{retired} is still held: {held:?}");
    }
    server.stop().await;
    done.cancel();
    // Each rotation (both algorithms at once) and each deletion: one set served.
    assert_eq!(sets.await.unwrap(), 6);
}
