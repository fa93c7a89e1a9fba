//! The bounded way out of finished spans: an admission counter in front of the SDK's batch
//! processor, and an exporter that gives admissions back and counts what a failed export lost.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{BatchSpanProcessor, SpanData, SpanExporter},
    Resource,
};

use super::dropped;

/// Spans handed to the batch processor and not yet through an export. The processor's own
/// queue holds at most as many, so it never drops one itself: every drop is counted here.
#[derive(Debug)]
pub(super) struct Admission {
    pending: AtomicUsize,
    capacity: usize,
}

impl Admission {
    pub(super) fn new(capacity: usize) -> Admission {
        Admission {
            pending: AtomicUsize::new(0),
            capacity,
        }
    }
}

/// Admits a finished span only while fewer than the queue's capacity are pending.
#[derive(Debug)]
pub(super) struct Bounded {
    pub(super) inner: BatchSpanProcessor,
    pub(super) admission: Arc<Admission>,
}

impl opentelemetry_sdk::trace::SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.admission.pending.fetch_add(1, Ordering::AcqRel) >= self.admission.capacity {
            self.admission.pending.fetch_sub(1, Ordering::AcqRel);
            dropped("queue_full").inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, giving back its batch's admissions when the export ends, however it
/// ends (an abandoned export drops its future).
#[derive(Debug)]
pub(super) struct Counted<E> {
    pub(super) inner: E,
    pub(super) admission: Arc<Admission>,
}

/// Seconds between two log lines of a kind: a collector that is down fails every batch,
/// and the counter has each.
const LOG_INTERVAL: u64 = 60;

/// Lets a log line through at most once a minute.
pub(super) struct LogLimit(AtomicU64);

impl LogLimit {
    pub(super) const fn new() -> LogLimit {
        LogLimit(AtomicU64::new(0))
    }

    pub(super) fn admit(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let last = self.0.load(Ordering::Relaxed);
        (last == 0 || now >= last + LOG_INTERVAL)
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

static FAILURE_LOGGED: LogLimit = LogLimit::new();

/// Says that an export failed (at most once a minute), so that a collector refusing the
/// server's TLS or its batches is found in the log, not only in a counter.
fn export_failed(error: &opentelemetry_sdk::error::OTelSdkError, spans: usize) {
    if FAILURE_LOGGED.admit() {
        tracing::warn!(%error, spans, "spans could not be exported to the collector (counted in token_authority_trace_spans_dropped_total; this line at most once a minute)");
    }
}

/// Gives back `spans` admissions when dropped; counts them lost unless `exported`.
struct Release {
    admission: Arc<Admission>,
    spans: usize,
    exported: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.admission
            .pending
            .fetch_sub(self.spans, Ordering::AcqRel);
        if !self.exported {
            dropped("export_failed").inc_by(self.spans as u64);
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let release = Release {
            admission: Arc::clone(&self.admission),
            spans: batch.len(),
            exported: false,
        };
        let export = self.inner.export(batch);
        async move {
            let mut release = release;
            let result = export.await;
            release.exported = result.is_ok();
            if let Err(error) = &result {
                export_failed(error, release.spans);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
