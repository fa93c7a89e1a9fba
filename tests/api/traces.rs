//! Traces over OTLP/gRPC to a real receiver (the protocol's own Python classes decode what
//! arrives): spans are children of the caller's, carry the caller, decision, kid and
//! algorithm and never a token; the trace id reaches the log lines and the latency
//! exemplars; a collector that is down, slow or failing never fails or holds up a request.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use token_authority::pb;
use tonic::Request;

use crate::{
    binary::{spawn_binary_with_env, spawn_binary_with_env_logging, Process},
    helpers::{admin, connect, TlsSetup, ADMIN_TOKEN},
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_children_of_the_callers_with_their_attributes_and_no_token() {
    let receiver = Receiver::start(&[]);
    let dir = crate::helpers::DataDir::new();
    let endpoint = receiver.endpoint();
    let mut process = tokio::task::block_in_place(|| {
        spawn_binary_with_env_logging(
            &dir,
            &["--otlp-endpoint", &endpoint],
            &[FAST_BATCHES],
            "token_authority=debug",
        )
    });
    let mut client = connect(&process.grpc).await;

    let issue_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let issue_parent = "00f067aa0ba902b7";
    let issued = client
        .issue_token(with_parent(
            pb::IssueTokenRequest {
                subject: "svc".into(),
                audience: vec!["api".into()],
                ..Default::default()
            },
            issue_trace,
            issue_parent,
        ))
        .await
        .unwrap()
        .into_inner();
    let verify_trace = "0af7651916cd43dd8448eb211c80319c";
    let verified = client
        .verify_token(with_parent(
            pb::VerifyTokenRequest {
                token: issued.token.clone(),
                audience: "api".into(),
                ..Default::default()
            },
            verify_trace,
            "b7ad6b7169203331",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid);
    let rotate_trace = "5b8efff798038103d269b633813fc60c";
    let mut rotate = admin(pb::RotateKeysRequest {
        force: true,
        ..Default::default()
    });
    rotate
        .metadata_mut()
        .insert("traceparent", traceparent(rotate_trace, "eee19b7ec3c1b174"));
    client.rotate_keys(rotate).await.unwrap();
    let http_trace = "a3ce929d0e0e47364bf92f3577b34da6";
    let jwks = reqwest::Client::new()
        .get(format!("http://{}/.well-known/jwks.json", process.http))
        .header(
            "traceparent",
            format!("00-{http_trace}-00f067aa0ba902b8-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);

    let rpc = receiver.span("of IssueToken", |s| {
        s["trace_id"] == issue_trace && s["name"] == "tokenauthority.v1.TokenAuthority/IssueToken"
    });
    assert_eq!(rpc["parent_span_id"], issue_parent, "{rpc:#}");
    assert_eq!(rpc["kind"], 2, "SPAN_KIND_SERVER: {rpc:#}");
    assert_eq!(rpc["service"], "token-authority");
    assert_eq!(attribute(&rpc, "kid"), issued.key_id.as_str(), "{rpc:#}");
    assert_eq!(attribute(&rpc, "alg"), "RS256", "{rpc:#}");
    // An open authority (no policy) knows no caller.
    assert!(attribute(&rpc, "caller").is_null(), "{rpc:#}");
    assert_eq!(attribute(&rpc, "decision"), "allowed", "{rpc:#}");
    assert_eq!(attribute(&rpc, "rpc.grpc.status_code"), 0, "{rpc:#}");
    let sign = receiver.span("of the signature", |s| {
        s["trace_id"] == issue_trace && s["name"] == "sign"
    });
    assert_eq!(sign["parent_span_id"], rpc["span_id"], "{sign:#}");
    assert_eq!(attribute(&sign, "kid"), issued.key_id.as_str());

    let verify = receiver.span("of VerifyToken", |s| {
        s["trace_id"] == verify_trace && s["name"] == "tokenauthority.v1.TokenAuthority/VerifyToken"
    });
    assert_eq!(attribute(&verify, "decision"), "valid", "{verify:#}");
    assert_eq!(attribute(&verify, "kid"), issued.key_id.as_str());

    let rotate = receiver.span("of RotateKeys", |s| {
        s["trace_id"] == rotate_trace && s["name"] == "tokenauthority.v1.TokenAuthority/RotateKeys"
    });
    assert_eq!(attribute(&rotate, "caller"), "admin", "{rotate:#}");
    let store = receiver.span("of the store's change", |s| {
        s["trace_id"] == rotate_trace && s["name"] == "store"
    });
    assert_eq!(store["parent_span_id"], rotate["span_id"], "{store:#}");
    assert_eq!(attribute(&store, "op"), "transact");
    assert_eq!(attribute(&store, "backend"), "sled");

    let http = receiver.span("of the JWKS request", |s| s["trace_id"] == http_trace);
    assert_eq!(http["name"], "GET /.well-known/jwks.json", "{http:#}");
    assert_eq!(http["parent_span_id"], "00f067aa0ba902b8");
    assert_eq!(attribute(&http, "http.response.status_code"), 200);

    // The request's log lines carry its trace id, and so does its latency bucket.
    let metrics = reqwest::get(format!("http://{}/metrics", process.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|line| line
            .starts_with("token_authority_rpc_duration_seconds_bucket{")
            && line.contains(r#"method="IssueToken""#)
            && line.contains(&format!(r#"# {{trace_id="{issue_trace}"}}"#))),
        "no exemplar of the IssueToken trace:\n{metrics}"
    );
    let log = process.terminate();
    assert!(
        log.iter().any(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            event["span"]["trace_id"] == issue_trace
        }),
        "no log line of the IssueToken call carries its trace id:\n{}",
        log.join("\n")
    );

    // Never a token, a part of one, or the admin token, in any span.
    let spans = receiver.spans.lock().unwrap().clone();
    let text = serde_json::to_string(&spans).unwrap();
    let mut secrets: Vec<&str> = issued.token.split('.').collect();
    secrets.extend([issued.token.as_str(), ADMIN_TOKEN]);
    for secret in secrets {
        assert!(!text.contains(secret), "a span carries {secret}");
    }
}

async fn issue_many(process: &Process, calls: usize) -> Duration {
    let mut client = connect(&process.grpc).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..calls {
        let started = Instant::now();
        client
            .issue_token(pb::IssueTokenRequest {
                subject: "svc".into(),
                algorithm: "ES256".into(),
                ..Default::default()
            })
            .await
            .expect("IssueToken failed while the collector is in trouble");
        slowest = slowest.max(started.elapsed());
    }
    slowest
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

async fn dropped(process: &Process, reason: &str) -> f64 {
    let metrics = reqwest::get(format!("http://{}/metrics", process.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(r#"token_authority_trace_spans_dropped_total{{reason="{reason}"}} "#);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |value| value.parse().unwrap())
}

/// A collector that is down, refuses every export, or takes 5 s per export: every call still
/// succeeds and none waits on the exporter (a call that did would take the 5 s); the spans
/// that could not be sent are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_failing_or_slow_never_fails_or_holds_up_a_request() {
    let es256 = ["--algorithms", "ES256"];
    // Down: nothing listens on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let failing = Receiver::start(&["--fail"]);
    let slow = Receiver::start(&["--delay", "5"]);
    // The slow collector's server queues 64 spans at most: the first export holds 64 for
    // 5 s, so the next 64 spans fill the queue however slowly the calls come.
    let small_queue = ("OTEL_BSP_MAX_QUEUE_SIZE", "64");
    for (case, endpoint, reason, queue) in [
        ("down", down, "export_failed", None),
        ("failing", failing.endpoint(), "export_failed", None),
        ("slow", slow.endpoint(), "queue_full", Some(small_queue)),
    ] {
        let dir = crate::helpers::DataDir::new();
        let mut args = vec!["--otlp-endpoint", endpoint.as_str()];
        args.extend(es256);
        let envs: Vec<_> = [FAST_BATCHES].into_iter().chain(queue).collect();
        let mut process = tokio::task::block_in_place(|| spawn_binary_with_env(&dir, &args, &envs));
        let calls = 300;
        let slowest = issue_many(&process, calls).await;
        assert!(
            slowest < Duration::from_secs(2),
            "{case}: a call took {slowest:?}"
        );
        wait_for_dropped(&process, reason, case).await;
        // Shutdown waits for the exporter only a few seconds, whatever the collector does.
        let stopping = Instant::now();
        tokio::task::block_in_place(|| process.terminate());
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "{case}: shutdown took {:?}",
            stopping.elapsed()
        );
    }
}

/// A collector over TLS is trusted through `--otlp-ca-file`; one whose certificate another
/// CA signed gets no span (and the calls still succeed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_tls_collector_trusted_through_the_ca_file_only() {
    let tls = TlsSetup::new();
    let other = TlsSetup::new();
    let cert = tls.cert.display().to_string();
    let key = tls.key.display().to_string();
    let receiver = Receiver::start(&["--tls", &cert, &key]);
    let endpoint = receiver.tls_endpoint();
    for (case, ca, arrives) in [("its CA", &tls.ca, true), ("another CA", &other.ca, false)] {
        let dir = crate::helpers::DataDir::new();
        let ca = ca.display().to_string();
        let mut process = tokio::task::block_in_place(|| {
            spawn_binary_with_env(
                &dir,
                &["--otlp-endpoint", &endpoint, "--otlp-ca-file", &ca],
                &[FAST_BATCHES],
            )
        });
        let trace = if arrives {
            "11111111111111111111111111111111"
        } else {
            "22222222222222222222222222222222"
        };
        let mut client = connect(&process.grpc).await;
        client
            .get_jwks(with_parent(
                pb::GetJwksRequest {},
                trace,
                "00f067aa0ba902b7",
            ))
            .await
            .unwrap();
        if arrives {
            receiver.span("over TLS", |s| s["trace_id"] == trace);
        } else {
            wait_for_dropped(&process, "export_failed", case).await;
            assert!(
                !receiver
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|s| s["trace_id"] == trace),
                "{case}: a span arrived over an untrusted connection"
            );
        }
        tokio::task::block_in_place(|| process.terminate());
    }
}

/// The standard variables: `OTEL_SERVICE_NAME` names the service, and
/// `OTEL_TRACES_SAMPLER=always_off` exports nothing, even for a caller that sampled.
/// `RUST_LOG` does not change what is traced: it turns off every log line but `serving`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_name_and_the_sampler_follow_the_otel_variables() {
    let receiver = Receiver::start(&[]);
    let endpoint = receiver.endpoint();
    for (sampler, trace) in [
        ("parentbased_always_on", "33333333333333333333333333333333"),
        ("always_off", "44444444444444444444444444444444"),
    ] {
        let dir = crate::helpers::DataDir::new();
        let mut process = tokio::task::block_in_place(|| {
            spawn_binary_with_env_logging(
                &dir,
                &["--otlp-endpoint", &endpoint],
                &[
                    FAST_BATCHES,
                    ("OTEL_SERVICE_NAME", "edge-authority"),
                    ("OTEL_TRACES_SAMPLER", sampler),
                ],
                "off,token_authority::server=info",
            )
        });
        let mut client = connect(&process.grpc).await;
        client
            .get_jwks(with_parent(
                pb::GetJwksRequest {},
                trace,
                "00f067aa0ba902b7",
            ))
            .await
            .unwrap();
        // Shutdown sends what is queued: after it, every span of the call has arrived.
        tokio::task::block_in_place(|| process.terminate());
        if sampler == "always_off" {
            std::thread::sleep(Duration::from_millis(500));
            assert!(
                !receiver
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|s| s["trace_id"] == trace),
                "always_off exported a span"
            );
        } else {
            let span = receiver.span("of GetJwks", |s| s["trace_id"] == trace);
            assert_eq!(span["service"], "edge-authority");
        }
    }
}

/// The README's traces figure comes from `tests/perf/traces.sh`: IssueToken and VerifyToken
/// with traces on (to the real receiver) and off, driven end to end.
#[test]
fn the_perf_script_measures_traces_on_against_off() {
    let python = python().display().to_string();
    let env = [
        ("DUR", "300ms"),
        ("WARMUP", "100ms"),
        ("ROUNDS", "2"),
        ("ALGS", "ES256"),
        ("PYTHON", python.as_str()),
    ];
    let stdout = crate::perf_scripts::run("traces.sh", &env, &["on ", "off "], 8);
    for kind in ["issue-ES256", "verify-ES256"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(kind)
                && l.contains("medians over 2 runs: traces on")
                && l.contains("median of the rounds' ratios")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("spans dropped by the traced ES256 server: "),
        "{stdout}"
    );
    assert!(stdout.contains("errors: 0"), "{stdout}");
}
