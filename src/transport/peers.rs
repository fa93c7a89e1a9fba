//! What one peer may take of a listener. A peer is the client's address (an IPv6 client by
//! its /64, the block one host is given), so that one client cannot:
//! - fill `--max-connections`: it holds at most `--max-connections-per-ip` open connections,
//!   and one more is closed at accept;
//! - keep the server verifying bad credentials: after a burst of failed authentications
//!   (`AUTH_FAILURE_BURST`, replenished at one per `AUTH_FAILURE_REFILL`), its calls that
//!   carry credentials are refused RESOURCE_EXHAUSTED until the next failure would be
//!   allowed, without their credentials being read. A peer that stops failing is never
//!   slowed, and other peers never are.
//!
//! The failure budget is a GCRA limiter per address (the `governor` crate); an address is
//! remembered only while it has failures to pay back.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use governor::{
    clock::{Clock as _, Reference as _},
    DefaultKeyedRateLimiter, Quota, RateLimiter,
};

use crate::{callers::CallerError, metrics::ListenerMetrics};

/// The default of the failed authentications a peer may have in a row before it is slowed
/// down (`--auth-failures-per-ip`): room for a misconfigured client's retries and for a
/// rotated secret's few failures.
pub(crate) const AUTH_FAILURE_BURST: u32 = 20;
/// Once the burst is spent, one more failure is allowed per this period.
pub(crate) const AUTH_FAILURE_REFILL: Duration = Duration::from_secs(1);
/// Past this many remembered peers, those with nothing left to pay back are forgotten.
const REMEMBERED_PEERS: usize = 10_000;

/// A peer's address as the limits count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey(IpAddr);

impl PeerKey {
    pub(crate) fn of(ip: IpAddr) -> PeerKey {
        PeerKey(match ip {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut segments = v6.segments();
                    segments[4..].fill(0);
                    IpAddr::V6(Ipv6Addr::from(segments))
                }
            },
        })
    }
}

/// The per-peer state of one listener.
pub(crate) struct Peers {
    max_connections_per_peer: usize,
    throttle_failures: bool,
    open: Mutex<HashMap<PeerKey, usize>>,
    failures: DefaultKeyedRateLimiter<PeerKey>,
    /// Peers whose failure budget is spent, until when.
    refused_until: Mutex<HashMap<PeerKey, governor::clock::QuantaInstant>>,
    metrics: ListenerMetrics,
}

impl fmt::Debug for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peers")
            .field("max_connections_per_peer", &self.max_connections_per_peer)
            .finish_non_exhaustive()
    }
}

/// A call refused because its peer failed authentication too often.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Throttled {
    /// When the peer may try again, in whole seconds (at least 1).
    pub(crate) retry_after_secs: u64,
}

impl From<Throttled> for CallerError {
    fn from(throttled: Throttled) -> CallerError {
        CallerError::Throttled {
            retry_after_secs: throttled.retry_after_secs,
        }
    }
}

impl Peers {
    /// `failure_burst` 0: failed authentications are never throttled.
    pub(crate) fn new(
        max_connections_per_peer: usize,
        failure_burst: u32,
        metrics: ListenerMetrics,
    ) -> Arc<Peers> {
        let burst = NonZeroU32::new(failure_burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(AUTH_FAILURE_REFILL)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Arc::new(Peers {
            max_connections_per_peer,
            throttle_failures: failure_burst > 0,
            open: Mutex::new(HashMap::new()),
            failures: RateLimiter::keyed(quota),
            refused_until: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// A connection of `ip`, unless it already holds its share; counted until the slot
    /// is dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let key = PeerKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max_connections_per_peer {
            self.metrics.refused_at_peer_limit.inc();
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            key,
        })
    }

    /// Whether `key` may present credentials now.
    fn check(&self, key: PeerKey) -> Result<(), Throttled> {
        let mut refused = self
            .refused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(until) = refused.get(&key).copied() else {
            return Ok(());
        };
        let now = self.failures.clock().now();
        if now >= until {
            refused.remove(&key);
            return Ok(());
        }
        self.metrics.calls_throttled.inc();
        let wait = Duration::from(until.duration_since(now));
        Err(Throttled {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
    }

    /// One failed authentication of `key`: once its budget is spent, its next calls are
    /// refused until one more failure would fit.
    fn failed(&self, key: PeerKey) {
        if !self.throttle_failures {
            return;
        }
        if let Err(not_until) = self.failures.check_key(&key) {
            let until = not_until.earliest_possible();
            self.refused_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, until);
        }
        if self.failures.len() > REMEMBERED_PEERS {
            self.failures.retain_recent();
            let now = self.failures.clock().now();
            self.refused_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, until| *until > now);
        }
    }
}

/// One open connection of a peer, counted while it lives.
pub(crate) struct PeerSlot {
    peers: Arc<Peers>,
    key: PeerKey,
}

impl PeerSlot {
    /// The handle requests on this connection use for the failure budget.
    pub(crate) fn peer(&self) -> Peer {
        Peer {
            peers: Arc::clone(&self.peers),
            key: self.key,
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The peer of a connection, as the authentication of its calls sees it.
#[derive(Clone)]
pub(crate) struct Peer {
    peers: Arc<Peers>,
    key: PeerKey,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Peer").field(&self.key).finish()
    }
}

impl Peer {
    /// Whether this peer may present credentials now.
    pub(crate) fn check(&self) -> Result<(), Throttled> {
        self.peers.check(self.key)
    }

    /// Counts an authentication that proved nothing against the peer's budget.
    pub(crate) fn judged<T>(&self, authenticated: &Result<T, CallerError>) {
        if authenticated
            .as_ref()
            .is_err_and(CallerError::is_unauthenticated)
        {
            self.peers.failed(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use token_authority_jose::crypto::Algorithm;

    fn peers(max: usize) -> Arc<Peers> {
        Peers::new(
            max,
            AUTH_FAILURE_BURST,
            Metrics::new(&[Algorithm::ES256]).grpc_listener.clone(),
        )
    }

    #[test]
    fn keys_group_an_ipv6_host_and_unmap_ipv4() {
        let key = |s: &str| PeerKey::of(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn connections_per_peer_are_capped_and_given_back() {
        let peers = peers(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = peers.admit(a).unwrap();
        let _second = peers.admit(a).unwrap();
        assert!(peers.admit(a).is_none());
        assert!(peers.admit(b).is_some());
        drop(first);
        assert!(peers.admit(a).is_some());
        assert_eq!(peers.metrics.refused_at_peer_limit.get(), 1);
    }

    #[test]
    fn a_failing_peer_is_throttled_after_its_burst_and_others_are_not() {
        let peers = peers(8);
        let bad = peers.admit("10.0.0.1".parse().unwrap()).unwrap().peer();
        let good = peers.admit("10.0.0.2".parse().unwrap()).unwrap().peer();
        let failed: Result<(), CallerError> = Err(CallerError::TwoCredentials);
        for _ in 0..AUTH_FAILURE_BURST {
            assert_eq!(bad.check(), Ok(()));
            bad.judged(&failed);
            // Refusals by the policy are not authentication failures.
            bad.judged(&Err::<(), _>(CallerError::AdminOnly));
        }
        bad.judged(&failed);
        assert_eq!(
            bad.check(),
            Err(Throttled {
                retry_after_secs: 1
            })
        );
        assert_eq!(good.check(), Ok(()));
        assert_eq!(peers.metrics.calls_throttled.get(), 1);
    }
}
