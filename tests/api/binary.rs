//! The real binary as a child process: flags, start-up errors, signals.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::helpers::DataDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_token-authority");

/// A running binary and the addresses it logged.
pub struct Process {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    pub log: std::sync::mpsc::Receiver<String>,
    /// The lines logged before `serving`, that line included.
    pub startup: Vec<String>,
}

/// Runs the binary to its end with `args` (a command other than `serve`): whether it
/// succeeded, and what it printed on stdout then stderr.
pub fn run_command(args: &[&str]) -> (bool, String) {
    let output = Command::new(BIN).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Starts `token-authority serve` on ephemeral ports and waits for its "serving" line.
pub fn spawn_binary(dir: &DataDir, extra: &[&str]) -> Process {
    spawn_binary_logging(dir, extra, None)
}

/// Like `spawn_binary`, with `RUST_LOG` set to `filter` (None: the default, info).
pub fn spawn_binary_logging(dir: &DataDir, extra: &[&str], filter: Option<&str>) -> Process {
    spawn_command(Command::new(BIN), dir, extra, filter)
}

/// Like `spawn_binary`, with `envs` added to its environment.
pub fn spawn_binary_with_env(dir: &DataDir, extra: &[&str], envs: &[(&str, &str)]) -> Process {
    let mut command = Command::new(BIN);
    command.envs(envs.iter().copied());
    spawn_command(command, dir, extra, None)
}

/// Like `spawn_binary_with_env`, with `RUST_LOG` set to `filter`.
pub fn spawn_binary_with_env_logging(
    dir: &DataDir,
    extra: &[&str],
    envs: &[(&str, &str)],
    filter: &str,
) -> Process {
    let mut command = Command::new(BIN);
    command.envs(envs.iter().copied());
    spawn_command(command, dir, extra, Some(filter))
}

/// Like `spawn_binary`, started under `umask` (through `sh`, which then execs the binary).
pub fn spawn_binary_with_umask(dir: &DataDir, extra: &[&str], umask: &str) -> Process {
    spawn_command(umask_command(umask), dir, extra, None)
}

/// A command that runs the binary with the arguments it is given, under `umask`.
pub fn umask_command(umask: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\""), BIN]);
    command
}

fn spawn_command(
    mut command: Command,
    dir: &DataDir,
    extra: &[&str],
    filter: Option<&str>,
) -> Process {
    command.env_remove("RUST_LOG");
    if let Some(filter) = filter {
        command.env("RUST_LOG", filter);
    }
    let mut child = command
        .arg("serve")
        .args(["--data-dir", dir.path.to_str().unwrap()])
        .args(["--admin-token-file", dir.admin_token_file.to_str().unwrap()])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Owned by `Process` from here on, so a failed start is still killed and reaped.
    let mut process = Process {
        child,
        grpc: String::new(),
        http: String::new(),
        log: rx,
        startup: Vec::new(),
    };
    loop {
        let line = process
            .log
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logged no 'serving' line");
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        process.startup.push(line);
        if event["fields"]["message"] == "serving" {
            process.grpc = event["fields"]["grpc"].as_str().unwrap().to_owned();
            process.http = event["fields"]["http"].as_str().unwrap().to_owned();
            return process;
        }
    }
}

