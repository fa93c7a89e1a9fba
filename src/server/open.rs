//! What the server opens before it serves: the keystore (sled in the data directory, or the
//! shared database, waited for), the files whose modes it checks, and the caller layer.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use token_authority_jose::backoff::Backoff;

use super::ServerError;
use crate::{
    authority::{
        keys::KeyRecord,
        signers::pkcs11::{Pkcs11Settings, Pkcs11Token},
        status::{StatusLists, StatusSettings, STATUS_LISTS_PATH},
        Authority, AuthorityError, Settings, Signers,
    },
    callers::admin::{AdminToken, AdminTokenSource},
    callers::{
        audit::{self, AuditLog, AuditSettings},
        reload, CallerSettings, Callers,
    },
    config::{Config, StatusConfig},
    metrics::Metrics,
    store::file_modes,
    store::{kek::Keks, status::StatusStore, KeyStore, PgSettings, PgStore},
    telemetry::chain,
};

/// Where the keystore lives inside the data directory.
pub(crate) fn keystore_path(config: &Config) -> PathBuf {
    config.data_dir.join("keystore")
}

/// The secrets the server starts from, once the files' modes are checked: the admin token
/// (generated on the first start unless a file is given) and the KEKs, each with its line.
pub(super) fn open_secrets(config: &Config) -> Result<(AdminToken, Option<Keks>), ServerError> {
    check_files(config)?;
    let (admin, admin_source) =
        AdminToken::load(config.admin_token_file.as_deref(), &config.data_dir)?;
    match &admin_source {
        AdminTokenSource::Generated(path) => {
            tracing::warn!(path = %path.display(), "generated a new admin token; read it from this file")
        }
        AdminTokenSource::Existing(path) | AdminTokenSource::Configured(path) => {
            tracing::info!(path = %path.display(), "admin token loaded")
        }
    }
    let keks = config.kek_file.as_deref().map(Keks::load).transpose()?;
    // Without a KEK, what is said depends on what the keystore holds (`open_sled`).
    if let Some(keks) = &keks {
        tracing::info!(
            sealing_kek = keks.sealing_id(),
            "private keys are encrypted at rest"
        );
    }
    Ok((admin, keks))
}

/// What makes the keys and signs: the process, or the PKCS#11 token the configuration
/// names, opened and logged in (its PIN file owner-only, like every secret).
pub(super) async fn open_signers(config: &Config) -> Result<Signers, ServerError> {
    let Some(files) = &config.pkcs11 else {
        return Ok(Signers::InProcess);
    };
    file_modes::check_private(
        &files.pin_file,
        "PKCS#11 PIN file",
        config.allow_group_readable_files,
    )?;
    let pin = crate::config::read::regular_text(&files.pin_file, crate::config::read::SECRET_MAX)
        .map_err(|source| ServerError::Pin {
        path: files.pin_file.display().to_string(),
        source,
    })?;
    let settings = Pkcs11Settings {
        module: files.module.clone(),
        token_label: files.token_label.clone(),
        pin: zeroize::Zeroizing::new(pin.trim_end_matches(['\r', '\n']).to_owned()),
    };
    let algorithms = config.algorithms.clone();
    let token = tokio::task::spawn_blocking(move || Pkcs11Token::open(&settings, &algorithms))
        .await
        .map_err(ServerError::Task)??;
    tracing::info!(
        module = %files.module.display(),
        token = %files.token_label,
        "signing keys are generated and held in the PKCS#11 token"
    );
    Ok(Signers::Pkcs11(token))
}

/// The authority's settings: what the configuration says, under `issuer`.
pub(super) fn authority_settings(config: &Config, issuer: String, signers: Signers) -> Settings {
    Settings {
        issuer,
        default_ttl: config.default_ttl,
        max_ttl: config.max_ttl,
        leeway: config.leeway,
        max_token_bytes: config.max_token_bytes,
        algorithms: config.algorithms.clone(),
        publish_lead: config.publish_lead,
        rotation_period: config.rotation_period,
        clock: config.clock,
        signers,
    }
}

