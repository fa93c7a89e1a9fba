//! What the metrics show of the status lists, counted at each scrape.

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
    /// Counts every list's statuses: a scan of their packed bytes (a list of a million
    /// tokens is 256 KiB, mostly zeros skipped a byte at a time), so it is done per scrape,
    /// never per request.
    pub(crate) fn census(&self) -> Census {
        let mut census = Census {
            issued_without_status: self.unstatused_total.load(Ordering::Relaxed),
            ..Census::default()
        };
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
