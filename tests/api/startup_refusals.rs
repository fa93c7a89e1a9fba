use std::process::Command;

use token_authority::server::ServerError;

use crate::{
    binary::BIN,
    helpers::{config, DataDir, KnownKey, TestServer},
};

async fn start_error(dir: &DataDir) -> String {
    let (server, result) = TestServer::try_start(config(dir, &[])).await;
    assert!(server.is_none(), "the server started");
    let error: ServerError = result.unwrap_err();
    error.to_string()
}

/// An existing data directory that cannot be read never becomes a fresh one.
#[tokio::test]
async fn unreadable_keystores_stop_the_server_and_are_left_alone() {
    // Each case damages a keystore that held a key, then expects a refusal naming why.
    // Where sled's own log is unreadable, sled resets that log while opening it (the data was
    // already gone); there the test checks that the server wrote nothing of its own.
    type Damage = fn(&std::path::Path, &str);
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "garbage record",
            |store, kid| {
                let db = sled::open(store).unwrap();
                db.open_tree("keys")
                    .unwrap()
                    .insert(kid, &b"{not json"[..])
                    .unwrap();
                db.flush().unwrap();
            },
            "is unreadable: key record",
        ),
        (
            "record under another kid",
            |store, kid| {
                let db = sled::open(store).unwrap();
                let keys = db.open_tree("keys").unwrap();
                let value = keys.get(kid).unwrap().unwrap();
                keys.remove(kid).unwrap();
                keys.insert("some-other-kid", value).unwrap();
                db.flush().unwrap();
            },
            "filed under another kid",
        ),
        (
            "all keys deleted",
            |store, kid| {
                let db = sled::open(store).unwrap();
                db.open_tree("keys").unwrap().remove(kid).unwrap();
                db.flush().unwrap();
            },
            "holds no keys",
        ),
        (
            "foreign format",
            |store, _| {
                let db = sled::open(store).unwrap();
                db.insert("format", "something-else/9").unwrap();
                db.flush().unwrap();
            },
            "not a token-authority keystore",
        ),
        (
            "broken private key",
            |store, kid| {
                let db = sled::open(store).unwrap();
                let keys = db.open_tree("keys").unwrap();
                let mut record: serde_json::Value =
                    serde_json::from_slice(&keys.get(kid).unwrap().unwrap()).unwrap();
                record["private_key"]["ciphertext"] = "AAAAAAAAAAAAAAAAAAAAAA".into();
                keys.insert(kid, serde_json::to_vec(&record).unwrap())
                    .unwrap();
                db.flush().unwrap();
            },
            "does not open with its data key",
        ),
        (
            "data key file removed",
            |store, _| {
                std::fs::remove_file(store.with_extension("datakeys")).unwrap();
            },
            "its data key is missing from the data key file",
        ),
        (
            "log zeroed (sled opens it as empty)",
            |store, _| {
                let log = store.join("db");
                let len = std::fs::metadata(&log).unwrap().len() as usize;
                std::fs::write(&log, vec![0u8; len]).unwrap();
            },
            "is damaged: ",
        ),
        (
            "log truncated",
            |store, _| {
                std::fs::write(store.join("db"), b"").unwrap();
            },
            "is damaged: ",
        ),
        (
            "guard file unreadable",
            |store, _| {
                std::fs::write(store.with_extension("guard"), "garbage").unwrap();
            },
            "guard file",
        ),
        (
            "corrupt sled files",
            |store, _| {
                for file in crate::helpers::keystore_files(store) {
                    let len = std::fs::metadata(&file).unwrap().len() as usize;
                    std::fs::write(&file, vec![0xA5; len.max(64)]).unwrap();
                }
            },
            "keystore",
        ),
    ];
    for (name, damage, expected) in cases {
        let dir = DataDir::new();
        let key = KnownKey::seed(&dir);
        let store = dir.path.join("keystore");
        damage(&store, &key.kid);
        let log_readable = !name.starts_with("log ") && name != "corrupt sled files";
        let guard = std::fs::read(store.with_extension("guard")).unwrap();
        let before = log_readable.then(|| contents(&store));
        let error = start_error(&dir).await;
        assert!(error.contains(expected), "{name}: {error}");
        assert!(
            std::fs::read(store.with_extension("guard")).unwrap() == guard,
            "{name}: the guard was rewritten"
        );
        if let Some(before) = before {
            assert!(
                contents(&store) == before,
                "{name}: the keystore was modified"
            );
        } else {
            // sled may refuse its own damaged files outright; if it opens them, no key is there.
            if let Ok(db) = sled::open(&store) {
                assert!(
                    db.open_tree("keys").unwrap().is_empty(),
                    "{name}: a key was written"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_data_directory_held_by_another_server_is_refused() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let error = start_error(&dir).await;
    assert!(error.contains("in use by another process"), "{error}");
    server.stop().await;
}

/// A keystore that cannot be opened stops `serve` with one `error:` line ending with the
/// cause as the operating system gave it: the store keeps sled's error as its source, and
/// the line shows the chain.
#[test]
fn the_error_line_carries_the_cause_the_keystore_failed_with() {
    let dir = DataDir::new();
    dir.create();
    let store = dir.path.join("keystore");
    std::fs::write(&store, "not a directory").unwrap();
    // What the operating system says of a path under a file, as sled meets it.
    let cause = std::fs::File::open(store.join("db")).unwrap_err();
    let output = Command::new(BIN)
        .env_remove("RUST_LOG")
        .args(["serve", "--data-dir", dir.path.to_str().unwrap()])
        .args(["--admin-token-file", dir.admin_token_file.to_str().unwrap()])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let line = format!(
        "error: cannot open the keystore {}: IO error: {cause}",
        store.display()
    );
    assert!(
        stderr.lines().any(|l| l == line),
        "no line\n{line}\nin:\n{stderr}"
    );
}

/// Everything stored, as sled reads it: the metadata and every key record.
fn contents(store: &std::path::Path) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let db = sled::open(store).unwrap();
    let mut out = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        for entry in tree.iter() {
            let (key, value) = entry.unwrap();
            out.push((
                String::from_utf8_lossy(&name).into_owned(),
                key.to_vec(),
                value.to_vec(),
            ));
        }
    }
    out
}

/// Trace settings that cannot work stop the server before it touches its data directory,
/// each with its reason: from the flags and from the standard `OTEL_*` variables.
#[test]
fn trace_settings_that_cannot_work_stop_the_server_with_their_reason() {
    // The flags, the environment, and the line the server prints.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--otlp-endpoint", "c:4317"],
            &[],
            r#"error: invalid configuration: --otlp-endpoint "c:4317": give the collector as http://host:port or https://host:port"#,
        ),
        (
            &["--otlp-ca-file", "/ca.pem"],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")],
            r#"error: invalid configuration: --otlp-ca-file needs an https:// collector, not "http://127.0.0.1:4317""#,
        ),
        (
            &["--otlp-endpoint", "http://127.0.0.1:4317"],
            &[("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
            r#"error: invalid configuration: OTEL_BSP_MAX_QUEUE_SIZE "0": give a number of spans from 1 to 1048576"#,
        ),
        (
            &["--otlp-endpoint", "http://127.0.0.1:4317"],
            &[("OTEL_BSP_MAX_QUEUE_SIZE", "a lot")],
            r#"error: invalid configuration: OTEL_BSP_MAX_QUEUE_SIZE "a lot": give a number of spans from 1 to 1048576"#,
        ),
        (
            &["--otlp-endpoint", "http://127.0.0.1:4317"],
            &[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "1%"),
            ],
            r#"error: invalid configuration: OTEL_TRACES_SAMPLER_ARG "1%": give the share of traces to sample, from 0 to 1"#,
        ),
        (
            &["--otlp-endpoint", "http://127.0.0.1:4317"],
            &[("OTEL_BSP_SCHEDULE_DELAY", "0")],
            r#"error: invalid configuration: OTEL_BSP_SCHEDULE_DELAY "0": give the milliseconds between exports, at least 1"#,
        ),
        (
            &[
                "--otlp-endpoint",
                "https://127.0.0.1:4317",
                "--otlp-ca-file",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ],
            &[],
            concat!(
                "error: the collector's CA file ",
                env!("CARGO_MANIFEST_DIR"),
                "/Cargo.toml holds no PEM certificate"
            ),
        ),
    ];
    for (args, envs, line) in cases {
        let dir = DataDir::new();
        let data = dir.path.join("data");
        // A server that wrongly starts is stopped and named, not waited on forever.
        let output =
            crate::binary::serve_until_it_stops(&data, args, envs, &format!("{args:?} {envs:?}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {envs:?}: {stderr}");
        assert!(
            stderr.lines().any(|l| l == *line),
            "{args:?} {envs:?}: no line\n{line}\nin:\n{stderr}"
        );
        assert!(
            !data.exists(),
            "{args:?} {envs:?}: the data directory was made"
        );
    }
}

/// Every file a flag names is read only if it is a regular file: a FIFO (which a plain read
/// would wait on forever, before the server handles SIGTERM) or a device stops the start at
/// once with the reason. The real binary, so that a start that hangs fails the test.
#[tokio::test]
async fn a_fifo_or_a_device_named_by_a_file_flag_stops_the_start() {
    let dir = DataDir::new();
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("fifo");
    assert!(Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let fifo = fifo.to_str().unwrap();
    let audit = work.path().join("audit.log");
    let audit = audit.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--kek-file", fifo], "KEK file"),
        (&["--admin-token-file", fifo], "admin token"),
        (&["--policy-file", fifo], "policy file"),
        (
            &["--audit-log", audit, "--audit-key-file", fifo],
            "audit key file",
        ),
        (&["--tls-cert", fifo, "--tls-key", fifo], "tls"),
        (&["--kek-file", "/dev/zero"], "KEK file"),
    ];
    for (flags, what) in cases {
        let mut args = vec!["--allow-group-readable-files"];
        args.extend_from_slice(flags);
        let output =
            crate::binary::serve_until_it_stops(&dir.path, &args, &[], &format!("{flags:?}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{flags:?}: {stderr}");
        assert!(
            stderr.contains("not a regular file (a FIFO, device, socket or directory)")
                && stderr.to_lowercase().contains(&what.to_lowercase()),
            "{flags:?}: {stderr}"
        );
    }
}
