//! Each RPC's span, metrics and outcome log line.

use std::{borrow::Cow, sync::LazyLock, time::Instant};

use opentelemetry::KeyValue;
use tonic::Status;
use tracing::{field, Instrument as _, Level};

use crate::{
    callers::audit::Limiter,
    metrics::{LabelValue, Method, Metrics},
    telemetry::traces::{self, Trace},
};

const SERVICE: &str = "tokenauthority.v1.TokenAuthority";

/// Each method's span name in a trace, `<service>/<method>`, made once.
static SPAN_NAMES: LazyLock<Vec<String>> = LazyLock::new(|| {
    Method::ALL
        .iter()
        .map(|method| format!("{SERVICE}/{}", method.as_str()))
        .collect()
});

/// Runs one RPC inside a span carrying its method, and logs its outcome and latency: at
/// `info` for failures and admin RPCs, at `debug` for the data plane's successful calls.
/// An info line per IssueToken/VerifyToken/ExchangeToken is megabytes a second at full load, and cost
/// the service measurable throughput (see the README's Performance section); metrics
/// count and time every call whatever the log level.
///
/// With traces on, the span is a child of the caller's (`parent`, from its `traceparent`),
/// carries the trace id into the request's log lines, and lends it to the latency
/// histogram as an exemplar. The handlers record the caller, the decision, and the key and
/// algorithm on it; never a token, secret or claim value.
pub(super) async fn observe<T>(
    metrics: &Metrics,
    limiter: &Limiter,
    method: Method,
    context: CallContext,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let CallContext { parent, deadline } = context;
    let trace = Trace::server(
        || Cow::Borrowed(SPAN_NAMES[method.index()].as_str()),
        parent,
        || {
            // Room for what the handlers set, so it is allocated once.
            let mut attributes = Vec::with_capacity(8);
            attributes.extend([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", SERVICE),
                KeyValue::new("rpc.method", method.as_str()),
            ]);
            attributes
        },
    );
    // The log lines of the request carry its trace id; its latency carries it as an
    // exemplar when the trace is exported.
    let trace_id = trace.trace_id();
    let span = tracing::info_span!(
        "rpc",
        method = method.as_str(),
        outcome = field::Empty,
        latency_us = field::Empty,
        trace_id = trace_id.as_deref(),
    );
    let started = Instant::now();
    let mut unanswered = Unanswered {
        trace: &trace,
        metrics,
        method,
        started,
        exemplar: trace_id.filter(|_| trace.is_sampled()),
        answered: false,
    };
    // A call past its deadline answers DEADLINE_EXCEEDED here, where it is counted and
    // traced like any other answer (a hung store or signer shows in the error rate).
    let result = tokio::time::timeout(deadline, trace.in_scope(call.instrument(span.clone())))
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "the call did not end within its deadline ({} ms); whether it took effect is not known",
                deadline.as_millis()
            )))
        });
    unanswered.answered = true;
    let code = result.as_ref().err().map_or(tonic::Code::Ok, Status::code);
    finish(&trace, code);
    let latency = started.elapsed();
    metrics.rpc(method, code, latency, unanswered.exemplar.take());
    let data_plane = matches!(
        method,
        Method::IssueToken
            | Method::VerifyToken
            | Method::ExchangeToken
            | Method::GetJwks
            | Method::WatchKeys
    );
    let level = match &result {
        Ok(_) if data_plane => Level::DEBUG,
        Ok(_) => Level::INFO,
        // Failures are counted by the metrics whatever happens here; their log lines are
        // rate-limited, with a summary of what was left out.
        Err(status) => {
            let Some(suppressed) =
                limiter.admit(&format!("{}:{:?}", method.as_str(), status.code()))
            else {
                return result;
            };
            if !suppressed.is_empty() {
                let count: u64 = suppressed.values().sum();
                tracing::info!(count, by_method_and_code = ?suppressed, "failed-call log lines suppressed by the rate limit");
            }
            Level::INFO
        }
    };
    // The outcome and latency go on the span only for a line that is written: each record
    // renders the span's fields again for the JSON log output.
    let written = span.in_scope(|| match level {
        Level::DEBUG => tracing::enabled!(Level::DEBUG),
        _ => tracing::enabled!(Level::INFO),
    });
    if written {
        let outcome: Cow<str> = match &result {
            Ok(_) => "ok".into(),
            Err(status) => format!("{:?}", status.code()).into(),
        };
        span.record("outcome", outcome.as_ref());
        span.record("latency_us", latency.as_micros() as u64);
        span.in_scope(|| match level {
            Level::DEBUG => tracing::debug!("rpc finished"),
            _ => tracing::info!("rpc finished"),
        });
    }
    result
}

