//! The standard OTEL_ variables, and the perf scripts of the README's traces figures.

use std::time::Duration;

use super::{Receiver, FAST_BATCHES};
use crate::{binary::spawn_binary_with_env_logging, tools::python};

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
        super::get_jwks_in(&process.grpc, trace).await;
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
/// with traces on (to the real receiver) and off, driven end to end, with the servers and
/// the load pinned as the README's first table is (here both on the first CPU this process
/// may use, which every machine has).
#[test]
fn the_perf_script_measures_traces_on_against_off() {
    let (python, cpu) = (python().display().to_string(), first_cpu());
    let env = brief_traces_run(&python, &cpu);
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

/// A traced server that dropped spans did less work than exporting every span costs, and
/// its ratio would flatter traces: the script says so and fails. Here a queue of one span
/// makes the traced server drop most of them.
#[test]
fn the_perf_script_fails_when_the_traced_server_dropped_spans() {
    let (python, cpu) = (python().display().to_string(), first_cpu());
    let mut env = brief_traces_run(&python, &cpu).to_vec();
    env.retain(|(name, _)| *name != "OTEL_BSP_MAX_QUEUE_SIZE");
    env.extend([("MODES", "issue"), ("OTEL_BSP_MAX_QUEUE_SIZE", "1")]);
    let output = crate::perf_scripts::output("traces.sh", &env);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success(), "{stdout}{stderr}");
    let dropped: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("spans dropped by the traced ES256 server: "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .parse()
        .unwrap();
    assert!(dropped > 0, "{stdout}");
    assert!(
        stderr.contains("the traced servers dropped spans, so the ratios above are not"),
        "{stderr}"
    );
}

/// The first CPU this process may use, which every machine has: the servers and the load
/// are pinned there, as the README's first table pins them to a core each.
fn first_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| list.trim().split([',', '-']).next())
        .unwrap()
        .to_owned()
}

/// `traces.sh` for two short rounds of ES256, with room for every span they make even if
/// the other tests running beside this one slow the exporter down (a drop fails the script).
fn brief_traces_run<'a>(python: &'a str, cpu: &'a str) -> [(&'a str, &'a str); 8] {
    [
        ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
        ("DUR", "300ms"),
        ("WARMUP", "100ms"),
        ("ROUNDS", "2"),
        ("ALGS", "ES256"),
        ("PYTHON", python),
        ("SERVER_CPUS", cpu),
        ("CLIENT_CPUS", cpu),
    ]
}

/// The README's instruction counts come from `tests/perf/instructions.sh`: each server under
/// callgrind with traces on and off, counted over a window of IssueTokens. On the test
/// build and briefly, so what is checked is that the script runs end to end, every call in
/// the windows answered, and counts.
#[test]
fn the_instruction_script_counts_traces_on_against_off() {
    let python = python().display().to_string();
    let profiles = tempfile::tempdir().unwrap();
    let profiles_dir = profiles.path().display().to_string();
    let env = [
        ("PROFILES", profiles_dir.as_str()),
        ("DUR", "2"),
        ("WARMUP", "1"),
        ("ALGS", "ES256"),
        ("MODES", "issue"),
        ("PYTHON", python.as_str()),
    ];
    let stdout = crate::perf_scripts::run("instructions.sh", &env, &["on ", "off "], 2);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("issue-ES256"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let number = |after: &str| -> u64 {
        let at = line.find(after).unwrap_or_else(|| panic!("{line}")) + after.len();
        line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"))
    };
    let (on, off) = (number("traces on "), number(", off "));
    // An ES256 signature alone is over 100,000 instructions. Which side costs more is left
    // to real windows: over two seconds of the test build (a few hundred calls), the count
    // per call moves between runs by more than a trace costs.
    assert!(on > 100_000 && off > 100_000, "{line}");
    assert!(line.contains("off/on "), "{line}");
    for run in ["on-issue-ES256", "off-issue-ES256"] {
        let profile = std::fs::read_to_string(profiles.path().join(format!("{run}.callgrind")))
            .unwrap_or_else(|e| panic!("{run}'s profile: {e}"));
        assert!(
            profile.contains("\nsummary: ") || profile.contains("\ntotals: "),
            "{run}"
        );
    }
}
