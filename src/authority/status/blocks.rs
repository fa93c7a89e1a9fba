//! The indexes a list hands out: reserved in durable blocks (one write per `BLOCK` tokens),
//! taken from the open block, with a spare reserved when it is half used so no request
//! waits for the disk, and nothing reserved for a moment after a failed reservation (the
//! database down), when tokens are issued without a status instead.

use std::sync::Arc;

use super::{Slot, StatusError, StatusLists};
use crate::store::status::{Block, Reservation};

/// Indexes reserved at a time: one durable write per this many tokens.
const BLOCK: u64 = 1024;
/// A block is used for this long at most, so a list's `valid_until` (reserved with the
/// block) bounds the `exp` of every token that took an index from it.
const BLOCK_WINDOW: u64 = 300;
/// After a failed reservation, seconds before the next is tried.
const RESERVATION_RETRY: u64 = 2;

pub(super) struct OpenBlock {
    block: Block,
    next: u64,
    opened_at: u64,
}

impl OpenBlock {
    /// Indexes left, and within the window its list's `valid_until` was reserved for.
    fn usable(&self, now: u64) -> bool {
        self.next < self.block.end && now < self.opened_at + BLOCK_WINDOW
    }
}

/// The block indexes are taken from, and the one reserved ahead to follow it.
#[derive(Default)]
pub(super) struct Blocks {
    open: Option<OpenBlock>,
    spare: Option<OpenBlock>,
    /// A task reserving the spare is on its way: no request starts another.
    spare_asked: bool,
}

impl Blocks {
    /// Whether index `idx` of list `list` is still to be handed out from the open or the
    /// spare block.
    pub(super) fn ahead(&self, list: u64, idx: u64) -> bool {
        [&self.open, &self.spare]
            .into_iter()
            .flatten()
            .any(|block| block.block.list == list && (block.next..block.block.end).contains(&idx))
    }
}

impl StatusLists {
    /// The next index, from the open block, the spare one, or a newly reserved one. When
    /// the open block is half used, the spare is reserved by a task of its own: no request
    /// waits for the disk, not even the one that noticed.
    pub(crate) async fn allocate(self: &Arc<Self>, now: u64) -> Result<Slot, StatusError> {
        if let Some((taken, low)) = self.take(now) {
            if low {
                let lists = Arc::clone(self);
                tokio::spawn(async move { lists.reserve_spare(now).await });
            }
            return Ok(taken);
        }
        // After a failed reservation (the database down), requests do not queue behind
        // the next attempt's connect timeout: they are told at once for a while.
        if self.reservation_failed_recently(now) {
            return Err(StatusError::Exhausted);
        }
        let _reserving = self.reserving.lock().await;
        if let Some((taken, _)) = self.take(now) {
            return Ok(taken);
        }
        if self.reservation_failed_recently(now) {
            return Err(StatusError::Exhausted);
        }
        let block = match self.reserve_block(now).await {
            Ok(block) => block,
            Err(error) => {
                self.reservation_failed_at
                    .store(now, std::sync::atomic::Ordering::Relaxed);
                return Err(error);
            }
        };
        self.block.lock().map_err(|_| StatusError::Poisoned)?.open = Some(block);
        self.take(now)
            .map(|(taken, _)| taken)
            .ok_or(StatusError::Exhausted)
    }

    fn reservation_failed_recently(&self, now: u64) -> bool {
        let at = self
            .reservation_failed_at
            .load(std::sync::atomic::Ordering::Relaxed);
        at != 0 && now < at + RESERVATION_RETRY
    }

    /// Reserves the spare block, unless one is held or being reserved. A failure is left
    /// for the next request, which reserves when the open block runs out.
    async fn reserve_spare(&self, now: u64) {
        self.try_reserve_spare(now).await;
        if let Ok(mut blocks) = self.block.lock() {
            blocks.spare_asked = false;
        }
    }

    async fn try_reserve_spare(&self, now: u64) {
        let Ok(_reserving) = self.reserving.try_lock() else {
            return;
        };
        if self.block.lock().map(|b| b.spare.is_some()).unwrap_or(true) {
            return;
        }
        match self.reserve_block(now).await {
            Ok(block) => {
                if let Ok(mut blocks) = self.block.lock() {
                    blocks.spare = Some(block);
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::chain(&error), "a spare block of status indexes could not be reserved")
            }
        }
    }

    async fn reserve_block(&self, now: u64) -> Result<OpenBlock, StatusError> {
        let (records, block) = self
            .store
            .reserve(Reservation {
                count: BLOCK.min(self.settings.list_size),
                size: self.settings.list_size,
                valid_until: now + BLOCK_WINDOW + self.settings.max_ttl + self.settings.leeway,
                now,
            })
            .await?;
        for record in records {
            self.install(record)?;
        }
        Ok(OpenBlock {
            block,
            next: block.start,
            opened_at: now,
        })
    }

    /// Makes the first list (and the one after it) when there is none, so the lists a
    /// token will name exist, and reach watchers, before any token is issued.
    pub(super) async fn prepare(&self, now: u64) -> Result<(), StatusError> {
        if !self.ids().is_empty() {
            return Ok(());
        }
        let (records, _) = self
            .store
            .reserve(Reservation {
                count: 0,
                size: self.settings.list_size,
                valid_until: 0,
                now,
            })
            .await?;
        for record in records {
            self.install(record)?;
        }
        Ok(())
    }

    /// An index from the open block (the spare one taking over when it runs out), and
    /// whether the spare should be reserved now.
    fn take(&self, now: u64) -> Option<(Slot, bool)> {
        let mut blocks = self.block.lock().ok()?;
        loop {
            if let Some(open) = blocks.open.as_mut().filter(|open| open.usable(now)) {
                let idx = open.next;
                open.next += 1;
                let list = open.block.list;
                // Given a status by index before its token was issued (on another replica,
                // which cannot know what this one has handed out): passed over, so no token
                // is born revoked or suspended.
                if self.is_set(list, idx) {
                    continue;
                }
                let low = open.block.end - open.next < (open.block.end - open.block.start) / 2;
                let want_spare = low && blocks.spare.is_none() && !blocks.spare_asked;
                blocks.spare_asked |= want_spare;
                return Some((Slot { list, idx }, want_spare));
            }
            match blocks.spare.take() {
                Some(spare) if spare.usable(now) => blocks.open = Some(spare),
                _ => return None,
            }
        }
    }

    /// Notes a token issued without a status because the store could not reserve an
    /// index: logged at most every 10 seconds, with the count since the last line.
    pub(crate) fn issued_without_status(&self, error: &StatusError, now: u64) {
        use std::sync::atomic::Ordering;
        self.unstatused_total.fetch_add(1, Ordering::Relaxed);
        let count = self.unstatused.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.unstatused_logged.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .unstatused_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.unstatused.store(0, Ordering::Relaxed);
            tracing::warn!(error = %crate::telemetry::chain(error), tokens = count, "tokens issued without a status: no index could be reserved (they can be withdrawn only by revoking their key)");
        }
    }
}
