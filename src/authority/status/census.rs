//! What the metrics show of the status lists, counted again once they change.

use std::sync::atomic::Ordering;

use token_authority_jose::status_list::Status;

use super::StatusLists;

/// The lists held and the statuses they hold other than VALID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Census {
    pub(crate) lists: u64,
    pub(crate) revoked: u64,
    pub(crate) suspended: u64,
    /// Tokens issued without a status since start because no index could be reserved.
    pub(crate) issued_without_status: u64,
}

impl StatusLists {
    /// The lists and their statuses other than VALID. Counting is a scan of every list's
    /// packed bytes (a list of 16 million tokens is 4 MiB), and `/metrics` needs no
    /// credentials: the count is kept until a status or a list changes, so scrapes as fast
    /// as anyone sends them scan nothing.
    pub(crate) fn census(&self) -> Census {
        // Read before the scan: every change bumps it after it is made, so a census kept
        // under this count holds every change counted up to it.
        let changes = *self.changes.borrow();
        let kept = *self
            .census
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut census = match kept {
            Some((at, census)) if at == changes => census,
            _ => {
                let census = self.count();
                *self
                    .census
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((changes, census));
                census
            }
        };
        census.issued_without_status = self.unstatused_total.load(Ordering::Relaxed);
        census
    }

    fn count(&self) -> Census {
        let mut census = Census::default();
        if let Ok(lists) = self.lists.read() {
            for state in lists.values() {
                let tally = state.statuses.tally();
                census.lists += 1;
                census.revoked += tally[usize::from(Status::Invalid.value())];
                census.suspended += tally[usize::from(Status::Suspended.value())];
            }
        }
        census
    }
}
