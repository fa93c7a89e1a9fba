//! The audit trail: one JSON line per decision (IssueToken allowed or refused, and every
//! admin action), chained so that editing, inserting, reordering or removing a line is
//! detected, and keyed so that a chain recomputed without the key is too.
//!
//! A decision that cannot be recorded is not carried out: `record` returns once the line is
//! in the file (fsynced with `--audit-sync`), and an error when it could not be written,
//! which the gRPC layer answers with UNAVAILABLE. The writing itself happens on one thread
//! (`writer`), off the request path's locks, a batch of lines per write.
//!
//! Lines never carry a token, a secret or custom claim values: caller, method, outcome,
//! reason, subject, audiences, ttl, jti, kid, rule. Refused and malformed calls are
//! rate-limited (a flood of bad calls must not become a flood of disk writes); what was
//! suppressed is summed up, by reason, in the next line written, or by the once-a-second
//! upkeep, and at shutdown.
//!
//! # Layout
//! - `line`: the members of a line and the tag (MAC or hash) that chains it.
//! - `writer`: the thread that owns the file: group commit, cut-back, rotation.
//! - `head`: the chain's head, recorded in the keystore by `upkeep`.
//! - `limiter`: the per-second limit on refused lines.
//! - `verify`: `audit verify`'s check of a whole log.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{AuditMetrics, DecidedMethod, DecisionOutcome, LabelValue},
    store::KeyStore,
    telemetry::chain,
};
use token_authority_jose::{b64, clock::Clock, crypto::mac::MacKey};

mod file;
mod head;
mod limiter;
mod line;
mod verify;
mod writer;

pub(crate) use self::head::Head;
pub(crate) use self::limiter::{Limiter, Suppressed};
pub(crate) use self::verify::{file_id_of, verify};
use self::{
    line::{line_members, summary, Tagger},
    writer::{Job, Shared, Writer},
};

/// Refused or malformed lines written per second at most; the rest are summed up.
pub const REFUSED_LINES_PER_SECOND: u32 = 20;

/// Lines waiting for the writer at most; callers beyond wait for room.
const QUEUE: usize = 4096;

/// How often the upkeep writes the suppressed-lines summary and records the head.
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A write that has not returned for this long makes the log not writable until it does:
/// longer than a busy disk's slowest fsync, shorter than the callers' deadlines.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the audit log {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the audit key file {path}: {source}")]
    KeyRead {
        path: String,
        source: std::io::Error,
    },
    #[error("the audit key file {path} must hold one standard-base64 line of exactly 32 bytes (openssl rand -base64 32)")]
    KeyInvalid { path: String },
    #[error("cannot start the audit writer: {0}")]
    Thread(std::io::Error),
}

/// A line that could not be written: the decision it records is not carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit log not writable")]
pub(crate) struct NotRecorded;

/// Reads the audit key: one standard-base64 line of 32 bytes, as the KEK file holds.
pub(crate) fn load_key(path: &Path) -> Result<MacKey, AuditError> {
    let shown = path.display().to_string();
    let text = crate::config::read::regular_text(path, crate::config::read::SECRET_MAX).map_err(
        |source| AuditError::KeyRead {
            path: shown.clone(),
            source,
        },
    )?;
    let bytes = b64::decode_standard(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
        .ok_or(AuditError::KeyInvalid { path: shown })?;
    Ok(MacKey::new(&bytes))
}

/// How a decision went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed,
    /// Credentials missing or invalid, or a policy refusal.
    Refused,
    /// The request itself was wrong (INVALID_ARGUMENT).
    Malformed,
    /// An admin change allowed (and recorded) before, carried out.
    Done,
    /// An admin change allowed (and recorded) before, that failed.
    Failed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
            Outcome::Malformed => "malformed",
            Outcome::Done => "done",
            Outcome::Failed => "failed",
        }
    }
}

