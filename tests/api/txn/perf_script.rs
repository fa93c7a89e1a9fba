//! The README's Transaction Token figures come from `tests/perf/txn.sh`: it runs here,
//! briefly, on the test build, so `bench exchange` (repeated and fresh subject tokens) is
//! driven end to end against a real server, and every run ends without an error.

#[test]
fn the_perf_script_measures_exchange_against_issue() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/perf/txn.sh");
    let output = std::process::Command::new(script)
        .env("TA_BIN", crate::binary::BIN)
        .envs([
            ("DUR", "300ms"),
            ("WARMUP", "100ms"),
            ("ROUNDS", "1"),
            ("FRESH", "64"),
            ("FRESH_RSA", "16"),
            ("ALGS", "ES256"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let runs: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            ["issue ", "repeat ", "fresh "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert_eq!(runs.len(), 3, "{stdout}");
    for run in runs {
        assert!(run.ends_with(" 0"), "a run with errors: {run}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ES256 medians over 1 runs: issue") && l.contains("fresh")),
        "{stdout}"
    );
    assert!(stdout.contains("errors: 0"), "{stdout}");
}
