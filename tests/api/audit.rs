//! The audit trail over the real server: a line per decision and admin action, nothing
//! secret in them, a chain `audit verify` accepts, continued across a restart, and broken
//! exactly where a line was edited; a flood of bad calls is rate-limited and accounted for.

use std::time::Duration;

use serde_json::Value;
use token_authority::pb;

use crate::{
    callers::{
        ask, basic, issue_as, policy_text, start_with_policy, with_auth, Issuer, BATCH_SECRET,
        OPS_SECRET, PAYMENTS_SA,
    },
    helpers::{admin, metric, DataDir, ADMIN_TOKEN},
};

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// What `audit verify` says it could not check in a log written without a key, verified
/// without a keystore.
const UNCHECKED: &str = "\n  not checked: MACs (the log was written without --audit-key-file: a recomputed chain is not detected)\n  not checked: the tail (no --data-dir or --store with its recorded head: a cut tail is not detected)";

fn audit_verify(path: &std::path::Path) -> (bool, String) {
    let (ok, text) = crate::binary::run_command(&["audit", "verify", path.to_str().unwrap()]);
    (ok, text.trim().to_owned())
}

#[tokio::test]
async fn decisions_and_admin_actions_are_chained_lines_without_secrets() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let audit_path = dir.path.parent().unwrap().join("audit.log");
    let audit_arg = audit_path.display().to_string();
    let (server, _) = start_with_policy(
        &dir,
        &policy_text(&issuer.jwks_uri()),
        &["--audit-log", &audit_arg],
    )
    .await;
    let caller_jwt = issuer.good(PAYMENTS_SA);
    let bearer = format!("Bearer {caller_jwt}");

    let allowed = issue_as(
        &server,
        Some(&bearer),
        ask(
            PAYMENTS_SA,
            &["ledger"],
            Some(60),
            r#"{"scope":"secret-scope-value"}"#,
        ),
    )
    .await
    .unwrap();
    let refused = issue_as(
        &server,
        Some(&bearer),
        ask("someone-else", &["ledger"], None, ""),
    )
    .await
    .unwrap_err();
    let anonymous = issue_as(&server, None, ask(PAYMENTS_SA, &["ledger"], None, ""))
        .await
        .unwrap_err();
    assert_eq!(
        (anonymous.code(), anonymous.message()),
        (tonic::Code::Unauthenticated, "IssueToken needs credentials: a client certificate, `authorization: Bearer <token of a trusted issuer>` or `authorization: Basic <base64 of id:secret>`"),
    );
    let malformed = issue_as(
        &server,
        Some(&bearer),
        ask(PAYMENTS_SA, &["ledger"], None, "{"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (tonic::Code::PermissionDenied, "subject: \"someone-else\" is not allowed for caller \"system:serviceaccount:payments:api\""),
    );
    assert_eq!(
        (malformed.code(), malformed.message()),
        (tonic::Code::InvalidArgument, "claims_json: is not a valid JSON object: EOF while parsing an object at line 1 column 1"),
    );
    let by_secret = issue_as(
        &server,
        Some(&basic("legacy-batch", BATCH_SECRET)),
        ask("client:legacy-batch", &["orders"], None, ""),
    )
    .await
    .unwrap();
    server
        .client
        .clone()
        .list_keys(admin(pb::ListKeysRequest {}))
        .await
        .unwrap();
    let rotated = server
        .client
        .clone()
        .rotate_keys(with_auth(
            pb::RotateKeysRequest {
                force: true,
                ..Default::default()
            },
            Some(&basic("ops", OPS_SECRET)),
        ))
        .await
        .unwrap()
        .into_inner();
    let not_admin = server
        .client
        .clone()
        .list_keys(with_auth(pb::ListKeysRequest {}, Some(&bearer)))
        .await
        .unwrap_err();
    assert_eq!(
        (not_admin.code(), not_admin.message()),
        (
            tonic::Code::PermissionDenied,
            "caller \"system:serviceaccount:payments:api\" may not call admin RPCs"
        ),
    );
    server.stop().await;

    let text = std::fs::read_to_string(&audit_path).unwrap();
    for secret in [
        BATCH_SECRET,
        OPS_SECRET,
        ADMIN_TOKEN,
        caller_jwt.as_str(),
        caller_jwt.split('.').nth(2).unwrap(),
        allowed.token.as_str(),
        allowed.token.split('.').nth(2).unwrap(),
        by_secret.token.as_str(),
        "secret-scope-value",
    ] {
        assert!(
            !text.contains(secret),
            "the audit log carries a secret or token: {secret:.12}.."
        );
    }
    let all = lines(&audit_path);
    assert_eq!(all[0]["event"], "open");
    let lines = &all[1..];
    let summary: Vec<(&str, &str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["method"].as_str().unwrap(),
                l["caller"].as_str().unwrap(),
                l["via"].as_str().unwrap(),
                l["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("IssueToken", PAYMENTS_SA, "jwt", "allowed"),
            ("IssueToken", PAYMENTS_SA, "jwt", "refused"),
            ("IssueToken", "", "none", "refused"),
            ("IssueToken", PAYMENTS_SA, "jwt", "malformed"),
            ("IssueToken", "client:legacy-batch", "secret", "allowed"),
            ("ListKeys", "admin", "admin-token", "allowed"),
            ("RotateKeys", "client:ops", "secret", "allowed"),
            ("RotateKeys", "client:ops", "secret", "done"),
            ("ListKeys", PAYMENTS_SA, "jwt", "refused"),
        ]
    );
    let first = &lines[0];
    assert_eq!(first["subject"], PAYMENTS_SA);
    assert_eq!(first["audiences"], serde_json::json!(["ledger"]));
    assert_eq!(first["ttl"], 60);
    assert_eq!(first["jti"], allowed.jti.as_str());
    assert_eq!(first["kid"], allowed.key_id.as_str());
    assert_eq!(first["rule"], 0);
    assert_eq!(lines[1]["reason"], refused.message());
    assert_eq!(lines[3]["reason"], malformed.message());
    assert_eq!(lines[6]["detail"], "rotate algorithm default force true");
    assert_eq!(
        lines[7]["detail"],
        format!(
            "current {} previous {}",
            rotated.current_key_id, rotated.previous_key_id
        )
    );
    assert_eq!(
        lines[8]["reason"],
        format!("caller \"{PAYMENTS_SA}\" may not call admin RPCs")
    );
    assert_eq!(
        audit_verify(&audit_path),
        (
            true,
            format!(
                "{}: 10 line(s), chain intact{UNCHECKED}",
                audit_path.display()
            )
        )
    );

    // A restart continues the chain.
    let server = crate::helpers::TestServer::start_with(crate::helpers::config(
        &dir,
        &[
            "--policy-file",
            dir.path
                .parent()
                .unwrap()
                .join("policy.toml")
                .to_str()
                .unwrap(),
            "--audit-log",
            &audit_arg,
        ],
    ))
    .await;
    server
        .client
        .clone()
        .list_keys(admin(pb::ListKeysRequest {}))
        .await
        .unwrap();
    server.stop().await;
    assert_eq!(
        audit_verify(&audit_path),
        (
            true,
            format!(
                "{}: 11 line(s), chain intact{UNCHECKED}",
                audit_path.display()
            )
        )
    );

    // Editing line 3 (the refused IssueToken) is found at line 3.
    let text = std::fs::read_to_string(&audit_path).unwrap();
    let third = text.lines().nth(2).unwrap();
    let edited = text.replacen(third, &third.replace("\"refused\"", "\"allowed\""), 1);
    std::fs::write(&audit_path, edited).unwrap();
    assert_eq!(
        audit_verify(&audit_path),
        (
            false,
            format!(
                "{}: chain broken at line 3: its content does not match its hash (edited)",
                audit_path.display()
            )
        )
    );
    issuer.server.stop().await;
}

