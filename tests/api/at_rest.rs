//! Private keys at rest: sealed with AES-256-GCM under a KEK, bound to their kid, never in
//! the keystore's files in the clear; wrong or missing KEKs refuse; KEK rotation by rewrap.

use std::process::Command;

use token_authority::store::{kek::Keks, KeyStore};

use crate::{
    binary::BIN,
    helpers::{config, keystore_files, write_private, DataDir, TestServer},
};

fn kek_file(dir: &std::path::Path, name: &str, keks: &[[u8; 32]]) -> String {
    use base64::Engine as _;
    let path = dir.join(name);
    let lines: Vec<String> = keks
        .iter()
        .map(|k| base64::engine::general_purpose::STANDARD.encode(k))
        .collect();
    write_private(&path, lines.join("\n") + "\n");
    path.to_str().unwrap().to_owned()
}

fn private_ders(dir: &DataDir, kek: &str) -> Vec<Vec<u8>> {
    let keks = Keks::load(std::path::Path::new(kek)).unwrap();
    let (_, records) = KeyStore::open(&dir.path.join("keystore"), Some(keks)).unwrap();
    records
        .iter()
        .map(|r| r.private_key.as_bytes().to_vec())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn start_error(dir: &DataDir, extra: &[&str]) -> String {
    let (server, result) = TestServer::try_start(config(dir, extra)).await;
    assert!(server.is_none(), "the server started");
    result.unwrap_err().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_keys_never_touch_disk_in_the_clear_and_rewrap_rotates_the_kek() {
    let dir = DataDir::new();
    let work = tempfile::tempdir().unwrap();
    let old = kek_file(work.path(), "old", &[[1; 32]]);
    let wrong = kek_file(work.path(), "wrong", &[[9; 32]]);
    let both = kek_file(work.path(), "both", &[[2; 32], [1; 32]]);
    let new = kek_file(work.path(), "new", &[[2; 32]]);

    let server = TestServer::start_with(config(
        &dir,
        &["--kek-file", &old, "--algorithms", "RS256,ES256,EdDSA"],
    ))
    .await;
    let token = server.issue("svc", &["api"]).await;
    server.rotate().await;
    let listed = server.list_keys().await;
    assert!(listed.keys.iter().all(|k| k.encrypted_at_rest));
    server.stop().await;

    // No 16-byte window of any private key appears in the keystore's files.
    let ders = private_ders(&dir, &old);
    assert_eq!(ders.len(), 7);
    let files: Vec<Vec<u8>> = keystore_files(&dir.path)
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    for der in &ders {
        for start in (0..der.len() - 16).step_by(16) {
            let window = &der[start..start + 16];
            let b64 = token_authority_jose::b64::encode(window);
            for file in &files {
                assert!(
                    !contains(file, window),
                    "private key bytes in the clear on disk"
                );
                assert!(
                    !contains(file, &b64.as_bytes()[..20]),
                    "private key base64 on disk"
                );
            }
        }
    }

    // Wrong or missing KEK: a clear refusal, nothing rewritten.
    let error = start_error(&dir, &["--kek-file", &wrong]).await;
    assert!(error.contains("not in the KEK file"), "{error}");
    let error = start_error(&dir, &[]).await;
    assert!(error.contains("no --kek-file was given"), "{error}");
    assert_eq!(private_ders(&dir, &old), ders);

    // KEK rotation: new KEK first, rewrap, then the old KEK can go.
    let output = Command::new(BIN)
        .args([
            "keys",
            "rewrap",
            "--data-dir",
            dir.path.to_str().unwrap(),
            "--kek-file",
            &both,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("re-sealed 7 keys"));
    let server = TestServer::start_with(config(
        &dir,
        &["--kek-file", &new, "--algorithms", "RS256,ES256,EdDSA"],
    ))
    .await;
    assert!(server.verify(&token.token, "api").await.valid);
    server.stop().await;
    let error = start_error(&dir, &["--kek-file", &old]).await;
    assert!(error.contains("not in the KEK file"), "{error}");
}

/// A sealed record moved onto another kid does not open: the kid is bound in.
#[tokio::test]
async fn a_sealed_record_moved_onto_another_kid_fails_to_unseal() {
    let dir = DataDir::new();
    let work = tempfile::tempdir().unwrap();
    let kek = kek_file(work.path(), "kek", &[[1; 32]]);
    let server = TestServer::start_with(config(&dir, &["--kek-file", &kek])).await;
    server.stop().await;
    {
        let db = sled::open(dir.path.join("keystore")).unwrap();
        let keys = db.open_tree("keys").unwrap();
        let (kids, values): (Vec<_>, Vec<_>) = keys.iter().map(|e| e.unwrap()).unzip();
        // Put the first key's sealed private key into the second key's record.
        let donor: serde_json::Value = serde_json::from_slice(&values[0]).unwrap();
        let mut victim: serde_json::Value = serde_json::from_slice(&values[1]).unwrap();
        victim["private_key"] = donor["private_key"].clone();
        keys.insert(&kids[1], serde_json::to_vec(&victim).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let error = start_error(&dir, &["--kek-file", &kek]).await;
    assert!(error.contains("a record moved onto another key"), "{error}");
}

/// Bad KEK files are refused with the reason, before anything is opened.
#[tokio::test]
async fn bad_kek_files_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let cases = [
        ("short", "c2hvcnQ=\n", "exactly 32 bytes"),
        ("not base64", "!!!!\n", "not standard base64"),
        ("empty", "# only a comment\n\n", "holds no key"),
    ];
    for (name, text, message) in cases {
        let dir = DataDir::new();
        let path = work.path().join(name);
        write_private(&path, text);
        let error = start_error(&dir, &["--kek-file", path.to_str().unwrap()]).await;
        assert!(error.contains(message), "{name}: {error}");
        assert!(
            !dir.path.join("keystore").exists(),
            "{name}: a keystore was created"
        );
    }
}
