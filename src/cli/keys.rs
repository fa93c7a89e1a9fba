//! `token-authority keys ...`: work on a stopped data directory, or on the replicas' shared
//! database while they run. `list` prints what ListKeys answers; `import` adds an existing
//! PKCS#8 private key as the next key; `rewrap` re-seals every private key under the first
//! KEK; `migrate` copies a sled keystore into an empty PostgreSQL database. All open the
//! keystore the way the server does (same KEK file, same refusals): while a server holds a
//! data directory they stop at sled's lock; on a shared database each change is one
//! transaction under the replicas' own lock, which they pick up as if made through the API.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, UNIX_EPOCH},
};

use crate::{
    authority::keys::{GeneratedKey, KeyRecord, KeyState, PrivateKeyDer},
    authority::lifecycle,
    config::{
        pg_settings, ImportArgs, ListArgs, MigrateArgs, RewrapArgs, SignerKind, StoreArgs,
        MAX_TTL_CEILING,
    },
    store::file_modes,
    store::{kek::Keks, Change, KeyStore, PgStore},
};
use token_authority_jose::{
    clock::Clock,
    crypto::{self, Algorithm},
    jwk,
};

mod error;

pub use self::error::KeysCommandError;

/// The keystore a command works on.
enum Target {
    Sled(KeyStore),
    Shared(Box<(PgStore, tokio::runtime::Runtime)>),
}

/// Refuses a data directory without a keystore: opening one would create it, and a command
/// run on a mistyped `--data-dir` would report success on an empty keystore (`rewrap`'s
/// "re-sealed 0 keys", after which an operator retires the old KEK of the real one).
fn existing_keystore(data_dir: &Path) -> Result<(), KeysCommandError> {
    if data_dir.join("keystore").is_dir() {
        return Ok(());
    }
    Err(KeysCommandError::NoKeystore(data_dir.display().to_string()))
}

/// Opens the sled keystore in `data_dir` (creating it only when `create`), or the shared
/// database `store` names; returns its records too.
fn open(
    data_dir: &Path,
    store: &StoreArgs,
    kek_file: Option<&Path>,
    create: bool,
    allow_group_readable: bool,
) -> Result<(Target, Vec<KeyRecord>), KeysCommandError> {
    // The same refusals as `serve`: a KEK or a keystore others can read is not used.
    if let Some(kek) = kek_file {
        file_modes::check_private(kek, "KEK file", allow_group_readable)?;
    }
    let keks = kek_file.map(Keks::load).transpose()?;
    let Some(settings) = store.shared(kek_file)? else {
        if !create {
            existing_keystore(data_dir)?;
        }
        if data_dir.exists() {
            file_modes::check_private(data_dir, "data directory", allow_group_readable)?;
        }
        let (store, records) = KeyStore::open(&data_dir.join("keystore"), keks)?;
        return Ok((Target::Sled(store), records));
    };
    let keks = keks.expect("a shared store is configured only with a KEK file");
    let store = PgStore::new(&settings, keks)?;
    let runtime = runtime()?;
    let records = runtime.block_on(async {
        // The same start as a replica's: creates or migrates the schema, refuses a newer one.
        store.migrate().await?;
        store.load(None).await
    })?;
    for refused in &records.refused {
        eprintln!(
            "warning: key {} is refused: {}",
            refused.kid, refused.reason
        );
    }
    Ok((Target::Shared(Box::new((store, runtime))), records.records))
}

impl Target {
    fn encrypts_at_rest(&self) -> bool {
        match self {
            Target::Sled(store) => store.encrypts_at_rest(),
            Target::Shared(..) => true,
        }
    }

