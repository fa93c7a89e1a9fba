//! A throwaway PostgreSQL cluster for the tests of the shared keystore: `initdb` into a
//! temporary directory, `postgres` on a free loopback port, stopped (and deleted) on drop.
//!
//! Each test that needs one starts its own, so a test that stops the database under load
//! cannot disturb another. When the tests run as root the server runs as the `postgres`
//! user, because PostgreSQL refuses to run as root. The binaries come from
//! `/usr/lib/postgresql/15/bin` (Debian's `postgresql` package), or `TA_TEST_PG_BIN`
//! (`binaries`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use base64::Engine as _;

mod binaries;
mod perf_script;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a PostgreSQL binary, as `postgres` when we are root; panics with its output on
/// failure.
fn run(bin: &Path, program: &str, args: &[String]) -> std::process::Output {
    let program = bin.join(program);
    let output = if is_root() {
        let quoted: Vec<String> = std::iter::once(program.display().to_string())
            .chain(args.iter().cloned())
            .map(|arg| format!("'{}'", arg.replace('\'', "'\\''")))
            .collect();
        Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c", &quoted.join(" ")])
            .output()
    } else {
        Command::new(&program).args(args).output()
    }
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    output
}

/// A port for a cluster: below the kernel's ephemeral range (Linux: 32768-60999), so no
/// listener bound to port 0 (every test server binds its own that way) can be given it
/// while the cluster is stopped and its test waits to start it again on the same port, and
/// never handed out twice by this process. Free now; if another process takes it before
/// PostgreSQL does, `start` picks another.
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let random = token_authority_jose::crypto::random_bytes(2).unwrap();
        let candidate = 20_000 + u16::from_le_bytes([random[0], random[1]]) % 12_000;
        if handed_out.contains(&candidate) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            handed_out.push(candidate);
            return candidate;
        }
    }
}

impl Postgres {
    /// A new cluster of the binaries in `bin`, started and accepting connections (`pg_ctl -w`
    /// waits for that).
    fn start(bin: PathBuf) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let output = run(
            &bin,
            "initdb",
            &[
                "-D".into(),
                data.display().to_string(),
                "-A".into(),
                "trust".into(),
                "-U".into(),
                "postgres".into(),
                "--no-sync".into(),
            ],
        );
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut postgres = Postgres { dir, bin, port: 0 };
        postgres.start_on_a_free_port();
        postgres
    }

    fn start_on_a_free_port(&mut self) {
        for _ in 0..5 {
            self.port = free_port();
            if self.try_start_again() {
                return;
            }
        }
        panic!("PostgreSQL did not start: {}", self.log());
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn try_start_again(&self) -> bool {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        run(
            &self.bin,
            "pg_ctl",
            &[
                "start".into(),
                "-w".into(),
                "-D".into(),
                self.data().display().to_string(),
                "-l".into(),
                self.dir.path().join("log").display().to_string(),
                "-o".into(),
                options,
            ],
        )
        .status
        .success()
    }

    /// Starts the stopped cluster again on the same port.
    pub fn restart(&self) {
        assert!(
            self.try_start_again(),
            "PostgreSQL did not restart: {}",
            self.log()
        );
    }

    /// Stops the cluster; `fast` disconnects every client at once, as a crash would.
    pub fn stop(&self) {
        let output = run(
            &self.bin,
            "pg_ctl",
            &[
                "stop".into(),
                "-w".into(),
                "-m".into(),
                "fast".into(),
                "-D".into(),
                self.data().display().to_string(),
            ],
        );
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL through psql, for what the tests check or break behind the server's back.
    pub fn psql(&self, sql: &str) -> String {
        let output = run(
            &self.bin,
            "psql",
            &[
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                self.port.to_string(),
                "-U".into(),
                "postgres".into(),
                "-At".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "-c".into(),
                sql.into(),
            ],
        );
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Postgres {
    /// Makes `role` authenticate with its password over TCP (the cluster trusts everyone
    /// else), effective at once.
    pub fn require_password(&self, role: &str) {
        let hba = self.data().join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rest}"),
        )
        .unwrap();
        self.psql("SELECT pg_reload_conf()");
    }

    /// A session of the test's own (as `postgres`), for holding locks behind the servers'
    /// backs; its connection is driven in the background until the client is dropped.
    pub async fn session(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            &format!("{} application_name=test", self.url_params()),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
    }

    fn url_params(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: the directory is deleted next, nothing needs to be kept.
        let _ = run(
            &self.bin,
            "pg_ctl",
            &[
                "stop".into(),
                "-m".into(),
                "immediate".into(),
                "-D".into(),
                self.data().display().to_string(),
            ],
        );
    }
}

/// A KEK file (mode 0600) in `dir`, for `--kek-file`.
fn kek_file(dir: &Path) -> PathBuf {
    let path = dir.join("kek");
    let key: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(7).wrapping_add(3))
        .collect();
    crate::helpers::write_private(
        &path,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        ),
    );
    path
}

/// Where a test's servers keep their keys: the default sled in each data directory, or one
/// PostgreSQL cluster (with its KEK) shared by every server the test starts. Tests written
/// against a `Store` run on both without being copied.
pub enum Store {
    Sled,
    Postgres {
        pg: Postgres,
        _kek_dir: tempfile::TempDir,
        kek: String,
    },
}

impl Store {
    /// A fresh cluster and KEK.
    pub async fn postgres() -> Store {
        // Checked on the test's own thread: there a missing binary fails the test with its
        // one line, where inside `spawn_blocking` it would come back as a JoinError.
        let bin = binaries::dir();
        let pg = tokio::task::spawn_blocking(move || Postgres::start(bin))
            .await
            .unwrap();
        let kek_dir = tempfile::tempdir().unwrap();
        let kek = kek_file(kek_dir.path()).display().to_string();
        Store::Postgres {
            pg,
            _kek_dir: kek_dir,
            kek,
        }
    }

    /// The cluster of a PostgreSQL store.
    pub fn pg(&self) -> &Postgres {
        match self {
            Store::Postgres { pg, .. } => pg,
            Store::Sled => panic!("a sled store has no cluster"),
        }
    }

    /// The KEK file of a PostgreSQL store.
    pub fn kek(&self) -> &str {
        match self {
            Store::Postgres { kek, .. } => kek,
            Store::Sled => panic!("a sled store has no KEK"),
        }
    }

    /// The `serve` flags that put a server on this store (none for sled).
    pub fn args(&self) -> Vec<String> {
        match self {
            Store::Sled => Vec::new(),
            Store::Postgres { pg, kek, .. } => [
                "--store",
                &pg.url(),
                "--kek-file",
                kek,
                "--store-sync-interval",
                "1s",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }

    /// `helpers::config` with this store's flags added.
    pub fn config(
        &self,
        dir: &crate::helpers::DataDir,
        extra: &[&str],
    ) -> token_authority::config::Config {
        let store = self.args();
        let mut args: Vec<&str> = store.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        crate::helpers::config(dir, &args)
    }
}
