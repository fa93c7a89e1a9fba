//! WatchKeys: the public key set streamed to every watcher at once and at every change.
//!
//! Each watcher gets a small task that waits on the authority's `watch` channel of key sets
//! and hands messages to tonic through a one-slot channel. A watch channel only ever holds
//! the latest set, so a watcher that falls behind skips to it instead of queueing the ones
//! it missed; a watcher that does not take even one message within the send timeout is
//! dropped (its slot freed, its stream ended with UNAVAILABLE when it next reads), so a
//! stuck client holds neither memory nor a slot. Keepalive messages let a client notice a
//! dead stream, and make a silent stuck watcher show up as slow. Watching needs no caller
//! identity: the key set is public, like the JWKS.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use super::grpc::wire::{state_to_pb, timestamp};
use crate::{config::WatchSettings, keyset::KeySet, metrics::WatchMetrics, pb};

/// The watchers of one server: their cap, limits and the shutdown signal.
#[derive(Debug)]
pub struct Watchers {
    slots: Arc<Semaphore>,
    settings: WatchSettings,
    stop: watch::Receiver<bool>,
    metrics: WatchMetrics,
}

impl Watchers {
    pub fn new(
        settings: WatchSettings,
        stop: watch::Receiver<bool>,
        metrics: WatchMetrics,
    ) -> Watchers {
        Watchers {
            slots: Arc::new(Semaphore::new(settings.max_watchers)),
            settings,
            stop,
            metrics,
        }
    }

    /// Starts a watcher on `keys`, unless the cap is reached.
    pub fn open(&self, keys: watch::Receiver<Arc<KeySet>>) -> Result<WatchStream, Status> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            self.metrics.refused_at_limit.inc();
            Status::resource_exhausted(format!(
                "this server already has {} key watchers; retry later or use GetJwks",
                self.settings.max_watchers
            ))
        })?;
        let (tx, rx) = mpsc::channel(1);
        let ended = Arc::new(OnceLock::new());
        self.metrics.open.inc();
        let slot = Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(pump(
            keys,
            tx,
            self.settings,
            self.stop.clone(),
            Arc::clone(&ended),
            slot,
        ));
        Ok(WatchStream {
            rx,
            ended,
            done: false,
        })
    }
}

/// A watcher's place under the cap, counted while it lives.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: WatchMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

/// Forwards key sets and keepalives to one watcher until it goes away, is too slow, or the
/// server stops. Holding `_slot` is what counts the watcher against the cap.
async fn pump(
    mut keys: watch::Receiver<Arc<KeySet>>,
    tx: mpsc::Sender<Result<pb::WatchKeysResponse, Status>>,
    settings: WatchSettings,
    mut stop: watch::Receiver<bool>,
    ended: Arc<OnceLock<Status>>,
    slot: Slot,
) {
    let mut message = key_set_message(&keys.borrow_and_update(), settings.keepalive);
    loop {
        match tx.send_timeout(Ok(message), settings.send_timeout).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                tracing::info!(timeout = ?settings.send_timeout, "key watcher dropped: it did not read its messages");
                slot.metrics.dropped_slow.inc();
                let _ = ended.set(Status::unavailable(
                    "this watcher did not read its messages in time; reconnect",
                ));
                return;
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
        }
        message = tokio::select! {
            changed = keys.changed() => match changed {
                Ok(()) => key_set_message(&keys.borrow_and_update(), settings.keepalive),
                // The authority is gone: the server is stopping.
                Err(_) => return,
            },
            () = tokio::time::sleep(settings.keepalive) => pb::WatchKeysResponse {
                event: Some(pb::watch_keys_response::Event::Keepalive(pb::WatchKeepalive {
                    etag: keys.borrow().jwks().etag.clone(),
                })),
            },
            _ = stop.wait_for(|stop| *stop) => {
                let _ = ended.set(Status::unavailable("the server is shutting down; reconnect to another replica"));
                return;
            }
            () = tx.closed() => return,
        };
    }
}

/// The stream tonic sends: the pump's messages, then the reason it ended, if any.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<Result<pb::WatchKeysResponse, Status>>,
    ended: Arc<OnceLock<Status>>,
    done: bool,
}

impl tokio_stream::Stream for WatchStream {
    type Item = Result<pb::WatchKeysResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(self.ended.get().cloned().map(Err))
            }
            other => other,
        }
    }
}

/// The public view of a key set: the JWKS bytes and ETag, and each key's lifecycle facts.
/// Built field by field from the records, so no private member can slip in.
pub fn key_set_message(keys: &KeySet, keepalive: Duration) -> pb::WatchKeysResponse {
    let jwks = keys.jwks();
    let watched = pb::WatchedKeySet {
        jwks_json: String::from_utf8_lossy(&jwks.body).into_owned(),
        etag: jwks.etag.clone(),
        keys: keys
            .records()
            .iter()
            .map(|record| pb::WatchedKey {
                key_id: record.kid.clone(),
                algorithm: record.alg.name().to_owned(),
                state: state_to_pb(record.state) as i32,
                published_at: Some(timestamp(record.published_at)),
                activated_at: record.activated_at.map(timestamp),
                retired_at: record.retired_at.map(timestamp),
                revoked_at: record.revoked_at.map(timestamp),
                delete_after: record.delete_after.map(timestamp),
            })
            .collect(),
        keepalive_interval: Some(prost_types::Duration {
            seconds: i64::try_from(keepalive.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(keepalive.subsec_nanos()).unwrap_or(0),
        }),
    };
    pb::WatchKeysResponse {
        event: Some(pb::watch_keys_response::Event::KeySet(watched)),
    }
}