    /// One change planned from the records: the sled store (which nothing else writes)
    /// plans from `records` as read; the shared store re-reads its own inside the
    /// transaction, so a replica's change made since the read is never undone.
    fn change<T, P>(&self, records: Vec<KeyRecord>, plan: P) -> Result<T, KeysCommandError>
    where
        P: FnOnce(&[KeyRecord]) -> Result<(T, Change), KeysCommandError> + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Target::Sled(store) => {
                let (value, change) = plan(&records)?;
                store.apply(&change.changed, &change.deleted)?;
                Ok(value)
            }
            Target::Shared(shared) => {
                let (store, runtime) = &**shared;
                Ok(runtime.block_on(store.transact(plan))?.0)
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, KeysCommandError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(KeysCommandError::Runtime)
}

fn time(unix: Option<u64>) -> String {
    // RFC 3339 ends at the year 9999; a time past it (a huge --publish-lead) is not a date.
    const YEAR_10000: u64 = 253_402_300_800;
    match unix {
        None => "-".to_owned(),
        Some(t) if t >= YEAR_10000 => "never".to_owned(),
        Some(t) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string()
        }
    }
}

/// Where a key lives: `process`, or `token:` and the CKA_ID of its objects.
fn location(record: &KeyRecord) -> String {
    match &record.token {
        Some(object) => format!("token:{}", object.object_id),
        None => "process".to_owned(),
    }
}

/// The key table, one line per key, in the fields ListKeys answers.
pub(crate) fn list(args: &ListArgs) -> Result<String, KeysCommandError> {
    let (store, records) = open(
        &args.data_dir,
        &args.store,
        args.kek_file.as_deref(),
        false,
        args.allow_group_readable_files,
    )?;
    let lead = args.publish_lead.as_secs();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<6} {:<8} {:<21} {:<21} {:<21} {:<21} {:<21} {:<21} {:<38} REVOKED_REASON",
        "KID",
        "ALG",
        "STATE",
        "CREATED",
        "PUBLISHED",
        "ACTIVATES/ACTIVATED",
        "RETIRED",
        "DELETE_AFTER",
        "REVOKED",
        "LOCATION"
    );
    for r in &records {
        let activation = match r.state {
            KeyState::Next => Some(r.published_at.saturating_add(lead)),
            _ => r.activated_at,
        };
        let state = format!("{:?}", r.state).to_lowercase();
        let _ = writeln!(
            out,
            "{:<44} {:<6} {:<8} {:<21} {:<21} {:<21} {:<21} {:<21} {:<21} {:<38} {}",
            r.kid,
            r.alg.name(),
            state,
            time(Some(r.created_at)),
            time(Some(r.published_at)),
            time(activation),
            time(r.retired_at),
            time(r.delete_after),
            time(r.revoked_at),
            location(r),
            r.revoked_reason.as_deref().unwrap_or("-"),
        );
    }
    let in_store = records
        .iter()
        .any(|record| !record.private_key.as_bytes().is_empty());
    let _ = writeln!(
        out,
        "private keys at rest: {}",
        if !in_store {
            "none in the keystore (each is held in a PKCS#11 token, or was erased)"
        } else if store.encrypts_at_rest() {
            "encrypted"
        } else {
            "UNENCRYPTED (no --kek-file)"
        }
    );
    Ok(out)
}

