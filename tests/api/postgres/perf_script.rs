//! The README's replica figures come from `tests/perf/replicas.sh`: sled, and one, two and
//! three replicas on a throwaway PostgreSQL cluster, driven end to end.

#[test]
fn the_perf_script_measures_sled_against_replicas() {
    let pg_bin = super::binaries::dir().display().to_string();
    let env = [
        ("DUR", "300ms"),
        ("ROUNDS", "1"),
        ("TA_TEST_PG_BIN", pg_bin.as_str()),
    ];
    // One run per mode and side: issue and verify, for sled and pg1 to pg3.
    let stdout = crate::perf_scripts::run(
        "replicas.sh",
        &env,
        &["sled issue ", "sled verify ", "pg1 ", "pg2 ", "pg3 "],
        8,
    );
    for side in ["sled", "pg1", "pg2", "pg3"] {
        for mode in ["issue", "verify"] {
            let median = format!("{mode:6} {side:4} median");
            assert!(
                stdout.lines().any(|l| l.starts_with(&median)
                    && l.contains("over 1 runs")
                    && l.ends_with(" x sled")),
                "no line {median:?}: {stdout}"
            );
        }
    }
    for replica in ["a", "b", "c"] {
        assert!(
            stdout.contains(&format!("replica {replica} start-up: \"startup_ms\":")),
            "{stdout}"
        );
    }
}
