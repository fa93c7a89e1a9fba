//! `serve --signer pkcs11` against SoftHSM: keys generated in the token, non-extractable,
//! signing every algorithm; nothing private in the data directory; revoked keys' objects
//! destroyed; settings the token refuses stop the start with one line.

use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use token_authority::{
    pb,
    store::{kek::Keks, KeyStore},
};

use crate::helpers::{admin, config, DataDir, TestServer};

mod clients;
mod outage;
mod replicas;
mod softhsm;

const ALGORITHMS: [&str; 4] = ["RS256", "PS256", "ES256", "EdDSA"];

/// The serve flags for token `label`, its PIN in an owner-only file of `dir`.
fn signer_flags(dir: &DataDir, label: &str) -> Vec<String> {
    let pin = dir.path.with_extension("pin");
    std::fs::write(&pin, format!("{}\n", softhsm::USER_PIN)).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    vec![
        "--signer".into(),
        "pkcs11".into(),
        "--pkcs11-module".into(),
        softhsm::MODULE.into(),
        "--pkcs11-token-label".into(),
        label.into(),
        "--pkcs11-pin-file".into(),
        pin.display().to_string(),
        "--algorithms".into(),
        ALGORITHMS.join(","),
    ]
}

fn args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// The private key objects labelled `kid` in token `label`.
fn private_objects(label: &str, kid: &str) -> Vec<cryptoki::object::ObjectHandle> {
    softhsm::user_session(label)
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(kid.as_bytes().to_vec()),
        ])
        .unwrap()
}

