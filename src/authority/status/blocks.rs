//! The indexes a list hands out: reserved in durable blocks (one write per `BLOCK` tokens),
//! taken from the open block in a random order, with a spare reserved when it is half used so no request
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
    /// The block's indexes (as offsets from its start) in the random order they are handed
    /// out in, and how many have been.
    order: Vec<u32>,
    next: usize,
    /// Which offsets have been handed out (or passed over).
    taken: Vec<bool>,
    opened_at: u64,
}

impl OpenBlock {
    /// The block, its indexes to be handed out in a random order: the draft RECOMMENDS
    /// indexes that are not sequential, so that one does not tell how many tokens were
    /// issued before it, nor link two tokens issued one after the other. Without the system's
    /// randomness they go in order (nothing else depends on the order).
    fn new(block: Block, opened_at: u64) -> OpenBlock {
        let len = usize::try_from(block.end - block.start).unwrap_or(0);
        let mut order: Vec<u32> = (0..len as u32).collect();
        match token_authority_jose::crypto::random_bytes(4 * len) {
            Ok(random) => {
                // Fisher-Yates; the bias of a 32-bit draw reduced modulo at most 2^20 is
                // below one in four thousand, immaterial to hiding an order.
                for i in (1..len).rev() {
                    let draw =
                        u32::from_le_bytes(random[4 * i..4 * i + 4].try_into().unwrap_or_default());
                    order.swap(i, draw as usize % (i + 1));
                }
            }
            Err(error) => {
                tracing::warn!(%error, "status indexes of a block are handed out in order: no randomness to shuffle them")
            }
        }
        OpenBlock {
            block,
            order,
            next: 0,
            taken: vec![false; len],
            opened_at,
        }
    }

    /// Indexes left, and within the window its list's `valid_until` was reserved for.
    fn usable(&self, now: u64) -> bool {
        self.next < self.order.len() && now < self.opened_at + BLOCK_WINDOW
    }

    /// The next index, marked taken.
    fn take(&mut self) -> u64 {
        let offset = self.order[self.next];
        self.next += 1;
        self.taken[offset as usize] = true;
        self.block.start + u64::from(offset)
    }

    /// Whether `idx` of `list` is in this block and not handed out yet.
    fn holds_ahead(&self, list: u64, idx: u64) -> bool {
        self.block.list == list
            && (self.block.start..self.block.end).contains(&idx)
            && !self.taken[(idx - self.block.start) as usize]
    }

    /// Fewer than half its indexes left.
    fn low(&self) -> bool {
        self.order.len() - self.next < self.order.len() / 2
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
            .any(|block| block.holds_ahead(list, idx))
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
        Ok(OpenBlock::new(block, now))
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
                let idx = open.take();
                let list = open.block.list;
                // Given a status by index before its token was issued (on another replica,
                // which cannot know what this one has handed out): passed over, so no token
                // is born revoked or suspended.
                if self.is_set(list, idx) {
                    continue;
                }
                let low = open.low();
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
