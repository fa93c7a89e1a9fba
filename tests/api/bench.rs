//! `token-authority bench` against a real test server: it runs a short load and reports
//! sane numbers (not timing assertions: speed is for the benchmark runs themselves).

use std::process::Command;

use crate::{
    binary::BIN,
    callers::hex,
    helpers::{config, DataDir, TestServer, TlsSetup},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_mode_and_reports_sane_numbers() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(&dir, &["--algorithms", "RS256,EdDSA"])).await;
    let target = format!("http://{}", server.grpc_addr);
    let http_target = format!("http://{}", server.http_addr);
    let admin_token_file = dir.admin_token_file.display().to_string();
    // Rotations are of EdDSA: an RSA key takes up to seconds to generate on a loaded
    // two-core machine, and the run would see fewer rotations than it asked for.
    let current_before = server.current_kid("EdDSA").await;
    for (mode, extra) in [
        ("health", &[][..]),
        (
            "issue",
            &[
                "--algorithm",
                "EdDSA",
                "--reference",
                "--reference-duration",
                "200ms",
            ][..],
        ),
        (
            "verify",
            &["--reference", "--reference-duration", "200ms"][..],
        ),
        ("jwks", &[][..]),
        ("jwks304", &[][..]),
        ("healthz", &[][..]),
        ("mixed", &[][..]),
        (
            "mixed",
            &[
                "--algorithm",
                "EdDSA",
                "--rotate-every",
                "150ms",
                "--admin-token-file",
                &admin_token_file,
            ][..],
        ),
    ] {
        let output = tokio::task::block_in_place(|| {
            Command::new(BIN)
                .args([
                    "bench",
                    mode,
                    "--target",
                    &target,
                    "--http-target",
                    &http_target,
                ])
                .args([
                    "--duration",
                    // Long enough for several forced rotations on a loaded two-core machine;
                    // the other modes only need a sample.
                    if extra.contains(&"--rotate-every") {
                        "2s"
                    } else {
                        "500ms"
                    },
                    "--warmup",
                    "100ms",
                    "--concurrency",
                    "4",
                    "--connections",
                    "2",
                    "--json",
                ])
                .args(extra)
                .output()
                .unwrap()
        });
        assert!(
            output.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let requests = report["requests"].as_u64().unwrap();
        assert!(requests > 0, "{mode}: {report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{mode}: {report}");
        let rate = report["requests_per_s"].as_f64().unwrap();
        let seconds = report["duration_s"].as_f64().unwrap();
        assert!(
            (rate * seconds - requests as f64).abs() < 1.0,
            "{mode}: {report}"
        );
        let latency = &report["latency_us"];
        let (p50, p99, max) = (
            latency["p50"].as_u64().unwrap(),
            latency["p99"].as_u64().unwrap(),
            latency["max"].as_u64().unwrap(),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{mode}: {report}");
        assert_eq!(
            report["provider"],
            token_authority_jose::crypto::PROVIDER,
            "{report}"
        );
        if extra.contains(&"--rotate-every") {
            // 2 s at one forced rotation per 150 ms, and not one failed request.
            let rotations = &report["rotations"];
            assert!(rotations["performed"].as_u64().unwrap() >= 2, "{report}");
            assert_eq!(rotations["failed"], 0, "{report}");
            // Requests ran across the rotations and were recorded there too, as a subset
            // of the run.
            let across = rotations["requests_in_flight"].as_u64().unwrap();
            assert!(across > 0 && across <= requests, "{report}");
            assert!(
                rotations["latency_us"]["max"].as_u64().unwrap() <= max,
                "{report}"
            );
            assert_ne!(
                server.current_kid("EdDSA").await,
                current_before,
                "no rotation happened"
            );
        } else {
            assert!(report["rotations"].is_null(), "{report}");
        }
        if extra.contains(&"--reference") {
            let ceiling = report["reference_ops_per_s"].as_f64().unwrap();
            let ratio = report["ratio_to_reference"].as_f64().unwrap();
            assert!(
                ceiling > 0.0 && (ratio - rate / ceiling).abs() < 1e-9,
                "{mode}: {report}"
            );
        }
    }
    // The human report says the same.
    let output = Command::new(BIN)
        .args([
            "bench",
            "health",
            "--target",
            &target,
            "--duration",
            "200ms",
            "--warmup",
            "0s",
            "--concurrency",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("req/s") && text.contains("p99") && text.contains("errors: none"),
        "{text}"
    );
    // An unreachable target is a clear error.
    let output = Command::new(BIN)
        .args(["bench", "health", "--target", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot connect to http://127.0.0.1:1")
    );
    server.stop().await;
}

/// A TLS deployment measured as its clients see it: grpcs and https targets, the CA to trust
/// and a client certificate for a server that checks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_a_tls_deployment() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = tls.start(&dir, true, &[]).await;
    let ca = tls.pki.write_ca(tls.dir.path(), "bench-ca");
    let (cert, key) = tls
        .pki
        .client(Some("spiffe://cluster.local/ns/perf/sa/bench"), None)
        .write(tls.dir.path(), "bench");
    let target = format!("https://{}", server.grpc_addr);
    let http_target = format!("https://{}", server.http_addr);
    let bench = |mode: &str, extra: &[&str]| {
        tokio::task::block_in_place(|| {
            Command::new(BIN)
                .args([
                    "bench",
                    mode,
                    "--target",
                    &target,
                    "--http-target",
                    &http_target,
                ])
                .args([
                    "--duration",
                    "300ms",
                    "--warmup",
                    "0s",
                    "--concurrency",
                    "2",
                    "--json",
                ])
                .args(extra)
                .output()
                .unwrap()
        })
    };
    let ca = ca.to_str().unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    for (mode, extra) in [
        ("issue", vec!["--tls-ca", ca]),
        (
            "healthz",
            vec!["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key],
        ),
        (
            "health",
            vec!["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key],
        ),
    ] {
        let output = bench(mode, &extra);
        assert!(
            output.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(report["requests"].as_u64().unwrap() > 0, "{mode}: {report}");
        assert_eq!(report["errors"], serde_json::json!({}), "{mode}: {report}");
    }
    // An https target without the CA is refused with a clear line.
    let output = bench("healthz", &[]);
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim_end(),
        "error: preparing the run failed: an https:// target needs --tls-ca (the CA that \
         signed the server certificate)"
    );
    server.stop().await;
}

/// Under a policy the bench proves itself as a caller would: a client certificate, or a
/// client secret; without credentials every call is refused and the report says how.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_calls_as_a_caller_of_the_policy() {
    const SPIFFE_ID: &str = "spiffe://cluster.local/ns/perf/sa/bench";
    const SECRET: &str = "bench-secret-0123456789";
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let secret_file = tls.dir.path().join("client-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let policy = tls.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
[[client]]
id = "perf"
secret_sha256 = "{}"

[[rule]]
callers = ["{SPIFFE_ID}", "client:perf"]
subjects = ["{{caller}}", "bench"]
audiences = ["bench"]
"#,
            hex(&token_authority_jose::crypto::sha256(SECRET.as_bytes()))
        ),
    )
    .unwrap();
    let server = tls
        .start(&dir, true, &["--policy-file", policy.to_str().unwrap()])
        .await;
    let ca = tls.pki.write_ca(tls.dir.path(), "bench-ca");
    let (cert, key) = tls
        .pki
        .client(Some(SPIFFE_ID), None)
        .write(tls.dir.path(), "bench");
    let target = format!("https://{}", server.grpc_addr);
    let bench = |mode: &str, extra: &[&str]| {
        let output = tokio::task::block_in_place(|| {
            Command::new(BIN)
                .args(["bench", mode, "--target", &target])
                .args(["--tls-ca", ca.to_str().unwrap()])
                .args(["--duration", "300ms", "--warmup", "0s"])
                .args(["--concurrency", "2", "--json"])
                .args(extra)
                .output()
                .unwrap()
        });
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), output.stdout, stderr)
    };
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let secret = secret_file.to_str().unwrap();
    for (mode, extra) in [
        (
            "issue",
            vec!["--tls-cert", cert, "--tls-key", key, "--subject", SPIFFE_ID],
        ),
        ("verify", vec!["--tls-cert", cert, "--tls-key", key]),
        (
            "issue",
            vec!["--client-id", "perf", "--client-secret-file", secret],
        ),
        (
            "issue",
            vec![
                "--client-id",
                "perf",
                "--client-secret-file",
                secret,
                "--subject",
                "client:perf",
            ],
        ),
    ] {
        let (ok, stdout, stderr) = bench(mode, &extra);
        assert!(ok, "{mode} {extra:?}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
        assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(
            report["errors"],
            serde_json::json!({}),
            "{extra:?}: {report}"
        );
    }
    // No credentials: every call is refused, counted by status.
    let (ok, stdout, _) = bench("issue", &[]);
    assert!(ok);
    let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(report["requests"], 0, "{report}");
    assert!(
        report["errors"]["grpc Unauthenticated"].as_u64().unwrap() > 0,
        "{report}"
    );
    // A secret without its id is a usage error.
    let (ok, _, stderr) = bench("issue", &["--client-secret-file", secret]);
    assert!(!ok && stderr.contains("--client-id"), "{stderr}");
    server.stop().await;
}
