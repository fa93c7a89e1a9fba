//! Traces over OTLP/gRPC to a real receiver (the protocol's own Python classes decode what
//! arrives): spans are children of the caller's, carry the caller, decision, kid and
//! algorithm and never a token; the trace id reaches the log lines and the latency
//! exemplars; a collector that is down, slow or failing never fails or holds up a request.

mod collector;
mod exchange;
mod settings;
mod spans;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tonic::Request;

use crate::{
    binary::{spawn_binary_with_env_logging, Process},
    helpers::{connect, DataDir},
    tools::python,
};

/// `tests/clients/otlp_receiver.py`, collecting the spans it prints.
struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(flags: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/otlp_receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(&port_file)
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&spans);
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str::<Value>(&line).unwrap());
            }
        });
        let started = Instant::now();
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                break port.trim().parse().unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the OTLP receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver {
            child,
            port,
            spans,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn tls_endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Waits until a span matches `wanted`, and returns it.
    fn span(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            if let Some(span) = self.spans.lock().unwrap().iter().find(|s| wanted(s)) {
                return span.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no span {what} arrived; got {:#?}",
                self.spans.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spans leave in batches every 100 ms instead of 5 s, so the test does not wait.
const FAST_BATCHES: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

/// The binary, exporting to `receiver` (batches every 100 ms), its log filtered by `log`.
fn traced_binary(dir: &DataDir, receiver: &Receiver, log: &str) -> Process {
    let endpoint = receiver.endpoint();
    tokio::task::block_in_place(|| {
        spawn_binary_with_env_logging(dir, &["--otlp-endpoint", &endpoint], &[FAST_BATCHES], log)
    })
}

fn traceparent(
    trace_id: &str,
    span_id: &str,
) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("00-{trace_id}-{span_id}-01").parse().unwrap()
}

fn with_parent<T>(message: T, trace_id: &str, span_id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent(trace_id, span_id));
    request
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// Waits (30 s at most) until the server has counted a span dropped for `reason`.
async fn wait_for_dropped(process: &Process, reason: &str, case: &str) {
    let started = Instant::now();
    while dropped(process, reason).await == 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{case}: no span counted as dropped ({reason})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's `/metrics` text.
async fn metrics_text(process: &Process) -> String {
    process.metrics_text().await
}

/// A GetJwks call on `grpc` in the trace `trace_id` (the caller's span `00f067aa0ba902b7`).
async fn get_jwks_in(grpc: &str, trace_id: &str) {
    connect(grpc)
        .await
        .get_jwks(with_parent(
            token_authority::pb::GetJwksRequest {},
            trace_id,
            "00f067aa0ba902b7",
        ))
        .await
        .unwrap();
}

async fn dropped(process: &Process, reason: &str) -> f64 {
    let metrics = metrics_text(process).await;
    let series = format!(r#"token_authority_trace_spans_dropped_total{{reason="{reason}"}} "#);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |value| value.parse().unwrap())
}
