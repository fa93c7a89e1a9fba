//! While PostgreSQL is down, IssueToken stays up: the indexes reserved ahead are used, then
//! tokens go out without a status, and the metrics count them.

use std::sync::Arc;

use super::{reference, LONG};
use crate::{
    helpers::{metric, DataDir, TestServer},
    postgres::Store,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_issued_without_a_status_while_the_database_is_down_are_counted() {
    let shared = Arc::new(Store::postgres().await);
    let dir = DataDir::new();
    // Lists of 16: blocks of 16, so the reserved indexes run out after a few tokens.
    let server = TestServer::start_with(
        shared.config(&dir, &["--algorithms", "ES256", "--status-list-size", "16"]),
    )
    .await;
    let first = super::issue_for(&server, "svc", LONG).await;
    assert!(reference(&first.token).is_some());
    let without = "token_authority_tokens_issued_without_status_total";
    assert_eq!(metric(&server, without).await, 0.0);
    {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || shared.pg().stop())
            .await
            .unwrap();
    }
    let mut statusless = 0;
    for _ in 0..48 {
        let issued = super::issue_for(&server, "svc", LONG).await;
        if reference(&issued.token).is_none() {
            statusless += 1;
        }
        assert!(server.verify(&issued.token, "ledger").await.valid);
    }
    // At most the open block and its spare (32 indexes) were reserved ahead.
    assert!(statusless >= 48 - 31, "{statusless} of 48 without a status");
    assert_eq!(metric(&server, without).await, f64::from(statusless));
    server.stop().await;
}
