//! Three real services and the authority, wired with the client crate's Txn-Token layers:
//! `edge` exchanges the caller's access token once per request; `orders` and `ledger`
//! verify the Txn-Token locally and see the same `txn`; a Txn-Token replayed as
//! `authorization` is refused, by a Txn-Token service and by an access-token one.

use std::sync::{Arc, Mutex};

use token_authority_client::{
    interceptor::verify_bearer_layer,
    txn::{ExchangeTxnTokenLayer, ForwardTxnToken, RequireTxnTokenLayer, TxnExchanger, TxnRequest},
    Credentials, TxnToken, Verifier, VerifierSettings,
};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Server},
    Code,
};
use tonic_health::pb::{
    health_client::HealthClient,
    health_server::{Health, HealthServer},
    HealthCheckRequest, HealthCheckResponse,
};

use super::channel;
use crate::{
    helpers::metric,
    txn::{Fixture, EDGE_SECRET, TRUST_DOMAIN},
};

type Next = HealthClient<InterceptedService<Channel, ForwardTxnToken>>;

/// One service of the chain: notes the Txn-Token each request held, then calls the next
/// service, if any, forwarding it.
#[derive(Clone)]
struct Hop {
    seen: Arc<Mutex<Vec<TxnToken>>>,
    next: Option<Next>,
}

#[tonic::async_trait]
impl Health for Hop {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let token = request
            .extensions()
            .get::<TxnToken>()
            .cloned()
            .ok_or_else(|| tonic::Status::internal("the layer put no Txn-Token here"))?;
        self.seen.lock().unwrap().push(token);
        if let Some(next) = &self.next {
            next.clone().check(HealthCheckRequest::default()).await?;
        }
        Ok(tonic::Response::new(HealthCheckResponse { status: 1 }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("check only"))
    }
}

async fn listen() -> (tokio::net::TcpListener, Channel) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", listener.local_addr().unwrap()))
        .unwrap()
        .connect_lazy();
    (listener, channel)
}

