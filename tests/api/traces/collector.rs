//! The collector: down, failing, slow or behind TLS, it never fails or holds up a request.

use std::time::{Duration, Instant};

use token_authority::pb;

use super::{wait_for_dropped, Receiver, FAST_BATCHES};
use crate::{
    binary::{spawn_binary_with_env, Process},
    helpers::{connect, TlsSetup},
};

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

/// A collector that is down, refuses every export, or takes 5 s per export: every call still
/// succeeds and none waits on the exporter (a call that did would take the 5 s); the spans
/// that could not be sent are counted, and a failed export is logged (once a minute at most).
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
        let lines = tokio::task::block_in_place(|| process.terminate());
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "{case}: shutdown took {:?}",
            stopping.elapsed()
        );
        // Failed exports are in the log as well as counted: once, however many failed.
        if reason == "export_failed" {
            let said = lines
                .iter()
                .filter(|line| line.contains("spans could not be exported to the collector"))
                .count();
            assert_eq!(said, 1, "{case}: {lines:#?}");
        }
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
        super::get_jwks_in(&process.grpc, trace).await;
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

/// The collector's credentials, from `OTEL_EXPORTER_OTLP_HEADERS` (values percent-decoded),
/// go with every export, and never into the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headers_variable_reaches_the_collector_and_never_the_log() {
    let receiver = Receiver::start(&[]);
    let endpoint = receiver.endpoint();
    let dir = crate::helpers::DataDir::new();
    let mut process = tokio::task::block_in_place(|| {
        spawn_binary_with_env(
            &dir,
            &["--otlp-endpoint", &endpoint],
            &[
                FAST_BATCHES,
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20s3cret-collector-key,x-tenant=blue",
                ),
            ],
        )
    });
    let trace = "55555555555555555555555555555555";
    super::get_jwks_in(&process.grpc, trace).await;
    let span = receiver.span("with the headers", |s| s["trace_id"] == trace);
    assert_eq!(
        span["metadata"]["authorization"],
        "Bearer s3cret-collector-key"
    );
    assert_eq!(span["metadata"]["x-tenant"], "blue");
    let lines = tokio::task::block_in_place(|| process.terminate());
    assert!(
        !lines
            .iter()
            .any(|line| line.contains("s3cret-collector-key")),
        "{lines:#?}"
    );
}

/// A collector that refuses the first exports (UNAVAILABLE: starting, restarting) gets them
/// again with backoff: the spans arrive, and none is counted as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_a_collector_refuses_for_a_moment_is_retried() {
    let receiver = Receiver::start(&["--fail-first", "2"]);
    let endpoint = receiver.endpoint();
    let dir = crate::helpers::DataDir::new();
    let mut process = tokio::task::block_in_place(|| {
        spawn_binary_with_env(&dir, &["--otlp-endpoint", &endpoint], &[FAST_BATCHES])
    });
    let trace = "66666666666666666666666666666666";
    super::get_jwks_in(&process.grpc, trace).await;
    receiver.span("after two refusals", |s| s["trace_id"] == trace);
    assert_eq!(super::dropped(&process, "export_failed").await, 0.0);
    tokio::task::block_in_place(|| process.terminate());
}

/// A collector that takes an export but answers that it dropped its spans (a partial
/// success): they are counted as `rejected`, not as exported, and said once in the log with
/// what the collector gave as the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_a_collector_says_it_dropped_are_counted_as_rejected() {
    let receiver = Receiver::start(&["--reject"]);
    let endpoint = receiver.endpoint();
    let dir = crate::helpers::DataDir::new();
    let mut process = tokio::task::block_in_place(|| {
        spawn_binary_with_env(
            &dir,
            &["--otlp-endpoint", &endpoint, "--algorithms", "ES256"],
            &[FAST_BATCHES],
        )
    });
    issue_many(&process, 20).await;
    wait_for_dropped(&process, "rejected", "a rejecting collector").await;
    assert_eq!(super::dropped(&process, "export_failed").await, 0.0);
    let lines = tokio::task::block_in_place(|| process.terminate());
    let said: Vec<_> = lines
        .iter()
        .filter(|line| line.contains("the collector rejected spans"))
        .collect();
    assert_eq!(said.len(), 1, "{lines:#?}");
    assert!(
        said[0].contains("the test collector keeps no span"),
        "{said:?}"
    );
}
