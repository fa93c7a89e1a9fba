//! The in-memory key set: an immutable snapshot built once per key-set change.
//!
//! Every expensive thing is done here, at build time: private keys parsed, public keys
//! prepared for verification, the JWS header segment of each signer encoded, the JWKS body
//! rendered and its ETag computed. The hot paths only read a snapshot through an atomic
//! pointer, so they take no lock and never touch the store.

use std::{collections::HashMap, sync::Arc};

pub(crate) use token_authority_jose::jwt::Signer;

use crate::{
    authority::keys::{KeyInfo, KeyRecord, KeyState},
    authority::lifecycle::{self, Timing},
    authority::signers::Signers,
};
use token_authority_jose::{
    b64,
    crypto::{sha256, Algorithm, CryptoError, VerifyingKey},
    jwk::{render_jwks, PublicJwk},
    jwt::verify::KeyLookup,
};

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("key {kid}: {source}")]
    Key { kid: String, source: CryptoError },
    #[error("no current key for {0}")]
    NoCurrentKey(Algorithm),
    #[error("more than one current key for {0}")]
    SeveralCurrentKeys(Algorithm),
}

/// A published key the verifier knows.
#[derive(Debug)]
pub(crate) struct KnownKey {
    /// Shared with the next sets while the key's record is unchanged.
    pub(crate) key: Arc<VerifyingKey>,
}

/// The JWKS as served: body bytes, strong ETag, the structured keys, and a fingerprint.
#[derive(Debug)]
pub struct Jwks {
    pub(crate) body: bytes::Bytes,
    pub(crate) etag: String,
    pub keys: Vec<PublicJwk>,
    /// Identifies the public keys, whatever their order: the first 52 bits of the SHA-256 of
    /// the JWKS with its keys sorted by kid (exact as a float64 metric value).
    pub(crate) fingerprint: u64,
}

/// The fingerprint of a set of public keys: the same for the same keys in any order (a kid
/// is the RFC 7638 thumbprint of its key, so sorting by kid orders the keys themselves).
fn fingerprint(keys: &[PublicJwk]) -> u64 {
    let mut sorted = keys.to_vec();
    sorted.sort_by(|a, b| a.kid.cmp(&b.kid));
    let digest = sha256(&render_jwks(&sorted));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) >> 12
}

#[derive(Debug)]
pub struct KeySet {
    /// Every key's record, without its private key: private material stays in the store,
    /// the authority's writer and the signers.
    infos: Vec<KeyInfo>,
    known: HashMap<String, KnownKey>,
    /// Revoked kids: their private halves are erased; only the kid is kept, to say so.
    revoked: std::collections::HashSet<String>,
    signers: HashMap<Algorithm, Arc<Signer>>,
    jwks: Jwks,
    encrypted_at_rest: bool,
    next_change: Option<u64>,
    timing: Timing,
}

impl KeySet {
    /// Builds the snapshot from the full list of records. Each algorithm in `algorithms`
    /// must have exactly one current key. The records' private keys go into the signers and
    /// nowhere else in the set.
    pub fn build(
        records: &[KeyRecord],
        source: &Signers,
        algorithms: &[Algorithm],
        encrypted_at_rest: bool,
        timing: Timing,
    ) -> Result<KeySet, KeySetError> {
        KeySet::build_reusing(None, records, source, algorithms, encrypted_at_rest, timing)
    }

    /// The next snapshot: like `build`, but the keys this set was built from (`before`, its
    /// records) that keep the same record (kid, algorithm, private key) are not parsed
    /// again, so a change costs the parsing of the keys it changed, however many are
    /// retained.
    pub fn rebuild(
        &self,
        before: &[KeyRecord],
        records: &[KeyRecord],
        source: &Signers,
        algorithms: &[Algorithm],
        encrypted_at_rest: bool,
        timing: Timing,
    ) -> Result<KeySet, KeySetError> {
        KeySet::build_reusing(
            Some((self, before)),
            records,
            source,
            algorithms,
            encrypted_at_rest,
            timing,
        )
    }