#[tokio::test]
async fn every_algorithm_signs_in_the_token_and_nothing_private_is_stored() {
    let label = softhsm::new_token("signs");
    let dir = DataDir::new();
    let flags = signer_flags(&dir, &label);
    let server = TestServer::start_with(config(&dir, &args(&flags))).await;
    for alg in ALGORITHMS {
        let issued = server
            .client
            .clone()
            .issue_token(pb::IssueTokenRequest {
                subject: "svc".into(),
                audience: vec!["aud".into()],
                algorithm: alg.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let verdict = server.verify(&issued.token, "aud").await;
        assert!(verdict.valid, "{alg}: {verdict:?}");
        // The signing key is an object of the token, labelled with its kid, whose private
        // value cannot be read and which cannot be exported.
        let objects = private_objects(&label, &issued.key_id);
        assert_eq!(objects.len(), 1, "{alg}: {}", issued.key_id);
        let session = softhsm::user_session(&label);
        let info = session
            .get_attribute_info(
                objects[0],
                &[AttributeType::Extractable, AttributeType::Sensitive],
            )
            .unwrap();
        assert!(matches!(info[0], AttributeInfo::Available(_)), "{alg}");
        let values = session
            .get_attributes(
                objects[0],
                &[AttributeType::Extractable, AttributeType::Sensitive],
            )
            .unwrap();
        assert!(
            values.contains(&Attribute::Extractable(false)),
            "{alg}: {values:?}"
        );
        assert!(
            values.contains(&Attribute::Sensitive(true)),
            "{alg}: {values:?}"
        );
        // It signs and does nothing else: no decryption, unwrapping or derivation with it,
        // even on a token that ignores the allowed-mechanisms list.
        let uses = session
            .get_attributes(
                objects[0],
                &[
                    AttributeType::Sign,
                    AttributeType::Decrypt,
                    AttributeType::Unwrap,
                    AttributeType::Derive,
                ],
            )
            .unwrap();
        assert_eq!(
            uses,
            [
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false)
            ],
            "{alg}"
        );
        assert!(
            session
                .get_attributes(objects[0], &[AttributeType::Value])
                .unwrap()
                .is_empty(),
            "{alg}: the private value was readable"
        );
    }
    server.stop().await;
    // The keystore holds, for every key, the token object and no private half.
    let (_store, records) = KeyStore::open(&dir.path.join("keystore"), None::<Keks>).unwrap();
    assert_eq!(records.len(), 2 * ALGORITHMS.len());
    for record in &records {
        assert!(record.private_key.as_bytes().is_empty(), "{}", record.kid);
        assert!(record.token.is_some(), "{}", record.kid);
    }
}

/// Every private key object in token `label`.
fn all_private_objects(label: &str) -> usize {
    softhsm::user_session(label)
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap()
        .len()
}

/// A rotation whose keystore write fails changes nothing, as it says: the key it made in
/// the token is destroyed with it, however often it is retried; the retry that succeeds
/// leaves exactly its one new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_that_fails_leaves_no_key_in_the_token() {
    let label = softhsm::new_token("undone");
    let dir = DataDir::new();
    let mut flags = signer_flags(&dir, &label);
    let at = flags.iter().position(|f| f == "--algorithms").unwrap();
    flags[at + 1] = "ES256".into();
    let server = TestServer::start_with(config(&dir, &args(&flags))).await;
    let before = all_private_objects(&label);
    assert_eq!(before, 2, "a current and a next key");

    let blocker = dir.path.join("keystore.guard.tmp");
    std::fs::create_dir(&blocker).unwrap();
    for _ in 0..3 {
        let status = server
            .client
            .clone()
            .rotate_keys(admin(pb::RotateKeysRequest {
                force: true,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert!(status.message().contains("nothing changed"), "{status:?}");
        assert_eq!(all_private_objects(&label), before);
    }
    std::fs::remove_dir(&blocker).unwrap();
    server
        .client
        .clone()
        .rotate_keys(admin(pb::RotateKeysRequest {
            force: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(all_private_objects(&label), before + 1, "the new next key");
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_server_signs_with_the_keys_it_finds_again_and_revocation_destroys_them() {
    let label = softhsm::new_token("restart");
    let dir = DataDir::new();
    let flags = signer_flags(&dir, &label);
    let server = TestServer::start_with(config(&dir, &args(&flags))).await;
    let before = server.issue("svc", &["aud"]).await;
    server.stop().await;

    let server = TestServer::start_with(config(&dir, &args(&flags))).await;
    let after = server.issue("svc", &["aud"]).await;
    assert_eq!(after.key_id, before.key_id);
    assert!(server.verify(&before.token, "aud").await.valid);

    // Revoked: refused, and its object gone from the token.
    assert_eq!(private_objects(&label, &before.key_id).len(), 1);
    server
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: before.key_id.clone(),
            reason: "test".into(),
        }))
        .await
        .unwrap();
    assert!(private_objects(&label, &before.key_id).is_empty());
    let verdict = server.verify(&before.token, "aud").await;
    assert_eq!(verdict.reason, pb::VerifyFailureReason::RevokedKey as i32);
    // The next key took over, and signs in the token.
    let next = server.issue("svc", &["aud"]).await;
    assert_ne!(next.key_id, before.key_id);
    assert_eq!(private_objects(&label, &next.key_id).len(), 1);
    assert!(server.verify(&next.token, "aud").await.valid);
    server.stop().await;
}

/// Settings the token refuses stop the start, each with one line naming what to fix.
#[tokio::test]
async fn settings_the_token_refuses_stop_the_start_with_one_line() {
    let label = softhsm::new_token("refuses");
    let dir = DataDir::new();
    let good = signer_flags(&dir, &label);
    let with = |flag: &str, value: &str| {
        let mut flags = good.clone();
        let at = flags.iter().position(|f| f == flag).unwrap();
        flags[at + 1] = value.to_owned();
        flags
    };
    let wrong_pin = dir.path.with_extension("wrong-pin");
    std::fs::write(&wrong_pin, "not-the-pin\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let open_pin = dir.path.with_extension("open-pin");
    std::fs::write(&open_pin, softhsm::USER_PIN).unwrap();
    std::fs::set_permissions(&open_pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases = [
        (
            with("--pkcs11-pin-file", &wrong_pin.display().to_string()),
            format!("the user PIN of token {label:?} is incorrect"),
        ),
        (
            with("--pkcs11-token-label", "no-such-token"),
            "no PKCS#11 token is labelled \"no-such-token\"".to_owned(),
        ),
        (
            with("--pkcs11-module", "/nonexistent/libpkcs11.so"),
            "cannot load the PKCS#11 module /nonexistent/libpkcs11.so".to_owned(),
        ),
        (
            with("--pkcs11-pin-file", &open_pin.display().to_string()),
            format!(
                "the PKCS#11 PIN file {} is accessible to group or others",
                open_pin.display()
            ),
        ),
    ];
    for (flags, expected) in cases {
        let case_dir = DataDir::new();
        let (server, result) = TestServer::try_start(config(&case_dir, &args(&flags))).await;
        assert!(server.is_none(), "{expected}");
        let error = result.unwrap_err();
        let line = token_authority::telemetry::chain(&error).to_string();
        assert!(line.starts_with(&expected), "{line}\nexpected: {expected}");
    }
}

/// The README's switch: keys made in the process keep signing after `--signer pkcs11` until
/// they rotate out; a forced rotation moves the signing onto a key made in the token.
#[tokio::test]
async fn keys_made_before_the_switch_sign_until_a_rotation_moves_to_the_token() {
    let label = softhsm::new_token("switch");
    let dir = DataDir::new();
    let before_flags = ["--algorithms", "ES256"];
    let server = TestServer::start_with(config(&dir, &before_flags)).await;
    let old = server.issue("svc", &["aud"]).await;
    server.stop().await;

    let mut flags = signer_flags(&dir, &label);
    let at = flags.iter().position(|f| f == "--algorithms").unwrap();
    flags[at + 1] = "ES256".into();
    let server = TestServer::start_with(config(&dir, &args(&flags))).await;
    let still = server.issue("svc", &["aud"]).await;
    assert_eq!(still.key_id, old.key_id);
    assert!(private_objects(&label, &old.key_id).is_empty());
    let rotated = server
        .client
        .clone()
        .rotate_keys(admin(pb::RotateKeysRequest {
            force: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let moved = server.issue("svc", &["aud"]).await;
    assert_eq!(moved.key_id, rotated.current_key_id);
    assert_ne!(moved.key_id, old.key_id);
    assert!(server.verify(&moved.token, "aud").await.valid);
    assert!(server.verify(&old.token, "aud").await.valid);
    server.stop().await;
}

/// A wrong PIN stops the binary with one `error:` line and exit 2.
#[tokio::test]
async fn the_binary_exits_2_on_a_wrong_pin() {
    let label = softhsm::new_token("exit");
    let dir = DataDir::new();
    let flags = signer_flags(&dir, &label);
    let pin = &flags[flags.iter().position(|f| f == "--pkcs11-pin-file").unwrap() + 1];
    std::fs::write(pin, "not-the-pin").unwrap();
    let output = std::process::Command::new(crate::binary::BIN)
        .args(["serve", "--data-dir"])
        .arg(&dir.path)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(&flags)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "error: the user PIN of token {label:?} is incorrect"
        )),
        "{stderr}"
    );
}

/// The README's SoftHSM commands, as written: a token made with `softhsm2-util`, then
/// `serve` with the signer, which starts serving.
#[test]
fn the_readme_softhsm_commands_start_a_server() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```sh\nsofthsm2-util")
        .expect("the README's SoftHSM block")
        + 6;
    let script = &readme[start..start + readme[start..].find("```").unwrap()];
    softhsm::new_token("readme"); // SOFTHSM2_CONF of this process, inherited below
    let work = tempfile::tempdir().unwrap();
    let bin_dir = std::path::Path::new(crate::binary::BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut child = std::process::Command::new("bash")
        .args(["-euc", script])
        .current_dir(work.path())
        .env("PATH", path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    let served = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("serving") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = std::process::Command::new("pkill")
        .args(["-TERM", "-P", &child.id().to_string()])
        .status();
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "{}", seen.join("\n"));
    assert!(
        seen.iter().any(|l| l.contains("held in the PKCS#11 token")),
        "{}",
        seen.join("\n")
    );
    // No private key is stored outside the token, so no warning says one is unencrypted.
    assert!(
        seen.iter().any(|l| l.contains(
            "no private key is stored in the data directory: the PKCS#11 token holds them"
        )) && !seen.iter().any(|l| l.contains("UNENCRYPTED")),
        "{}",
        seen.join("\n")
    );
    let listed = std::process::Command::new(crate::binary::BIN)
        .args(["keys", "list"])
        .current_dir(work.path())
        .env_remove("TA_SIGNER")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.ends_with(
            "private keys at rest: none in the keystore (each is held in a PKCS#11 token, or was erased)\n"
        ),
        "{table}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

/// Where each key lives, in ListKeys and in `keys list`; and `keys import` refuses a key
/// born outside the token, with the signer named or found in the keystore.
#[tokio::test]
async fn keys_show_where_they_live_and_import_refuses_next_to_the_token() {
    let label = softhsm::new_token("where");
    let dir = DataDir::new();
    // One key made in the process first, then the switch: both kinds in one keystore.
    let server = TestServer::start_with(config(&dir, &["--algorithms", "ES256"])).await;
    let in_process: Vec<String> = server
        .list_keys()
        .await
        .keys
        .into_iter()
        .map(|key| key.key_id)
        .collect();
    server.stop().await;
    let mut flags = signer_flags(&dir, &label);
    let at = flags.iter().position(|f| f == "--algorithms").unwrap();
    flags[at + 1] = "ES256".into();
    let server = TestServer::start_with(config(&dir, &args(&flags))).await;
    server.rotate().await;
    let listed = server.list_keys().await.keys;
    let mut in_token = Vec::new();
    for key in &listed {
        if in_process.contains(&key.key_id) {
            assert_eq!(key.location, pb::KeyLocation::Process as i32);
            assert_eq!(key.token_object_id, "");
        } else {
            assert_eq!(key.location, pb::KeyLocation::Pkcs11Token as i32, "{key:?}");
            assert_eq!(key.token_object_id.len(), 32, "{key:?}");
            in_token.push((key.key_id.clone(), key.token_object_id.clone()));
        }
    }
    assert_eq!(in_token.len(), 1, "{listed:?}");
    server.stop().await;

    let keys = |extra: &[&str]| {
        std::process::Command::new(crate::binary::BIN)
            .arg("keys")
            .args(extra)
            .args(["--data-dir", dir.path.to_str().unwrap()])
            .env_remove("TA_SIGNER")
            .output()
            .unwrap()
    };
    let table = String::from_utf8(keys(&["list"]).stdout).unwrap();
    // The key made in the process is still in the keystore, without a KEK.
    assert!(
        table.ends_with("private keys at rest: UNENCRYPTED (no --kek-file)\n"),
        "{table}"
    );
    let line_of = |kid: &str| {
        table
            .lines()
            .find(|line| line.starts_with(kid))
            .unwrap_or_else(|| panic!("{kid} not listed: {table}"))
            .to_owned()
    };
    assert!(
        table.lines().next().unwrap().contains(" LOCATION "),
        "{table}"
    );
    for kid in &in_process {
        assert!(line_of(kid).contains(" process "), "{table}");
    }
    for (kid, object_id) in &in_token {
        assert!(
            line_of(kid).contains(&format!(" token:{object_id} ")),
            "{table}"
        );
    }

    let work = tempfile::tempdir().unwrap();
    let pem = work.path().join("ec.pem");
    let der = token_authority_jose::crypto::generate_pkcs8(
        token_authority_jose::crypto::Algorithm::ES256,
    )
    .unwrap();
    std::fs::write(
        &pem,
        pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, &der).unwrap(),
    )
    .unwrap();
    let pem = pem.to_str().unwrap();
    for (extra, why) in [
        (
            &["--signer", "pkcs11"][..],
            "--signer pkcs11 keeps every signing key in the token",
        ),
        (&[][..], "this keystore's keys live in a PKCS#11 token"),
    ] {
        let mut command = vec!["import", "--pem", pem];
        command.extend_from_slice(extra);
        let output = keys(&command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!(
                "error: {why}: nothing imported. A key made outside the token is not \
                 non-extractable; a forced rotation (RotateKeys with force) makes a new key \
                 in the token"
            ),
            "{extra:?}"
        );
    }
    let unchanged = String::from_utf8(keys(&["list"]).stdout).unwrap();
    assert_eq!(unchanged, table);
}

/// The README's PKCS#11 figures come from `tests/perf/pkcs11.sh`: it runs here, briefly, on
/// the test build, and prints every run without an error and each algorithm's ratio.
#[test]
fn the_perf_script_measures_issue_with_both_signers() {
    let env = [
        ("DUR", "200ms"),
        ("WARMUP", "100ms"),
        ("ROUNDS", "2"),
        ("ALGS", "ES256 EdDSA"),
    ];
    let stdout = crate::perf_scripts::run("pkcs11.sh", &env, &["process ", "token "], 2 * 2 * 2);
    for alg in ["ES256", "EdDSA"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("issue {alg:5} process median"))
                    && l.contains("token/process ")),
            "{stdout}"
        );
    }
}

/// `signer` and `keystore` answer from the first moment the server says SERVING (a probe
/// right after the start never meets "service not registered"): SERVING with keys in the
/// process, and with a token that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_and_keystore_health_answer_from_the_first_moment_of_serving() {
    let label = softhsm::new_token("health");
    let token_dir = DataDir::new();
    let token_flags = signer_flags(&token_dir, &label);
    for start in 0..12 {
        let dir = DataDir::new();
        let flags: Vec<String> = if start % 4 == 3 {
            token_flags.clone()
        } else {
            vec!["--algorithms".into(), "EdDSA".into()]
        };
        let data_dir = if start % 4 == 3 { &token_dir } else { &dir };
        let server = TestServer::start_with(config(data_dir, &args(&flags))).await;
        let channel = crate::helpers::endpoint(server.grpc_addr, None).connect_lazy();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        for service in ["signer", "keystore"] {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|e| panic!("start {start}, {service}: {e}"))
                .into_inner()
                .status;
            assert_eq!(status, 1, "start {start}, {service}");
        }
        server.stop().await;
    }
}
