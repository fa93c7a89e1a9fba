//! `token-authority keys ...`: work on a stopped data directory. `list` prints what ListKeys
//! answers; `import` adds an existing PKCS#8 private key as the next key; `migrate` copies
//! the keystore into an empty PostgreSQL database. All open the keystore the way the server
//! does (same KEK file, same refusals), so while a server holds the directory they stop at
//! sled's lock.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    config::{ImportArgs, ListArgs, MigrateArgs, RewrapArgs},
    crypto::{self, Algorithm},
    jwk,
    keys::{GeneratedKey, KeyRecord, KeyState, PrivateKeyDer},
    lifecycle::{self, LifecycleError},
    store::{
        kek::{KekError, Keks},
        Change, KeyStore, PgSettings, PgStore, StoreError,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum KeysCommandError {
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadKey { path: String, reason: String },
    #[error("--kid {0:?}: use 1 to 128 characters from A-Z a-z 0-9 . _ -")]
    BadKid(String),
    #[error("the keystore in {0} holds no keys: nothing to migrate")]
    NothingToMigrate(String),
    #[error("{database} already holds {keys} keys: migrate only into an empty database (a merge could leave two current keys)")]
    TargetNotEmpty { database: String, keys: usize },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn open(
    data_dir: &Path,
    kek_file: Option<&Path>,
) -> Result<(KeyStore, Vec<KeyRecord>), KeysCommandError> {
    let keks = kek_file.map(Keks::load).transpose()?;
    Ok(KeyStore::open(&data_dir.join("keystore"), keks)?)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn time(unix: Option<u64>) -> String {
    unix.map_or_else(
        || "-".to_owned(),
        |t| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string(),
    )
}

/// The key table, one line per key, in the fields ListKeys answers.
pub fn list(args: &ListArgs) -> Result<String, KeysCommandError> {
    let (store, records) = open(&args.data_dir, args.kek_file.as_deref())?;
    let lead = args.publish_lead.as_secs();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<6} {:<8} {:<21} {:<21} {:<21} {:<21} {:<21} {:<21} REVOKED_REASON",
        "KID",
        "ALG",
        "STATE",
        "CREATED",
        "PUBLISHED",
        "ACTIVATES/ACTIVATED",
        "RETIRED",
        "DELETE_AFTER",
        "REVOKED"
    );
    for r in &records {
        let activation = match r.state {
            KeyState::Next => Some(r.published_at + lead),
            _ => r.activated_at,
        };
        let state = format!("{:?}", r.state).to_lowercase();
        let _ = writeln!(
            out,
            "{:<44} {:<6} {:<8} {:<21} {:<21} {:<21} {:<21} {:<21} {:<21} {}",
            r.kid,
            r.alg.name(),
            state,
            time(Some(r.created_at)),
            time(Some(r.published_at)),
            time(activation),
            time(r.retired_at),
            time(r.delete_after),
            time(r.revoked_at),
            r.revoked_reason.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(
        out,
        "private keys at rest: {}",
        if store.encrypts_at_rest() {
            "encrypted"
        } else {
            "UNENCRYPTED (no --kek-file)"
        }
    );
    Ok(out)
}

/// Adds the PEM private key as the next key; returns what was done.
pub fn import(args: &ImportArgs) -> Result<String, KeysCommandError> {
    let shown = args.pem.display().to_string();
    let bad = |reason: String| KeysCommandError::BadKey {
        path: shown.clone(),
        reason,
    };
    let pem = std::fs::read(&args.pem).map_err(|source| KeysCommandError::Read {
        path: shown.clone(),
        source,
    })?;
    let der = crypto::pkcs8_from_pem(&pem).map_err(bad)?;
    let detected = crypto::detect_algorithm(&der)
        .ok_or_else(|| bad("not an RSA, P-256 or Ed25519 PKCS#8 private key".into()))?;
    let alg = match (args.algorithm.as_deref(), detected) {
        (None, alg) => alg,
        (Some("PS256"), Algorithm::RS256) => Algorithm::PS256,
        (Some(name), alg) if name == alg.name() => alg,
        (Some(name), alg) => return Err(bad(format!("a {alg} key cannot be imported as {name}"))),
    };
    let signing = crypto::SigningKey::from_pkcs8(alg, &der).map_err(|e| bad(e.to_string()))?;
    let kid = match &args.kid {
        Some(kid) => check_kid(kid)?,
        None => jwk::thumbprint(&signing.public_components()),
    };
    let (store, records) = open(&args.data_dir, args.kek_file.as_deref())?;
    let key = GeneratedKey {
        kid: kid.clone(),
        alg,
        private_key: PrivateKeyDer::new(der),
    };
    let plan = lifecycle::import(&records, key, unix_now(), args.max_ttl.as_secs())?;
    store.apply(&plan.changed, &plan.deleted)?;
    let mut out = format!("imported {kid} ({alg}) as the next key");
    if !plan.deleted.is_empty() {
        let _ = write!(
            out,
            "; it replaces the unused next key {}",
            plan.deleted.join(", ")
        );
    }
    if records.is_empty() {
        out.push_str("; the keystore was empty, so it signs from the first start");
    }
    Ok(out)
}

/// Re-writes every record, which seals each private key under the first KEK.
pub fn rewrap(args: &RewrapArgs) -> Result<String, KeysCommandError> {
    let (store, records) = open(&args.data_dir, Some(&args.kek_file))?;
    let sealing = Keks::load(&args.kek_file)?.sealing_id().to_owned();
    store.apply(&records, &[])?;
    Ok(format!("re-sealed {} keys under {sealing}", records.len()))
}

/// Copies every record, as it is, into an empty database: one transaction under the same
/// lock as the replicas' changes, so a replica that starts meanwhile either sees all the keys
/// or creates its own first and makes this refuse.
pub fn migrate(args: &MigrateArgs) -> Result<String, KeysCommandError> {
    let (_store, records) = open(&args.data_dir, Some(&args.kek_file))?;
    if records.is_empty() {
        return Err(KeysCommandError::NothingToMigrate(
            args.data_dir.display().to_string(),
        ));
    }
    let target = PgStore::new(
        &PgSettings {
            url: args.to.clone(),
            password_file: args.store_password_file.clone(),
            ca_file: args.store_ca_file.clone(),
        },
        Keks::load(&args.kek_file)?,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(KeysCommandError::Runtime)?;
    let count = records.len();
    let database = target.shown().to_owned();
    runtime.block_on(async {
        target.migrate().await?;
        target
            .transact(move |existing| {
                if !existing.is_empty() {
                    return Err(KeysCommandError::TargetNotEmpty {
                        database,
                        keys: existing.len(),
                    });
                }
                Ok((
                    (),
                    Change {
                        changed: records,
                        deleted: Vec::new(),
                    },
                ))
            })
            .await
    })?;
    Ok(format!(
        "copied {count} keys into {}; start the replicas with --store and the same --kek-file",
        target.shown()
    ))
}

fn check_kid(kid: &str) -> Result<String, KeysCommandError> {
    let ok = !kid.is_empty()
        && kid.len() <= 128
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(kid.to_owned())
    } else {
        Err(KeysCommandError::BadKid(kid.to_owned()))
    }
}
