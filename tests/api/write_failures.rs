//! A lifecycle write that fails on disk changes nothing, says so, and can be retried: the
//! issue's reproduction (a directory where the guard's temporary file goes) on the real server.
//! Every other step of the write path is covered with injected faults in `tests/failpoints.rs`.

use token_authority::pb;

use crate::helpers::{admin, config, DataDir, TestServer};

fn count(listed: &pb::ListKeysResponse, state: pb::KeyState) -> usize {
    listed
        .keys
        .iter()
        .filter(|k| k.state == state as i32)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_guard_write_fails_is_undone_and_a_retry_rotates_once() {
    let dir = DataDir::new();
    let cfg = || config(&dir, &["--algorithms", "ES256"]);
    let server = TestServer::start_with(cfg()).await;
    let before = server.list_keys().await;

    let blocker = dir.path.join("keystore.guard.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let status = server
        .client
        .clone()
        .rotate_keys(admin(pb::RotateKeysRequest {
            force: true,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert!(
        status
            .message()
            .contains("nothing changed, and a retry is safe"),
        "{status:?}"
    );
    // Memory kept the old set.
    assert_eq!(server.list_keys().await.keys, before.keys);
    std::fs::remove_dir(&blocker).unwrap();

    let rotated = server.rotate().await;
    let next_before = before
        .keys
        .iter()
        .find(|k| k.state == pb::KeyState::Next as i32)
        .unwrap();
    assert_eq!(rotated.current_key_id, next_before.key_id);
    server.stop().await;

    let server = TestServer::start_with(cfg()).await;
    let listed = server.list_keys().await;
    assert_eq!(count(&listed, pb::KeyState::Current), 1, "{listed:?}");
    assert_eq!(count(&listed, pb::KeyState::Next), 1, "{listed:?}");
    assert_eq!(count(&listed, pb::KeyState::Retired), 1, "{listed:?}");
    assert_eq!(listed.keys.len(), 3, "{listed:?}");
    server.stop().await;
}
