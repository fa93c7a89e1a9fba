//! What the real binary logs of Txn-Token requests: no line per granted exchange at `info`
//! (an exchange is data plane, like IssueToken), and at `debug` never a Txn-Token nor a
//! subject token.

use super::{ask, edge, write_policy, Idp};
use crate::{
    binary::spawn_binary_logging,
    helpers::{connect, DataDir},
};

async fn exchange_three_times(filter: &str) -> (Vec<String>, Vec<String>) {
    let idp = Idp::start().await;
    let dir = DataDir::new();
    let policy_arg = write_policy(&dir, &idp);
    let mut process = tokio::task::block_in_place(|| {
        spawn_binary_logging(
            &dir,
            &[
                "--issuer",
                "http://token-authority.test",
                "--policy-file",
                &policy_arg,
            ],
            Some(filter),
        )
    });
    let mut client = connect(&process.grpc).await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let subject = idp.access_token("user-1234", "orders.read");
        let answer = client
            .exchange_token(crate::callers::with_auth(
                ask("orders.read", &subject),
                Some(&edge()),
            ))
            .await
            .unwrap()
            .into_inner();
        tokens.extend([subject, answer.access_token]);
    }
    let log = tokio::task::block_in_place(|| process.terminate());
    (log, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_exchange_writes_no_info_line() {
    let (log, _) = exchange_three_times("info").await;
    let lines: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("ExchangeToken"))
        .collect();
    assert!(lines.is_empty(), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_carries_a_txn_token_or_a_subject_token() {
    let (log, tokens) = exchange_three_times("debug").await;
    let log = log.join("\n");
    assert!(log.contains("Txn-Token issued"), "{log}");
    for token in &tokens {
        for segment in token.split('.').filter(|s| s.len() > 20) {
            assert!(
                !log.contains(&segment[..20]),
                "a token segment is in the log"
            );
        }
    }
}
