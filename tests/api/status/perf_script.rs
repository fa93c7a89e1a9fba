//! The README's status list figure comes from `tests/perf/status.sh`: it runs here, briefly,
//! on the test build, so IssueToken with and without a status is driven end to end, and
//! every run ends without an error.

#[test]
fn the_perf_script_measures_issue_with_and_without_status() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/perf/status.sh");
    let output = std::process::Command::new(script)
        .env("TA_BIN", crate::binary::BIN)
        .envs([
            ("DUR", "300ms"),
            ("WARMUP", "100ms"),
            ("ROUNDS", "2"),
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
        .filter(|l| l.starts_with("with ") || l.starts_with("without "))
        .collect();
    assert_eq!(runs.len(), 4, "{stdout}");
    for run in runs {
        assert!(run.ends_with(" 0"), "a run with errors: {run}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ES256 medians over 2 runs: with status") && l.contains("ratio")),
        "{stdout}"
    );
    assert!(stdout.contains("errors: 0"), "{stdout}");
}