#[tokio::test]
async fn a_flood_of_refused_calls_is_counted_and_its_lines_rate_limited() {
    let dir = DataDir::new();
    let audit_path = dir.path.parent().unwrap().join("audit.log");
    let audit_arg = audit_path.display().to_string();
    let batch = crate::callers::hex(&token_authority_jose::crypto::sha256(
        BATCH_SECRET.as_bytes(),
    ));
    let policy = format!(
        "[[client]]\nid = \"legacy-batch\"\nsecret_sha256 = \"{batch}\"\n[[rule]]\ncallers = [\"client:legacy-batch\"]\naudiences = [\"a\"]\n"
    );
    let (server, _) = start_with_policy(
        &dir,
        &policy,
        &[
            "--audit-log",
            &audit_arg,
            "--policy-reload-interval",
            "200ms",
        ],
    )
    .await;
    const FLOOD: usize = 2000;
    let flood_started = std::time::Instant::now();
    for _ in 0..FLOOD {
        let refused = issue_as(&server, None, ask("x", &["a"], None, ""))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    let flood_seconds = flood_started.elapsed().as_secs_f64();
    assert_eq!(
        metric(&server, r#"token_authority_caller_decisions_total{method="IssueToken",outcome="no_credentials"}"#).await,
        FLOOD as f64
    );
    // Every refused call is a line or counted in a summary line; the summaries are written
    // once the window of the flood is over (by the next line, or the periodic flush).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (written, suppressed) = loop {
        let lines = lines(&audit_path);
        let written = lines.iter().filter(|l| l["outcome"] == "refused").count();
        let suppressed: u64 = lines
            .iter()
            .filter(|l| l["event"] == "suppressed")
            .map(|l| l["reasons"]["no_credentials"].as_u64().unwrap())
            .sum();
        if written as u64 + suppressed == FLOOD as u64 || std::time::Instant::now() > deadline {
            break (written, suppressed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(written as u64 + suppressed, FLOOD as u64);
    // At most the limit's lines in each one-second window the flood spanned, however long a
    // loaded machine makes it.
    let windows = flood_seconds.ceil() + 1.0;
    let bound = token_authority::callers::audit::REFUSED_LINES_PER_SECOND as f64 * windows;
    assert!(
        (written as f64) <= bound && suppressed > 0,
        "{written} refused lines written for {FLOOD} calls in {flood_seconds:.1}s"
    );
    server.stop().await;
    assert!(audit_verify(&audit_path).0);
}

/// An IssueToken the policy allowed that then issues nothing (here a token over
/// the 8 KiB a token may take) has its line, `failed`, and is one decision: `allowed`, not also
/// `malformed`, so allowed outrunning tokens issued shows what failed.
#[tokio::test]
async fn an_allowed_call_that_issues_nothing_has_a_failed_line_and_one_decision() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let audit_path = dir.path.parent().unwrap().join("audit.log");
    let audit_arg = audit_path.display().to_string();
    let (server, _) = start_with_policy(
        &dir,
        &policy_text(&issuer.jwks_uri()),
        &["--audit-log", &audit_arg],
    )
    .await;
    let bearer = format!("Bearer {}", issuer.good(PAYMENTS_SA));
    let decision = |outcome: &'static str| {
        let server = &server;
        async move {
            metric(
                server,
                &format!(
                    r#"token_authority_caller_decisions_total{{method="IssueToken",outcome="{outcome}"}}"#
                ),
            )
            .await
        }
    };
    let too_large = issue_as(
        &server,
        Some(&bearer),
        ask(
            PAYMENTS_SA,
            &["ledger"],
            Some(60),
            &format!(r#"{{"scope":"{}"}}"#, "s".repeat(7000)),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(
        too_large.code(),
        tonic::Code::InvalidArgument,
        "{too_large:?}"
    );
    assert!(
        too_large
            .message()
            .starts_with("claims_json: the token would be"),
        "{too_large:?}"
    );
    assert_eq!(
        (decision("allowed").await, decision("malformed").await),
        (1.0, 0.0)
    );
    let last = lines(&audit_path).pop().unwrap();
    assert_eq!(
        (&last["method"], &last["outcome"], &last["caller"]),
        (
            &Value::from("IssueToken"),
            &Value::from("failed"),
            &Value::from(PAYMENTS_SA)
        )
    );
    assert_eq!(last["reason"], too_large.message());
}
