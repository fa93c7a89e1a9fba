//! SetTokenStatus in the audit log: a line before the change (what was asked) and one after
//! (what it replaced, or why it failed), by the admin.

use serde_json::Value;
use token_authority::pb::TokenStatus;

use super::{issue_for, list_id, reference, set_request, LONG};
use crate::helpers::{admin, config, DataDir, TestServer};

#[tokio::test]
async fn status_changes_are_audited_before_and_after() {
    let dir = DataDir::new();
    let audit_path = dir.path.parent().unwrap().join("status-audit.log");
    let audit_arg = audit_path.display().to_string();
    let server = TestServer::start_with(config(&dir, &["--audit-log", &audit_arg])).await;
    let token = issue_for(&server, "svc", LONG).await;
    let held = reference(&token.token).unwrap();
    let mut client = server.client.clone();
    client
        .set_token_status(admin(set_request(&token.jti, TokenStatus::Invalid)))
        .await
        .unwrap();
    client
        .set_token_status(admin(set_request(&token.jti, TokenStatus::Valid)))
        .await
        .unwrap_err();
    server.stop().await;
    let lines: Vec<Value> = std::fs::read_to_string(&audit_path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|line: &Value| line["method"] == "SetTokenStatus")
        .collect();
    let seen: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|line| {
            (
                line["caller"].as_str().unwrap(),
                line["outcome"].as_str().unwrap(),
                line["detail"].as_str().unwrap(),
            )
        })
        .collect();
    let (list, idx) = (list_id(&held), held.idx);
    let revoke = format!("set status INVALID of jti {}", token.jti);
    let revoked = format!("list {list} index {idx}: VALID -> INVALID");
    let reinstate = format!("set status VALID of jti {}", token.jti);
    let refused =
        format!("the token at index {idx} of status list {list} is revoked, which is final");
    assert_eq!(
        seen,
        [
            ("admin", "allowed", revoke.as_str()),
            ("admin", "done", revoked.as_str()),
            ("admin", "allowed", reinstate.as_str()),
            ("admin", "failed", refused.as_str()),
        ]
    );
}
