//! The client's copy of the authority's public key set: the keys parsed once per change
//! from the JWKS bytes the authority sends (with the same JWK rules the server's caller
//! verification uses), and the kids it reports revoked, so a revoked key's tokens get
//! `REVOKED_KEY` as from VerifyToken rather than `UNKNOWN_KEY`.

use std::collections::{HashMap, HashSet};

use token_authority_jose::{
    crypto::VerifyingKey,
    jwk::{parse_jwks, JwksError},
    jwt::verify::KeyLookup,
};

use crate::pb;

/// One snapshot of the public key set, as the verifier reads it.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
    revoked: HashSet<String>,
    etag: String,
}

impl KeySet {
    /// Builds the set from a WatchKeys message. A JWKS that does not parse is refused
    /// whole: the last good set stays in use.
    pub fn from_watched(watched: &pb::WatchedKeySet) -> Result<KeySet, JwksError> {
        let mut keys: HashMap<String, VerifyingKey> = parse_jwks(watched.jwks_json.as_bytes())?
            .into_iter()
            .collect();
        let revoked: HashSet<String> = watched
            .keys
            .iter()
            .filter(|key| key.state() == pb::KeyState::Revoked)
            .map(|key| key.key_id.clone())
            .collect();
        // A key reported revoked verifies nothing, even if its JWK is still listed.
        keys.retain(|kid, _| !revoked.contains(kid));
        Ok(KeySet {
            keys,
            revoked,
            etag: watched.etag.clone(),
        })
    }

    /// Builds the set from a JWKS document fetched over HTTP, which lists no revoked keys:
    /// call `keep_revoked` so the kids an earlier push reported revoked stay refused as such.
    pub fn from_jwks(body: &[u8], etag: String) -> Result<KeySet, JwksError> {
        Ok(KeySet {
            keys: parse_jwks(body)?.into_iter().collect(),
            revoked: HashSet::new(),
            etag,
        })
    }

    /// Carries over `previous`'s revoked kids: a revocation is forever. A later set that
    /// lists one of them again (a cached or replayed JWKS, a replica that has not seen the
    /// revocation yet, a database restored from before it) does not bring the key back.
    pub fn keep_revoked(mut self, previous: &KeySet) -> KeySet {
        for kid in &previous.revoked {
            self.keys.remove(kid);
            self.revoked.insert(kid.clone());
        }
        self
    }

    /// The ETag of the JWKS this set was built from.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// The kids of the published keys.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

impl KeyLookup for KeySet {
    fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    fn is_revoked(&self, kid: &str) -> bool {
        self.revoked.contains(kid)
    }
}