    fn build_reusing(
        previous: Option<(&KeySet, &[KeyRecord])>,
        records: &[KeyRecord],
        source: &Signers,
        algorithms: &[Algorithm],
        encrypted_at_rest: bool,
        timing: Timing,
    ) -> Result<KeySet, KeySetError> {
        let before: HashMap<&str, &KeyRecord> = previous
            .map(|(_, records)| records.iter().map(|r| (r.kid.as_str(), r)).collect())
            .unwrap_or_default();
        let previous = previous.map(|(set, _)| set);
        let mut known = HashMap::new();
        let mut signers = HashMap::new();
        let mut published = Vec::new();
        let mut revoked = std::collections::HashSet::new();
        for record in records {
            if record.state == KeyState::Revoked {
                revoked.insert(record.kid.clone());
                continue;
            }
            let key_error = |source| KeySetError::Key {
                kid: record.kid.clone(),
                source,
            };
            let same = |old: &KeyRecord| {
                old.alg == record.alg && old.private_key.as_bytes() == record.private_key.as_bytes()
            };
            let reused = before
                .get(record.kid.as_str())
                .filter(|old| same(old))
                .and_then(|_| previous?.known(&record.kid));
            let reused_signer = previous
                .and_then(|set| set.signer(record.alg))
                .filter(|signer| *signer.kid == *record.kid && reused.is_some())
                .filter(|_| record.state == KeyState::Current);
            // A start opens each current key knowing the token may have lost it (it then
            // serves and refuses to sign, as it would running); a change does not make a
            // key current that cannot sign.
            let parse = || match previous {
                None => source.open_at_start(record),
                Some(_) => source.open(record),
            };
            let (verifying, mut parsed) = match reused {
                Some(old) => (Arc::clone(&old.key), None),
                // Only a current key signs: the others need their verifying key, which a
                // token key has as stored (the token is not asked).
                None if record.state != KeyState::Current => (
                    Arc::new(source.verifying_key(record).map_err(key_error)?),
                    None,
                ),
                None => {
                    let signing = parse().map_err(key_error)?;
                    (
                        Arc::new(signing.verifying_key().map_err(key_error)?),
                        Some(signing),
                    )
                }
            };
            if record.state == KeyState::Current {
                let signer = match reused_signer {
                    Some(signer) => Arc::clone(signer),
                    None => {
                        let signing = match parsed.take() {
                            Some(signing) => signing,
                            None => parse().map_err(key_error)?,
                        };
                        Arc::new(Signer::with_source(record.kid.clone(), signing))
                    }
                };
                if signers.insert(record.alg, signer).is_some() {
                    return Err(KeySetError::SeveralCurrentKeys(record.alg));
                }
            }
            if record.state.is_published() {
                published.push(PublicJwk::new(
                    &record.kid,
                    record.alg,
                    verifying.components(),
                ));
            }
            known.insert(record.kid.clone(), KnownKey { key: verifying });
        }
        if let Some(alg) = algorithms.iter().find(|alg| !signers.contains_key(alg)) {
            return Err(KeySetError::NoCurrentKey(*alg));
        }
        let body = render_jwks(&published);
        let etag = format!("\"{}\"", &b64::encode(sha256(&body))[..27]);
        let fingerprint = fingerprint(&published);
        Ok(KeySet {
            next_change: lifecycle::next_change(records, timing),
            timing,
            infos: records.iter().map(KeyRecord::info).collect(),
            known,
            revoked,
            signers,
            jwks: Jwks {
                body: bytes::Bytes::from(body),
                etag,
                keys: published,
                fingerprint,
            },
            encrypted_at_rest,
        })
    }

    /// Every key's record, without its private key.
    pub fn infos(&self) -> &[KeyInfo] {
        &self.infos
    }

    pub fn signer(&self, alg: Algorithm) -> Option<&Arc<Signer>> {
        self.signers.get(&alg)
    }

    /// The current key's signer of each algorithm.
    pub(crate) fn signers(&self) -> impl Iterator<Item = &Arc<Signer>> {
        self.signers.values()
    }

    /// A published key (next, current or retired).
    pub(crate) fn known(&self, kid: &str) -> Option<&KnownKey> {
        self.known.get(kid)
    }

    pub(crate) fn is_revoked(&self, kid: &str) -> bool {
        self.revoked.contains(kid)
    }

    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    pub(crate) fn encrypted_at_rest(&self) -> bool {
        self.encrypted_at_rest
    }

    /// When the published set changes next without anyone asking (unix seconds).
    pub(crate) fn next_change(&self) -> Option<u64> {
        self.next_change
    }

    /// The timings this set was built under.
    pub(crate) fn timing(&self) -> Timing {
        self.timing
    }
}

/// The verifier reads the server's published keys through this.
impl KeyLookup for KeySet {
    fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey> {
        self.known.get(kid).map(|known| &*known.key)
    }