/// One decision, as the audit log records it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Entry<'a> {
    /// Unix seconds.
    pub(crate) at: u64,
    pub(crate) method: DecidedMethod,
    /// The caller's name (`admin` for the admin token, empty when unauthenticated).
    pub(crate) caller: &'a str,
    /// How the caller proved it: mtls, jwt, secret, admin-token, none, open (no policy).
    pub(crate) via: &'a str,
    pub(crate) outcome: Option<Outcome>,
    /// Why it was refused: the message the caller got.
    pub(crate) reason: Option<&'a str>,
    /// A short label for the reason (the metrics label), used in suppression summaries:
    /// set for refused and malformed calls.
    pub(crate) reason_label: Option<DecisionOutcome>,
    pub(crate) subject: Option<&'a str>,
    pub(crate) audiences: &'a [String],
    pub(crate) ttl: Option<u64>,
    pub(crate) jti: Option<&'a str>,
    pub(crate) kid: Option<&'a str>,
    /// The rule that allowed it (0-based index in the policy file).
    pub(crate) rule: Option<usize>,
    /// For admin actions: what was done (e.g. the kid rotated in or revoked); for a
    /// Txn-Token, its scope.
    pub(crate) detail: Option<&'a str>,
    /// A Txn-Token's transaction: its `txn`, and the SHA-256 of the token (hex), which
    /// finds the line of a token seen elsewhere. The token itself is never written.
    pub(crate) txn: Option<&'a str>,
    pub(crate) token_sha256: Option<&'a str>,
}

/// Where and how the log is written.
#[derive(Debug)]
pub(crate) struct AuditSettings {
    /// The file (`-`: stderr).
    pub(crate) path: PathBuf,
    /// The chain's key; without one lines carry a plain SHA-256, which anyone can recompute.
    pub(crate) key: Option<MacKey>,
    /// Whether each batch is fsynced before its callers hear it was written.
    pub(crate) sync: bool,
    /// What the lines the log writes of itself (openings, summaries, heads) are dated by.
    pub(crate) clock: Clock,
    /// How long a write may go unreturned before the log counts as not writable
    /// (`STALLED_AFTER`).
    pub(crate) stall_after: Duration,
}

/// The audit log, as the request path sees it: a queue to the writer thread.
pub struct AuditLog {
    jobs: mpsc::Sender<Job>,
    limiter: Limiter,
    shared: Arc<Shared>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log (continuing the chain of what it holds) and starts its writer.
    pub(crate) fn open(
        settings: AuditSettings,
        metrics: AuditMetrics,
    ) -> Result<AuditLog, AuditError> {
        let shared = Arc::new(Shared::new(metrics, settings.clock, settings.stall_after));
        let tagger = match settings.key {
            Some(key) => Tagger::Mac(Box::new(key)),
            None => Tagger::Hash,
        };
        let writer = Writer::open(&settings.path, tagger, settings.sync, Arc::clone(&shared))
            .map_err(|source| AuditError::Open {
                path: settings.path.display().to_string(),
                source,
            })?;
        let (jobs, receiver) = mpsc::channel(QUEUE);
        // Detached: it ends when the last sender is dropped, with nothing left to write.
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(AuditError::Thread)?;
        Ok(AuditLog {
            jobs,
            limiter: Limiter::new(REFUSED_LINES_PER_SECOND),
            shared,
            path: settings.path,
        })
    }

    /// Records a decision; returns once its line is written. Refused and malformed ones
    /// may be suppressed by the rate limit (and summed up later); allowed ones and admin
    /// actions never are.
    pub(crate) async fn record(&self, entry: &Entry<'_>) -> Result<(), NotRecorded> {
        // A write that does not return holds every line behind it: refuse at once rather
        // than queue the call until its deadline.
        if self.shared.stalled.load(Ordering::Acquire) {
            return Err(NotRecorded);
        }
        let limited = matches!(entry.outcome, Some(Outcome::Refused | Outcome::Malformed));
        let suppressed = if limited {
            match self
                .limiter
                .admit(entry.reason_label.map_or("", LabelValue::as_str))
            {
                Some(suppressed) => suppressed,
                None => return Ok(()),
            }
        } else {
            self.limiter.take_suppressed()
        };
        if !suppressed.is_empty() {
            self.send(summary(entry.at, &suppressed), None).await;
        }
        let (done, written) = oneshot::channel();
        self.send(line_members(entry), Some(done)).await;
        match written.await {
            Ok(true) => Ok(()),
            _ => Err(NotRecorded),
        }
    }

