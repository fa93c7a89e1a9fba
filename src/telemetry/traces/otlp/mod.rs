//! The OTLP/gRPC exporter: each batch written straight into its protobuf request (`encode`)
//! and sent with tonic to `TraceService/Export`.
//!
//! In place of `opentelemetry-otlp`'s, which copies each batch whole and converts every span
//! into `opentelemetry-proto`'s structs, a string allocated for each name, attribute key and
//! value, then encodes and frees them: about two thirds of what a traced IssueToken cost in
//! all (see the README's Performance section). The request is the same message (the tests
//! decode ours with `opentelemetry-proto` and compare it with its conversion), sent as the
//! specification asks: retried with backoff on the codes it calls retryable, within the
//! export's timeout, and what a collector reports rejecting is counted.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
    Resource,
};
use prost::bytes::Bytes;
use tonic::{
    client::Grpc, codegen::http::uri::PathAndQuery, metadata::MetadataMap, transport::Channel,
    Code, Request, Status,
};

mod codec;
mod encode;
mod headers;
#[cfg(test)]
mod tests;

pub use headers::CollectorHeaders;

use super::{dropped, LogLimit};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Retries of an export after the first attempt, at most (the specification's recommended
/// policy, as `opentelemetry-otlp` has it).
const MAX_RETRIES: u32 = 3;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(1600);

/// A collector's rejections are logged at most once a minute; the counter has each.
static REJECTION_LOGGED: LogLimit = LogLimit::new();

#[derive(Debug)]
pub(crate) struct OtlpExporter {
    client: Grpc<Channel>,
    metadata: MetadataMap,
    resource: encode::EncodedResource,
    /// The runtime the sends run on: the SDK's batch processor calls `export` on a thread
    /// of its own, without the timers a retry and a timeout need.
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    shut_down: AtomicBool,
}

impl OtlpExporter {
    /// Must be called on the Tokio runtime the exports are to run on.
    pub(crate) fn new(channel: Channel, headers: &CollectorHeaders, timeout: Duration) -> Self {
        OtlpExporter {
            client: Grpc::new(channel),
            metadata: headers.metadata(),
            resource: encode::EncodedResource::default(),
            runtime: tokio::runtime::Handle::current(),
            timeout,
            shut_down: AtomicBool::new(false),
        }
    }
}

impl SpanExporter for OtlpExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let sent = if self.shut_down.load(Ordering::Acquire) {
            None
        } else {
            // Written here, on the batch processor's thread; only the sending is the runtime's.
            let request = Bytes::from(encode::export_request(&batch, &self.resource));
            drop(batch);
            Some(self.runtime.spawn(send(
                self.client.clone(),
                self.metadata.clone(),
                request,
                self.timeout,
            )))
        };
        async move {
            match sent {
                None => Err(OTelSdkError::AlreadyShutdown),
                Some(sending) => sending.await.unwrap_or_else(|_| {
                    Err(OTelSdkError::InternalFailure(
                        "the export was cancelled with the runtime".into(),
                    ))
                }),
            }
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = encode::EncodedResource::new(resource);
    }
}

/// Sends one export request, retrying a retryable failure with backoff while the export's
/// `timeout` allows.
async fn send(
    mut client: Grpc<Channel>,
    metadata: MetadataMap,
    request: Bytes,
    timeout: Duration,
) -> OTelSdkResult {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = FIRST_RETRY_DELAY;
    let mut retries = 0;
    loop {
        let attempt = async {
            client.ready().await.map_err(|error| {
                Status::unavailable(format!("the collector is not reachable: {error}"))
            })?;
            let mut call = Request::new(request.clone());
            *call.metadata_mut() = metadata.clone();
            call.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
            client
                .unary(
                    call,
                    PathAndQuery::from_static(EXPORT_PATH),
                    codec::ExportCodec,
                )
                .await
        };
        let status = match tokio::time::timeout_at(deadline, attempt).await {
            Err(_) => return Err(OTelSdkError::Timeout(timeout)),
            Ok(Ok(response)) => {
                rejected(response.into_inner().partial_success);
                return Ok(());
            }
            Ok(Err(status)) => status,
        };
        let retry_at = tokio::time::Instant::now() + delay + jitter();
        if retries == MAX_RETRIES || !retryable(status.code()) || retry_at >= deadline {
            // The code only: a collector's message may echo the request's credentials.
            return Err(OTelSdkError::InternalFailure(format!(
                "the collector answered {:?}",
                status.code()
            )));
        }
        tokio::time::sleep_until(retry_at).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
        retries += 1;
    }
}

/// The codes the OTLP specification calls retryable (RESOURCE_EXHAUSTED only with a retry
/// delay from the collector, which this does not read: not retried).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Up to 100 ms, so that replicas that failed together do not retry together.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    Duration::from_nanos(u64::from(nanos % 100_000_000))
}

/// Counts (and logs, at most once a minute) the spans a collector accepted the request with
/// but dropped.
fn rejected(partial_success: Option<codec::PartialSuccess>) {
    let Some(partial) = partial_success else {
        return;
    };
    let spans = u64::try_from(partial.rejected_spans).unwrap_or(0);
    if spans > 0 {
        dropped("rejected").inc_by(spans);
    }
    if (spans > 0 || !partial.error_message.is_empty()) && REJECTION_LOGGED.admit() {
        tracing::warn!(
            spans,
            collector_says = partial.error_message.chars().take(200).collect::<String>(),
            "the collector rejected spans (counted in token_authority_trace_spans_dropped_total; this line at most once a minute)"
        );
    }
}
