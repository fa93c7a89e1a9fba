//! Across restarts and full lists: indexes are never handed out twice, statuses survive, and
//! a full list rolls over to the next id.

use std::collections::HashSet;

use token_authority::pb::{TokenStatus, VerifyFailureReason as Reason};

use super::{issue_for, list_id, reference, set_request, verdict, LONG};
use crate::helpers::{admin, config, DataDir, TestServer};

#[tokio::test]
async fn indexes_continue_and_statuses_survive_a_restart() {
    let dir = DataDir::new();
    // Small lists, so a few tokens fill one.
    let flags = ["--status-list-size", "16"];
    let mut held = HashSet::new();
    let mut revoked: Vec<String> = Vec::new();
    let mut suspended: Vec<String> = Vec::new();
    for round in 0..3 {
        let server = TestServer::start_with(config(&dir, &flags)).await;
        // What was set before the restart still holds.
        for token in &revoked {
            assert_eq!(
                verdict(&server, token).await,
                Reason::RevokedToken,
                "round {round}"
            );
        }
        for token in &suspended {
            assert_eq!(
                verdict(&server, token).await,
                Reason::SuspendedToken,
                "round {round}"
            );
        }
        for n in 0..12 {
            let issued = issue_for(&server, &format!("svc-{round}-{n}"), LONG).await;
            let at = reference(&issued.token).unwrap();
            assert!(at.idx < 16, "{at:?}");
            assert!(
                held.insert((list_id(&at), at.idx)),
                "index {} of list {} handed out twice",
                at.idx,
                list_id(&at)
            );
            if n == 0 {
                server
                    .client
                    .clone()
                    .set_token_status(admin(set_request(&issued.jti, TokenStatus::Invalid)))
                    .await
                    .unwrap();
                revoked.push(issued.token);
            } else if n == 1 {
                server
                    .client
                    .clone()
                    .set_token_status(admin(set_request(&issued.jti, TokenStatus::Suspended)))
                    .await
                    .unwrap();
                suspended.push(issued.token);
            }
        }
        server.stop().await;
    }
    // 36 tokens of lists of 16 (the rest of a block is skipped at each restart): more than
    // two lists were used.
    let lists: HashSet<u64> = held.iter().map(|(list, _)| *list).collect();
    assert!(lists.len() >= 3, "{lists:?}");
}
