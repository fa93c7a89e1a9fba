//! The authority: issuing, verifying and rotating, over one key set and one keystore.
//!
//! Readers (issue, verify, JWKS) load the current `KeySet` through an atomic pointer and
//! never wait. Writers (rotation) are serialised by one async mutex, build the next set from
//! the current records, persist the change (flushed) and only then swap the set in: what is
//! served is always what is on disk.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::{Map, Value};

use crate::{
    b64,
    crypto::{self, Algorithm, CryptoError},
    domain::{InvalidArgument, IssueRequest},
    jwt::{
        self,
        verify::{Policy, Rejection, Verified},
    },
    keys::{self, KeyRecord},
    keyset::{KeySet, KeySetError},
    lifecycle::{self, LifecycleError},
    store::{KeyStore, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    KeySet(#[from] KeySetError),
    #[error("a background task failed: {0}")]
    Task(String),
}

/// The token rules of this authority.
#[derive(Clone, Debug)]
pub struct Settings {
    pub issuer: String,
    /// Whole seconds.
    pub default_ttl: u64,
    pub max_ttl: u64,
    pub leeway: u64,
    pub max_token_bytes: usize,
    /// The configured algorithms; the first is the default for IssueToken.
    pub algorithms: Vec<Algorithm>,
}

/// A minted token and the facts a caller needs about it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub token: String,
    pub kid: String,
    pub jti: String,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Debug)]
pub struct RotationOutcome {
    pub current_kid: String,
    pub previous_kid: String,
    pub keys: Arc<KeySet>,
}

pub struct Authority {
    keys: ArcSwap<KeySet>,
    store: Arc<KeyStore>,
    settings: Settings,
    policy: Policy,
    writer: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("settings", &self.settings)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Builds the authority from the stored records. A new store (no records) gets its first
    /// key per algorithm, persisted before anything is served. Blocking: generates keys and
    /// writes to disk; call it off the async reactor.
    pub fn open(
        store: KeyStore,
        records: Vec<KeyRecord>,
        settings: Settings,
        now: u64,
    ) -> Result<Authority, AuthorityError> {
        let mut records = records;
        let mut changed = Vec::new();
        for alg in &settings.algorithms {
            if !records.iter().any(|r| r.alg == *alg) {
                changed.push(lifecycle::first_key(
                    keys::generate(*alg)?,
                    now,
                    settings.max_ttl,
                ));
            }
        }
        changed.extend(lifecycle::on_start(&records, settings.max_ttl));
        if !changed.is_empty() {
            store.write(&changed)?;
            records = lifecycle::merge(&records, &changed);
        }
        let set = KeySet::build(records, &settings.algorithms, store.encrypts_at_rest())?;
        let policy = Policy {
            issuer: settings.issuer.clone(),
            leeway: settings.leeway,
            max_token_bytes: settings.max_token_bytes,
        };
        Ok(Authority {
            keys: ArcSwap::from_pointee(set),
            store: Arc::new(store),
            settings,
            policy,
            writer: tokio::sync::Mutex::new(()),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current key set snapshot.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Mints a token. CPU-bound (an RSA signature costs about a millisecond).
    pub fn issue(
        &self,
        request: &IssueRequest,
        alg: Option<Algorithm>,
        now: u64,
    ) -> Result<Issued, AuthorityError> {
        let alg = alg.unwrap_or(self.settings.algorithms[0]);
        let keys = self.keys.load();
        let signer = keys.signer(alg).ok_or_else(|| InvalidArgument {
            field: "algorithm",
            reason: format!("{alg} is not configured on this authority"),
        })?;
        let jti = b64::encode(crypto::random_bytes(16)?);
        let expires_at = now + request.ttl;
        let mut claims = Map::with_capacity(request.claims.len() + 7);
        claims.insert("iss".into(), Value::String(self.settings.issuer.clone()));
        claims.insert("sub".into(), Value::String(request.subject.clone()));
        match request.audiences.as_slice() {
            [] => {}
            [one] => {
                claims.insert("aud".into(), Value::String(one.clone()));
            }
            many => {
                claims.insert(
                    "aud".into(),
                    many.iter().cloned().map(Value::String).collect(),
                );
            }
        }
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("exp".into(), expires_at.into());
        claims.insert("jti".into(), Value::String(jti.clone()));
        for (name, value) in &request.claims {
            claims.insert(name.clone(), value.clone());
        }
        let token = jwt::sign(signer, &claims)?;
        Ok(Issued {
            token,
            kid: signer.kid.clone(),
            jti,
            issued_at: now,
            expires_at,
        })
    }

    pub fn verify(
        &self,
        token: &str,
        audience: Option<&str>,
        now: u64,
    ) -> Result<Verified, Rejection> {
        jwt::verify::verify(token, &self.keys.load(), &self.policy, audience, now)
    }

    /// A fresh key becomes current for the default algorithm; the previous one retires and
    /// keeps verifying. Returns once the change is on disk and being served.
    pub async fn rotate(&self, now: u64) -> Result<RotationOutcome, AuthorityError> {
        let _writer = self.writer.lock().await;
        let alg = self.settings.algorithms[0];
        let generated = blocking(move || keys::generate(alg)).await??;
        let current = self.keys.load_full();
        let rotation = lifecycle::rotate(current.records(), generated, now, self.settings.max_ttl)?;
        let records = lifecycle::merge(current.records(), &rotation.changed);
        let algorithms = self.settings.algorithms.clone();
        let encrypted = self.store.encrypts_at_rest();
        let store = Arc::clone(&self.store);
        let next = blocking(move || -> Result<KeySet, AuthorityError> {
            // Build first (a record that does not parse must not reach the disk), then persist.
            let next = KeySet::build(records, &algorithms, encrypted)?;
            store.write(&rotation.changed)?;
            Ok(next)
        })
        .await??;
        let next = Arc::new(next);
        self.keys.store(Arc::clone(&next));
        Ok(RotationOutcome {
            current_kid: rotation.current_kid,
            previous_kid: rotation.previous_kid,
            keys: next,
        })
    }

    /// Flushes the keystore; part of an orderly shutdown.
    pub async fn flush(&self) -> Result<(), AuthorityError> {
        let store = Arc::clone(&self.store);
        blocking(move || store.flush()).await??;
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthorityError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuthorityError::Task(e.to_string()))
}