/// The keystore the configuration names, and the authority over it; `None` when `shutdown`
/// completes while a shared database is still awaited.
pub(super) async fn open_authority(
    config: &Config,
    keks: Option<Keks>,
    settings: Settings,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Authority>, ServerError> {
    match &config.store {
        None => open_sled(config, keks, settings).await.map(Some),
        Some(pg) => match keks {
            Some(keks) => open_shared(pg, keks, settings, shutdown).await,
            None => Err(ServerError::KekRequired),
        },
    }
}

/// The sled keystore in the data directory, and the authority over it.
async fn open_sled(
    config: &Config,
    keks: Option<Keks>,
    settings: Settings,
) -> Result<Authority, ServerError> {
    let store_path = keystore_path(config);
    tokio::task::spawn_blocking(move || -> Result<Authority, ServerError> {
        let (store, records) = KeyStore::open(&store_path, keks)?;
        if store.encrypts_at_rest() && store.unsealed_at_open() > 0 {
            tracing::warn!(
                unsealed = store.unsealed_at_open(),
                "some private keys are still stored unencrypted; run `token-authority keys rewrap`"
            );
        }
        if !store.encrypts_at_rest() {
            warn_unencrypted(&records, &settings.signers);
        }
        let fresh = records.is_empty();
        let now = settings.clock.unix_now();
        let authority = Authority::open(store, records, settings, now)?;
        if fresh {
            tracing::info!(path = %store_path.display(), "created a new keystore");
        }
        Ok(authority)
    })
    .await
    .map_err(ServerError::Task)?
}

/// Without a KEK: private keys made in process are stored unencrypted, which is worth a
/// warning; a PKCS#11 token keeps those it makes, and only keys made in process before it
/// (still in the keystore) are.
fn warn_unencrypted(records: &[KeyRecord], signers: &Signers) {
    let in_store = records
        .iter()
        .filter(|record| !record.private_key.as_bytes().is_empty())
        .count();
    match signers {
        Signers::InProcess => tracing::warn!(
            "no --kek-file: private keys are stored UNENCRYPTED in the data directory; \
             give a key-encryption key in production"
        ),
        Signers::Pkcs11(_) if in_store > 0 => tracing::warn!(
            keys = in_store,
            "no --kek-file: private keys made in process before the PKCS#11 token are stored \
             UNENCRYPTED in the data directory; give a key-encryption key, or revoke them once \
             the token's keys sign"
        ),
        Signers::Pkcs11(_) => tracing::info!(
            "no private key is stored in the data directory: the PKCS#11 token holds them"
        ),
    }
}

/// The shared PostgreSQL keystore: its schema migrated, and the authority over its key set.
/// While the database cannot be reached (a transient failure) this retries with backoff, the
/// listeners answering NOT_SERVING meanwhile: the replica is not ready until it holds the key
/// set. A permanent refusal (`StoreError::is_permanent`) or any other failure stops the start.
/// `None` when `shutdown` completes first.
async fn open_shared(
    pg: &PgSettings,
    keks: Keks,
    settings: Settings,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Authority>, ServerError> {
    let store = Arc::new(PgStore::new(pg, keks)?);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let attempt = async {
            store.migrate().await?;
            Authority::open_shared(
                KeyStore::Postgres(Arc::clone(&store)),
                settings.clone(),
                settings.clock.unix_now(),
            )
            .await
        };
        match attempt.await {
            Ok(authority) => {
                tracing::info!(database = store.shown(), "shared keystore loaded");
                return Ok(Some(authority));
            }
            Err(AuthorityError::Store(error)) if error.is_transient() => {
                tracing::warn!(error = %chain(&error), "the keystore database cannot be used yet; retrying");
            }
            Err(AuthorityError::Store(error)) => return Err(error.into()),
            Err(other) => return Err(other.into()),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.as_mut() => return Ok(None),
        }
    }
}

/// The data directory holds private keys and the admin token: owner-only when we create
/// it, refused (unless allowed) when it, the admin token or the KEK file is not. A replica
/// over a shared store keeps nothing on disk, so it neither needs nor creates the directory
/// (a Deployment without a volume, on a read-only root file system).
fn check_files(config: &Config) -> Result<(), ServerError> {
    let allow = config.allow_group_readable_files;
    // With a shared store the configuration has made sure of an admin token file.
    let keeps_data_dir = config.store.is_none();
    if keeps_data_dir && config.data_dir.exists() {
        file_modes::check_private(&config.data_dir, "data directory", allow)?;
    } else if keeps_data_dir {
        file_modes::create_private_dir(&config.data_dir).map_err(|source| {
            ServerError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            }
        })?;
    }
    let token = config
        .admin_token_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("admin-token"));
    if token.exists() {
        file_modes::check_private(&token, "admin token file", allow)?;
    }
    if let Some(kek) = &config.kek_file {
        file_modes::check_private(kek, "KEK file", allow)?;
    }
    if let Some(key) = &config.audit_key_file {
        file_modes::check_private(key, "audit key file", allow)?;
    }
    Ok(())
}

