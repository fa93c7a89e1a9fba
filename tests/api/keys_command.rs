//! `token-authority keys import|list` on a data directory, with keys made by `openssl
//! genpkey` as a team moving from a hand-made setup has them.

use std::process::Command;

use token_authority_jose::crypto::{self, Algorithm, SigningKey};

use crate::{
    binary::BIN,
    helpers::{config, now, verify_independently, DataDir, TestServer},
};

pub fn openssl_key(dir: &std::path::Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    let status = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&path)
        .status()
        .expect("openssl is needed for this test (Debian package openssl)");
    assert!(status.success());
    path
}

fn keys(args: &[&str], dir: &DataDir) -> std::process::Output {
    Command::new(BIN)
        .arg("keys")
        .args(args)
        .args(["--data-dir", dir.path.to_str().unwrap()])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_openssl_keys_keep_their_kid_and_rotate_in() {
    let dir = DataDir::new();
    let work = tempfile::tempdir().unwrap();
    let rsa = openssl_key(
        work.path(),
        "rsa.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let ec = openssl_key(
        work.path(),
        "ec.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let ed = openssl_key(work.path(), "ed.pem", &["-algorithm", "ED25519"]);

    // Into an empty data directory: the team's RSA key keeps its kid and signs from the start.
    let output = keys(
        &[
            "import",
            "--pem",
            rsa.to_str().unwrap(),
            "--kid",
            "legacy-2024",
        ],
        &dir,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("imported legacy-2024 (RS256)"));
    for (pem, alg) in [(&ec, "ES256"), (&ed, "EdDSA")] {
        let output = keys(&["import", "--pem", pem.to_str().unwrap()], &dir);
        assert!(
            output.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains(&format!("({alg}) as the next key"))
        );
    }
    let listed = String::from_utf8(keys(&["list"], &dir).stdout).unwrap();
    assert!(
        listed.contains("legacy-2024") && listed.contains("next"),
        "{listed}"
    );
    assert!(listed.contains("UNENCRYPTED"), "{listed}");

    // A token the team signed with its key before the move verifies against the new JWKS.
    let pem = std::fs::read(&rsa).unwrap();
    let legacy =
        SigningKey::from_pkcs8(Algorithm::RS256, &crypto::pkcs8_from_pem(&pem).unwrap()).unwrap();
    let input = format!(
        "{}.{}",
        token_authority_jose::b64::encode(r#"{"alg":"RS256","kid":"legacy-2024","typ":"JWT"}"#),
        token_authority_jose::b64::encode(format!(
            r#"{{"iss":"http://token-authority.test","sub":"old","aud":"api","exp":{}}}"#,
            now() + 600
        ))
    );
    let old_token = format!(
        "{input}.{}",
        token_authority_jose::b64::encode(legacy.sign(input.as_bytes()).unwrap())
    );

    let server = TestServer::start_with(config(&dir, &["--algorithms", "RS256,ES256,EdDSA"])).await;
    let issued = server.issue("svc", &["api"]).await;
    assert_eq!(issued.key_id, "legacy-2024");
    let jwks = server.http_jwks().await;
    for token in [&old_token, &issued.token] {
        assert!(server.verify(token, "api").await.valid);
        verify_independently(&jwks, token, &server.issuer, "api").unwrap();
    }
    // While the server holds the directory, both commands refuse clearly.
    for args in [vec!["list"], vec!["import", "--pem", ec.to_str().unwrap()]] {
        let output = keys(&args, &dir);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("in use by another process"),
            "{args:?}: {stderr}"
        );
    }
    let listed = server.list_keys().await;
    assert_eq!(
        listed.keys.len(),
        6,
        "a current and a next key per algorithm"
    );
    server.stop().await;

    // Importing into a running store's lifecycle: it becomes next, replacing the unused one.
    let another = openssl_key(
        work.path(),
        "rsa2.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let output = keys(&["import", "--pem", another.to_str().unwrap()], &dir);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("replaces the unused next key"));
}

#[test]
fn bad_imports_are_refused_with_the_reason() {
    let dir = DataDir::new();
    let work = tempfile::tempdir().unwrap();
    let ec = openssl_key(
        work.path(),
        "ec.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    );
    let traditional = work.path().join("traditional.pem");
    assert!(Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out"
        ])
        .arg(&traditional)
        .status()
        .unwrap()
        .success());
    let ed = openssl_key(work.path(), "ed.pem", &["-algorithm", "ED25519"]);
    // Both crypto providers hold RSA keys to 2048..=4096 bits: ring by itself, aws-lc-rs by
    // our check (AWS-LC alone takes up to 8192 bits).
    let short_rsa = openssl_key(
        work.path(),
        "rsa1024.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    );
    let long_rsa = openssl_key(
        work.path(),
        "rsa4160.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4160"],
    );
    std::fs::write(work.path().join("junk.pem"), "not a key").unwrap();
    let junk = work.path().join("junk.pem");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--pem", ec.to_str().unwrap()],
            "not an RSA, P-256 or Ed25519",
        ),
        (
            vec!["--pem", traditional.to_str().unwrap()],
            "expected \"PRIVATE KEY\" (PKCS#8)",
        ),
        (vec!["--pem", junk.to_str().unwrap()], "not a PEM document"),
        (
            vec!["--pem", short_rsa.to_str().unwrap()],
            "not an RSA, P-256 or Ed25519",
        ),
        (
            vec!["--pem", long_rsa.to_str().unwrap()],
            "not an RSA, P-256 or Ed25519",
        ),
        (
            vec!["--pem", "/no/such/file.pem"],
            "cannot read /no/such/file.pem",
        ),
        (
            vec!["--pem", ed.to_str().unwrap(), "--kid", "../../etc"],
            "--kid \"../../etc\"",
        ),
        (
            vec!["--pem", ed.to_str().unwrap(), "--algorithm", "RS256"],
            "cannot be imported as RS256",
        ),
    ];
    for (args, message) in cases {
        let mut argv = vec!["import"];
        argv.extend(args.iter());
        let output = keys(&argv, &dir);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    // Nothing was written by a refused import.
    assert!(!dir.path.join("keystore").exists());
}

/// `keys list`, `keys rewrap` and `keys migrate` on a data directory that holds no keystore
/// (a mistyped `--data-dir`, the default `./data` run from elsewhere) refuse and create
/// nothing: a "re-sealed 0 keys" there would have an operator retire the KEK the real keystore
/// is sealed under.
#[test]
fn keys_commands_on_a_directory_without_a_keystore_refuse_and_create_nothing() {
    let work = tempfile::tempdir().unwrap();
    let typo = work.path().join("typo");
    let kek = work.path().join("kek");
    std::fs::write(&kek, format!("{}\n", "A".repeat(43) + "=")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let expected = format!(
        "error: {} holds no keystore (is --data-dir right?); nothing was done, nothing created",
        typo.display()
    );
    for args in [
        vec!["list"],
        vec!["rewrap", "--kek-file", kek.to_str().unwrap()],
        vec![
            "migrate",
            "--kek-file",
            kek.to_str().unwrap(),
            "--to",
            "postgres://ta@127.0.0.1:9/ta",
        ],
    ] {
        let output = std::process::Command::new(crate::binary::BIN)
            .arg("keys")
            .args(&args)
            .args(["--data-dir", typo.to_str().unwrap()])
            .env_remove("TA_STORE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end(), expected, "{args:?}");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
}

/// Durations past what `serve` accepts: `keys import --max-ttl` is held to serve's bounds (a
/// huge one overflowed the retired key's deletion time, which stopped the scheduled
/// rotations), and `keys list` shows an activation past the year 9999 as `never` instead of
/// panicking.
#[test]
fn keys_commands_hold_durations_to_what_serve_accepts() {
    let dir = DataDir::new();
    let work = tempfile::tempdir().unwrap();
    let ec = openssl_key(
        work.path(),
        "ec.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let ec = ec.to_str().unwrap();
    for max_ttl in ["18446744073709551615s", "367d", "1500ms", "0s"] {
        let output = keys(&["import", "--pem", ec, "--max-ttl", max_ttl], &dir);
        assert_eq!(
            String::from_utf8_lossy(&output.stderr).trim_end(),
            "error: --max-ttl must be a whole number of seconds from 1s to 366 days, as serve's",
            "{max_ttl}"
        );
    }
    let output = keys(&["import", "--pem", ec, "--max-ttl", "366d"], &dir);
    assert!(output.status.success(), "{output:?}");
    let output = keys(&["list", "--publish-lead", "18446744073709551615s"], &dir);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(table.contains(" never "), "{table}");
}

/// The `keys` commands refuse what `serve` refuses: a data directory or a KEK file that group
/// or others can access, naming the chmod, unless `--allow-group-readable-files`.
#[test]
fn keys_commands_refuse_files_others_can_read_as_serve_does() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = DataDir::new();
    let work = tempfile::tempdir().unwrap();
    let ec = openssl_key(
        work.path(),
        "ec.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let output = keys(&["import", "--pem", ec.to_str().unwrap()], &dir);
    assert!(output.status.success(), "{output:?}");
    let data_dir = dir.path.to_str().unwrap();
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = keys(&["list"], &dir);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim_end(),
        format!("error: the data directory {data_dir} is accessible to group or others (mode 0755); run `chmod 700 {data_dir}`, or start with --allow-group-readable-files (TA_ALLOW_GROUP_READABLE_FILES=true) where the platform sets these modes")
    );
    let output = keys(&["list", "--allow-group-readable-files"], &dir);
    assert!(output.status.success(), "{output:?}");
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700)).unwrap();
    let kek = work.path().join("kek");
    std::fs::write(&kek, format!("{}\n", "A".repeat(43) + "=")).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = keys(&["rewrap", "--kek-file", kek.to_str().unwrap()], &dir);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).starts_with(&format!(
            "error: the KEK file {} is accessible to group or others (mode 0644)",
            kek.display()
        )),
        "{output:?}"
    );
}
