//! WatchKeys: the public key set streamed to every watcher at once and at every change.
//!
//! Each watcher gets a small task that waits on the authority's `watch` channel of key sets
//! and hands messages to tonic through a one-slot channel. A watch channel only ever holds
//! the latest set, so a watcher that falls behind skips to it instead of queueing the ones
//! it missed. A watcher that does not take even one message within the send timeout is
//! dropped: its place is freed and its HTTP/2 stream reset at once (see
//! `listener::StreamReset`: a client that keeps its window closed would otherwise keep the
//! stream, and what the server had queued for it, until its connection closed). What a
//! watcher holds is thus tied to its place: at most the message tonic encoded and hyper
//! waits to send, the one in its slot, and the stream's state, for at most `--max-watchers`
//! streams. Keepalive messages let a client notice a dead stream, and make a silent stuck
//! watcher show up as slow. Watching needs no caller identity: the key set is public, like
//! the JWKS; the places (`slots`) are capped in all and per client address.

use std::{
    net::IpAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{
    grpc::wire::{state_to_pb, timestamp},
    listener::StreamReset,
    peers::PeerKey,
};
use crate::{authority::keyset::KeySet, config::WatchSettings, metrics::WatchMetrics, pb};

mod slots;
mod status;

use self::slots::{Refused, Slot, Slots};
pub(crate) use self::status::StatusFeed;

/// The watchers of one server: their places, limits and the shutdown signal.
#[derive(Debug)]
pub struct Watchers {
    slots: Arc<Slots>,
    settings: WatchSettings,
    stop: CancellationToken,
}

/// Where a watcher's stream comes from, as the listener knows it.
#[derive(Clone, Debug, Default)]
pub(crate) struct WatcherPeer {
    /// The client's address, counted against `--max-watchers-per-ip`.
    pub(crate) addr: Option<IpAddr>,
    /// Resets the watcher's HTTP/2 stream; `None` outside the listener's stream tasks.
    pub(crate) reset: Option<StreamReset>,
}

impl Watchers {
    pub fn new(
        settings: WatchSettings,
        stop: CancellationToken,
        metrics: WatchMetrics,
    ) -> Watchers {
        Watchers {
            slots: Slots::new(settings.max_watchers, settings.max_watchers_per_ip, metrics),
            settings,
            stop,
        }
    }

    /// Starts a watcher on `keys`, unless the cap in all or its address's is reached.
    pub(crate) fn open(
        &self,
        keys: watch::Receiver<Arc<KeySet>>,
        lists: Option<StatusFeed>,
        peer: WatcherPeer,
    ) -> Result<WatchStream, Status> {
        let slot = self
            .slots
            .take(peer.addr.map(PeerKey::of))
            .map_err(|refused| {
                Status::resource_exhausted(match refused {
                    Refused::Full => format!(
                        "this server already has {} key watchers; retry later or use GetJwks",
                        self.settings.max_watchers
                    ),
                    Refused::PeerFull => format!(
                    "this client address already has {} key watchers; close one, or use GetJwks",
                    self.settings.max_watchers_per_ip
                ),
                })
            })?;
        let (tx, rx) = mpsc::channel(1);
        let ended = Arc::new(OnceLock::new());
        tokio::spawn(pump(
            keys,
            lists,
            tx,
            self.settings,
            self.stop.clone(),
            Arc::clone(&ended),
            Dropper {
                slot,
                reset: peer.reset,
            },
        ));
        Ok(WatchStream {
            rx,
            ended,
            done: false,
        })
    }
}

/// A watcher's place, and how to end its stream when it is dropped for being slow.
struct Dropper {
    slot: Slot,
    reset: Option<StreamReset>,
}

impl Dropper {
    fn metrics(&self) -> &WatchMetrics {
        self.slot.metrics()
    }

    /// Frees the place and the stream together. The stream is reset rather than ended with
    /// a status: a status waits behind the data the client does not take.
    fn drop_slow(self, ended: &OnceLock<Status>) {
        self.metrics().dropped_slow.inc();
        let _ = ended.set(Status::unavailable(
            "this watcher did not read its messages in time; reconnect",
        ));
        if let Some(reset) = &self.reset {
            reset.reset();
        }
    }
}

/// Forwards key sets, status lists and keepalives to one watcher until it goes away, is too
/// slow, or the server stops. Holding `dropper` is what counts the watcher against the caps.
async fn pump(
    mut keys: watch::Receiver<Arc<KeySet>>,
    mut lists: Option<StatusFeed>,
    tx: mpsc::Sender<Result<pb::WatchKeysResponse, Status>>,
    settings: WatchSettings,
    stop: CancellationToken,
    ended: Arc<OnceLock<Status>>,
    dropper: Dropper,
) {
    let announced = lists.is_some();
    let mut next = Some(key_set_message(
        &keys.borrow_and_update(),
        settings.keepalive,
        announced,
    ));
    // The lists follow the first key set, whose keys verify them.
    let mut lists_due = lists.is_some();
    let mut keepalive_at = Instant::now() + settings.keepalive;
    let mut refresh_at = Instant::now()
        + lists
            .as_ref()
            .map_or(Duration::from_secs(365 * 86_400), |l| l.refresh);
    loop {
        if let Some(message) = next.take() {
            match tx.send_timeout(Ok(message), settings.send_timeout).await {
                Ok(()) => keepalive_at = Instant::now() + settings.keepalive,
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    tracing::info!(timeout = ?settings.send_timeout, "key watcher dropped and its stream reset: it did not read its messages");
                    dropper.drop_slow(&ended);
                    return;
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
            }
        }
        if lists_due {
            lists_due = false;
            if let Some(feed) = lists.as_mut() {
                refresh_at = Instant::now() + feed.refresh;
                next = feed.message().await;
                if next.is_some() {
                    continue;
                }
            }
        }
        let list_changed = async {
            match lists.as_mut() {
                Some(feed) => feed.changes.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = keys.changed() => match changed {
                Ok(()) => next = Some(key_set_message(&keys.borrow_and_update(), settings.keepalive, announced)),
                // The authority is gone: the server is stopping.
                Err(_) => return,
            },
            changed = list_changed => {
                if changed {
                    lists_due = true;
                } else {
                    lists = None;
                }
            }
            () = tokio::time::sleep_until(refresh_at) => lists_due = true,
            () = tokio::time::sleep_until(keepalive_at) => next = Some(pb::WatchKeysResponse {
                event: Some(pb::watch_keys_response::Event::Keepalive(pb::WatchKeepalive {
                    etag: keys.borrow().jwks().etag.clone(),
                })),
            }),
            () = stop.cancelled() => {
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
pub(crate) fn key_set_message(
    keys: &KeySet,
    keepalive: Duration,
    status_lists: bool,
) -> pb::WatchKeysResponse {
    let jwks = keys.jwks();
    let watched = pb::WatchedKeySet {
        jwks_json: String::from_utf8_lossy(&jwks.body).into_owned(),
        etag: jwks.etag.clone(),
        keys: keys
            .infos()
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
        status_lists,
    };
    pb::WatchKeysResponse {
        event: Some(pb::watch_keys_response::Event::KeySet(watched)),
    }
}
