//! Property tests of the verifier, in-process: hostile input never panics and never
//! verifies; valid tokens round-trip their claims for every algorithm.
//!
//! Sized for CI (a few seconds in a debug build). A longer run:
//! `PROPTEST_CASES=20000 cargo test --release --test verify_properties`.

use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Map, Value};
use token_authority::{
    authority::keys::{self, KeyRecord, KeyState},
    authority::keyset::KeySet,
    authority::lifecycle::Timing,
    authority::signers::Signers,
};
use token_authority_jose::{
    crypto::Algorithm,
    jwt::{
        self,
        verify::{verify, Policy, Reason},
    },
};

const ISSUER: &str = "https://tokens.test";
const NOW: u64 = 1_800_000_000;

/// One current key per algorithm, generated once for the whole binary (RSA is slow).
fn keyset() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let records: Vec<KeyRecord> = Algorithm::ALL
            .iter()
            .map(|&alg| {
                let key = keys::generate(alg).unwrap();
                KeyRecord {
                    kid: key.kid,
                    alg,
                    state: KeyState::Current,
                    created_at: NOW - 10,
                    published_at: NOW - 10,
                    activated_at: Some(NOW - 10),
                    retired_at: None,
                    delete_after: None,
                    revoked_at: None,
                    revoked_reason: None,
                    max_token_ttl: 3600,
                    private_key: key.private_key,
                    token: None,
                }
            })
            .collect();
        let timing = Timing {
            publish_lead: 0,
            rotation_period: 86400,
            max_ttl: 3600,
            leeway: 60,
        };
        KeySet::build(&records, &Signers::InProcess, Algorithm::ALL, false, timing).unwrap()
    })
}

fn policy() -> Policy {
    Policy {
        issuer: ISSUER.into(),
        leeway: 60,
        max_token_bytes: 8 * 1024,
    }
}

fn mint(alg: Algorithm, extra: &Map<String, Value>) -> String {
    let mut claims = extra.clone();
    claims.insert("iss".into(), ISSUER.into());
    claims.insert("sub".into(), "svc".into());
    claims.insert("exp".into(), (NOW + 600).into());
    jwt::sign(keyset().signer(alg).unwrap(), &claims, usize::MAX).unwrap()
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

/// Claim values within the nesting limit: strings, integers, booleans, arrays, objects.
fn claim_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<String>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn custom_claims() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_]{4,12}", claim_value(), 0..6).prop_map(|m| {
        m.into_iter()
            .filter(|(k, _)| {
                !["iss", "sub", "aud", "exp", "nbf", "iat", "jti"].contains(&k.as_str())
            })
            .collect()
    })
}

/// Ways to damage a token.
#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(usize, u8),
    Insert(usize, char),
    Delete(usize),
    SwapSegments(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::FlipByte(i, x)),
        (any::<usize>(), any::<char>()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<usize>().prop_map(Mutation::Delete),
        (0..3usize, 0..3usize).prop_map(|(a, b)| Mutation::SwapSegments(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// What a damaged token is refused for: its form, its header, its key or its signature. The
/// claims are read only under a good signature, so no damage reaches the checks of exp, iss
/// or aud (nor RevokedKey: no key of the set is revoked).
const DAMAGE_REASONS: [Reason; 5] = [
    Reason::Malformed,
    Reason::UnsupportedHeader,
    Reason::UnknownKey,
    Reason::AlgorithmNotAllowed,
    Reason::BadSignature,
];

/// The reason `token` is refused for, or None when it verifies.
fn refusal(token: &str) -> Option<Reason> {
    verify(token, keyset(), &policy(), None, NOW)
        .err()
        .map(|r| r.reason)
}

fn apply(token: &str, mutation: &Mutation) -> String {
    let mut bytes = token.as_bytes().to_vec();
    if bytes.is_empty() {
        return String::new();
    }
    match *mutation {
        Mutation::FlipByte(i, x) => {
            let i = i % bytes.len();
            bytes[i] ^= x;
        }
        Mutation::Insert(i, c) => {
            let i = i % (bytes.len() + 1);
            let mut buf = [0u8; 4];
            bytes.splice(i..i, c.encode_utf8(&mut buf).bytes());
        }
        Mutation::Delete(i) => {
            bytes.remove(i % bytes.len());
        }
        Mutation::SwapSegments(a, b) => {
            let mut parts: Vec<&str> = token.split('.').collect();
            if a < parts.len() && b < parts.len() {
                parts.swap(a, b);
            }
            return parts.join(".");
        }
        Mutation::Truncate(i) => bytes.truncate(i % bytes.len()),
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    // Failures print their minimal case; nothing is written into the source tree.
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic_and_never_verify(token in any::<String>()) {
        prop_assert_eq!(refusal(&token), Some(Reason::Malformed));
    }

    #[test]
    fn arbitrary_token_shaped_input_never_verifies(
        header in "[A-Za-z0-9_-]{0,60}", payload in "[A-Za-z0-9_-]{0,120}", signature in "[A-Za-z0-9_-]{0,400}",
    ) {
        let token = format!("{header}.{payload}.{signature}");
        // Random base64url never decodes to a JSON header.
        prop_assert_eq!(refusal(&token), Some(Reason::Malformed));
    }

    #[test]
    fn mutated_tokens_never_verify_unless_unchanged(
        alg in algorithm(), mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let token = mint(alg, &Map::new());
        let mut damaged = token.clone();
        for m in &mutations {
            damaged = apply(&damaged, m);
        }
        let refused = refusal(&damaged);
        if damaged == token {
            prop_assert_eq!(refused, None);
        } else {
            prop_assert!(
                refused.is_some_and(|reason| DAMAGE_REASONS.contains(&reason)),
                "{:?} after {:?}: {:?}", alg, mutations, refused
            );
        }
    }

    #[test]
    fn valid_tokens_round_trip_their_claims(alg in algorithm(), extra in custom_claims()) {
        let token = mint(alg, &extra);
        let verified = verify(&token, keyset(), &policy(), None, NOW).unwrap();
        for (name, value) in &extra {
            prop_assert_eq!(verified.claims.get(name), Some(value));
        }
        prop_assert_eq!(verified.subject, "svc");
    }
}
