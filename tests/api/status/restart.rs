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

/// Indexes are not handed out in order (the draft RECOMMENDS non-sequential indexes: one
/// would tell how many tokens came before it, and link tokens issued one after another):
/// each block goes in an order of its own, every index of it once.
#[tokio::test]
async fn indexes_are_handed_out_in_a_random_order() {
    let mut orders = Vec::new();
    for _ in 0..2 {
        let dir = DataDir::new();
        let server = TestServer::start(&dir).await;
        let mut order = Vec::new();
        for n in 0..40 {
            let issued = issue_for(&server, &format!("svc-{n}"), LONG).await;
            order.push(reference(&issued.token).unwrap().idx);
        }
        server.stop().await;
        let distinct: HashSet<_> = order.iter().collect();
        assert_eq!(distinct.len(), order.len(), "an index twice: {order:?}");
        assert!(
            order.iter().all(|&idx| idx < 1024),
            "beyond the first block: {order:?}"
        );
        // In order by chance: one chance in 40 factorial.
        assert!(order.windows(2).any(|w| w[0] > w[1]), "in order: {order:?}");
        orders.push(order);
    }
    assert_ne!(orders[0], orders[1], "two authorities, one order");
}
