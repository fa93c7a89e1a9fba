//! The server's background tasks over the key set: the schedule (rotations and deletions
//! as they fall due, with backoff after a failure) and, with a shared store, following
//! the other replicas' changes.

use std::{sync::Arc, time::Duration};

use token_authority_jose::backoff::Backoff;
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::{
    authority::{signing_pool::SIGN_DEADLINE, status::StatusLists, Authority, AuthorityError},
    callers::{reload, Callers},
    config::Config,
    metrics::Metrics,
    telemetry::chain,
    transport::tls::TlsReloader,
};

/// Follows a shared keystore: re-reads it when another replica's change is notified, and
/// every `interval` in case a notification was lost. Failures (the database down) leave the
/// key set in memory serving, and show in the sync-age metric; the first success after them
/// is signalled on `back`, so a scheduled step waiting out its backoff is tried at once.
pub(super) async fn run_sync(
    authority: Arc<Authority>,
    interval: Duration,
    back: Arc<Notify>,
    stop: CancellationToken,
) {
    let Some(mut changes) = authority.store().changes() else {
        return;
    };
    authority.set_sync_interval(interval);
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            Some(_) = changes.recv() => {}
            () = stop.cancelled() => break,
        }
        match authority.refresh(authority.clock().unix_now()).await {
            Ok(_) if failing => {
                tracing::info!("the keystore database answers again");
                failing = false;
                back.notify_one();
            }
            Ok(_) => {}
            Err(error) => {
                failing = true;
                tracing::warn!(error = %chain(&error), "cannot sync the key set with the keystore");
            }
        }
    }
    // Stopping: the other replicas no longer wait for this one's acknowledgements.
    authority.leave().await;
}

/// The schedule wakes at least this often, so a jump of the wall clock is noticed...
const LONGEST_WAIT: Duration = Duration::from_secs(60);
/// ...and never sooner than this after its last wake.
const SHORTEST_WAIT: Duration = Duration::from_secs(1);

/// Performs scheduled rotations and deletions when they fall due. Wakes at the next change
/// of the key set, and at least every minute so a jump of the wall clock is noticed; after a
/// failure, with backoff, or as soon as the store is `back`. A wake with nothing due by the
/// key set held does nothing: it neither takes a shared store's change lock nor counts as a
/// failure when the database is down (another replica's changes arrive through `run_sync`).
///
/// The time is the authority's clock; the waits are tokio's timer, set for the time from that
/// clock's now to the next change. A clock that follows tokio's paused time (tests) therefore
/// reaches the change exactly when the timer fires, and months of the schedule run in
/// moments.
pub(super) async fn run_schedule(
    authority: Arc<Authority>,
    metrics: Arc<Metrics>,
    back: Arc<Notify>,
    stop: CancellationToken,
) {
    // After a failure the next attempt waits with backoff (1 s doubling to a minute): a
    // database that is down would otherwise be asked, and the failure logged, every second.
    let mut backoff: Option<Backoff> = None;
    let mut failures = 0u32;
    let clock = authority.clock();
    loop {
        let due_in = authority
            .next_change()
            .map_or(LONGEST_WAIT, |at| clock.until(at))
            .clamp(SHORTEST_WAIT, LONGEST_WAIT);
        let wait = backoff.as_mut().map_or(due_in, Backoff::next_delay);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = back.notified(), if backoff.is_some() => {}
            () = stop.cancelled() => return,
        }
        let now = clock.unix_now();
        if authority.next_change().is_none_or(|at| at > now) {
            // Nothing due (any more: another replica may have done it, and the sync
            // brought it in).
            (backoff, failures) = (None, 0);
            continue;
        }
        match authority.tick(now).await {
            Ok(plan) => {
                if failures > 0 {
                    tracing::info!(failures, "scheduled key lifecycle step done after failures");
                }
                (backoff, failures) = (None, 0);
                metrics.key_events(plan.rotated.len(), 0, plan.deleted.len());
            }
            // The set in memory is unchanged when a transition fails; the key set keeps
            // signing, and the step is retried.
            Err(error) => {
                failures += 1;
                metrics.scheduled_step_failed();
                backoff.get_or_insert_with(|| {
                    Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
                });
                if matches!(&error, AuthorityError::Store(error) if error.is_transient()) {
                    tracing::warn!(error = %chain(&error), failures, "scheduled key lifecycle step waits for the keystore database");
                } else {
                    tracing::error!(error = %chain(&error), failures, "scheduled key lifecycle step failed");
                }
            }
        }
    }
}

/// The gRPC health service name that reports whether this replica serves what the shared
/// keystore holds (NOT_SERVING from finding the database's history gone back until the
/// replica has caught up). It leaves `/readyz` and the main service's health alone: the
/// data plane keeps answering with the key set held, which never brings a revoked key back.
pub(crate) const KEYSTORE_HEALTH: &str = "keystore";

