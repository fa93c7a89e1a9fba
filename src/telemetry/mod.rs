//! Logging: tracing to stderr as text or one JSON object per line, filtered by `RUST_LOG`
//! (default `info`); errors are logged and printed with their causes (`chain`). With an OTLP
//! endpoint, requests are exported as traces too (`traces`), made apart from the logs.

use std::io::IsTerminal as _;

use tracing_subscriber::{
    fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter, Layer as _,
};

use crate::config::LogFormat;

mod chain;
pub(crate) mod traces;
pub use chain::{chain, Chain};
pub use traces::{TraceError, TraceSettings, Traces};

/// Installs the log output and, with `traces`, the exporter of spans. `RUST_LOG` filters
/// the log lines only, not the exported spans.
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
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    let traces = traces.map(Traces::start).transpose()?;
    // A second init (tests that start several servers in one process) is harmless.
    let _ = tracing_subscriber::registry().with(log).try_init();
    Ok(traces)
}
