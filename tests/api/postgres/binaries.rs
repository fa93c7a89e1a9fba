//! Where the PostgreSQL server binaries are, checked once per run. On a machine without
//! them the first test that needs a cluster fails with one line saying what to install, and
//! every later one fails at once pointing at it, instead of each failing inside the test
//! with a panic of its own.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// Debian's `postgresql` package on bookworm puts them here.
const DEFAULT: &str = "/usr/lib/postgresql/15/bin";
/// What the tests run: the cluster's setup, start and stop, and SQL behind the servers' backs.
const NEEDED: [&str; 4] = ["initdb", "pg_ctl", "postgres", "psql"];

/// The directory holding the server binaries; the calling test fails when there is none.
pub fn dir() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    // The test that says what to install (libtest names each test's thread after it).
    static TOLD_BY: OnceLock<String> = OnceLock::new();
    let configured = std::env::var_os("TA_TEST_PG_BIN").map(PathBuf::from);
    let why = match FOUND.get_or_init(|| find(configured.as_deref())) {
        Ok(bin) => return bin.clone(),
        Err(why) => why,
    };
    let me = std::thread::current().name().unwrap_or("a test").to_owned();
    if *TOLD_BY.get_or_init(|| me.clone()) == me {
        fail(why)
    }
    fail(&format!(
        "PostgreSQL server binaries not found in {}: {} says what to install",
        shown(configured.as_deref()),
        TOLD_BY
            .get()
            .map_or("the first PostgreSQL test", String::as_str)
    ))
}

/// Fails the calling test with `line` alone. Not `panic!`: its hook would add the location
/// and, under RUST_BACKTRACE, a backtrace to each of the dozens of tests that need a cluster.
fn fail(line: &str) -> ! {
    eprintln!("{line}");
    std::panic::resume_unwind(Box::new(line.to_owned()))
}

fn shown(configured: Option<&Path>) -> String {
    match configured {
        Some(dir) => format!("{} (TA_TEST_PG_BIN)", dir.display()),
        None => DEFAULT.to_owned(),
    }
}

/// The binaries' directory, or the one line that says what to do.
fn find(configured: Option<&Path>) -> Result<PathBuf, String> {
    let bin = configured.unwrap_or(Path::new(DEFAULT)).to_path_buf();
    let missing: Vec<&str> = NEEDED
        .into_iter()
        .filter(|name| !bin.join(name).is_file())
        .collect();
    if !missing.is_empty() {
        // Another Debian release installs another major version beside where we look.
        let elsewhere = other_versions()
            .map(|dirs| format!(" ({dirs} has them)"))
            .unwrap_or_default();
        return Err(format!(
            "PostgreSQL server binaries not found in {}, which lacks {}: install them with `apt-get install postgresql`, or set TA_TEST_PG_BIN to the directory that holds them{elsewhere}",
            shown(configured),
            missing.join(", ")
        ));
    }
    // PostgreSQL refuses to run as root, so as root the tests run it as `postgres`.
    if rustix::process::geteuid().is_root() && !user_exists("postgres") {
        return Err(format!(
            "PostgreSQL server binaries found in {}, but the tests run as root and there is no `postgres` user to run the server as: install Debian's `postgresql` package (which creates it), or run the tests as another user",
            shown(configured)
        ));
    }
    Ok(bin)
}

/// The other `/usr/lib/postgresql/*/bin` directories that hold every binary needed.
fn other_versions() -> Option<String> {
    let mut dirs: Vec<String> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| NEEDED.iter().all(|name| bin.join(name).is_file()))
        .map(|bin| bin.display().to_string())
        .collect();
    dirs.sort();
    (!dirs.is_empty()).then(|| dirs.join(", "))
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .output()
        .is_ok_and(|output| output.status.success())
}
