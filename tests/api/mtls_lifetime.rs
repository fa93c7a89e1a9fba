//! A client certificate proves its caller only while it is valid and chains to the client
//! CA bundle in use, on connections already open too; a token bound to it never outlives
//! it; and no connection lives past `--max-connection-age`.

use std::time::Duration;

use tonic::Code;

use crate::{
    callers::{ask, payload},
    helpers::{config, connect_tls, metric, now, DataDir, TestServer, TlsSetup},
    pki::Pki,
};

const SPIFFE: &str = "spiffe://prod.example/ns/payments/sa/api";

/// A bound rule, so that cnf and its cap are exercised.
const POLICY: &str = r#"
[[rule]]
callers = ["spiffe://prod.example/ns/payments/*"]
audiences = ["ledger"]
bind = "mtls"
"#;

async fn start(dir: &DataDir, tls: &TlsSetup, extra: &[&str]) -> TestServer {
    dir.create();
    let policy = dir.path.parent().unwrap().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut args = tls.args(true);
    args.extend(["--policy-file".to_owned(), policy.display().to_string()]);
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start_tls(config(dir, &args), tls.client(None)).await
}

async fn wait_for_metric_at_least(server: &TestServer, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(server, name).await < value {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed below {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_expiring_certificate_stops_proving_its_caller_on_the_open_connection() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = start(&dir, &tls, &[]).await;
    let not_after = now() + 4;
    let identity = tls.pki.client_until(Some(SPIFFE), None, not_after);
    let mut client = connect_tls(server.grpc_addr, &tls.client(Some(identity)))
        .await
        .unwrap();

    // Before notAfter: issued, bound, and capped at the certificate's notAfter (the
    // server's default ttl is far longer).
    let issued = client
        .issue_token(ask(SPIFFE, &["ledger"], None, ""))
        .await
        .unwrap()
        .into_inner();
    let claims = payload(&issued.token);
    assert!(claims["cnf"]["x5t#S256"].is_string());
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp <= not_after, "exp {exp} > notAfter {not_after}");
    assert_eq!(issued.expires_at.unwrap().seconds as u64, exp);
    // An explicit ttl longer than what the certificate has left is capped too.
    let issued = client
        .issue_token(ask(SPIFFE, &["ledger"], Some(600), ""))
        .await
        .unwrap()
        .into_inner();
    assert!(payload(&issued.token)["exp"].as_u64().unwrap() <= not_after);

    // Past notAfter, on the same connection: a fresh handshake would fail, so an
    // UNAUTHENTICATED answer proves the connection was not replaced.
    let status = loop {
        let asked_at = now();
        match client.issue_token(ask(SPIFFE, &["ledger"], None, "")).await {
            Ok(issued) => {
                assert!(asked_at < not_after, "issued at {asked_at}, after notAfter");
                assert!(payload(&issued.into_inner().token)["exp"].as_u64().unwrap() <= not_after);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => break status,
        }
    };
    let expiry =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(not_after));
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            format!("client certificate: expired at {expiry} (its notAfter); reconnect with a renewed certificate").as_str()
        )
    );
    // Calls that need no identity still work on it.
    client
        .get_jwks(token_authority::pb::GetJwksRequest {})
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_client_ca_reloaded_without_the_callers_ca_refuses_open_connections() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = start(&dir, &tls, &["--tls-reload-interval", "100ms"]).await;
    let mut client = connect_tls(
        server.grpc_addr,
        &tls.client(Some(tls.pki.client(Some(SPIFFE), None))),
    )
    .await
    .unwrap();
    client
        .issue_token(ask(SPIFFE, &["ledger"], None, ""))
        .await
        .unwrap();

    // The CA is replaced in the bundle (its key was compromised, say).
    let other = Pki::named("replacement CA");
    std::fs::write(&tls.ca, other.ca_pem()).unwrap();
    wait_for_metric_at_least(&server, "token_authority_tls_reloads_total", 1.0).await;
    let status = client
        .issue_token(ask(SPIFFE, &["ledger"], None, ""))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "client certificate: no longer accepted by the --client-ca bundle in use (it changed since this connection's handshake): invalid peer certificate: UnknownIssuer"
        )
    );

    // Trusted again once the bundle holds its CA again, still on the same connection.
    std::fs::write(&tls.ca, format!("{}{}", other.ca_pem(), tls.pki.ca_pem())).unwrap();
    wait_for_metric_at_least(&server, "token_authority_tls_reloads_total", 2.0).await;
    client
        .issue_token(ask(SPIFFE, &["ledger"], None, ""))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_connection_past_its_maximum_age_is_closed_and_the_client_reconnects() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = start(&dir, &tls, &["--max-connection-age", "1s"]).await;
    let closed =
        r#"token_authority_connections_closed_by_server_total{listener="grpc",reason="max_age"}"#;
    let opened = r#"token_authority_open_connections{listener="grpc"}"#;
    let mut client = connect_tls(
        server.grpc_addr,
        &tls.client(Some(tls.pki.client(Some(SPIFFE), None))),
    )
    .await
    .unwrap();
    client
        .issue_token(ask(SPIFFE, &["ledger"], None, ""))
        .await
        .unwrap();
    // The test server's own client holds a connection too: both reach their age.
    wait_for_metric_at_least(&server, closed, 1.0).await;
    // The same client goes on, over a new connection. A call that races the close can be
    // turned back before it was sent (hyper cancels it: "connection closed"); tonic does not
    // retry it by itself, as grpc-go and grpc-java do. At most that one call, and only so.
    let mut turned_back = 0;
    for _ in 0..3 {
        match client.issue_token(ask(SPIFFE, &["ledger"], None, "")).await {
            Ok(_) => {}
            Err(status)
                if turned_back == 0
                    && status.code() == tonic::Code::Cancelled
                    && format!("{status:?}").contains("connection closed") =>
            {
                turned_back += 1;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    client
        .issue_token(ask(SPIFFE, &["ledger"], None, ""))
        .await
        .unwrap();
    assert!(metric(&server, opened).await >= 1.0);
    server.stop().await;
}

/// An empty protobuf message in gRPC framing (GetJwksRequest has no fields).
const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];

fn get_jwks() -> hyper::Request<()> {
    hyper::Request::post("http://127.0.0.1/tokenauthority.v1.TokenAuthority/GetJwks")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// GOAWAY at the maximum age: no new stream is taken, the one in flight is answered whole,
/// then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_maximum_age_a_connection_finishes_its_requests_then_closes() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(&dir, &["--max-connection-age", "1s"])).await;
    let tcp = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut ping_pong = connection.ping_pong().unwrap();
    let closed = tokio::spawn(connection);
    let (in_flight, mut body) = send
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(get_jwks(), false)
        .unwrap();
    // Once the pong is back, the request's HEADERS have arrived: the stream is the server's.
    ping_pong.ping(h2::Ping::opaque()).await.unwrap();

    // Until the GOAWAY, new streams are answered; after it, refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no GOAWAY");
        let Ok(mut ready) = send.clone().ready().await else {
            break;
        };
        let Ok((response, _)) = ready.send_request(get_jwks(), true) else {
            break;
        };
        if response.await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The request in flight is still answered, whole.
    body.send_data(bytes::Bytes::from_static(EMPTY_MESSAGE), true)
        .unwrap();
    let response = in_flight.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");
    // Then the server closes the connection.
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the connection stayed open")
        .unwrap()
        .unwrap();
    server.stop().await;
}