/// What `observe` reads of a call's metadata: the caller's trace context (with traces on)
/// and the call's deadline.
pub(super) struct CallContext {
    parent: Option<opentelemetry::Context>,
    deadline: std::time::Duration,
}

impl CallContext {
    pub(super) fn of(metadata: &tonic::metadata::MetadataMap) -> CallContext {
        let headers = metadata.as_ref();
        CallContext {
            parent: traces::parent_from(headers),
            deadline: crate::transport::listener::call_deadline(headers),
        }
    }
}

/// Ends the call's span with the status it answered.
fn finish(trace: &Trace, code: tonic::Code) {
    if traces::enabled() {
        trace.set("rpc.grpc.status_code", code as i64);
        if code != tonic::Code::Ok {
            trace.set_error(format!("{code:?}"));
        }
        trace.end();
    }
}

/// A call whose future was dropped before it answered: its client cancelled it, or its
/// deadline (`grpc-timeout`) passed. Counted and its span ended as CANCELLED, as gRPC
/// names a call abandoned on the server's side; else it would leave no count, no latency,
/// and a span whose status says nothing, with a `sign` under it for a token never sent.
struct Unanswered<'a> {
    trace: &'a Trace,
    metrics: &'a Metrics,
    method: Method,
    started: Instant,
    exemplar: Option<String>,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        finish(self.trace, tonic::Code::Cancelled);
        self.metrics.rpc(
            self.method,
            tonic::Code::Cancelled,
            self.started.elapsed(),
            self.exemplar.take(),
        );
        tracing::debug!(
            method = self.method.as_str(),
            "rpc abandoned by its client before it answered"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call dropped before it answers (the client gone, its deadline passed) is counted
    /// as CANCELLED; one that answers is counted once, by its own status.
    #[tokio::test]
    async fn a_call_dropped_before_it_answers_is_counted_as_cancelled() {
        let metrics = Metrics::new(&[]);
        let limiter = Limiter::new(10);
        let hung = observe(
            &metrics,
            &limiter,
            Method::IssueToken,
            CallContext::of(&Default::default()),
            std::future::pending::<Result<(), Status>>(),
        );
        let gone = tokio::time::timeout(std::time::Duration::from_millis(10), hung).await;
        assert!(gone.is_err());
        observe(
            &metrics,
            &limiter,
            Method::IssueToken,
            CallContext::of(&Default::default()),
            async { Err::<(), _>(Status::permission_denied("no")) },
        )
        .await
        .unwrap_err();
        let count = |code: tonic::Code| metrics.rpc_count(Method::IssueToken, code);
        assert_eq!(count(tonic::Code::Cancelled), 1);
        assert_eq!(count(tonic::Code::PermissionDenied), 1);
        assert_eq!(count(tonic::Code::Ok), 0);
    }

    /// A call that outlives its deadline (the client's `grpc-timeout`, else 30 s) answers
    /// DEADLINE_EXCEEDED, counted: a hung signer or store shows in the error rate.
    #[tokio::test]
    async fn a_call_past_its_deadline_answers_deadline_exceeded_and_is_counted() {
        let metrics = Metrics::new(&[]);
        let limiter = Limiter::new(10);
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", "50m".parse().unwrap());
        let started = Instant::now();
        let status = observe(
            &metrics,
            &limiter,
            Method::IssueToken,
            CallContext::of(&metadata),
            std::future::pending::<Result<(), Status>>(),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(
            metrics.rpc_count(Method::IssueToken, tonic::Code::DeadlineExceeded),
            1
        );
        assert_eq!(
            metrics.rpc_count(Method::IssueToken, tonic::Code::Cancelled),
            0
        );
    }
}
