//! Loading the policy file, and reloading it when its content changes.
//!
//! The file's content is polled (a Kubernetes ConfigMap volume changes through a symlink
//! swap, which file-change notifications on the path do not report reliably). A new
//! content is parsed and checked whole; a file with any problem is refused and the policy
//! in force stays, with an error in the log and a metric counting it. Trusted issuers whose
//! configuration did not change keep their cached keys across a reload.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::{
    issuers::{FetchError, TrustedIssuer},
    policy::{Policy, Problem},
    Active, Callers,
};
use crate::{
    metrics::{Metrics, ReloadedFile},
    telemetry::chain,
};
use token_authority_jose::crypto;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the policy file {path} is refused: {}", join(.problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
    #[error("the policy file {path}: issuer {issuer}: {source}")]
    Issuer {
        path: String,
        issuer: String,
        source: FetchError,
    },
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads and checks the policy file and prepares its issuers, reusing those of `previous`
/// whose configuration is unchanged; fetches the keys of new issuers (a failed fetch is
/// logged and counted, not fatal: the keys are fetched again when a token needs them).
pub(crate) async fn load(
    path: &Path,
    previous: Option<&Active>,
    metrics: Option<&Arc<Metrics>>,
    fetch: bool,
) -> Result<Active, LoadError> {
    let text = crate::config::read::regular_file(path, crate::config::read::DOCUMENT_MAX).map_err(
        |source| LoadError::Read {
            path: path.display().to_string(),
            source,
        },
    )?;
    prepare(path, &text, previous, metrics, fetch).await
}

/// Checks `text`, the content read from `path`, and prepares its issuers as `load` does.
async fn prepare(
    path: &Path,
    text: &[u8],
    previous: Option<&Active>,
    metrics: Option<&Arc<Metrics>>,
    fetch: bool,
) -> Result<Active, LoadError> {
    let digest = crypto::sha256(text);
    let text = String::from_utf8_lossy(text);
    let policy = Policy::parse(&text).map_err(|problems| LoadError::Invalid {
        path: path.display().to_string(),
        problems,
    })?;
    let mut issuers = Vec::new();
    let mut fresh = Vec::new();
    for config in &policy.issuers {
        let reused = previous.and_then(|previous| {
            previous
                .issuers
                .iter()
                .find(|issuer| issuer.config == *config)
        });
        match reused {
            Some(issuer) => issuers.push(Arc::clone(issuer)),
            None => {
                let issuer =
                    TrustedIssuer::new(config.clone(), metrics.cloned()).map_err(|source| {
                        LoadError::Issuer {
                            path: path.display().to_string(),
                            issuer: config.name.clone(),
                            source,
                        }
                    })?;
                let issuer = Arc::new(issuer);
                fresh.push(Arc::clone(&issuer));
                issuers.push(issuer);
            }
        }
    }
    if fetch {
        // Concurrently: one issuer that is down must not delay the others by its timeout.
        // Failures are logged and counted inside; an empty cache refetches on use.
        let mut fetches = tokio::task::JoinSet::new();
        for issuer in fresh {
            fetches.spawn(async move { issuer.refresh().await.is_ok() });
        }
        while fetches.join_next().await.is_some() {}
    }
    Ok(Active {
        policy,
        issuers,
        digest,
        subjects: Default::default(),
    })
}

/// How long a new content must stay the same before it is applied.
const SETTLE: Duration = Duration::from_secs(1);

/// Polls `path` every `interval` until `stop`; a changed content that loads replaces the
/// policy in force. Also refreshes stale issuer key caches.
///
/// A new content is applied only once two reads `SETTLE` apart find it the same: a file
/// caught half-written (an editor or `cat >` writing in place) can parse as a shorter,
/// wider policy than the whole file, and must never be in force, not even for one poll.
pub(crate) async fn watch(
    callers: Arc<Callers>,
    path: PathBuf,
    interval: Duration,
    stop: CancellationToken,
) {
    // The content last acted on (loaded or refused), so a broken file is reported once.
    let mut seen = callers.active().map(|active| active.digest);
    // A new content read once, waiting for the second read.
    let mut pending: Option<[u8; 32]> = None;
    loop {
        let wait = if pending.is_some() { SETTLE } else { interval };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        let current = callers.active();
        // Off the runtime's workers, and only a regular file: a FIFO swapped in would hold a
        // worker (and the shutdown) for good.
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                crate::config::read::regular_file(&path, crate::config::read::DOCUMENT_MAX)
            })
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())))
        };
        match read {
            Ok(content) => {
                let digest = crypto::sha256(&content);
                if Some(digest) == seen {
                    pending = None;
                } else if pending != Some(digest) {
                    pending = Some(digest);
                } else {
                    pending = None;
                    seen = Some(digest);
                    let metrics = Some(callers.metrics_arc());
                    match prepare(&path, &content, current.as_deref(), metrics, true).await {
                        Ok(active) => {
                            tracing::info!(
                                path = %path.display(),
                                rules = active.policy.rules.len(),
                                issuers = active.issuers.len(),
                                "policy reloaded"
                            );
                            callers.metrics().policy_reload(true);
                            callers
                                .metrics()
                                .config_refused(ReloadedFile::Policy, false);
                            callers.replace(active);
                        }
                        Err(error) => {
                            tracing::error!(error = %chain(&error), "the new policy file is refused; the policy in force stays");
                            callers.metrics().policy_reload(false);
                            callers.metrics().config_refused(ReloadedFile::Policy, true);
                        }
                    }
                }
            }
            Err(error) => {
                pending = None;
                // A ConfigMap swap can make the path briefly absent: reported, not fatal.
                let digest = crypto::sha256(error.to_string().as_bytes());
                if Some(digest) != seen {
                    seen = Some(digest);
                    tracing::error!(path = %path.display(), error = %chain(&error), "cannot read the policy file; the policy in force stays");
                    callers.metrics().policy_reload(false);
                    callers.metrics().config_refused(ReloadedFile::Policy, true);
                }
            }
        }
        if let Some(active) = callers.active() {
            // In the background: a slow issuer must not hold up the next policy check.
            for issuer in active.issuers.iter().filter(|issuer| issuer.is_stale()) {
                let issuer = Arc::clone(issuer);
                tokio::spawn(async move { issuer.refresh().await.is_ok() });
            }
        }
    }
}