/// Adds the PEM private key as the next key, published at `clock`'s now; returns what was
/// done.
pub fn import(args: &ImportArgs, clock: Clock) -> Result<String, KeysCommandError> {
    let shown = args.pem.display().to_string();
    let bad = |reason: String| KeysCommandError::BadKey {
        path: shown.clone(),
        reason,
    };
    let pem = crate::config::read::regular_file(&args.pem, crate::config::read::SECRET_MAX)
        .map_err(|source| KeysCommandError::Read {
            path: shown.clone(),
            source,
        })?;
    let der = crypto::pkcs8_from_pem(&pem).map_err(|source| KeysCommandError::NotPkcs8Pem {
        path: shown.clone(),
        source,
    })?;
    let detected = crypto::detect_algorithm(&der)
        .ok_or_else(|| bad("not an RSA, P-256 or Ed25519 PKCS#8 private key".into()))?;
    let alg = match (args.algorithm.as_deref(), detected) {
        (None, alg) => alg,
        (Some("PS256"), Algorithm::RS256) => Algorithm::PS256,
        (Some(name), alg) if name == alg.name() => alg,
        (Some(name), alg) => return Err(bad(format!("a {alg} key cannot be imported as {name}"))),
    };
    let signing = crypto::SigningKey::from_pkcs8(alg, &der).map_err(|source| {
        KeysCommandError::UnusableKey {
            path: shown.clone(),
            source,
        }
    })?;
    let kid = match &args.kid {
        Some(kid) => check_kid(kid)?,
        None => jwk::thumbprint(&signing.public_components()),
    };
    if args.signer == SignerKind::Pkcs11 {
        return Err(KeysCommandError::IntoToken(
            "--signer pkcs11 keeps every signing key in the token",
        ));
    }
    let (store, records) = open(
        &args.data_dir,
        &args.store,
        args.kek_file.as_deref(),
        true,
        args.allow_group_readable_files,
    )?;
    if records
        .iter()
        .any(|r| r.token.is_some() && r.state != KeyState::Revoked)
    {
        return Err(KeysCommandError::IntoToken(
            "this keystore's keys live in a PKCS#11 token",
        ));
    }
    let key = GeneratedKey {
        kid: kid.clone(),
        alg,
        private_key: PrivateKeyDer::new(der),
        token: None,
    };
    // The same bounds as `serve --max-ttl`: the key's deletion is worked out from it.
    if args.max_ttl.subsec_nanos() != 0 || !(1..=MAX_TTL_CEILING).contains(&args.max_ttl.as_secs())
    {
        return Err(KeysCommandError::MaxTtl);
    }
    let (now, max_ttl) = (clock.unix_now(), args.max_ttl.as_secs());
    let (deleted, was_empty) = store.change(records, move |records| {
        let plan = lifecycle::import(records, key, now, max_ttl)?;
        let change = Change {
            changed: plan.changed,
            deleted: plan.deleted.clone(),
        };
        Ok(((plan.deleted, records.is_empty()), change))
    })?;
    let mut out = format!("imported {kid} ({alg}) as the next key");
    if !deleted.is_empty() {
        let _ = write!(
            out,
            "; it replaces the unused next key {}",
            deleted.join(", ")
        );
    }
    if was_empty {
        out.push_str("; the keystore was empty, so it signs from the first start");
    }
    Ok(out)
}

/// Re-writes every record, which seals each private key under the first KEK.
pub(crate) fn rewrap(args: &RewrapArgs) -> Result<String, KeysCommandError> {
    let (store, records) = open(
        &args.data_dir,
        &args.store,
        Some(&args.kek_file),
        false,
        args.allow_group_readable_files,
    )?;
    let sealing = Keks::load(&args.kek_file)?.sealing_id().to_owned();
    let count = store.change(records, |records| {
        let change = Change {
            changed: records.to_vec(),
            deleted: Vec::new(),
        };
        Ok((records.len(), change))
    })?;
    Ok(format!("re-sealed {count} keys under {sealing}"))
}

/// Copies every record, as it is, into an empty database: one transaction under the same
/// lock as the replicas' changes, so a replica that starts meanwhile either sees all the keys
/// or creates its own first and makes this refuse.
pub fn migrate(args: &MigrateArgs) -> Result<String, KeysCommandError> {
    let keks = Keks::load(&args.kek_file)?;
    existing_keystore(&args.data_dir)?;
    file_modes::check_private(&args.kek_file, "KEK file", args.allow_group_readable_files)?;
    file_modes::check_private(
        &args.data_dir,
        "data directory",
        args.allow_group_readable_files,
    )?;
    let (store, records) = KeyStore::open(&args.data_dir.join("keystore"), Some(keks))?;
    let lists = store.export_status_lists()?;
    if records.is_empty() {
        return Err(KeysCommandError::NothingToMigrate(
            args.data_dir.display().to_string(),
        ));
    }
    let target = PgStore::new(
        &pg_settings(
            &args.to,
            args.store_password_file.as_ref(),
            args.store_ca_file.as_ref(),
        ),
        Keks::load(&args.kek_file)?,
    )?;
    let runtime = runtime()?;
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
            .await?;
        target.import_status_lists(&lists).await.map_err(KeysCommandError::from)
    })
    .map(|copied_lists| {
        format!(
            "copied {count} keys and {copied_lists} status lists ({} statuses set) into {}; start the replicas with --store and the same --kek-file",
            lists.statuses.len(),
            target.shown()
        )
    })
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
