//! The per-connection service hyper drives: each request gets the connection's info, the
//! request limit and deadline, and a body that reports when its response has been sent.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, Router};
use bytes::Bytes;
use hyper::{
    body::{Frame, Incoming, SizeHint},
    Request, Response,
};
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt as _;

use super::{
    state::{ConnState, InFlight},
    stream_task::StreamReset,
    Protocol, Refusal, GRPC_REQUESTS_PER_CONNECTION, GRPC_REQUEST_TIMEOUT,
};
use crate::transport::connection::ConnectionInfo;

/// The per-connection service: puts the connection's info into each request, applies the
/// request limit and deadline, and tracks each response until it is sent.
#[derive(Clone)]
pub(super) struct Tracked {
    pub(super) router: Router,
    pub(super) state: Arc<ConnState>,
    pub(super) info: ConnectionInfo,
    /// What tonic's own server put there: `Request::remote_addr()` keeps working.
    pub(super) tcp_info: TcpConnectInfo,
    pub(super) protocol: Protocol,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        request.extensions_mut().insert(self.tcp_info.clone());
        let protocol = self.protocol;
        // HTTP/1 has one request at a time; only HTTP/2 needs a limit.
        let limit = match protocol {
            Protocol::Grpc => GRPC_REQUESTS_PER_CONNECTION,
            Protocol::Http => usize::MAX,
        };
        let Some(in_flight) = self.state.start(limit) else {
            let refused = protocol.refusal(Refusal::Overloaded);
            return Box::pin(std::future::ready(Ok(refused.map(TrackedBody::untracked))));
        };
        let router = self.router.clone();
        // The client's deadline, when shorter than ours (what tonic's server honoured). The
        // service's own calls end at it themselves (`grpc::observe`), counted and traced;
        // this is the backstop for the rest, a moment later so as not to race them.
        let deadline = call_deadline(request.headers()) + DEADLINE_BACKSTOP;
        Box::pin(async move {
            // Read here, inside the stream's task: a handler that must end its stream while
            // hyper is stuck on the client's window fires it.
            if let Some(reset) = StreamReset::current() {
                request.extensions_mut().insert(reset);
            }
            let response = router.oneshot(request);
            let response = match protocol {
                Protocol::Grpc => tokio::time::timeout(deadline, response)
                    .await
                    .unwrap_or_else(|_| Ok(protocol.refusal(Refusal::Timeout))),
                Protocol::Http => response.await,
            };
            let Ok(response) = response;
            in_flight.handed_over();
            Ok(response.map(|body| TrackedBody {
                inner: body,
                in_flight: Some(in_flight),
            }))
        })
    }
}

/// How long after a call's deadline the listener ends a call that did not end itself.
const DEADLINE_BACKSTOP: Duration = Duration::from_millis(500);

/// A gRPC call's deadline: the client's (`grpc-timeout`), when shorter than ours.
pub(crate) fn call_deadline(headers: &hyper::HeaderMap) -> Duration {
    grpc_timeout(headers).map_or(GRPC_REQUEST_TIMEOUT, |client| {
        client.min(GRPC_REQUEST_TIMEOUT)
    })
}

/// The `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and a unit); `None` when
/// absent or malformed, as tonic did.
pub(crate) fn grpc_timeout(headers: &hyper::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A response body that reports whether the client is taking its frames.
pub(super) struct TrackedBody {
    pub(super) inner: Body,
    pub(super) in_flight: Option<InFlight>,
}

impl TrackedBody {
    pub(super) fn untracked(inner: Body) -> TrackedBody {
        TrackedBody {
            inner,
            in_flight: None,
        }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {
                if let Some(in_flight) = &self.in_flight {
                    in_flight.waiting_on_source();
                }
            }
            Poll::Ready(Some(Ok(_))) => {
                if let Some(in_flight) = &self.in_flight {
                    in_flight.handed_over();
                }
            }
            // The response is complete (or failed): the request is no longer in flight.
            Poll::Ready(None | Some(Err(_))) => self.in_flight = None,
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
