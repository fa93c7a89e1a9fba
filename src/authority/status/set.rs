//! Setting one token's status (SetTokenStatus): found by its `jti` or its index, refused
//! unless the index was handed out, durable before it is acknowledged, and final once
//! INVALID.

use token_authority_jose::status_list::Status;

use super::{StatusError, StatusLists};
use crate::store::status::SetOutcome;

/// Where a status change is aimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Jti(String),
    Index { list: u64, idx: u64 },
}

/// What a status change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Changed {
    pub(crate) list: u64,
    pub(crate) idx: u64,
    pub(crate) previous: Status,
    pub(crate) status: Status,
}

impl StatusLists {
    /// Sets the status at `target`. INVALID is final: nothing changes it afterwards (the
    /// store decides, so a replica whose copy is behind cannot undo another's revocation).
    pub(crate) async fn set(
        &self,
        target: &Target,
        status: Status,
        now: u64,
    ) -> Result<Changed, StatusError> {
        let (list, idx) = match target {
            Target::Index { list, idx } => (*list, *idx),
            Target::Jti(jti) => match self.jtis.read(jti) {
                Some((slot, exp)) if exp >= now => (slot.list, slot.idx),
                _ => return Err(StatusError::UnknownJti),
            },
        };
        let _changing = self.changing.lock().await;
        if self.handed_out(list, idx).is_err() && self.is_shared() {
            // Another replica may have made the list, or handed out more of it.
            self.refresh().await?;
        }
        self.handed_out(list, idx)?;
        let previous = match self.store.set_status(list, idx, status.value()).await? {
            SetOutcome::Final => return Err(StatusError::Final { list, idx }),
            SetOutcome::Set { previous } => Status::from_value(previous),
        };
        {
            let mut lists = self.lists.write().map_err(|_| StatusError::Poisoned)?;
            let state = lists.get_mut(&list).ok_or(StatusError::UnknownList(list))?;
            state
                .statuses
                .set(idx, status)
                .map_err(|e| StatusError::Damaged(e.to_string()))?;
            state.version += 1;
        }
        self.changes.send_modify(|count| *count += 1);
        Ok(Changed {
            list,
            idx,
            previous,
            status,
        })
    }

    /// Whether index `idx` of list `list` was handed out: reserved, and not still ahead in
    /// one of this replica's own blocks. (Another replica's block may hold indexes it has
    /// not handed out yet; `take` passes over any of them given a status meanwhile.)
    fn handed_out(&self, list: u64, idx: u64) -> Result<(), StatusError> {
        {
            let lists = self.lists.read().map_err(|_| StatusError::Poisoned)?;
            let state = lists.get(&list).ok_or(StatusError::UnknownList(list))?;
            if idx >= state.record.allocated {
                return Err(StatusError::NotHandedOut {
                    list,
                    idx,
                    allocated: state.record.allocated,
                });
            }
        }
        // Not under the lists' lock: `take` locks the blocks, then the lists.
        if self
            .block
            .lock()
            .map_err(|_| StatusError::Poisoned)?
            .ahead(list, idx)
        {
            return Err(StatusError::NotYetHandedOut { list, idx });
        }
        Ok(())
    }
}
