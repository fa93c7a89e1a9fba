//! The status lists on a WatchKeys stream: every list after the first key set, then the
//! lists whose rendering changed since this watcher was last sent them (a status set, a new
//! list, a new signature at half the list's ttl), with the ids of every list served.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::{authority::Authority, pb, telemetry::chain};

/// Where a watcher's status lists come from.
pub(crate) struct StatusFeed {
    pub(crate) authority: Arc<Authority>,
    pub(crate) changes: watch::Receiver<u64>,
    /// What this watcher was sent: each list's ETag.
    sent: HashMap<u64, String>,
    /// Whether the first message (sent even when empty) is still to come.
    first: bool,
    /// How often renderings are looked at again (half a list's ttl): a list re-signed
    /// before its copy expires is sent again.
    pub(crate) refresh: Duration,
}

impl StatusFeed {
    /// The feed of `authority`'s lists, when it keeps any.
    pub(crate) fn of(authority: &Arc<Authority>) -> Option<StatusFeed> {
        let lists = authority.status_lists()?;
        Some(StatusFeed {
            authority: Arc::clone(authority),
            changes: lists.subscribe(),
            sent: HashMap::new(),
            first: true,
            refresh: Duration::from_secs((lists.list_ttl() / 2).max(1)),
        })
    }

    /// The lists this watcher has not been sent in their current rendering; `None` when
    /// nothing changed for it. The first message is sent even when empty: the key set
    /// announced it.
    pub(crate) async fn message(&mut self) -> Option<pb::WatchKeysResponse> {
        self.changes.borrow_and_update();
        let lists = self.authority.status_lists()?;
        let ids = lists.ids();
        let now = self.authority.clock().unix_now();
        let mut changed = Vec::new();
        for &id in &ids {
            match self.authority.status_list_token(id, now).await {
                Ok(served) if self.sent.get(&id) != Some(&served.etag) => {
                    self.sent.insert(id, served.etag.clone());
                    changed.push(pb::WatchedStatusList {
                        list_id: id,
                        uri: lists.uri(id),
                        token: served.token.clone(),
                    });
                }
                Ok(_) => {}
                // Dropped meanwhile, or not signable now: the next change or refresh
                // sends it.
                Err(error) => {
                    tracing::debug!(error = %chain(&error), list = id, "a status list was not sent to a watcher")
                }
            }
        }
        let before = self.sent.len();
        self.sent.retain(|id, _| ids.contains(id));
        if changed.is_empty() && self.sent.len() == before && !self.first {
            return None;
        }
        self.first = false;
        Some(pb::WatchKeysResponse {
            event: Some(pb::watch_keys_response::Event::StatusLists(
                pb::WatchedStatusLists {
                    lists: changed,
                    list_ids: ids,
                },
            )),
        })
    }
}