fn incoming(listener: tokio::net::TcpListener) -> tokio_stream::wrappers::TcpListenerStream {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

fn check_with(metadata: &[(&'static str, String)]) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    for (name, value) in metadata {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_exchanges_once_and_orders_and_ledger_see_the_same_txn() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let verifier = Verifier::connect(
        channel(server),
        VerifierSettings::new(server.issuer.clone()),
    )
    .await
    .unwrap();
    let seen = |_: &str| Arc::new(Mutex::new(Vec::new()));
    let (ledger_seen, orders_seen, edge_seen) = (seen("ledger"), seen("orders"), seen("edge"));

    let (ledger_listener, ledger_channel) = listen().await;
    tokio::spawn(
        Server::builder()
            .layer(RequireTxnTokenLayer::new(verifier.clone(), TRUST_DOMAIN))
            .add_service(HealthServer::new(Hop {
                seen: ledger_seen.clone(),
                next: None,
            }))
            .serve_with_incoming(incoming(ledger_listener)),
    );
    let (orders_listener, orders_channel) = listen().await;
    tokio::spawn(
        Server::builder()
            .layer(RequireTxnTokenLayer::new(verifier.clone(), TRUST_DOMAIN))
            .add_service(HealthServer::new(Hop {
                seen: orders_seen.clone(),
                next: Some(HealthClient::with_interceptor(
                    ledger_channel.clone(),
                    ForwardTxnToken,
                )),
            }))
            .serve_with_incoming(incoming(orders_listener)),
    );
    let exchanger = TxnExchanger::new(
        channel(server),
        Credentials::ClientSecret {
            id: "edge".into(),
            secret: EDGE_SECRET.into(),
        },
        verifier.clone(),
        TRUST_DOMAIN,
    );
    let (edge_listener, edge_channel) = listen().await;
    tokio::spawn(
        Server::builder()
            .layer(ExchangeTxnTokenLayer::new(exchanger, |parts| TxnRequest {
                scope: "orders.read".into(),
                request_details: parts
                    .headers
                    .get("x-order-id")
                    .and_then(|value| value.to_str().ok())
                    .map(|order| serde_json::json!({ "order_id": order })),
                request_context: None,
            }))
            .add_service(HealthServer::new(Hop {
                seen: edge_seen.clone(),
                next: Some(HealthClient::with_interceptor(
                    orders_channel.clone(),
                    ForwardTxnToken,
                )),
            }))
            .serve_with_incoming(incoming(edge_listener)),
    );

    // Three external requests, each with the user's access token.
    let user = fixture
        .idp
        .access_token("user-1234", "orders.read orders.write");
    let mut edge = HealthClient::new(edge_channel);
    for order in ["o-1", "o-2", "o-3"] {
        edge.check(check_with(&[
            ("authorization", format!("Bearer {user}")),
            ("x-order-id", order.into()),
        ]))
        .await
        .unwrap();
    }
    let exchanges = metric(
        server,
        "token_authority_caller_decisions_total{method=\"ExchangeToken\",outcome=\"allowed\"}",
    )
    .await;
    assert_eq!(exchanges, 3.0, "one exchange per external request");
    let txns = |seen: &Arc<Mutex<Vec<TxnToken>>>| -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|t| t.txn().to_owned())
            .collect()
    };
    let at_edge = txns(&edge_seen);
    assert_eq!(at_edge.len(), 3);
    assert_eq!(txns(&orders_seen), at_edge);
    assert_eq!(txns(&ledger_seen), at_edge);
    assert_ne!(at_edge[0], at_edge[1]);
    let ledger_saw = ledger_seen.lock().unwrap()[2].clone();
    assert_eq!(ledger_saw.subject(), "user-1234");
    assert!(ledger_saw.has_scope("orders.read"));
    assert!(!ledger_saw.has_scope("orders.write"));
    assert_eq!(ledger_saw.requesters().collect::<Vec<_>>(), ["client:edge"]);
    assert_eq!(
        ledger_saw.tctx().unwrap()["order_id"],
        serde_json::json!("o-3")
    );
    // Forwarded unchanged: the very token the edge got.
    assert_eq!(ledger_saw.as_str(), edge_seen.lock().unwrap()[2].as_str());

    // Replayed as `authorization`: a Txn-Token service wants the Txn-Token header...
    let replay = ledger_saw.as_str().to_owned();
    let status = HealthClient::new(ledger_channel)
        .check(check_with(&[("authorization", format!("Bearer {replay}"))]))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "a Txn-Token header is required")
    );
    // ... and an access-token service refuses it by type.
    let (bearer_listener, bearer_channel) = listen().await;
    tokio::spawn(
        Server::builder()
            .layer(verify_bearer_layer(verifier.clone()))
            .add_service(HealthServer::new(Hop {
                seen: seen("bearer"),
                next: None,
            }))
            .serve_with_incoming(incoming(bearer_listener)),
    );
    let status = HealthClient::new(bearer_channel)
        .check(check_with(&[("authorization", format!("Bearer {replay}"))]))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "the bearer token is refused: WrongTokenType: a Txn-Token (typ txntoken+jwt) is not accepted where an access token is expected"
        )
    );
    // An edge request without an access token is refused before any exchange.
    let status = edge.check(check_with(&[])).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "authorization: Bearer <access token> is required"
        )
    );
    // An access token the authority refuses: the caller is told no more than that (the
    // authority's message names the edge's policy), and not to retry.
    let wrong_scope = fixture.idp.access_token("user-1234", "profile");
    let status = edge
        .check(check_with(&[(
            "authorization",
            format!("Bearer {wrong_scope}"),
        )]))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "the access token is not accepted for this request"
        )
    );
    // A call made outside any request holding a Txn-Token is not sent.
    let status = HealthClient::with_interceptor(orders_channel, ForwardTxnToken)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}
