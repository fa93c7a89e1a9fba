//! The README's status list section as written: its grpcurl and curl commands, run by bash
//! against a real server, revoke one token, suspend and reinstate another, and fetch the
//! list that shows it.

use std::process::Command;

use token_authority::pb::VerifyFailureReason as Reason;
use token_authority_jose::status_list::{Status, StatusList, DEFAULT_MAX_INFLATED};

use super::{header, issue_for, list_id, payload, reference, verdict, LONG};
use crate::{
    helpers::{DataDir, TestServer, ADMIN_TOKEN},
    tools,
};

fn commands() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("## Revoking one token: status lists").unwrap();
    let section = &readme[start..start + readme[start..].find("\n## Security").unwrap()];
    let from = section.find("```sh\n").unwrap() + "```sh\n".len();
    section[from..from + section[from..].find("```").unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_do_what_they_say() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let revoked = issue_for(&server, "leaked", LONG).await;
    let reinstated = issue_for(&server, "contractor", LONG).await;
    let at = reference(&reinstated.token).unwrap();
    let commands = commands();
    assert!(commands.contains("SetTokenStatus"), "{commands}");
    let grpcurl = tokio::task::block_in_place(tools::grpcurl);
    let path = format!(
        "{}:{}",
        grpcurl.parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let output = tokio::task::block_in_place(|| {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &commands])
            .env("PATH", path)
            .env("ADDR", server.grpc_addr.to_string())
            .env("AUTH", format!("authorization: Bearer {ADMIN_TOKEN}"))
            .env("JTI", &revoked.jti)
            .env("LIST", list_id(&at).to_string())
            .env("INDEX", at.idx.to_string())
            .env("ISSUER", server.url("").trim_end_matches('/'))
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Three answers, then the list token.
    assert_eq!(stdout.matches("\"previous\"").count(), 3, "{stdout}");
    assert!(
        stdout.contains("\"status\": \"TOKEN_STATUS_INVALID\""),
        "{stdout}"
    );
    let token = stdout.lines().last().unwrap();
    assert_eq!(header(token)["typ"], "statuslist+jwt");
    let list =
        StatusList::from_claim(&payload(token)["status_list"], DEFAULT_MAX_INFLATED).unwrap();
    let held = reference(&revoked.token).unwrap();
    assert_eq!(list.get(held.idx).unwrap(), Status::Invalid);
    assert_eq!(list.get(at.idx).unwrap(), Status::Valid);
    assert_eq!(verdict(&server, &revoked.token).await, Reason::RevokedToken);
    assert_eq!(
        verdict(&server, &reinstated.token).await,
        Reason::Unspecified
    );
    server.stop().await;
}
