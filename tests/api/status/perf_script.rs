//! The README's status list figure comes from `tests/perf/status.sh`: IssueToken with and
//! without a status, driven end to end.

#[test]
fn the_perf_script_measures_issue_with_and_without_status() {
    let env = [
        ("DUR", "300ms"),
        ("WARMUP", "100ms"),
        ("ROUNDS", "2"),
        ("ALGS", "ES256"),
    ];
    let stdout = crate::perf_scripts::run("status.sh", &env, &["with ", "without "], 4);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ES256 medians over 2 runs: with status")
                && l.contains("median of the rounds' ratios")),
        "{stdout}"
    );
    assert!(stdout.contains("errors: 0"), "{stdout}");
}
