//! The key set's history in PostgreSQL, and the manifest that authenticates its rows.
//!
//! A database can go back in time under the replicas: a backup restored, a point-in-time
//! recovery, a failover to a standby that lost commits. Its generation alone cannot show
//! that (a restored database moves forward again from where the backup was), so where the
//! history stands is a `Position`: the database's identity (random, made with the schema),
//! its generation, and a lineage, random at each commit and kept per generation in
//! `ta_history`. A replica holding generation G with lineage L is behind the database only
//! if the database's history has L at G; anything else is a history that went back.
//!
//! Rows are authenticated as a set: `ta_generation.manifest` lists the SHA-256 of every
//! row's stored text by kid, under a MAC made with the KEK over the position it belongs to.
//! A row edited by hand, written back from an old backup, or inserted from another database
//! does not match it and is refused, by name, on its own: the other rows still load and
//! change. A manifest that does not open (edited, or a KEK not in the file) refuses the
//! whole read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::kek::{Keks, SealedKey, UnsealError};
use token_authority_jose::{b64, crypto};

/// Where a database's history stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Random, made with the schema: another database (recreated, or another cluster)
    /// has another.
    pub(crate) database_id: String,
    /// Bumped by every change.
    pub(crate) generation: u64,
    /// Random at every change: the same generation reached by another history has another.
    pub(crate) lineage: String,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {} (lineage {}, database {})",
            self.generation, self.lineage, self.database_id
        )
    }
}

/// A row of `ta_keys` the manifest or the decoder refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRow {
    pub(crate) kid: String,
    pub(crate) reason: String,
}

/// How many generations of lineage `ta_history` keeps: a replica further behind than this
/// is treated as one whose history went back (it re-reads everything either way).
pub(super) const HISTORY_KEPT: i64 = 10_000;

/// A new random lineage.
pub(super) fn new_lineage() -> Result<String, crypto::CryptoError> {
    Ok(b64::encode(crypto::random_bytes(16)?))
}

/// What every row of `ta_keys` must be, by kid: the SHA-256 of its stored text.
#[derive(Clone, Debug, Default)]
pub(super) struct Manifest {
    pub(crate) rows: BTreeMap<String, String>,
}

/// Why a stored manifest is refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum ManifestError {
    #[error("unreadable manifest")]
    Unreadable(#[source] serde_json::Error),
    #[error("manifest: bad nonce")]
    BadNonce,
    #[error("manifest: bad tag")]
    BadTag,
    #[error("the key set's manifest does not authenticate (edited by hand, or sealed under a KEK not in the file)")]
    Unauthentic(#[source] UnsealError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredManifest {
    rows: BTreeMap<String, String>,
    kek_id: String,
    nonce: String,
    tag: String,
}

impl Manifest {
    pub(crate) fn digest(text: &str) -> String {
        b64::encode(crypto::sha256(text.as_bytes()))
    }

    /// Whether the row `kid` holding `text` is the one the manifest lists.
    pub(crate) fn check(&self, kid: &str, text: &str) -> Result<(), String> {
        match self.rows.get(kid) {
            None => Err("the row is not in the key set's manifest: inserted by hand or copied from another database".into()),
            Some(digest) if *digest != Manifest::digest(text) => Err(
                "the row does not match the key set's manifest: edited by hand or written back from a backup".into(),
            ),
            Some(_) => Ok(()),
        }
    }

    /// The stored form, its MAC binding it to `position`.
    pub(crate) fn seal(
        &self,
        keks: &Keks,
        position: &Position,
    ) -> Result<String, crypto::CryptoError> {
        let sealed = keks.seal_bytes(&associated_data(position, &self.rows), b"")?;
        let stored = StoredManifest {
            rows: self.rows.clone(),
            kek_id: sealed.kek_id,
            nonce: b64::encode(&sealed.nonce),
            tag: b64::encode(&sealed.ciphertext),
        };
        Ok(serde_json::to_string(&stored).expect("a map of strings serialises"))
    }

    /// The manifest stored as `text` at `position`, if its MAC holds.
    pub(crate) fn open(
        text: &str,
        keks: &Keks,
        position: &Position,
    ) -> Result<Manifest, ManifestError> {
        let stored: StoredManifest =
            serde_json::from_str(text).map_err(ManifestError::Unreadable)?;
        let sealed = SealedKey {
            kek_id: stored.kek_id,
            nonce: b64::decode(&stored.nonce).map_err(|_| ManifestError::BadNonce)?,
            ciphertext: b64::decode(&stored.tag).map_err(|_| ManifestError::BadTag)?,
        };
        keks.open_bytes(&associated_data(position, &stored.rows), &sealed)
            .map_err(ManifestError::Unauthentic)?;
        Ok(Manifest { rows: stored.rows })
    }
}

fn associated_data(position: &Position, rows: &BTreeMap<String, String>) -> Vec<u8> {
    let mut aad = format!(
        "token-authority key set manifest v1\0{}\0{}\0{}\0",
        position.database_id, position.generation, position.lineage
    )
    .into_bytes();
    for (kid, digest) in rows {
        aad.extend_from_slice(kid.as_bytes());
        aad.push(0);
        aad.extend_from_slice(digest.as_bytes());
        aad.push(0);
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::chain;

    fn position(generation: u64) -> Position {
        Position {
            database_id: "db".into(),
            generation,
            lineage: "l".into(),
        }
    }

    #[test]
    fn a_manifest_opens_only_at_its_own_position_with_its_own_rows() {
        let keks = Keks::from_bytes(&[[7; 32]]);
        let mut manifest = Manifest::default();
        manifest
            .rows
            .insert("k1".into(), Manifest::digest("row one"));
        let text = manifest.seal(&keks, &position(3)).unwrap();
        let opened = Manifest::open(&text, &keks, &position(3)).unwrap();
        assert!(opened.check("k1", "row one").is_ok());
        assert_eq!(
            opened.check("k1", "row one, edited"),
            Err("the row does not match the key set's manifest: edited by hand or written back from a backup".into())
        );
        assert_eq!(
            opened.check("k2", "row one"),
            Err("the row is not in the key set's manifest: inserted by hand or copied from another database".into())
        );
        // As the refusal shows: the error and its cause.
        let refused = |text: &str, keks: &Keks, at: &Position| {
            chain(&Manifest::open(text, keks, at).map(|_| ()).unwrap_err()).to_string()
        };
        // The position is authenticated data: opened elsewhere, the seal does not open.
        let unauthentic = "the key set's manifest does not authenticate (edited by hand, or sealed under a KEK not in the file): it does not open with KEK kek-S7Bvjk46dxX: a wrong KEK, or a record moved onto another key";
        // Another generation, lineage or database: refused.
        assert_eq!(refused(&text, &keks, &position(4)), unauthentic);
        let other = Position {
            lineage: "m".into(),
            ..position(3)
        };
        assert_eq!(refused(&text, &keks, &other), unauthentic);
        // A row digest edited in the stored manifest: refused.
        let edited = text.replace(&Manifest::digest("row one"), &Manifest::digest("x"));
        assert_eq!(refused(&edited, &keks, &position(3)), unauthentic);
        // Another KEK: refused.
        assert_eq!(
            refused(&text, &Keks::from_bytes(&[[8; 32]]), &position(3)),
            "the key set's manifest does not authenticate (edited by hand, or sealed under a KEK not in the file): it was sealed with KEK kek-S7Bvjk46dxX, which is not in the KEK file"
        );
    }
}
