//! SetTokenStatus and VerifyToken: revoked by jti is refused at the next request, a
//! suspended token reinstated verifies again, a revoked one stays revoked, and each bad
//! request gets its exact status.

use token_authority::pb::{self, TokenStatus, VerifyFailureReason as Reason};
use tonic::Code;

use super::{at_index, issue_for, list_id, reference, set_request, verdict, LONG, SHORT};
use crate::helpers::{admin, metric, DataDir, TestServer};

const REVOKED: &str = r#"token_authority_status_list_tokens{status="invalid"}"#;
const SUSPENDED: &str = r#"token_authority_status_list_tokens{status="suspended"}"#;

#[tokio::test]
async fn revoke_suspend_and_reinstate_one_token() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let revoked = issue_for(&server, "svc-a", LONG).await;
    let suspended = issue_for(&server, "svc-b", LONG).await;
    let bystander = issue_for(&server, "svc-c", LONG).await;
    // A token below --status-min-ttl (10 minutes by default) has no status.
    let short = issue_for(&server, "svc-d", SHORT).await;
    assert_eq!(reference(&short.token), None);
    let at = reference(&suspended.token).unwrap();
    assert_eq!(
        at.uri,
        format!("{}/statuslists/{}", server.issuer, list_id(&at))
    );
    for token in [&revoked, &suspended, &bystander, &short] {
        assert_eq!(verdict(&server, &token.token).await, Reason::Unspecified);
    }
    // The list in use and the one made ahead, nothing set yet.
    assert_eq!(metric(&server, "token_authority_status_lists").await, 2.0);
    assert_eq!(metric(&server, REVOKED).await, 0.0);

    let mut client = server.client.clone();
    let answer = client
        .set_token_status(admin(set_request(&revoked.jti, TokenStatus::Invalid)))
        .await
        .unwrap()
        .into_inner();
    let held = reference(&revoked.token).unwrap();
    assert_eq!(
        (answer.list_id, answer.index, answer.uri.as_str()),
        (list_id(&held), held.idx, held.uri.as_str())
    );
    assert_eq!(answer.previous(), TokenStatus::Valid);
    assert_eq!(answer.status(), TokenStatus::Invalid);
    // The very next request is refused.
    let response = server.verify(&revoked.token, "ledger").await;
    assert_eq!(response.reason(), Reason::RevokedToken, "{response:?}");
    assert_eq!(
        response.detail,
        format!(
            "the token was revoked (status list {}, index {})",
            list_id(&held),
            held.idx
        )
    );

    // Suspended by list and index, then reinstated.
    let answer = client
        .set_token_status(admin(at_index(
            list_id(&at),
            at.idx,
            TokenStatus::Suspended,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.previous(), TokenStatus::Valid);
    assert_eq!(
        verdict(&server, &suspended.token).await,
        Reason::SuspendedToken
    );
    assert_eq!(
        (
            metric(&server, REVOKED).await,
            metric(&server, SUSPENDED).await
        ),
        (1.0, 1.0)
    );
    let answer = client
        .set_token_status(admin(set_request(&suspended.jti, TokenStatus::Valid)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.previous(), TokenStatus::Suspended);
    assert_eq!(
        verdict(&server, &suspended.token).await,
        Reason::Unspecified
    );
    assert_eq!(metric(&server, SUSPENDED).await, 0.0);

    // Revoked is final: neither VALID nor SUSPENDED undoes it; INVALID again is a no-op.
    for status in [TokenStatus::Valid, TokenStatus::Suspended] {
        let error = client
            .set_token_status(admin(set_request(&revoked.jti, status)))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
        assert_eq!(
            error.message(),
            format!(
                "the token at index {} of status list {} is revoked, which is final",
                held.idx,
                list_id(&held)
            )
        );
    }
    let again = client
        .set_token_status(admin(set_request(&revoked.jti, TokenStatus::Invalid)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.previous(), TokenStatus::Invalid);
    assert_eq!(verdict(&server, &revoked.token).await, Reason::RevokedToken);
    // The others were never touched.
    assert_eq!(
        verdict(&server, &bystander.token).await,
        Reason::Unspecified
    );
    server.stop().await;
}

/// Each bad request, with the status and message the caller sees.
#[tokio::test]
async fn bad_requests() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let token = issue_for(&server, "svc", LONG).await;
    let held = reference(&token.token).unwrap();
    let list = list_id(&held);
    let short = issue_for(&server, "svc", SHORT).await;
    let valid = TokenStatus::Valid;
    // A jti names its token's list and index under the authority's MAC: a garbled one, or
    // another authority's (whose first token holds an index of the same list as ours), names
    // nothing here.
    let mut garbled = token.jti.clone().into_bytes();
    garbled[10] = if garbled[10] == b'A' { b'B' } else { b'A' };
    let garbled = String::from_utf8(garbled).unwrap();
    let other_dir = DataDir::new();
    let other = TestServer::start(&other_dir).await;
    let foreign = issue_for(&other, "svc", LONG).await;
    other.stop().await;
    assert_eq!(list_id(&reference(&foreign.token).unwrap()), list);
    // An index of this authority's open block that no token holds yet.
    let short_idx = reference(&short.token).map(|at| at.idx);
    let ahead = (0..1024)
        .find(|&idx| idx != held.idx && Some(idx) != short_idx)
        .unwrap();
    let cases: Vec<(&str, pb::SetTokenStatusRequest, Code, String)> = vec![
        (
            "unknown jti",
            set_request("no-such-jti", TokenStatus::Invalid),
            Code::NotFound,
            "no token with this jti holds a status (unknown, or expired)".into(),
        ),
        (
            "jti of a token without a status",
            set_request(&short.jti, TokenStatus::Invalid),
            Code::NotFound,
            "no token with this jti holds a status (unknown, or expired)".into(),
        ),
        (
            "jti with one character changed",
            set_request(&garbled, TokenStatus::Invalid),
            Code::NotFound,
            "no token with this jti holds a status (unknown, or expired)".into(),
        ),
        (
            "another authority's jti for the same list and index",
            set_request(&foreign.jti, TokenStatus::Invalid),
            Code::NotFound,
            "no token with this jti holds a status (unknown, or expired)".into(),
        ),
        (
            "list that does not exist",
            at_index(list + 41, 0, TokenStatus::Invalid),
            Code::NotFound,
            format!("status list {} does not exist", list + 41),
        ),
        (
            "index never handed out",
            at_index(list, 1_000_000, TokenStatus::Invalid),
            Code::NotFound,
            format!("index 1000000 of status list {list} was never handed out (the list has handed out 1024)"),
        ),
        // Reserved for this authority's next tokens: no token holds it, and setting it would
        // have a token born revoked.
        (
            "index reserved, not handed out yet",
            at_index(list, ahead, TokenStatus::Invalid),
            Code::NotFound,
            format!(
                "index {ahead} of status list {list} has not been handed out yet: no token holds it"
            ),
        ),
        (
            "nothing named",
            pb::SetTokenStatusRequest {
                status: TokenStatus::Invalid as i32,
                ..Default::default()
            },
            Code::InvalidArgument,
            "name the token: jti, or list_id and index".into(),
        ),
        (
            "jti and list",
            pb::SetTokenStatusRequest {
                jti: token.jti.clone(),
                list_id: list,
                status: TokenStatus::Invalid as i32,
                ..Default::default()
            },
            Code::InvalidArgument,
            "jti and list_id: give one, not both".into(),
        ),
        (
            "index without list",
            pb::SetTokenStatusRequest {
                index: 3,
                status: TokenStatus::Invalid as i32,
                ..Default::default()
            },
            Code::InvalidArgument,
            "index: names a place in a list; give list_id with it, or the jti alone".into(),
        ),
        (
            "no status",
            set_request(&token.jti, TokenStatus::Unspecified),
            Code::InvalidArgument,
            "status: is required (TOKEN_STATUS_VALID, TOKEN_STATUS_INVALID or TOKEN_STATUS_SUSPENDED)".into(),
        ),
        (
            "unknown status",
            pb::SetTokenStatusRequest {
                jti: token.jti.clone(),
                status: 9,
                ..Default::default()
            },
            Code::InvalidArgument,
            "status: not a TokenStatus this server knows".into(),
        ),
        (
            "huge jti",
            set_request(&"j".repeat(257), valid),
            Code::InvalidArgument,
            "jti: is longer than 256 bytes".into(),
        ),
    ];
    let mut client = server.client.clone();
    for (name, request, code, message) in cases {
        let error = client.set_token_status(admin(request)).await.unwrap_err();
        assert_eq!(
            (error.code(), error.message()),
            (code, message.as_str()),
            "{name}"
        );
    }
    // Without the admin token: refused before anything is read.
    let error = client
        .set_token_status(set_request(&token.jti, TokenStatus::Invalid))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");
    // None of it touched the token.
    assert_eq!(verdict(&server, &token.token).await, Reason::Unspecified);
    server.stop().await;
}
