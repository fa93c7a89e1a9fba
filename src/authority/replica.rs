//! What a replica knows of a shared keystore beyond the key set it serves: where the
//! database's history stood when it last read it, every revocation it has seen, and what
//! the last read refused.
//!
//! The revocations are remembered because a database can go back in time (a restore, a
//! point-in-time recovery, a failover that lost commits) and bring a revoked key back to
//! life. A running replica never serves such a key again: it writes the revocation back.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex, PoisonError,
    },
};

use crate::{
    authority::keys::{KeyInfo, KeyRecord, KeyState},
    authority::lifecycle::{self, KeySource, LifecycleError, Plan, Timing},
    store::{Position, RefusedRow},
};

#[derive(Debug)]
pub(super) struct Replica {
    position: Mutex<Position>,
    /// Kid -> reason, of every key seen revoked since the start.
    revoked: Mutex<BTreeMap<String, String>>,
    rewinds: AtomicU64,
    refused: Mutex<Vec<RefusedRow>>,
    refused_count: AtomicUsize,
    /// How often this replica re-reads the store (and acknowledges what it serves), in
    /// milliseconds; 0 until the sync task starts.
    sync_interval_ms: AtomicU64,
    /// False from finding the database's history gone back until this replica serves
    /// what the database holds again (its revocations written back).
    in_step: tokio::sync::watch::Sender<bool>,
}

impl Replica {
    pub(crate) fn new() -> Replica {
        Replica {
            position: Mutex::default(),
            revoked: Mutex::default(),
            rewinds: AtomicU64::default(),
            refused: Mutex::default(),
            refused_count: AtomicUsize::default(),
            sync_interval_ms: AtomicU64::default(),
            in_step: tokio::sync::watch::Sender::new(true),
        }
    }

    /// Whether this replica serves what the database holds, now and at every change.
    pub(crate) fn in_step(&self) -> tokio::sync::watch::Receiver<bool> {
        self.in_step.subscribe()
    }

    pub(crate) fn position(&self) -> Position {
        self.position
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that the set now served was read at `position`, and its revocations.
    pub(crate) fn serving(&self, position: Position, records: &[KeyInfo]) {
        self.in_step
            .send_if_modified(|in_step| !std::mem::replace(in_step, true));
        *self.position.lock().unwrap_or_else(PoisonError::into_inner) = position;
        let mut revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        for record in records.iter().filter(|r| r.state == KeyState::Revoked) {
            revoked.entry(record.kid.clone()).or_insert_with(|| {
                record
                    .revoked_reason
                    .clone()
                    .unwrap_or_else(|| "revoked".into())
            });
        }
    }

    /// Every key this replica has seen revoked: kid -> reason.
    pub(crate) fn revocations(&self) -> BTreeMap<String, String> {
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn went_back(&self, held: &Position, found: &Position) {
        self.rewinds.fetch_add(1, Ordering::Relaxed);
        self.in_step.send_replace(false);
        tracing::error!(
            held = %held,
            found = %found,
            "the keystore database's history went back (a restore, a point-in-time recovery, a failover that lost commits) or it is another database: serving what it holds now, with every revocation this replica has seen written back"
        );
    }

    pub(crate) fn set_sync_interval(&self, interval: std::time::Duration) {
        self.sync_interval_ms.store(
            u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// How recently a replica must have acknowledged to be counted live: three of this
    /// replica's sync intervals and a second. `None` before the sync task started.
    pub(crate) fn live_within(&self) -> Option<std::time::Duration> {
        match self.sync_interval_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                std::time::Duration::from_millis(ms.saturating_mul(3))
                    + std::time::Duration::from_secs(1),
            ),
        }
    }

    /// How many times the database's history was seen going back.
    pub(crate) fn rewinds(&self) -> u64 {
        self.rewinds.load(Ordering::Relaxed)
    }

    /// Logs the rows the last read refused, each time that list changes.
    pub(crate) fn refused(&self, rows: &[RefusedRow]) {
        self.refused_count.store(rows.len(), Ordering::Relaxed);
        let mut last = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        if *last == rows {
            return;
        }
        for row in rows.iter().filter(|row| !last.contains(row)) {
            tracing::error!(kid = %row.kid, reason = %row.reason, "a keystore row is refused: it is neither served nor changed");
        }
        *last = rows.to_vec();
    }

    /// How many rows the last read refused.
    pub(crate) fn refused_count(&self) -> usize {
        self.refused_count.load(Ordering::Relaxed)
    }
}

/// The keys of `records` in `revoked` that are not revoked there: (kid, reason).
pub(super) fn unrevoked(
    revoked: &BTreeMap<String, String>,
    records: &[KeyRecord],
) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| r.state != KeyState::Revoked)
        .filter_map(|r| revoked.get(&r.kid).map(|why| (r.kid.clone(), why.clone())))
        .collect()
}

/// `plan`, planned from `records` once every key of `revoked` in them is revoked again:
/// one plan that does both. Every change of a shared store goes through here, so a key a
/// replica has seen revoked is never served again, whatever the database says.
pub(super) fn keeping_revocations<P>(
    records: &[KeyRecord],
    revoked: &BTreeMap<String, String>,
    timing: Timing,
    now: u64,
    generate: &mut dyn KeySource,
    plan: P,
) -> Result<Plan, LifecycleError>
where
    P: FnOnce(&[KeyRecord], &mut dyn KeySource) -> Result<Plan, LifecycleError>,
{
    let again = unrevoked(revoked, records);
    if again.is_empty() {
        return plan(records, generate);
    }
    tracing::error!(
        kids = ?again.iter().map(|(kid, _)| kid.as_str()).collect::<Vec<_>>(),
        "keys this replica has seen revoked are not revoked in the keystore database: revoking them again"
    );
    let mut held = records.to_vec();
    let mut done = Plan::default();
    for (kid, reason) in &again {
        let step = lifecycle::revoke(&held, kid, reason, timing, now, generate)?;
        held = step.apply_to(&held);
        merge(&mut done, step);
    }
    let step = plan(&held, generate)?;
    merge(&mut done, step);
    Ok(done)
}

/// `step`, planned from what `done` left, folded into `done`.
fn merge(done: &mut Plan, step: Plan) {
    done.changed
        .retain(|c| !step.deleted.contains(&c.kid) && !step.changed.iter().any(|s| s.kid == c.kid));
    done.changed.extend(step.changed);
    done.deleted.extend(step.deleted);
    done.rotated.extend(step.rotated);
}
