//! Logging: tracing to stderr as text or one JSON object per line, filtered by `RUST_LOG`
//! (default `info`); errors are logged and printed with their causes (`chain`). With an OTLP
//! endpoint, this crate's spans are exported as traces too (`traces`).

use std::io::IsTerminal as _;

use tracing::subscriber::Interest;
use tracing_subscriber::{
    filter::{dynamic_filter_fn, LevelFilter, Targets},
    fmt,
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
    EnvFilter, Layer as _,
};

use crate::config::LogFormat;

mod chain;
pub(crate) mod traces;
pub use chain::{chain, Chain};
pub use traces::{TraceError, TraceSettings, Traces};

/// Installs the log output and, with `traces`, the exporter of spans. `RUST_LOG` filters
/// the log lines only: the exported spans are this crate's at `info`, whatever it says.
pub(crate) fn init(
    format: LogFormat,
    traces: Option<&TraceSettings>,
) -> Result<Option<Traces>, TraceError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let log = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(filter)
            .with_filter(not_traces_only())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .with_filter(not_traces_only())
            .boxed(),
    };
    let (traces, otel) = match traces {
        Some(settings) => {
            let (traces, tracer) = Traces::start(settings)?;
            let spans_only = Targets::new().with_target("token_authority", tracing::Level::INFO);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_location(false)
                .with_target(false)
                .with_filter(spans_only)
                .with_filter(spans());
            (Some(traces), Some(layer))
        }
        None => (None, None),
    };
    // A second init (tests that start several servers in one process) is harmless.
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(otel)
        .try_init();
    Ok(traces)
}

/// The log output leaves out the spans made for traces only. A `Targets` filter is decided
/// once per callsite: a filter function would be asked again at every event of every crate.
fn not_traces_only() -> Targets {
    Targets::new()
        .with_target(traces::TRACES_ONLY, LevelFilter::OFF)
        .with_default(LevelFilter::TRACE)
}

/// Spans, never events, decided once per callsite (see above).
fn spans<S>() -> impl tracing_subscriber::layer::Filter<S> {
    dynamic_filter_fn(|metadata, _| metadata.is_span()).with_callsite_filter(|metadata| {
        if metadata.is_span() {
            Interest::always()
        } else {
            Interest::never()
        }
    })
}
