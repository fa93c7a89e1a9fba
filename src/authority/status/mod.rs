//! Status lists (draft-ietf-oauth-status-list): revoking or suspending one token rather
//! than the key that signed it.
//!
//! A token that lives at least `min_ttl` gets an index in a list (its `status` claim). The
//! lists are held in memory, two bits a token, and written through the store: a status
//! change is durable before it is acknowledged, and indexes are reserved in durable blocks
//! before they are handed out, so none is handed out twice, across restarts. A list that is
//! full rolls over to the next id; a list is dropped once every token holding one of its
//! indexes has expired (its `valid_until`).
//!
//! `blocks` hands out indexes; `set` changes one token's status; `check` is VerifyToken's status step; `served` renders each
//! list's Status List Token once per change (or per half of its `ttl`), the way the JWKS is
//! rendered once per key change.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
};

use token_authority_jose::status_list::{Status, StatusList, StatusReference};

use crate::store::{
    status::{ListRecord, StatusStore, StoredLists},
    StoreError,
};

mod blocks;
mod census;
mod check;
mod error;
mod jti;
mod served;
mod set;

pub(crate) use census::Census;
pub(crate) use error::StatusError;
pub(crate) use jti::Slot;
pub(crate) use served::ServedList;
pub(crate) use set::{Changed, Target};

/// Where lists are served on the HTTP listener: this, then the list's id.
pub(crate) const STATUS_LISTS_PATH: &str = "/statuslists/";
/// Two bits a token: VALID, INVALID, SUSPENDED.
pub(crate) const BITS: u8 = 2;
/// How status lists are run.
#[derive(Clone, Debug)]
pub(crate) struct StatusSettings {
    /// Tokens living at least this long (seconds) get a status; `None`: none does (the
    /// lists are still served and checked, so a revoked token stays revoked).
    pub(crate) min_ttl: Option<u64>,
    /// Statuses per list.
    pub(crate) list_size: u64,
    /// How long a verifier may cache a list (its `ttl` claim and `Cache-Control`).
    pub(crate) list_ttl: u64,
    /// The `uri` of list `id` is this followed by `id`.
    pub(crate) uri_prefix: String,
    /// The longest token lifetime and the leeway verifiers grant: how long a list must
    /// outlive its last block.
    pub(crate) max_ttl: u64,
    pub(crate) leeway: u64,
}

struct ListState {
    record: ListRecord,
    statuses: StatusList,
    /// Bumped at every change: a served token of an older version is rendered again.
    version: u64,
    served: Option<Arc<ServedList>>,
}

pub(crate) struct StatusLists {
    settings: StatusSettings,
    store: StatusStore,
    /// Mints the jti of each token with a status, and reads it back for SetTokenStatus.
    jtis: jti::JtiMinter,
    lists: RwLock<BTreeMap<u64, ListState>>,
    block: Mutex<blocks::Blocks>,
    /// One reservation at a time: callers that find the block used up wait for it.
    reserving: tokio::sync::Mutex<()>,
    /// Serialises status changes, so a check and its write are one step.
    changing: tokio::sync::Mutex<()>,
    /// One rendering at a time: watchers and fetches that find a rendering stale together
    /// wait for one signature rather than each making their own.
    rendering: tokio::sync::Mutex<()>,
    /// The number of the last change of a shared store read in (0 with sled), held while
    /// reading more.
    seen: tokio::sync::Mutex<u64>,
    /// The count of changes, for those who wait for the next (the list watchers).
    changes: tokio::sync::watch::Sender<u64>,
    /// Tokens issued without a status because no index could be reserved, and when that
    /// was last logged (unix seconds).
    unstatused: std::sync::atomic::AtomicU64,
    unstatused_logged: std::sync::atomic::AtomicU64,
    /// The same since start, for the metrics.
    unstatused_total: std::sync::atomic::AtomicU64,
    /// When a block reservation last failed (unix seconds; 0: never).
    reservation_failed_at: std::sync::atomic::AtomicU64,
    /// The last census, and the count of changes it was taken at (`census`).
    census: Mutex<Option<(u64, Census)>>,
}