    async fn send(&self, members: Map<String, Value>, done: Option<oneshot::Sender<bool>>) {
        // A closed queue (after shutdown) drops `done`: its caller hears "not written".
        let _ = self.jobs.send(Job::Line { members, done }).await;
    }

    /// Writes the summary of suppressed lines, if any is due (a flood that stops is still
    /// accounted for).
    pub(crate) async fn flush_suppressed(&self, now: u64) {
        let suppressed = self.limiter.take_suppressed();
        if !suppressed.is_empty() {
            self.send(summary(now, &suppressed), None).await;
        }
    }

    /// Writes the summary of everything suppressed so far (at shutdown).
    pub(crate) async fn flush_all_suppressed(&self, now: u64) {
        let suppressed = self.limiter.take_all();
        if !suppressed.is_empty() {
            self.send(summary(now, &suppressed), None).await;
        }
    }

    /// Asks the writer to check now whether the file was rotated away (SIGHUP).
    pub(crate) async fn reopen(&self) {
        let _ = self.jobs.send(Job::Reopen).await;
    }

    /// Whether the last write succeeded; changes as writes fail and succeed again.
    pub(crate) fn writable(&self) -> watch::Receiver<bool> {
        self.shared.writable.subscribe()
    }

    pub(crate) fn metrics(&self) -> &AuditMetrics {
        &self.shared.metrics
    }

    /// Records the heads that moved since the last call in `store`.
    pub(crate) async fn record_heads(&self, store: &KeyStore) {
        let heads = self.shared.heads.take_changed();
        for (index, head) in heads.iter().enumerate() {
            if let Err(error) = store.record_audit_head(&head.file, &head.to_text()).await {
                tracing::warn!(error = %chain(&error), "cannot record the audit chain's head in the keystore; retried");
                self.shared.metrics.head_failures.inc();
                self.shared.heads.restore(heads[index..].to_vec());
                return;
            }
        }
    }

    /// Returns once every line queued so far is written (or failed).
    pub(crate) async fn close(&self) {
        let (done, written) = oneshot::channel();
        let _ = self.jobs.send(Job::Sync(done)).await;
        let _ = written.await;
    }
}

/// Until `stop`: marks the log not writable while a write has not returned for
/// `stall_after`, so that readiness, health and the gauge say so (a write that fails says
/// so itself; one that hangs cannot). Its own task: the upkeep waits on the writer's queue.
pub(crate) async fn watch_stalls(log: Arc<AuditLog>, stop: CancellationToken) {
    let period = log.shared.stall_after / 5;
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return,
        }
        if log.shared.check_stall() {
            tracing::error!(
                path = %log.path.display(),
                seconds = log.shared.stall_after.as_secs_f64(),
                "a write to the audit log has not returned (a hung disk or filesystem, or a pipe nobody reads); IssueToken and admin RPCs answer UNAVAILABLE until it does"
            );
        }
    }
}

