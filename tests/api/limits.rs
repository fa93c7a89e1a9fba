//! Limits on every input, against the real server: one hostile client cannot take the
//! server from the others.

use std::time::Duration;

use token_authority::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

use crate::helpers::{connect, DataDir, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_message_is_refused_and_others_carry_on() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let mut hostile = connect(server.grpc_addr).await;
    let huge = pb::VerifyTokenRequest {
        token: "x".repeat(100 * 1024 * 1024),
        audience: String::new(),
        ..Default::default()
    };
    let status = hostile.verify_token(huge).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange
                | Code::ResourceExhausted
                | Code::Internal
                | Code::Cancelled
                | Code::Unknown
        ),
        "{status:?}"
    );
    // A request just over the limit gets the precise answer.
    let over = pb::IssueTokenRequest {
        subject: "s".into(),
        claims_json: format!(r#"{{"pad":"{}"}}"#, "x".repeat(70 * 1024)),
        ..Default::default()
    };
    let status = connect(server.grpc_addr)
        .await
        .issue_token(over)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    // Another client, and a new connection of the same one, still work.
    assert!(!server.issue("svc", &[]).await.token.is_empty());
    let mut again = connect(server.grpc_addr).await;
    again.get_jwks(pb::GetJwksRequest {}).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Beyond the per-connection limits, requests are refused at once (RESOURCE_EXHAUSTED, or
/// UNAVAILABLE for streams HTTP/2 refuses), not queued; another client is served meanwhile.
async fn a_flood_of_streams_from_one_client_is_refused_not_queued() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let flooder = connect(server.grpc_addr).await;
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..3000 {
        let mut client = flooder.clone();
        flood.spawn(async move {
            client
                .issue_token(pb::IssueTokenRequest {
                    subject: format!("flood-{i}"),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        });
    }
    // While the flood is in flight, another client is served.
    let mut bystander = connect(server.grpc_addr).await;
    for _ in 0..5 {
        let issued = tokio::time::timeout(
            Duration::from_secs(30),
            bystander.issue_token(pb::IssueTokenRequest {
                subject: "bystander".into(),
                ..Default::default()
            }),
        )
        .await
        .expect("the bystander waited 30 s")
        .unwrap();
        assert!(!issued.into_inner().token.is_empty());
    }
    let mut refused = 0;
    let mut served = 0;
    while let Some(result) = flood.join_next().await {
        match result.unwrap() {
            Ok(()) => served += 1,
            // Shed by the per-connection limit, or refused by HTTP/2 (REFUSED_STREAM arrives as
            // UNAVAILABLE) when the client opens streams past the server's limit.
            Err(Code::ResourceExhausted | Code::Unavailable) => refused += 1,
            Err(other) => panic!("flood request failed with {other:?}"),
        }
    }
    assert!(refused > 0, "nothing was refused ({served} served)");
    assert!(served > 0);
    server.stop().await;
}

async fn raw_http(server: &TestServer, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn http_refuses_oversized_heads_bodies_and_slow_clients() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let big_header = format!(
        "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "normal",
            "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
            "HTTP/1.1 200",
        ),
        ("head over 16 KiB", big_header, "HTTP/1.1 431"),
        (
            "a body",
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".into(),
            "HTTP/1.1 413",
        ),
        (
            "a chunked body on GET",
            "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(),
            "HTTP/1.1 413",
        ),
        ("not HTTP", "\x16\x03\x01 hello\r\n\r\n".into(), ""),
    ];
    for (name, request, expected) in cases {
        let response = raw_http(&server, request.as_bytes()).await;
        assert!(response.starts_with(expected), "{name}: {response:.80}");
    }

    // A client that never finishes its request head is cut off; others are served meanwhile.
    let mut slow = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    slow.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let jwks = server.http_jwks().await;
    assert!(jwks["keys"].is_array());
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "the slow connection was held for 20 s");
    server.stop().await;
}
