//! What one client address may take: its share of the connections, and its failed
//! authentications. Loopback gives two addresses: 127.0.0.1 is the hostile peer,
//! 127.0.0.2 the good one.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use token_authority::pb::token_authority_client::TokenAuthorityClient;
use token_authority_jose::crypto;
use tokio::net::TcpStream;
use tonic::{transport::Channel, Code};

use crate::{
    callers::{ask, basic, hex, start_with_policy, with_auth},
    helpers::{config, metric, wait_for_metric, DataDir, TestServer},
};

const GOOD_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

async fn connect_from(addr: SocketAddr, source: IpAddr) -> TokenAuthorityClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(source))
        .connect()
        .await
        .unwrap();
    TokenAuthorityClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_of_one_address_do_not_lock_out_another() {
    let dir = DataDir::new();
    // --max-connections-per-ip defaults to a quarter of --max-connections: 2.
    let server = TestServer::start_with(config(&dir, &["--max-connections", "8"])).await;
    // The server's own client holds one connection from 127.0.0.1.
    server.grpc_jwks().await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(server.grpc_addr).await.unwrap());
    }
    // Accepted in order: by the time the good peer's connection is, the eight were.
    let mut good = connect_from(server.grpc_addr, GOOD_PEER).await;
    good.get_jwks(token_authority::pb::GetJwksRequest {})
        .await
        .unwrap();
    // One more fitted the address's share; seven were closed at once, and counted.
    let peer_limit = r#"token_authority_connections_closed_by_server_total{listener="grpc",reason="peer_limit"}"#;
    wait_for_metric(&server, peer_limit, 7.0).await;
    let limit =
        r#"token_authority_connections_closed_by_server_total{listener="grpc",reason="limit"}"#;
    assert_eq!(metric(&server, limit).await, 0.0);
    drop(idle);
    server.stop().await;
}

const SECRET: &str = "peer-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_failing_authentication_is_slowed_and_others_are_not() {
    let dir = DataDir::new();
    let policy = format!(
        "[[client]]\nid = \"batch\"\nsecret_sha256 = \"{}\"\n\n[[rule]]\ncallers = [\"client:batch\"]\naudiences = [\"ledger\"]\n",
        hex(&crypto::sha256(SECRET.as_bytes()))
    );
    let (server, _) = start_with_policy(&dir, &policy, &[]).await;
    let good_secret = basic("batch", SECRET);
    let bad_secret = basic("batch", "guess");
    let call = |mut client: TokenAuthorityClient<Channel>, authorization: String| async move {
        client
            .issue_token(with_auth(
                ask("client:batch", &["ledger"], None, ""),
                Some(&authorization),
            ))
            .await
    };
    let hostile = crate::helpers::connect(server.grpc_addr).await;
    let good = connect_from(server.grpc_addr, GOOD_PEER).await;

    // Bad secrets from 127.0.0.1: refused UNAUTHENTICATED for a burst, then RESOURCE_EXHAUSTED
    // without the secret being checked.
    let mut failures = 0;
    let throttled = loop {
        let status = call(hostile.clone(), bad_secret.clone()).await.unwrap_err();
        match status.code() {
            Code::Unauthenticated => failures += 1,
            _ => break status,
        }
        assert!(failures < 200, "never slowed down");
    };
    assert!(failures >= 20, "slowed after {failures} failures");
    let retry = "too many failed authentications from this address; retry in 1s";
    assert_eq!(
        (throttled.code(), throttled.message()),
        (Code::ResourceExhausted, retry)
    );
    // The address is slowed as a whole, its good secret included...
    let status = call(hostile.clone(), good_secret.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::ResourceExhausted, retry)
    );
    let throttled_calls = r#"token_authority_calls_throttled_total{listener="grpc"}"#;
    assert_eq!(metric(&server, throttled_calls).await, 2.0);
    let decisions =
        r#"token_authority_caller_decisions_total{method="IssueToken",outcome="throttled"}"#;
    assert_eq!(metric(&server, decisions).await, 2.0);

    // ...while another address is not affected, good or bad.
    call(good.clone(), good_secret.clone()).await.unwrap();
    let status = call(good.clone(), bad_secret.clone()).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "the client id or secret is not valid"
        )
    );

    // Slowed, not banned: once its budget refills, the hostile address is heard again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(status) = call(hostile.clone(), good_secret.clone()).await {
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(tokio::time::Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

/// `--auth-failures-per-ip 0` (every call behind a sidecar comes from one address): no
/// number of failures from an address refuses its good calls.
#[tokio::test]
async fn the_failure_budget_can_be_turned_off() {
    let dir = DataDir::new();
    let policy = format!(
        "[[client]]\nid = \"batch\"\nsecret_sha256 = \"{}\"\n\n[[rule]]\ncallers = [\"client:batch\"]\naudiences = [\"ledger\"]\n",
        hex(&crypto::sha256(SECRET.as_bytes()))
    );
    let (server, _) = start_with_policy(&dir, &policy, &["--auth-failures-per-ip", "0"]).await;
    let mut client = crate::helpers::connect(server.grpc_addr).await;
    let refused = Err((
        Code::Unauthenticated,
        "the client id or secret is not valid".to_owned(),
    ));
    for (authorization, expected) in [
        (basic("batch", "guess"), refused),
        (basic("batch", SECRET), Ok(())),
    ] {
        for _ in 0..40 {
            let answer = client
                .issue_token(with_auth(
                    ask("client:batch", &["ledger"], None, ""),
                    Some(&authorization),
                ))
                .await
                .map(drop)
                .map_err(|status| (status.code(), status.message().to_owned()));
            assert_eq!(answer, expected);
        }
    }
    let throttled_calls = r#"token_authority_calls_throttled_total{listener="grpc"}"#;
    assert_eq!(metric(&server, throttled_calls).await, 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_watchers() {
    let dir = DataDir::new();
    let server = TestServer::start_with(config(
        &dir,
        &["--max-watchers", "8", "--max-watchers-per-ip", "2"],
    ))
    .await;
    let watch = |mut client: TokenAuthorityClient<Channel>| async move {
        client
            .watch_keys(token_authority::pb::WatchKeysRequest {})
            .await
            .map(tonic::Response::into_inner)
    };
    let hostile = server.client.clone();
    let first = watch(hostile.clone()).await.unwrap();
    let _second = watch(hostile.clone()).await.unwrap();
    let refused = watch(hostile.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("this client address already has 2"),
        "{refused:?}"
    );
    // Another address still gets a place, well under --max-watchers.
    let mut good = watch(connect_from(server.grpc_addr, GOOD_PEER).await)
        .await
        .unwrap();
    assert!(good.message().await.unwrap().is_some());
    let peer_limit =
        r#"token_authority_key_watchers_refused_or_dropped_total{reason="peer_limit"}"#;
    assert_eq!(metric(&server, peer_limit).await, 1.0);
    assert_eq!(metric(&server, "token_authority_key_watchers").await, 3.0);

    // A watcher that leaves gives its address's place back (once the server has seen the
    // stream end, a round trip later).
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match watch(hostile.clone()).await {
            Ok(_) => break,
            Err(status)
                if status.code() == Code::ResourceExhausted
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("the address's place was not given back: {status:?}"),
        }
    }
    server.stop().await;
}