/// Once a second until `stop`: writes the summary of suppressed lines and records the
/// chain's head in the keystore; at `stop`, both once more after the last line.
pub(crate) async fn upkeep(log: Arc<AuditLog>, store: KeyStore, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(UPKEEP_INTERVAL) => {}
            () = stop.cancelled() => break,
        }
        log.flush_suppressed(log.shared.clock.unix_now()).await;
        log.record_heads(&store).await;
    }
    log.flush_all_suppressed(log.shared.clock.unix_now()).await;
    log.close().await;
    log.record_heads(&store).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(outcome: Outcome, label: Option<DecisionOutcome>) -> Entry<'static> {
        Entry {
            at: 1_800_000_000,
            method: DecidedMethod::IssueToken,
            caller: "client:batch",
            via: "secret",
            outcome: Some(outcome),
            reason: Some(label.map_or("", LabelValue::as_str)),
            reason_label: label,
            ..Entry::default()
        }
    }

    fn open(path: &Path, key: Option<[u8; 32]>) -> AuditLog {
        AuditLog::open(
            AuditSettings {
                path: path.to_owned(),
                key: key.map(|key| MacKey::new(&key)),
                sync: false,
                clock: Clock::system(),
                stall_after: STALLED_AFTER,
            },
            AuditMetrics::default(),
        )
        .unwrap()
    }

    fn broken(path: &Path, key: &MacKey) -> String {
        verify(path, Some(key), None).unwrap_err().to_string()
    }

    #[tokio::test]
    async fn a_keyed_chain_opens_its_file_continues_across_reopen_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = MacKey::new(&[9; 32]);
        {
            let log = open(&path, Some([9; 32]));
            for _ in 0..3 {
                log.record(&entry(Outcome::Allowed, None)).await.unwrap();
            }
        }
        let log = open(&path, Some([9; 32]));
        log.record(&entry(Outcome::Refused, Some(DecisionOutcome::Subject)))
            .await
            .unwrap();
        drop(log);
        let verified = verify(&path, Some(&key), None).unwrap();
        assert_eq!((verified.lines, verified.macs_checked), (5, true));
        let text = std::fs::read_to_string(&path).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["event"], "open");
        assert_eq!(first["prev"], line::GENESIS);
        assert!(text.lines().all(|line| line.contains("\"mac\":\"")));

        let lines: Vec<&str> = text.lines().collect();
        let edited = text.replacen(
            lines[2],
            &lines[2].replace("client:batch", "client:other"),
            1,
        );
        std::fs::write(&path, edited).unwrap();
        assert_eq!(
            broken(&path, &key),
            "line 3: its MAC does not match its content (edited, forged, or another key)"
        );
        let removed: String = [lines[0], lines[1], lines[3], lines[4]]
            .map(|l| format!("{l}\n"))
            .concat();
        std::fs::write(&path, removed).unwrap();
        assert_eq!(
            broken(&path, &key),
            "line 3: its prev is not the tag of the line before (a line was removed, inserted or reordered)"
        );
        assert_eq!(
            broken(&path, &MacKey::new(&[1; 32])),
            "line 1: its MAC does not match its content (edited, forged, or another key)"
        );
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_at_open_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = open(&path, Some([9; 32]));
        log.record(&entry(Outcome::Allowed, None)).await.unwrap();
        log.close().await;
        drop(log);
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"ts\":1,\"method\":\"Iss");
        std::fs::write(&path, &torn).unwrap();
        let log = open(&path, Some([9; 32]));
        log.record(&entry(Outcome::Allowed, None)).await.unwrap();
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(std::str::from_utf8(&whole).unwrap()));
        assert_eq!(
            verify(&path, Some(&MacKey::new(&[9; 32])), None)
                .unwrap()
                .lines,
            3
        );
    }

    #[tokio::test]
    async fn a_renamed_file_is_followed_by_a_new_one_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = MacKey::new(&[9; 32]);
        let log = open(&path, Some([9; 32]));
        log.record(&entry(Outcome::Allowed, None)).await.unwrap();
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        log.reopen().await;
        log.record(&entry(Outcome::Allowed, None)).await.unwrap();
        let old = std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        let old_first: Value = serde_json::from_str(old.lines().next().unwrap()).unwrap();
        let old_last: Value = serde_json::from_str(old.lines().last().unwrap()).unwrap();
        let new_first: Value = serde_json::from_str(new.lines().next().unwrap()).unwrap();
        assert_eq!(new_first["event"], "open");
        assert_eq!(new_first["predecessor"], old_first["file"]);
        assert_eq!(new_first["predecessor_lines"], 2);
        assert_eq!(new_first["prev"], old_last["mac"]);
        assert_eq!(verify(&path, Some(&key), None).unwrap().lines, 2);
        assert_eq!(
            verify(&dir.path().join("audit.log.1"), Some(&key), None)
                .unwrap()
                .lines,
            2
        );
    }

    #[tokio::test]
    async fn refused_lines_are_rate_limited_and_summed_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = open(&path, None);
        for _ in 0..1000 {
            log.record(&entry(
                Outcome::Refused,
                Some(DecisionOutcome::NoCredentials),
            ))
            .await
            .unwrap();
        }
        let written = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(written, 1 + REFUSED_LINES_PER_SECOND as usize);
        // An allowed line is never suppressed; once the window is over it carries the sum.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        log.record(&entry(Outcome::Allowed, None)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let summary: Value = serde_json::from_str(text.lines().nth(written).unwrap()).unwrap();
        assert_eq!(summary["event"], "suppressed");
        assert_eq!(summary["count"], 1000 - REFUSED_LINES_PER_SECOND as u64);
        assert_eq!(summary["reasons"]["no_credentials"], 980);
        let verified = verify(&path, None, None).unwrap();
        assert_eq!(
            (verified.lines, verified.keyed),
            (written as u64 + 2, false)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_does_not_return_makes_the_log_not_writable_until_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let metrics = AuditMetrics::default();
        let log = Arc::new(
            AuditLog::open(
                AuditSettings {
                    path: path.clone(),
                    key: None,
                    sync: false,
                    clock: Clock::system(),
                    stall_after: Duration::from_millis(300),
                },
                metrics.clone(),
            )
            .unwrap(),
        );
        let stop = CancellationToken::new();
        tokio::spawn(watch_stalls(Arc::clone(&log), stop.clone()));
        log.record(&entry(Outcome::Allowed, None)).await.unwrap();
        // Writes that return, however many, never look stalled.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(*log.writable().borrow());

        let point = format!("audit.write:{}", path.display());
        fail::cfg(&point, "pause").unwrap();
        let held = tokio::spawn({
            let log = Arc::clone(&log);
            async move { log.record(&entry(Outcome::Allowed, None)).await }
        });
        let mut writable = log.writable();
        tokio::time::timeout(Duration::from_secs(10), writable.wait_for(|ok| !*ok))
            .await
            .expect("a held write never made the log not writable")
            .unwrap();
        assert_eq!(metrics.writable.get(), 0);
        // A new decision is refused at once instead of waiting behind the held write.
        assert_eq!(
            tokio::time::timeout(
                Duration::from_secs(1),
                log.record(&entry(Outcome::Allowed, None))
            )
            .await
            .expect("a decision waited behind a held write"),
            Err(NotRecorded)
        );
        assert!(!held.is_finished());

        fail::remove(&point);
        assert_eq!(held.await.unwrap(), Ok(()));
        assert!(*log.writable().borrow());
        assert_eq!(metrics.writable.get(), 1);
        log.record(&entry(Outcome::Allowed, None)).await.unwrap();
        stop.cancel();
        // The opening line, and the three decisions that were not refused.
        assert_eq!(verify(&path, None, None).unwrap().lines, 4);
    }

    #[test]
    fn a_line_longer_than_any_the_authority_writes_is_reported_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, vec![b'a'; 2 * 1024 * 1024]).unwrap();
        assert_eq!(
            verify(&path, None, None).unwrap_err().to_string(),
            "line 1: is longer than 1 MiB, which no line the authority writes is"
        );
    }

    #[tokio::test]
    async fn lines_are_refused_while_the_rotated_path_cannot_be_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let path = logs.join("audit.log");
        let log = open(&path, Some([9; 32]));
        log.record(&entry(Outcome::Allowed, None)).await.unwrap();
        std::fs::rename(&logs, dir.path().join("logs.old")).unwrap();
        assert_eq!(
            log.record(&entry(Outcome::Allowed, None)).await,
            Err(NotRecorded)
        );
        assert!(!*log.writable().borrow());
        std::fs::create_dir(&logs).unwrap();
        log.record(&entry(Outcome::Allowed, None)).await.unwrap();
        assert!(*log.writable().borrow());
        let new: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            (new.len(), &new[0]["predecessor_lines"]),
            (2, &Value::from(2))
        );
    }
}
