//! Owner-only files: a data directory, admin token file or KEK file that group or others can
//! access is refused at start with the `chmod` that fixes it, unless
//! `--allow-group-readable-files`; everything the authority writes is owner-only whatever the
//! umask and whoever made the data directory.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use base64::Engine as _;

use crate::{
    binary::{spawn_binary_with_umask, umask_command},
    helpers::{config, keystore_files, write_private, DataDir, TestServer},
};

const ALLOW: &str = "--allow-group-readable-files";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn refusal(what: &str, path: &Path, mode: &str, fix: &str) -> String {
    let path = path.display();
    format!(
        "the {what} {path} is accessible to group or others (mode {mode}); run `chmod {fix} {path}`, \
         or start with --allow-group-readable-files (TA_ALLOW_GROUP_READABLE_FILES=true) where the \
         platform sets these modes"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_others_can_read_are_refused_with_the_fix_unless_allowed() {
    let work = tempfile::tempdir().unwrap();
    let kek = work.path().join("kek");
    write_private(
        &kek,
        base64::engine::general_purpose::STANDARD.encode([3u8; 32]) + "\n",
    );
    let kek_arg = kek.to_str().unwrap().to_owned();
    // (what is made too open, its mode, the expected refusal)
    type Case = (
        &'static str,
        fn(&DataDir, &Path) -> std::path::PathBuf,
        u32,
        &'static str,
        &'static str,
    );
    let cases: [Case; 3] = [
        (
            "data directory",
            |dir, _| {
                std::fs::create_dir(&dir.path).unwrap();
                dir.path.clone()
            },
            0o755,
            "0755",
            "700",
        ),
        (
            "admin token file",
            |dir, _| dir.admin_token_file.clone(),
            0o644,
            "0644",
            "600",
        ),
        ("KEK file", |_, kek| kek.to_owned(), 0o640, "0640", "600"),
    ];
    for (what, target, bad, shown, fix) in cases {
        let dir = DataDir::new();
        let path = target(&dir, &kek);
        chmod(&path, bad);
        let args = ["--kek-file", kek_arg.as_str()];
        let (server, result) = TestServer::try_start(config(&dir, &args)).await;
        assert!(server.is_none(), "{what}: the server started");
        assert_eq!(
            result.unwrap_err().to_string(),
            refusal(what, &path, shown, fix),
            "{what}"
        );
        assert!(
            !dir.path.join("keystore").exists(),
            "{what}: a keystore was created"
        );

        let server =
            TestServer::start_with(config(&dir, &["--kek-file", kek_arg.as_str(), ALLOW])).await;
        server.stop().await;
        // Accepted as it is: the operator said the platform sets that mode.
        assert_eq!(mode(&path), bad, "{what}");
        chmod(&kek, 0o600);
    }
}

/// Under umask 000, into a data directory someone made 0777: refused; allowed, every file
/// and directory the authority wrote in it is owner-only.
#[test]
fn under_umask_000_everything_written_is_owner_only() {
    let dir = DataDir::new();
    std::fs::create_dir(&dir.path).unwrap();
    chmod(&dir.path, 0o777);
    let data_dir = dir.path.to_str().unwrap();

    let output = umask_command("000")
        .args(["serve", "--data-dir", data_dir])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("run `chmod 700 {data_dir}`")),
        "{stderr}"
    );

    // A second run adds an algorithm, so the keystore is written again by a later start.
    let mut process = spawn_binary_with_umask(&dir, &[ALLOW, "--algorithms", "ES256"], "000");
    process.terminate();
    let mut process = spawn_binary_with_umask(&dir, &[ALLOW, "--algorithms", "ES256,EdDSA"], "000");
    process.terminate();

    let files = keystore_files(&dir.path);
    assert!(
        files.iter().any(|f| f.ends_with("keystore.datakeys")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with("keystore.guard")),
        "{files:?}"
    );
    for file in files {
        assert_eq!(
            mode(&file) & 0o077,
            0,
            "{} is {:04o}",
            file.display(),
            mode(&file)
        );
        let mut parent = file.parent().unwrap();
        while parent != dir.path {
            assert_eq!(mode(parent), 0o700, "{}", parent.display());
            parent = parent.parent().unwrap();
        }
    }
}
