//! The README's figures come from the scripts in `tests/perf`: each runs here, briefly, on
//! the test build, so the script and what it drives keep working between measurements.

/// Runs `tests/perf/{script}` with `env` (shortening it) on the test build, checks that it
/// succeeded and printed `runs` run lines (those starting with one of `labels`), each
/// without an error, and returns what it printed.
pub fn run(script: &str, env: &[(&str, &str)], labels: &[&str], runs: usize) -> String {
    let output = output(script, env);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|line| labels.iter().any(|label| line.starts_with(label)))
        .collect();
    assert_eq!(lines.len(), runs, "{stdout}");
    for line in lines {
        assert!(line.ends_with(" 0"), "a run with errors: {line}");
    }
    stdout
}

/// Runs `tests/perf/{script}` with `env` on the test build, and returns how it ended and
/// what it printed, whatever that was.
pub fn output(script: &str, env: &[(&str, &str)]) -> std::process::Output {
    let path = format!("{}/tests/perf/{script}", env!("CARGO_MANIFEST_DIR"));
    std::process::Command::new(path)
        .env("TA_BIN", crate::binary::BIN)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}