    fn is_revoked(&self, kid: &str) -> bool {
        KeySet::is_revoked(self, kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{authority::keys, authority::lifecycle};

    const TIMING: Timing = Timing {
        publish_lead: 60,
        rotation_period: 3600,
        max_ttl: 600,
        leeway: 60,
    };
    const ALGS: [Algorithm; 1] = [Algorithm::ES256];

    #[test]
    fn a_rebuild_parses_only_the_keys_that_changed() {
        let mut generate = keys::generate;
        let first = lifecycle::due(&[], &ALGS, TIMING, 1000, &mut generate).unwrap();
        let records = first.apply_to(&[]);
        let set = KeySet::build(&records, &Signers::InProcess, &ALGS, false, TIMING).unwrap();
        let current = set.signer(Algorithm::ES256).unwrap().kid.clone();

        // The same records: everything reused, the signer included.
        let same = set
            .rebuild(
                &records,
                &records,
                &Signers::InProcess,
                &ALGS,
                false,
                TIMING,
            )
            .unwrap();
        assert!(Arc::ptr_eq(
            set.signer(Algorithm::ES256).unwrap(),
            same.signer(Algorithm::ES256).unwrap()
        ));
        for record in &records {
            assert!(Arc::ptr_eq(
                &set.known(&record.kid).unwrap().key,
                &same.known(&record.kid).unwrap().key
            ));
        }
        assert_eq!(same.jwks().etag, set.jwks().etag);

        // A rotation: the old current and next keep their parsed public keys; the promoted
        // key gets a new signer, the new next key is parsed.
        let rotated = lifecycle::rotate(
            &records,
            Algorithm::ES256,
            true,
            TIMING,
            1001,
            &mut generate,
        )
        .unwrap()
        .apply_to(&records);
        let next = same
            .rebuild(
                &records,
                &rotated,
                &Signers::InProcess,
                &ALGS,
                false,
                TIMING,
            )
            .unwrap();
        let fresh = KeySet::build(&rotated, &Signers::InProcess, &ALGS, false, TIMING).unwrap();
        assert_eq!(next.jwks().body, fresh.jwks().body);
        let signer = next.signer(Algorithm::ES256).unwrap();
        assert_ne!(signer.kid, current);
        assert!(!Arc::ptr_eq(signer, same.signer(Algorithm::ES256).unwrap()));
        for record in &records {
            assert!(Arc::ptr_eq(
                &same.known(&record.kid).unwrap().key,
                &next.known(&record.kid).unwrap().key
            ));
        }
        let added = rotated
            .iter()
            .find(|r| same.known(&r.kid).is_none())
            .unwrap();
        assert!(next.known(&added.kid).is_some());

        // A record whose private key changed under the same kid is parsed again.
        let mut swapped = rotated.clone();
        let other = keys::generate(Algorithm::ES256).unwrap();
        let retired = swapped.iter_mut().find(|r| *r.kid == *current).unwrap();
        retired.private_key = other.private_key;
        let again = next
            .rebuild(
                &rotated,
                &swapped,
                &Signers::InProcess,
                &ALGS,
                false,
                TIMING,
            )
            .unwrap();
        assert!(!Arc::ptr_eq(
            &next.known(&current).unwrap().key,
            &again.known(&current).unwrap().key
        ));
        assert_ne!(again.jwks().etag, next.jwks().etag);
    }

    #[test]
    fn the_fingerprint_follows_the_public_keys_not_their_order() {
        let mut generate = keys::generate;
        let first = lifecycle::due(&[], &ALGS, TIMING, 1000, &mut generate).unwrap();
        let records = first.apply_to(&[]);
        let build = |records: &[KeyRecord]| {
            KeySet::build(records, &Signers::InProcess, &ALGS, false, TIMING).unwrap()
        };
        let set = build(&records);
        assert!(set.jwks().keys.len() > 1, "a current and a next key");
        assert!(set.jwks().fingerprint < 1 << 52, "exact in a float64");

        // The same keys in another order: another body, the same fingerprint.
        let mut reversed = records.clone();
        reversed.reverse();
        let same = build(&reversed);
        assert_ne!(same.jwks().body, set.jwks().body);
        assert_eq!(same.jwks().fingerprint, set.jwks().fingerprint);

        // A rotation publishes a new next key: another fingerprint.
        let rotated = lifecycle::rotate(
            &records,
            Algorithm::ES256,
            true,
            TIMING,
            1001,
            &mut generate,
        )
        .unwrap()
        .apply_to(&records);
        assert_ne!(build(&rotated).jwks().fingerprint, set.jwks().fingerprint);
    }
}