/// `serve` with `args` and `envs` on the data directory `data` and ephemeral ports, expected
/// to stop by itself (a refused start): its output once it has, or a panic naming `what`
/// after 60 s, so that a start that hangs (or wrongly serves) fails the test instead of
/// holding it.
pub fn serve_until_it_stops(
    data: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
    what: &str,
) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--data-dir", data.to_str().unwrap()])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{what}: the start neither ended nor was refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The `/metrics` text of the server whose HTTP listener is `http`.
pub async fn metrics_text(http: &str) -> String {
    ::reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

impl Process {
    /// Its `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        metrics_text(&self.http).await
    }

    /// Sends SIGTERM, asserts the drained exit 0, and returns every log line written.
    pub fn terminate(&mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        assert_eq!(
            self.child.wait().unwrap().code(),
            Some(0),
            "exit status after SIGTERM"
        );
        // The reader thread ends with the process, which closes the channel.
        let mut lines = Vec::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        lines
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[test]
fn bad_flags_exit_non_zero_with_one_clear_line_before_binding() {
    // Hold a port: a bad value must be reported, not a bind failure.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = held.local_addr().unwrap().to_string();
    let dir = DataDir::new();
    let cases: &[(&[&str], &str)] = &[
        (&["--max-ttl", "forever"], "--max-ttl"),
        (&["--default-ttl", "2d", "--max-ttl", "1d"], "--default-ttl"),
        (&["--grpc-listen", "not-an-address"], "--grpc-listen"),
        (&["--log-format", "yaml"], "--log-format"),
        (&["--issuer", "tokens.example"], "--issuer"),
    ];
    for (args, flag) in cases {
        let output = Command::new(BIN)
            .arg("serve")
            .args([
                "--data-dir",
                dir.path.to_str().unwrap(),
                "--grpc-listen",
                &held,
                "--http-listen",
                &held,
            ])
            .args(*args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error:") && first.contains(flag),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("bind"), "{args:?}: {stderr}");
        assert!(
            !dir.path.exists(),
            "{args:?}: the data directory was created"
        );
    }
}

#[test]
fn plaintext_and_tls_flag_rules_refuse_with_one_exact_line_before_binding() {
    let dir = DataDir::new();
    let garbage = dir.admin_token_file.to_str().unwrap();
    let not_loopback = "error: invalid configuration: --grpc-listen 0.0.0.0:0 is not a loopback \
                        address: give --tls-cert and --tls-key, or --allow-plaintext when a \
                        proxy or mesh terminates TLS";
    let cases: &[(&[&str], &str)] = &[
        (&["--grpc-listen", "0.0.0.0:0"], not_loopback),
        (
            &["--http-listen", "[::]:0"],
            "error: invalid configuration: --http-listen [::]:0 is not a loopback address: give \
             --tls-cert and --tls-key, or --allow-plaintext when a proxy or mesh terminates TLS",
        ),
        (
            &["--tls-cert", garbage],
            "error: invalid configuration: --tls-cert needs --tls-key",
        ),
        (
            &["--tls-key", garbage],
            "error: invalid configuration: --tls-key needs --tls-cert",
        ),
        (
            &["--client-ca", garbage],
            "error: invalid configuration: --client-ca needs --tls-cert and --tls-key",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(BIN)
            .arg("serve")
            .args(["--data-dir", dir.path.to_str().unwrap()])
            .args(*args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end(), *expected, "{args:?}");
        assert!(
            !dir.path.exists(),
            "{args:?}: the data directory was created"
        );
    }
}

#[test]
fn help_documents_every_flag_and_env_var() {
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for (flag, env) in [
        ("--data-dir", "TA_DATA_DIR"),
        ("--grpc-listen", "TA_GRPC_LISTEN"),
        ("--http-listen", "TA_HTTP_LISTEN"),
        ("--issuer", "TA_ISSUER"),
        ("--admin-token-file", "TA_ADMIN_TOKEN_FILE"),
        ("--kek-file", "TA_KEK_FILE"),
        (
            "--allow-group-readable-files",
            "TA_ALLOW_GROUP_READABLE_FILES",
        ),
        ("--default-ttl", "TA_DEFAULT_TTL"),
        ("--max-ttl", "TA_MAX_TTL"),
        ("--leeway", "TA_LEEWAY"),
        ("--jwks-max-age", "TA_JWKS_MAX_AGE"),
        ("--shutdown-grace", "TA_SHUTDOWN_GRACE"),
        ("--log-format", "TA_LOG_FORMAT"),
        ("--tls-cert", "TA_TLS_CERT"),
        ("--tls-key", "TA_TLS_KEY"),
        ("--client-ca", "TA_CLIENT_CA"),
        ("--allow-plaintext", "TA_ALLOW_PLAINTEXT"),
        ("--max-connections", "TA_MAX_CONNECTIONS"),
        ("--max-connections-per-ip", "TA_MAX_CONNECTIONS_PER_IP"),
        ("--max-watchers-per-ip", "TA_MAX_WATCHERS_PER_IP"),
        ("--auth-failures-per-ip", "TA_AUTH_FAILURES_PER_IP"),
        ("--max-connection-age", "TA_MAX_CONNECTION_AGE"),
        ("--handshake-timeout", "TA_HANDSHAKE_TIMEOUT"),
        ("--idle-timeout", "TA_IDLE_TIMEOUT"),
        ("--tls-reload-interval", "TA_TLS_RELOAD_INTERVAL"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing from --help"
        );
    }
    for (command, flags) in [
        ("list", &["--data-dir", "--kek-file", "--publish-lead"][..]),
        (
            "import",
            &[
                "--data-dir",
                "--kek-file",
                "--pem",
                "--kid",
                "--algorithm",
                "--max-ttl",
            ][..],
        ),
        ("rewrap", &["--data-dir", "--kek-file"][..]),
        (
            "bench",
            &[
                "--target",
                "--http-target",
                "--duration",
                "--warmup",
                "--concurrency",
                "--connections",
                "--algorithm",
                "--reference",
                "--json",
                "--tls-ca",
                "--tls-cert",
                "--tls-key",
            ][..],
        ),
    ] {
        let args: &[&str] = if command == "bench" {
            &["bench", "--help"]
        } else {
            &["keys", command, "--help"]
        };
        let output = Command::new(BIN).args(args).output().unwrap();
        assert!(output.status.success(), "keys {command} --help");
        let help = String::from_utf8_lossy(&output.stdout);
        for flag in flags {
            assert!(help.contains(flag), "keys {command} --help lacks {flag}");
        }
    }
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("token-authority "));
}

#[test]
fn sigterm_drains_flushes_and_exits_zero() {
    let dir = DataDir::new();
    let mut process = spawn_binary(&dir, &[]);
    let jwks = reqwest::blocking_get(&format!("http://{}/.well-known/jwks.json", process.http));
    assert!(jwks.contains("\"keys\""));
    let messages: Vec<String> = process
        .terminate()
        .into_iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .filter_map(|event| event["fields"]["message"].as_str().map(str::to_owned))
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("NOT_SERVING")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("keystore flushed")),
        "{messages:?}"
    );
}

/// `--shutdown-delay`: after SIGTERM, readiness fails at once, yet new connections are still
/// served until the delay ends (the endpoints that list the pod learn it late); then the
/// drain, and exit 0.
#[test]
fn after_sigterm_new_connections_are_served_for_the_shutdown_delay() {
    let dir = DataDir::new();
    let mut process = spawn_binary(&dir, &["--shutdown-delay", "3s"]);
    let status = |path: &str| {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            ::reqwest::get(format!("http://{}{path}", process.http))
                .await
                .map(|response| response.status().as_u16())
        })
    };
    assert_eq!(status("/readyz").unwrap(), 200);
    let pid = process.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let signalled = std::time::Instant::now();
    while status("/readyz").unwrap() != 503 {
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "readiness still passing after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each request is a new connection (a fresh client): accepted and answered.
    for _ in 0..3 {
        assert_eq!(status("/.well-known/jwks.json").unwrap(), 200);
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the checks outlasted the delay; they prove nothing"
    );
    assert_eq!(process.child.wait().unwrap().code(), Some(0));
    let mut lines = Vec::new();
    while let Ok(line) = process.log.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    assert!(
        lines
            .iter()
            .any(|line| line.contains("still serving until the delay ends")),
        "{lines:?}"
    );
    assert!(status("/readyz").is_err(), "still listening after the exit");
}

