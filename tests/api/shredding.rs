//! Crypto-shredding: once `RevokeKey` has answered, or a retired key has been deleted after
//! its retention, no file under the data directory holds the key's private half or the data
//! key that decrypts the copies sled's log still keeps, with or without a KEK, and after a
//! restart too.

use std::{collections::HashMap, path::Path, time::Duration};

use base64::Engine as _;
use token_authority::{
    authority::keys::KeyState,
    pb,
    store::{datakeys::DataKeys, kek::Keks},
};

use crate::helpers::{
    admin, config, keystore_files, open_keystore, write_private, DataDir, TestServer,
};

struct Secrets {
    state: KeyState,
    der: Vec<u8>,
    data_key: Vec<u8>,
}

/// Every key's PKCS#8 and data key, read from a stopped data directory.
fn secrets(dir: &DataDir, kek: Option<&str>) -> HashMap<String, Secrets> {
    let keks = || kek.map(|k| Keks::load(Path::new(k)).unwrap());
    let store = dir.path.join("keystore");
    let data_keys = DataKeys::load(&store.with_extension("datakeys"), keks().as_ref()).unwrap();
    let (_, records) = open_keystore(&dir.path, keks);
    records
        .into_iter()
        .map(|r| {
            let secrets = Secrets {
                state: r.state,
                der: r.private_key.as_bytes().to_vec(),
                data_key: data_keys.get(&r.kid).unwrap().to_vec(),
            };
            (r.kid, secrets)
        })
        .collect()
}

/// The forms a secret could take in a file: raw, base64url, standard base64, PEM.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let url = token_authority_jose::b64::encode(secret);
    let standard = base64::engine::general_purpose::STANDARD.encode(secret);
    let mut forms = vec![
        secret.to_vec(),
        url.clone().into_bytes(),
        standard.clone().into_bytes(),
    ];
    // Prefixes catch an encoding cut or wrapped (PEM wraps at 64 characters).
    for text in [&url, &standard] {
        forms.push(text.as_bytes()[..40.min(text.len())].to_vec());
    }
    forms
}

fn assert_gone(dir: &DataDir, kek: Option<&str>, kid: &str, secrets: &Secrets, when: &str) {
    // Sealed under a KEK the data key file shows no key bytes: open it as the KEK's holder
    // would.
    let keks = kek.map(|k| Keks::load(Path::new(k)).unwrap());
    let data_keys = DataKeys::load(
        &dir.path.join("keystore").with_extension("datakeys"),
        keks.as_ref(),
    )
    .unwrap();
    assert!(
        data_keys.get(kid).is_none(),
        "{when}: {kid} keeps its data key"
    );
    for file in keystore_files(&dir.path) {
        let bytes = std::fs::read(&file).unwrap();
        for (what, secret) in [
            ("private key", &secrets.der),
            ("data key", &secrets.data_key),
        ] {
            for form in forms(secret) {
                assert!(
                    !bytes.windows(form.len()).any(|w| w == form.as_slice()),
                    "{when}: the {what} of {kid} is in {}",
                    file.display()
                );
            }
        }
    }
}

async fn wait_until_deleted(server: &TestServer, kid: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server
        .list_keys()
        .await
        .keys
        .iter()
        .any(|k| k.key_id == kid)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{kid} was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn revoked_and_deleted_keys_leave_nothing_on_disk(kek: Option<&str>) {
    let dir = DataDir::new();
    // A short rotation period keeps the schedule waking every few seconds, so the deletion
    // after retention happens soon after it is due.
    let mut args = vec![
        "--rotation-period",
        "3s",
        "--publish-lead",
        "0s",
        "--max-ttl",
        "1s",
        "--default-ttl",
        "1s",
        "--leeway",
        "0s",
    ];
    if let Some(kek) = kek {
        args.extend(["--kek-file", kek]);
    }
    TestServer::start_with(config(&dir, &args))
        .await
        .stop()
        .await;
    let before = secrets(&dir, kek);
    assert_eq!(before.len(), 2);
    let state_of = |kid: &str| before[kid].state;
    let kid_in = |state: KeyState| {
        before
            .keys()
            .find(|kid| state_of(kid) == state)
            .unwrap()
            .clone()
    };
    let (revoked, deleted) = (kid_in(KeyState::Current), kid_in(KeyState::Next));
    let server = TestServer::start_with(config(&dir, &args)).await;

    server
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: revoked.clone(),
            reason: "leaked".into(),
        }))
        .await
        .unwrap();
    assert_gone(&dir, kek, &revoked, &before[&revoked], "after RevokeKey");

    // The promoted key retires, and is deleted once its 1 s tokens have expired.
    server.rotate().await;
    wait_until_deleted(&server, &deleted).await;
    assert_gone(&dir, kek, &deleted, &before[&deleted], "after deletion");
    server.stop().await;

    let server = TestServer::start_with(config(&dir, &args)).await;
    server.stop().await;
    for kid in [&revoked, &deleted] {
        assert_gone(&dir, kek, kid, &before[kid], "after a restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kek() {
    revoked_and_deleted_keys_leave_nothing_on_disk(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_kek() {
    let work = tempfile::tempdir().unwrap();
    let kek = work.path().join("kek");
    write_private(
        &kek,
        base64::engine::general_purpose::STANDARD.encode([7u8; 32]) + "\n",
    );
    revoked_and_deleted_keys_leave_nothing_on_disk(Some(kek.to_str().unwrap())).await;
}
