//! SIGKILL at varied moments while the real binary issues tokens and sets statuses: after
//! every restart each status change that was acknowledged holds (a revocation stays
//! revoked, a suspension suspended), and no index was handed out twice, across restarts
//! and list rollovers.

use std::{collections::HashMap, time::Duration};

use token_authority::pb::{self, TokenStatus, VerifyFailureReason as Reason};

use super::{at_index, list_id, reference};
use crate::{
    binary::spawn_binary,
    helpers::{admin, connect, DataDir},
};

const KILLS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_status_change_and_reuses_no_index() {
    let dir = DataDir::new();
    let args = [
        "--issuer",
        "http://token-authority.test",
        "--status-list-size",
        "64",
    ];
    // Every token received: (list, index) -> token.
    let mut held: HashMap<(u64, u64), String> = HashMap::new();
    // What each acknowledged change left: (list, index) -> the status it must have.
    let mut acknowledged: HashMap<(u64, u64), Reason> = HashMap::new();
    for round in 0..KILLS {
        let process = tokio::task::block_in_place(|| spawn_binary(&dir, &args));
        let mut client = connect(&process.grpc).await;
        for (at, expected) in &acknowledged {
            let verdict = client
                .verify_token(pb::VerifyTokenRequest {
                    token: held[at].clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                verdict.reason(),
                *expected,
                "round {round}: the acknowledged status of {at:?} was lost"
            );
        }
        let kill_after = Duration::from_millis(20 + (round as u64 * 41) % 200);
        let work = async {
            let mut step = 0u64;
            loop {
                step += 1;
                let Ok(issued) = client
                    .issue_token(pb::IssueTokenRequest {
                        subject: format!("svc-{round}-{step}"),
                        ..Default::default()
                    })
                    .await
                else {
                    continue;
                };
                let issued = issued.into_inner();
                let at = reference(&issued.token).unwrap();
                let at = (list_id(&at), at.idx);
                assert!(
                    held.insert(at, issued.token).is_none(),
                    "round {round}: index {} of list {} handed out twice",
                    at.1,
                    at.0
                );
                if step.is_multiple_of(2) {
                    let status = if step.is_multiple_of(4) {
                        TokenStatus::Invalid
                    } else {
                        TokenStatus::Suspended
                    };
                    let answer = client
                        .set_token_status(admin(at_index(at.0, at.1, status)))
                        .await;
                    if answer.is_ok() {
                        let reason = match status {
                            TokenStatus::Invalid => Reason::RevokedToken,
                            _ => Reason::SuspendedToken,
                        };
                        acknowledged.insert(at, reason);
                    }
                }
            }
        };
        let _ = tokio::time::timeout(kill_after, work).await;
        let mut process = process;
        process.child.kill().unwrap(); // SIGKILL: no drain, no flush.
        process.child.wait().unwrap();
    }
    assert!(acknowledged.len() >= KILLS, "{}", acknowledged.len());
    let lists: std::collections::HashSet<u64> = held.keys().map(|(list, _)| *list).collect();
    assert!(lists.len() >= 2, "{lists:?}");
}
