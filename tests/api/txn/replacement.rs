//! A Txn-Token as the subject token: the replacement keeps `txn`, `sub`, `aud`, `tctx` and
//! `rctx`, never widens the scope, appends its requester to `req_wl`, and is never issued
//! for an expired, tampered or foreign token.

use serde_json::json;
use tonic::Code;

use super::{ask, edge, exchange_as, orders, Fixture, BATCH_SECRET, TXN_TYPE};
use crate::{
    callers::{basic, payload},
    clients::tamper,
};

fn replace(
    scope: &str,
    txn_token: &str,
    details: &str,
) -> token_authority::pb::ExchangeTokenRequest {
    let mut request = ask(scope, txn_token);
    request.subject_token_type = TXN_TYPE.into();
    request.request_details = details.into();
    request
}

#[tokio::test]
async fn a_replacement_keeps_txn_sub_and_aud_and_never_widens() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let user = fixture
        .idp
        .access_token("user-1234", "orders.read orders.write");
    let mut first = ask("orders.read orders.write", &user);
    first.request_details = r#"{"order_id":"o-42"}"#.into();
    first.request_context = r#"{"req_ip":"10.1.2.3"}"#.into();
    let first = exchange_as(server, Some(&edge()), first).await.unwrap();
    let before = payload(&first.access_token);

    // Narrower, by another workload, which may add `amount` but not change `order_id`.
    let second = exchange_as(
        server,
        Some(&orders()),
        replace(
            "orders.read",
            &first.access_token,
            r#"{"order_id":"o-666","amount":"12.00"}"#,
        ),
    )
    .await
    .unwrap();
    let after = payload(&second.access_token);
    assert_eq!(second.txn, first.txn);
    for kept in ["txn", "sub", "aud", "rctx"] {
        assert_eq!(after[kept], before[kept], "{kept}");
    }
    assert_eq!(after["scope"], "orders.read");
    assert_eq!(after["req_wl"], "client:edge,client:orders");
    assert_eq!(
        after["tctx"],
        json!({"order_id": "o-42", "amount": "12.00"})
    );

    let refusals = [
        (
            "wider than the token it replaces",
            replace("orders.read orders.write", &second.access_token, ""),
            Code::PermissionDenied,
            "invalid_scope: scope \"orders.write\" is wider than the scope of the Txn-Token it would replace",
        ),
        (
            "tampered",
            replace("orders.read", &tamper(&first.access_token), ""),
            Code::InvalidArgument,
            "invalid_grant: the subject Txn-Token is refused: the signature does not verify",
        ),
        (
            "an access token given as a Txn-Token",
            replace("orders.read", &fixture.idp.access_token("user-1234", "orders.read"), ""),
            Code::InvalidArgument,
            "invalid_grant: the subject Txn-Token is refused: not a Txn-Token: its typ is not txntoken+jwt",
        ),
    ];
    for (name, request, code, message) in refusals {
        let status = exchange_as(server, Some(&orders()), request)
            .await
            .expect_err(name);
        assert_eq!((status.code(), status.message()), (code, message), "{name}");
    }

    // The chain of requesters is bounded: eight workloads at most.
    let mut token = second.access_token;
    for _ in 2..8 {
        token = exchange_as(server, Some(&orders()), replace("orders.read", &token, ""))
            .await
            .unwrap()
            .access_token;
    }
    assert_eq!(
        payload(&token)["req_wl"]
            .as_str()
            .unwrap()
            .split(',')
            .count(),
        8
    );
    let status = exchange_as(server, Some(&orders()), replace("orders.read", &token, ""))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "invalid_grant: the subject Txn-Token was requested and replaced by 8 workloads already, the most a transaction may have"
        )
    );
}

/// The draft: "MUST NOT issue a new Txn-Token when the Txn-Token being replaced has
/// expired". `batch`'s rule gives one-second tokens; the server's leeway is 0.
#[tokio::test]
async fn an_expired_txn_token_is_never_replaced() {
    // Even within the leeway, which is for other issuers' clocks: the draft says MUST NOT.
    let fixture = Fixture::start_with_leeway("60s").await;
    let server = &fixture.server;
    let user = fixture.idp.access_token("user-1234", "orders.read");
    let short = exchange_as(
        server,
        Some(&basic("batch", BATCH_SECRET)),
        ask("orders.read", &user),
    )
    .await
    .unwrap();
    let claims = payload(&short.access_token);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        1
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let status = exchange_as(
        server,
        Some(&orders()),
        replace("orders.read", &short.access_token, ""),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "invalid_grant: the subject Txn-Token is refused: the token has expired"
        )
    );
}
