//! Durability: the real binary is killed with SIGKILL at varied moments while it issues
//! tokens and rotates keys, then restarted on the same data directory (or the same
//! PostgreSQL database). After every restart every invariant holds: one current and one next
//! key, every unexpired token received before the kill still verifies, no revoked kid is
//! published again. With PostgreSQL, a second replica keeps serving through every kill.

use std::{collections::HashSet, time::Duration};

use token_authority::pb;

use crate::{
    binary::spawn_binary,
    helpers::{admin, config, connect, kids, verify_independently, DataDir, TestServer},
    postgres::Store,
};

const KILLS: usize = 24;
const ISSUER: &str = "http://token-authority.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_moment_restarts_into_a_consistent_key_set() {
    let dir = DataDir::new();
    sigkill_rounds(&dir, &["--publish-lead", "0s", "--issuer", ISSUER], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_moment_leaves_the_shared_database_consistent() {
    let shared = Store::postgres().await;
    let store = shared.args();
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    let other_dir = DataDir::new();
    let mut other_args = vec!["--publish-lead", "0s"];
    other_args.extend_from_slice(&store);
    let other = TestServer::start_with(config(&other_dir, &other_args)).await;
    let dir = DataDir::new();
    let mut args = vec!["--publish-lead", "0s", "--issuer", ISSUER];
    args.extend_from_slice(&store);
    sigkill_rounds(&dir, &args, Some(&other)).await;
    other.stop().await;
}

/// Kills the binary started with `args` on `dir` again and again; `other`, a replica on the
/// same database, must answer between the kills.
async fn sigkill_rounds(dir: &DataDir, args: &[&str], other: Option<&TestServer>) {
    let mut tokens: Vec<(String, String)> = Vec::new(); // (token, kid)
    let mut revoked: HashSet<String> = HashSet::new();
    // Revocations asked for, answered or not: a kill can land after the write, before the
    // answer.
    let mut attempted: HashSet<String> = HashSet::new();
    for round in 0..KILLS {
        let process = tokio::task::block_in_place(|| spawn_binary(dir, args));
        let mut client = connect(&process.grpc).await;
        let http = reqwest::Client::new();
        let jwks_url = format!("http://{}/.well-known/jwks.json", process.http);

        // Check the invariants on what the previous incarnation left.
        let listed = client
            .list_keys(admin(pb::ListKeysRequest {}))
            .await
            .unwrap()
            .into_inner();
        for state in [pb::KeyState::Current, pb::KeyState::Next] {
            let count = listed
                .keys
                .iter()
                .filter(|k| k.state == state as i32)
                .count();
            assert_eq!(
                count, 1,
                "round {round}: {count} {state:?} keys: {listed:?}"
            );
        }
        for key in listed
            .keys
            .iter()
            .filter(|k| k.state == pb::KeyState::Revoked as i32)
        {
            assert!(
                attempted.contains(&key.key_id),
                "round {round}: {} revoked unasked",
                key.key_id
            );
            revoked.insert(key.key_id.clone());
        }
        let jwks: serde_json::Value = http
            .get(&jwks_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let published = kids(&jwks);
        for kid in &revoked {
            assert!(
                !published.contains(kid),
                "round {round}: revoked {kid} is published again"
            );
        }
        for (token, kid) in &tokens {
            let verdict = client
                .verify_token(pb::VerifyTokenRequest {
                    token: token.clone(),
                    audience: "api".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if revoked.contains(kid) {
                assert_eq!(
                    verdict.reason,
                    pb::VerifyFailureReason::RevokedKey as i32,
                    "round {round}"
                );
            } else {
                assert!(
                    verdict.valid,
                    "round {round}: token of {kid} lost: {verdict:?}"
                );
                verify_independently(&jwks, token, ISSUER, "api").unwrap();
            }
        }

        // Drive issuance, rotations and the odd revocation; kill at a moment that varies
        // from round to round, possibly in the middle of a rotation's write. The kill clock
        // starts once the round holds a token, so however loaded the machine, every round
        // leaves one behind for the next round's checks.
        let issued = client
            .issue_token(pb::IssueTokenRequest {
                subject: format!("svc-{round}-0"),
                audience: vec!["api".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push((issued.token, issued.key_id));
        let kill_after = Duration::from_millis(5 + (round as u64 * 37) % 180);
        let work = async {
            let mut step = 0u32;
            loop {
                step += 1;
                let issued = client
                    .issue_token(pb::IssueTokenRequest {
                        subject: format!("svc-{round}-{step}"),
                        audience: vec!["api".into()],
                        ..Default::default()
                    })
                    .await;
                if let Ok(issued) = issued {
                    let issued = issued.into_inner();
                    tokens.push((issued.token, issued.key_id));
                }
                if step.is_multiple_of(3) {
                    let _ = client
                        .rotate_keys(admin(pb::RotateKeysRequest {
                            force: true,
                            ..Default::default()
                        }))
                        .await;
                }
                if step == 7 && round % 5 == 4 {
                    // Revoke the current key; its tokens must stay rejected forever after.
                    let current = tokens
                        .last()
                        .map(|(_, kid)| kid.clone())
                        .unwrap_or_default();
                    attempted.insert(current.clone());
                    let answer = client
                        .revoke_key(admin(pb::RevokeKeyRequest {
                            key_id: current.clone(),
                            reason: "crash test".into(),
                        }))
                        .await;
                    if answer.is_ok() {
                        revoked.insert(current);
                    }
                }
            }
        };
        let _ = tokio::time::timeout(kill_after, work).await;
        let mut process = process;
        process.child.kill().unwrap(); // SIGKILL: no drain, no flush.
        process.child.wait().unwrap();
        if let Some(other) = other {
            // The other replica carries on: it issues, and verifies what it issued.
            let issued = other.issue("svc-other", &["api"]).await;
            assert!(
                other.verify(&issued.token, "api").await.valid,
                "round {round}"
            );
        }
    }
}
