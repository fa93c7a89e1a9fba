//! The README's Transaction Token figures come from `tests/perf/txn.sh`: it runs here,
//! briefly, on the test build, so `bench exchange` (repeated and fresh subject tokens) is
//! driven end to end against a real server, and every run ends without an error.

#[test]
fn the_perf_script_measures_exchange_against_issue() {
    let env = [
        ("DUR", "300ms"),
        ("WARMUP", "100ms"),
        ("ROUNDS", "1"),
        ("FRESH", "64"),
        ("FRESH_RSA", "16"),
        ("ALGS", "ES256"),
    ];
    let labels = ["issue ", "repeat ", "fresh "];
    let stdout = crate::perf_scripts::run("txn.sh", &env, &labels, 3);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ES256 medians over 1 runs: issue") && l.contains("fresh")),
        "{stdout}"
    );
    assert!(stdout.contains("errors: 0"), "{stdout}");
}
