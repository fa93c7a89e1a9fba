//! How an authority starts: alone on its keystore (`open`), or as one of the replicas of a
//! shared store (`open_shared`). Either way, what the lifecycle says is due is written
//! before anything is served.

use super::{
    blocking, dropped, lifecycle, log_plan, reserve, reserve::KeyReserve, Authority,
    AuthorityError, Built, Settings,
};
use crate::{
    authority::{keys::KeyRecord, keyset::KeySet, lifecycle::Plan},
    store::{Change, KeyStore, Position},
};

/// What opening a shared store plans and builds: the plan, the key set built from the
/// records it leaves, and the token keys it drops.
type Opened = (Plan, Built, Vec<KeyRecord>);

impl Authority {
    /// Builds the authority from the stored records, first applying whatever the lifecycle
    /// says is due (a new store's first keys, a rotation missed while the server was down,
    /// deletions), persisted before anything is served. Blocking: generates keys and writes to
    /// disk; call it off the async reactor.
    pub fn open(
        store: KeyStore,
        records: Vec<KeyRecord>,
        settings: Settings,
        now: u64,
    ) -> Result<Authority, AuthorityError> {
        // Keys are generated through a reserve (empty: it only counts what is taken), so
        // that token keys made for a start that then fails are destroyed.
        let reserve = KeyReserve::fill(settings.signers.clone(), &[])?;
        let before = records;
        let opened = (|| -> Result<(Plan, KeySet, Vec<KeyRecord>), AuthorityError> {
            let plan = lifecycle::due(
                &before,
                &settings.algorithms,
                settings.timing(),
                now,
                &mut reserve.source(),
            )?;
            // Build first: a keystore whose records do not load is refused before anything
            // is written to it.
            let records = plan.apply_to(&before);
            let set = KeySet::build(
                &records,
                &settings.signers,
                &settings.algorithms,
                store.encrypts_at_rest(),
                settings.timing(),
            )?;
            if !plan.is_empty() {
                store.apply(&plan.changed, &plan.deleted)?;
            }
            Ok((plan, set, records))
        })();
        let committed = match &opened {
            Ok((_, _, records)) => Some(records.as_slice()),
            Err(error) if error.changed_nothing() => Some(before.as_slice()),
            Err(_) => None,
        };
        reserve.release(committed);
        let (plan, set, records) = opened?;
        if !plan.is_empty() {
            log_plan(&plan);
            let dropped = dropped(&before, &plan);
            settings
                .signers
                .destroy(&dropped.iter().collect::<Vec<_>>());
        }
        Ok(Authority::serving(
            store,
            settings,
            (set, records),
            Position::default(),
            now,
        ))
    }

    /// Builds the authority from a store shared by several replicas: whatever the lifecycle
    /// says is due (a new database's first keys, a rotation missed while every replica was
    /// down) is one transaction planned from the records it re-reads, so replicas starting
    /// together create one key set, not one each.
    pub async fn open_shared(
        store: KeyStore,
        settings: Settings,
        now: u64,
    ) -> Result<Authority, AuthorityError> {
        let algorithms = settings.algorithms.clone();
        let timing = settings.timing();
        let encrypted = store.encrypts_at_rest();
        let signers = settings.signers.clone();
        // The keys that are due are made before the transaction opens (`reserve`), from what
        // the database holds now.
        let found = store.shared_records().await?;
        let wanted = reserve::demand(&found, |records, keys| {
            lifecycle::due(records, &algorithms, timing, now, keys)
        });
        let reserve = KeyReserve::make(&signers, wanted).await?;
        let taken = reserve.clone();
        let opened = store
            .transact(
                Vec::new(),
                move |records| -> Result<(Opened, Change), AuthorityError> {
                    let mut generate = taken.source();
                    let plan = lifecycle::due(records, &algorithms, timing, now, &mut generate)?;
                    let dropped = dropped(records, &plan);
                    let records = plan.apply_to(records);
                    let set = KeySet::build(&records, &signers, &algorithms, encrypted, timing)?;
                    let change = Change {
                        changed: plan.changed.clone(),
                        deleted: plan.deleted.clone(),
                    };
                    Ok(((plan, (set, records), dropped), change))
                },
            )
            .await;
        let committed: Option<Vec<KeyRecord>> = match &opened {
            Ok(((_, (_, records), _), _)) => Some(records.clone()),
            Err(error) if error.changed_nothing() => Some(found.clone()),
            Err(_) => None,
        };
        blocking(move || reserve.release(committed.as_deref())).await?;
        let ((plan, built, dropped), generation) = opened?;
        log_plan(&plan);
        if !dropped.is_empty() {
            // Deleted after their retention while every replica was down: once committed,
            // their token objects go too.
            let signers = settings.signers.clone();
            blocking(move || signers.destroy(&dropped.iter().collect::<Vec<_>>())).await?;
        }
        let (position, refused) = generation
            .map(|settled| (settled.position, settled.refused))
            .unwrap_or_default();
        let authority = Authority::serving(store, settings, built, position, now);
        authority.replica.refused(&refused);
        Ok(authority)
    }
}