impl std::fmt::Debug for StatusLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusLists")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl StatusLists {
    /// The lists `store` holds.
    pub(crate) async fn open(
        store: StatusStore,
        settings: StatusSettings,
        now: u64,
    ) -> Result<StatusLists, StatusError> {
        let (stored, seen) = store.load().await?;
        let jtis = jti::JtiMinter::new(&store.jti_key().await?);
        let lists = StatusLists {
            settings,
            store,
            jtis,
            lists: RwLock::new(BTreeMap::new()),
            block: Mutex::new(blocks::Blocks::default()),
            reserving: tokio::sync::Mutex::new(()),
            changing: tokio::sync::Mutex::new(()),
            rendering: tokio::sync::Mutex::new(()),
            seen: tokio::sync::Mutex::new(seen),
            changes: tokio::sync::watch::channel(0).0,
            unstatused: std::sync::atomic::AtomicU64::new(0),
            unstatused_logged: std::sync::atomic::AtomicU64::new(0),
            unstatused_total: std::sync::atomic::AtomicU64::new(0),
            reservation_failed_at: std::sync::atomic::AtomicU64::new(0),
            census: Mutex::new(None),
        };
        lists.apply(stored, true)?;
        lists.prepare(now).await?;
        Ok(lists)
    }

    /// Takes in what the store holds: every list (a list it no longer holds was dropped,
    /// when `whole`), and statuses (all of them, or those changed since the last read).
    fn apply(&self, stored: StoredLists, whole: bool) -> Result<(), StatusError> {
        let mut changed = false;
        {
            let mut lists = self.lists.write().map_err(|_| StatusError::Poisoned)?;
            let held: std::collections::BTreeSet<u64> =
                stored.lists.iter().map(|record| record.id).collect();
            if whole {
                let before = lists.len();
                lists.retain(|id, _| held.contains(id));
                changed |= lists.len() != before;
            }
            for record in stored.lists {
                match lists.get_mut(&record.id) {
                    Some(state) => state.record = record,
                    None => {
                        let statuses = StatusList::new(BITS, record.size).map_err(|e| {
                            StatusError::Damaged(format!("list {}: {e}", record.id))
                        })?;
                        lists.insert(
                            record.id,
                            ListState {
                                record,
                                statuses,
                                version: 0,
                                served: None,
                            },
                        );
                        changed = true;
                    }
                }
            }
            for (list, idx, value) in stored.statuses {
                // Statuses of a list already dropped are left for the next purge.
                let Some(state) = lists.get_mut(&list) else {
                    continue;
                };
                let status = Status::from_value(value);
                if state.statuses.get(idx).ok() != Some(status) {
                    state
                        .statuses
                        .set(idx, status)
                        .map_err(|e| StatusError::Damaged(format!("list {list}: {e}")))?;
                    state.version += 1;
                    changed = true;
                }
            }
        }
        if changed {
            self.changes.send_modify(|count| *count += 1);
        }
        Ok(())
    }

    /// Reads in what other replicas changed (a shared store; nothing to do with sled).
    pub(crate) async fn refresh(&self) -> Result<(), StatusError> {
        let mut seen = self.seen.lock().await;
        if let Some((stored, last)) = self.store.changes_since(*seen).await? {
            self.apply(stored, true)?;
            *seen = last;
        }
        Ok(())
    }

    /// Whether other replicas change these lists too.
    pub(crate) fn is_shared(&self) -> bool {
        self.store.is_shared()
    }

    /// The notifications of other replicas' changes; `None` with sled.
    pub(crate) fn notifications(&self) -> Option<tokio::sync::mpsc::Receiver<u64>> {
        self.store.notifications()
    }

    /// Whether a token living `ttl` seconds gets a status.
    pub(crate) fn applies_to(&self, ttl: u64) -> bool {
        self.settings.min_ttl.is_some_and(|min| ttl >= min)
    }

    pub(crate) fn uri(&self, list: u64) -> String {
        format!("{}{list}", self.settings.uri_prefix)
    }

    /// The Status List Aggregation's URI: the lists' prefix without its last slash.
    pub(crate) fn aggregation_uri(&self) -> String {
        self.settings.uri_prefix.trim_end_matches('/').to_owned()
    }

    /// A list's record as reserved: a new list joins, a known one takes the new bounds.
    fn install(&self, record: ListRecord) -> Result<(), StatusError> {
        let mut lists = self.lists.write().map_err(|_| StatusError::Poisoned)?;
        match lists.get_mut(&record.id) {
            Some(state) => state.record = record,
            None => {
                let statuses = StatusList::new(BITS, record.size)
                    .map_err(|e| StatusError::Damaged(format!("list {}: {e}", record.id)))?;
                lists.insert(
                    record.id,
                    ListState {
                        record,
                        statuses,
                        version: 0,
                        served: None,
                    },
                );
                drop(lists);
                self.changes.send_modify(|count| *count += 1);
            }
        }
        Ok(())
    }

    /// The list and index of `reference`, when it names one of these lists.
    pub(crate) fn locate(&self, reference: &StatusReference) -> Option<(u64, u64)> {
        let id = reference.uri.strip_prefix(&self.settings.uri_prefix)?;
        // Only the canonical spelling: "07" is not list 7.
        let list: u64 = id
            .parse()
            .ok()
            .filter(|list: &u64| list.to_string() == id)?;
        Some((list, reference.idx))
    }

    /// The `status` claim of the token holding `slot`.
    pub(crate) fn reference(&self, slot: Slot) -> StatusReference {
        StatusReference {
            idx: slot.idx,
            uri: self.uri(slot.list),
        }
    }

    /// The `jti` of the token holding `slot`, which expires at `exp`: SetTokenStatus finds
    /// the slot from it, on any replica, until then.
    pub(crate) fn jti(&self, slot: Slot, exp: u64) -> String {
        self.jtis.mint(slot, exp)
    }

    /// Whether index `idx` of list `list` holds a status other than VALID.
    fn is_set(&self, list: u64, idx: u64) -> bool {
        self.lists.read().is_ok_and(|lists| {
            lists
                .get(&list)
                .and_then(|state| state.statuses.get(idx).ok())
                .is_some_and(|status| status != Status::Valid)
        })
    }

    /// A receiver that sees a new value at every change of any list.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How long verifiers may cache a list (seconds).
    pub(crate) fn list_ttl(&self) -> u64 {
        self.settings.list_ttl
    }

    /// The ids of the lists held, oldest first.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.lists
            .read()
            .map(|lists| lists.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Drops the lists whose tokens have all expired; the list being filled stays.
    pub(crate) async fn purge(&self, now: u64) -> Result<Vec<u64>, StatusError> {
        let dropped = self.store.purge(now).await?;
        if !dropped.is_empty() {
            let mut lists = self.lists.write().map_err(|_| StatusError::Poisoned)?;
            for id in &dropped {
                lists.remove(id);
            }
            drop(lists);
            self.changes.send_modify(|count| *count += 1);
        }
        Ok(dropped)
    }
}

impl From<StoreError> for StatusError {
    fn from(error: StoreError) -> StatusError {
        StatusError::Store(error)
    }
}