pub(super) async fn report_keystore_health(
    authority: Arc<Authority>,
    health: HealthReporter,
    stop: CancellationToken,
) {
    let mut in_step = authority.in_step();
    loop {
        let status = if *in_step.borrow_and_update() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status(KEYSTORE_HEALTH, status).await;
        tokio::select! {
            changed = in_step.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// The `keystore` and `signer` health statuses as the authority opened, set before the
/// server says SERVING: a probe that asks for either right after never meets an unknown
/// service. The tasks below keep them current from then on.
pub(super) async fn report_initial_health(authority: &Authority, health: &HealthReporter) {
    let status = |up: bool| {
        if up {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        }
    };
    let in_step = *authority.in_step().borrow();
    health
        .set_service_status(KEYSTORE_HEALTH, status(in_step))
        .await;
    let available = authority.settings().signers.is_available();
    health
        .set_service_status(SIGNER_HEALTH, status(available))
        .await;
}

/// The gRPC health service name that reports whether the signer answers: NOT_SERVING while
/// the PKCS#11 token cannot be reached (IssueToken then answers UNAVAILABLE). Like
/// `keystore`, it leaves `/readyz` and the main service's health alone: verification and
/// the JWKS keep serving.
pub(crate) const SIGNER_HEALTH: &str = "signer";

/// How often the token is asked whether it answers (and reconnected to when it went away).
const SIGNER_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the `signer` health status (and, through the authority, the gauge) true to the
/// token: asks it every `SIGNER_CHECK_INTERVAL`, so a token that went away is noticed, and
/// one that came back is reconnected to, without waiting for a caller to find out.
pub(super) async fn report_signer_health(
    authority: Arc<Authority>,
    health: HealthReporter,
    stop: CancellationToken,
) {
    let signers = authority.settings().signers.clone();
    let mut reported = None;
    // A probe still in the token from an earlier round: waited for again, never doubled.
    let mut pending: Option<JoinHandle<bool>> = None;
    loop {
        let mut probe = pending.take().unwrap_or_else(|| {
            let probing = signers.clone();
            let keys = authority.keys();
            tokio::task::spawn_blocking(move || probing.probe(&keys))
        });
        // A token that does not answer within the signing deadline is down for the callers,
        // who stop waiting then too.
        let answered = tokio::select! {
            answered = tokio::time::timeout(SIGN_DEADLINE, &mut probe) => answered,
            () = stop.cancelled() => return,
        };
        let available = match answered {
            Ok(available) => available.unwrap_or(false),
            Err(_) => {
                pending = Some(probe);
                false
            }
        };
        if reported != Some(available) {
            if reported.is_some() {
                if available {
                    tracing::info!("the signing token answers again");
                } else {
                    tracing::error!("the signing token cannot be reached: IssueToken answers UNAVAILABLE until it is back");
                }
            }
            let status = if available {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status(SIGNER_HEALTH, status).await;
            reported = Some(available);
        }
        if !signers.blocks() {
            // Keys in the process: nothing to lose.
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(SIGNER_CHECK_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// How often lists whose tokens have all expired are dropped.
const STATUS_PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// Drops what no valid token can need any more, at start and then every interval.
pub(super) async fn purge_status_lists(
    authority: Arc<Authority>,
    lists: Arc<StatusLists>,
    stop: CancellationToken,
) {
    loop {
        match lists.purge(authority.clock().unix_now()).await {
            Ok(dropped) if !dropped.is_empty() => {
                tracing::info!(
                    ?dropped,
                    "status lists dropped: every token holding an index in them has expired"
                )
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %chain(&error), "status lists could not be purged; retrying later")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(STATUS_PURGE_INTERVAL) => {}
        }
    }
}

/// Reads in the other replicas' status changes as they are notified, and every `interval`
/// in case a notification was lost.
async fn follow_status_lists(lists: Arc<StatusLists>, interval: Duration, stop: CancellationToken) {
    let mut notified = lists.notifications();
    loop {
        let notification = async {
            match notified.as_mut() {
                Some(receiver) => receiver.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            got = notification => if got.is_none() {
                notified = None;
            },
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = lists.refresh().await {
            tracing::warn!(error = %chain(&error), "other replicas' status changes could not be read; retrying");
        }
    }
}

/// The background tasks of a serving authority: the schedule, following a shared store,
/// the keystore's health, and the policy and TLS reloads.
pub(super) struct Tasks {
    schedule: JoinHandle<()>,
    sync: JoinHandle<()>,
    reload: Option<JoinHandle<()>>,
}

impl Tasks {
    pub(super) fn spawn(
        authority: &Arc<Authority>,
        callers: &Arc<Callers>,
        metrics: &Arc<Metrics>,
        config: &Config,
        tls: Option<TlsReloader>,
        health: &HealthReporter,
        stop: &CancellationToken,
    ) -> Tasks {
        // The sync task tells the schedule when a shared store answers again.
        let store_back = Arc::new(Notify::new());
        let schedule = tokio::spawn(run_schedule(
            Arc::clone(authority),
            Arc::clone(metrics),
            Arc::clone(&store_back),
            stop.clone(),
        ));
        let sync = tokio::spawn(run_sync(
            Arc::clone(authority),
            config.store_sync_interval,
            store_back,
            stop.clone(),
        ));
        tokio::spawn(report_keystore_health(
            Arc::clone(authority),
            health.clone(),
            stop.clone(),
        ));
        tokio::spawn(report_signer_health(
            Arc::clone(authority),
            health.clone(),
            stop.clone(),
        ));
        if let Some(lists) = authority.status_lists() {
            tokio::spawn(purge_status_lists(
                Arc::clone(authority),
                Arc::clone(lists),
                stop.clone(),
            ));
            if lists.is_shared() {
                tokio::spawn(follow_status_lists(
                    Arc::clone(lists),
                    config.store_sync_interval,
                    stop.clone(),
                ));
            }
        }
        let reload = config.policy_file.clone().map(|path| {
            tokio::spawn(reload::watch(
                Arc::clone(callers),
                path,
                config.policy_reload_interval,
                stop.clone(),
            ))
        });
        if let Some(reloader) = tls {
            tokio::spawn(reloader.watch(
                config.tls_reload_interval,
                Arc::clone(metrics),
                stop.clone(),
            ));
        }
        Tasks {
            schedule,
            sync,
            reload,
        }
    }

    /// Once the stop token is cancelled: a transition in progress completes (it is one
    /// transaction); no new one starts.
    pub(super) async fn join(self) {
        let _ = self.sync.await;
        let _ = self.schedule.await;
        if let Some(task) = self.reload {
            let _ = task.await;
        }
    }
}