/// The caller layer: the policy (refused whole when it has any problem: the server does not
/// start), the audit log, and what the no-policy mode means on this listener. `issuer` is
/// the authority's own.
pub(super) async fn open_callers(
    config: &Config,
    issuer: &str,
    grpc_addr: SocketAddr,
    admin: AdminToken,
    metrics: &Arc<Metrics>,
) -> Result<Callers, ServerError> {
    let loopback = grpc_addr.ip().is_loopback();
    let policy = match &config.policy_file {
        Some(path) => {
            let active = reload::load(path, None, Some(metrics), true).await?;
            tracing::info!(
                path = %path.display(),
                rules = active.policy.rules.len(),
                issuers = active.issuers.len(),
                clients = active.policy.clients.len(),
                "caller policy loaded; issuance is deny-by-default"
            );
            Some(active)
        }
        None if loopback => {
            tracing::warn!(
                grpc = %grpc_addr,
                "no --policy-file: IssueToken is OPEN to any process that reaches this loopback listener (local development only)"
            );
            None
        }
        None => {
            tracing::warn!(
                grpc = %grpc_addr,
                "no --policy-file and a non-loopback gRPC listener: only the admin token may call IssueToken"
            );
            None
        }
    };
    let audit = match &config.audit_log {
        Some(path) => {
            let key = config
                .audit_key_file
                .as_deref()
                .map(audit::load_key)
                .transpose()?;
            if key.is_none() {
                tracing::warn!("no --audit-key-file: the audit chain is a plain SHA-256 chain, which anyone who can write the file can recompute");
            }
            let log = AuditLog::open(
                AuditSettings {
                    path: path.clone(),
                    key,
                    sync: config.audit_sync,
                    clock: config.clock,
                    stall_after: audit::STALLED_AFTER,
                },
                metrics.audit.clone(),
            )?;
            tracing::info!(path = %path.display(), keyed = config.audit_key_file.is_some(), sync = config.audit_sync, "audit log open");
            Some(Arc::new(log))
        }
        None => None,
    };
    Ok(Callers::new(
        Arc::new(admin),
        Arc::clone(metrics),
        CallerSettings {
            loopback,
            leeway: config.leeway,
            max_token_bytes: config.max_token_bytes,
            own_issuer: issuer.into(),
        },
        policy,
        audit,
    ))
}

/// Opens the status lists the keystore holds and hands them to the authority (with
/// `--status-min-ttl off` too: lists already handed out are still served and checked).
pub async fn open_status_lists(
    status: StatusConfig,
    authority: &Arc<Authority>,
    issuer: &str,
) -> Result<(), ServerError> {
    let store = StatusStore::of(authority.store());
    let settings = authority.settings();
    let lists = StatusLists::open(
        store,
        StatusSettings {
            min_ttl: status.min_ttl,
            list_size: status.list_size,
            list_ttl: status.list_ttl,
            uri_prefix: format!("{}{}", issuer.trim_end_matches('/'), STATUS_LISTS_PATH),
            max_ttl: settings.max_ttl,
            leeway: settings.leeway,
        },
        authority.clock().unix_now(),
    )
    .await
    .map_err(|e| ServerError::StatusLists(chain(&e).to_string()))?;
    tracing::info!(lists = lists.ids().len(), min_ttl = ?status.min_ttl, "status lists opened");
    authority.attach_status_lists(Arc::new(lists));
    Ok(())
}