mod reqwest {
    /// A minimal blocking GET over a fresh runtime, for the synchronous process tests.
    pub fn blocking_get(url: &str) -> String {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { ::reqwest::get(url).await.unwrap().text().await.unwrap() })
    }
}

/// `--log-format json`: every line of a run is one JSON object, and each RPC's event carries
/// the span fields method, outcome and latency. At the default level (info) a failed RPC is
/// logged and a successful data-plane RPC is not.
#[test]
fn json_logs_are_one_object_per_line_with_rpc_fields() {
    let dir = DataDir::new();
    let mut process = spawn_binary(&dir, &[]);
    let grpc = process.grpc.clone();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut client =
                token_authority::pb::token_authority_client::TokenAuthorityClient::connect(
                    format!("http://{grpc}"),
                )
                .await
                .unwrap();
            client
                .issue_token(token_authority::pb::IssueTokenRequest {
                    subject: "svc".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let refused = client
                .issue_token(token_authority::pb::IssueTokenRequest::default())
                .await
                .unwrap_err();
            assert_eq!(
                (refused.code(), refused.message()),
                (tonic::Code::InvalidArgument, "subject: is required"),
            );
        });
    let mut rpcs = Vec::new();
    for line in process.terminate() {
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "{line}"
        );
        if event["fields"]["message"] == "rpc finished" {
            rpcs.push(event["span"].clone());
        }
    }
    let outcomes: Vec<(String, String)> = rpcs
        .iter()
        .map(|span| {
            assert!(span["latency_us"].is_number(), "{span}");
            (
                span["method"].as_str().unwrap().to_owned(),
                span["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(outcomes, [("IssueToken".into(), "InvalidArgument".into())]);
}

/// A policy file replaced by a FIFO while the server runs: the reload refuses it (not a
/// regular file) instead of waiting on it, so the server keeps answering, says the file is
/// refused, and still stops at SIGTERM.
#[test]
fn a_policy_file_swapped_for_a_fifo_is_refused_and_the_server_keeps_serving() {
    let dir = DataDir::new();
    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[rule]]\ncallers = [\"spiffe://example.test/*\"]\naudiences = [\"api\"]\n",
    )
    .unwrap();
    let mut process = spawn_binary(
        &dir,
        &[
            "--policy-file",
            policy.to_str().unwrap(),
            "--policy-reload-interval",
            "100ms",
        ],
    );
    std::fs::remove_file(&policy).unwrap();
    assert!(Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(&policy)
        .status()
        .unwrap()
        .success());
    let refused = r#"token_authority_config_refused{file="policy"} 1"#;
    let started = std::time::Instant::now();
    loop {
        let text = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(process.metrics_text());
        if text.lines().any(|line| line == refused) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the FIFO was never refused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several reloads later, still answering.
    std::thread::sleep(Duration::from_millis(500));
    let jwks = reqwest::blocking_get(&format!("http://{}/.well-known/jwks.json", process.http));
    assert!(jwks.contains("\"keys\""));
    let lines = process.terminate();
    assert!(
        lines.iter().any(|line| line.contains("not a regular file")),
        "{lines:?}"
    );
}
