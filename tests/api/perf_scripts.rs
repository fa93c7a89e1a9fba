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

/// Without `TA_BIN`, a script measures this tree's release build, and refuses it when it is
/// missing or older than a source it is built from: it would measure some other version of
/// the code. Each case is a tree of its own with `common.sh` and a script that only sources
/// it, a stand-in binary, and one file made newer than it.
#[test]
fn a_release_build_missing_or_older_than_its_sources_is_refused() {
    use std::{
        os::unix::fs::PermissionsExt as _,
        time::{Duration, SystemTime},
    };
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let refusal = |what: &str| {
        format!("{what}: cargo build --release first (or name a binary with TA_BIN)\n")
    };
    /// A tree: the file made newer than the binary, whether the binary exists, whether
    /// `TA_BIN` names it, and what the script says: Ok(its stdout) or Err(its refusal),
    /// `<bin>` standing for the binary's path.
    struct Case {
        newer: Option<&'static str>,
        built: bool,
        named: bool,
        says: Result<&'static str, String>,
    }
    let case = |newer, built, named, says| Case {
        newer,
        built,
        named,
        says,
    };
    let cases = [
        (
            "built after its sources",
            case(None, true, false, Ok("measuring <bin>\n")),
        ),
        (
            "a source changed since",
            case(
                Some("src/lib.rs"),
                true,
                false,
                Err(refusal("<bin> is older than src/lib.rs")),
            ),
        ),
        (
            "the lock file changed since",
            case(
                Some("Cargo.lock"),
                true,
                false,
                Err(refusal("<bin> is older than Cargo.lock")),
            ),
        ),
        (
            "not built",
            case(None, false, false, Err(refusal("no <bin>"))),
        ),
        (
            "an older build named with TA_BIN",
            case(Some("src/lib.rs"), true, true, Ok("measuring <bin>\n")),
        ),
    ];
    for (
        name,
        Case {
            newer,
            built,
            named,
            says,
        },
    ) in cases
    {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path().canonicalize().unwrap();
        let perf = root.join("tests/perf");
        std::fs::create_dir_all(&perf).unwrap();
        std::fs::copy(
            format!("{}/tests/perf/common.sh", env!("CARGO_MANIFEST_DIR")),
            perf.join("common.sh"),
        )
        .unwrap();
        let probe = perf.join("probe.sh");
        std::fs::write(
            &probe,
            "#!/usr/bin/env bash\nset -euo pipefail\ncd \"$(dirname \"$0\")/../..\"\n\
             source tests/perf/common.sh\necho \"measuring $BIN\"\n",
        )
        .unwrap();
        for source in ["src/lib.rs", "Cargo.toml", "Cargo.lock"] {
            let path = root.join(source);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        let bin = root.join("target/release/token-authority");
        if built {
            std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
            std::fs::write(&bin, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            let file = std::fs::File::options().write(true).open(&bin).unwrap();
            file.set_modified(hour_ago + Duration::from_secs(60))
                .unwrap();
        }
        if let Some(source) = newer {
            std::fs::write(root.join(source), "changed").unwrap();
        }
        // Through bash, not exec: a file just written can be busy for exec while another
        // test forks.
        let mut command = std::process::Command::new("bash");
        command.arg(&probe);
        command.env_remove("TA_BIN");
        if named {
            command.env("TA_BIN", &bin);
        }
        let output = command.output().unwrap();
        let bin = bin.display().to_string();
        let got = if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        };
        let expected = match says {
            Ok(stdout) => Ok(stdout.replace("<bin>", &bin)),
            Err(stderr) => Err(stderr.replace("<bin>", &bin)),
        };
        assert_eq!(got, expected, "{name}");
    }
}
