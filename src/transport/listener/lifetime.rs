//! How long a served connection lives: closed when idle, cut when its client stopped
//! reading, retired at its maximum age, and closed at shutdown; and how long a connection
//! asked to close is given to do so.

use std::{net::SocketAddr, pin::pin, time::Duration};

use hyper_util::server::graceful::GracefulConnection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    state::{ConnState, Verdict},
    Shared, GRPC_REQUEST_TIMEOUT,
};

/// How long a connection asked to close (idle, or shutting down) with nothing in flight is
/// left to complete the close with its client before it is dropped: an HTTP/2 client needs
/// one round trip to acknowledge the GOAWAY.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long a connection past its maximum age has to finish its requests: every unary
/// call ends within `GRPC_REQUEST_TIMEOUT`; a WatchKeys stream is cut and its client
/// reconnects.
const MAX_AGE_GRACE: Duration = GRPC_REQUEST_TIMEOUT;

/// `age` shortened by 0 to 10 % per connection (spread by the client's port), so that
/// clients that connected together do not all reconnect together; never longer than `age`.
pub(super) fn jittered_age(age: Duration, remote: SocketAddr) -> Duration {
    age.mul_f64(1.0 - f64::from(remote.port() % 11) / 100.0)
}

impl Shared {
    /// Runs one connection to its end, closing it when idle, stalled, past `retire_at` or
    /// shut down.
    pub(super) async fn drive<C>(
        &self,
        connection: C,
        state: &ConnState,
        shutdown: CancellationToken,
        retire_at: Instant,
    ) where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let idle = self.limits.idle_timeout;
        let mut connection = pin!(connection);
        // Since when the connection has been asked to close (GOAWAY sent).
        let mut closing: Option<Instant> = None;
        // Past its age, requests still in flight get MAX_AGE_GRACE, then the connection goes.
        let mut retired: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if retired.is_none() && now >= retire_at {
                self.metrics.closed_max_age.inc();
                if closing.is_none() {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(now);
                }
                retired = Some(now + MAX_AGE_GRACE);
            }
            if retired.is_some_and(|at| now >= at) {
                tracing::debug!(
                    listener = self.protocol.name(),
                    "requests outlived the connection's age grace; connection closed"
                );
                return;
            }
            let wake = match state.check(now, idle) {
                Verdict::Stalled => {
                    // The client holds responses in our buffers and reads none: dropping the
                    // connection frees them; a graceful close would wait for them forever.
                    self.metrics.closed_stalled.inc();
                    tracing::debug!(
                        listener = self.protocol.name(),
                        "client stopped reading responses; connection closed"
                    );
                    return;
                }
                Verdict::Idle if closing.is_none() => {
                    self.metrics.closed_idle.inc();
                    connection.as_mut().graceful_shutdown();
                    closing = Some(now);
                    now + idle
                }
                Verdict::Idle => now + idle,
                Verdict::Busy { next_check } => next_check,
            };
            // A graceful close waits for the client to acknowledge (HTTP/2 answers a PING after
            // GOAWAY); a client that never does, with nothing in flight, would hold the
            // connection, and a shutdown, until keepalive gives up. Once asked to close and
            // quiet, it gets CLOSE_WAIT: time to flush the last response and acknowledge.
            let drop_at = match (closing, state.quiet_since()) {
                (Some(since), Some(quiet)) => Some(since.max(quiet) + CLOSE_WAIT),
                _ => None,
            };
            if drop_at.is_some_and(|at| now >= at) {
                return;
            }
            let wake = drop_at.map_or(wake, |at| wake.min(at));
            let wake = wake.min(retired.unwrap_or(retire_at));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, listener = self.protocol.name(), "connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled(), if closing.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
                // The last request in flight ended: when a closing connection goes changes.
                () = state.drained.notified(), if closing.is_some() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}
