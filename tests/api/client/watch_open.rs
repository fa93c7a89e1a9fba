//! A WatchKeys address that accepts connections and never answers (a black-holed proxy,
//! a half-dead load balancer) does not hold the `Verifier`: once `watch_open_timeout` has
//! passed it takes its keys from the HTTP JWKS, and tries the stream again later.

use std::time::Duration;

use token_authority_client::{Verifier, VerifierSettings};
use tonic::transport::Channel;

use crate::helpers::{DataDir, TestServer};

#[tokio::test]
async fn a_watch_that_never_opens_gives_way_to_the_http_jwks() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    // Accepts every connection and keeps it open, reading and answering nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut settings = VerifierSettings::new(server.issuer.clone());
    settings.jwks_url = Some(server.url("/.well-known/jwks.json"));
    settings.watch_open_timeout = Duration::from_millis(500);
    settings.first_key_set_timeout = Duration::from_secs(5);
    let local = Verifier::connect(channel, settings)
        .await
        .expect("no key set: the verifier waited on a stream that never opened");
    let token = server.issue("orders", &["ledger"]).await.token;
    assert!(local.verify(&token).is_ok());
    holder.abort();
    server.stop().await;
}
