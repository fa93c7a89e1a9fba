//! Two tiny services and a token authority: `orders` calls `ledger` with a token from the
//! authority; `ledger` accepts only calls whose bearer token verifies locally, and reads
//! who called from the verified claims. `ledger` serves the standard gRPC health API as a
//! stand-in for a real one.
//!
//! Run an authority first (`cargo run --release -- serve`: IssueToken is open on its
//! loopback listener), then `cargo run -p token-authority-client --example two_services`.
//! `TA_GRPC` and `TA_ISSUER` override where the authority is and the `iss` it signs with.

use std::time::Duration;

use token_authority_client::{
    interceptor::{verify_bearer_layer, AttachToken},
    Credentials, TokenRequest, TokenSource, Verified, Verifier, VerifierSettings,
};
use tonic::transport::{Channel, Server};
use tonic_health::pb::{
    health_client::HealthClient,
    health_server::{Health, HealthServer},
    HealthCheckRequest, HealthCheckResponse,
};

/// `ledger`: answers only callers the interceptor let through.
struct Ledger;

#[tonic::async_trait]
impl Health for Ledger {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        // Put there by the verifying layer: the token's subject and claims.
        let caller = request
            .extensions()
            .get::<Verified>()
            .map(|verified| verified.subject.clone())
            .unwrap_or_default();
        println!("ledger: called by {caller}");
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let authority_url =
        std::env::var("TA_GRPC").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    let issuer = std::env::var("TA_ISSUER").unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned());
    let authority = Channel::from_shared(authority_url)?.connect_lazy();

    // ledger: verifies incoming tokens with keys pushed by the authority.
    let mut settings = VerifierSettings::new(issuer);
    settings.audience = Some("ledger".to_owned());
    let verifier = Verifier::connect(authority.clone(), settings).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ledger_addr = listener.local_addr()?;
    tokio::spawn(
        Server::builder()
            .layer(verify_bearer_layer(verifier))
            .add_service(HealthServer::new(Ledger))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // orders: gets a token for itself, kept fresh in the background, and sends it along.
    let tokens = TokenSource::new(
        authority,
        TokenRequest {
            subject: "orders".to_owned(),
            audience: vec!["ledger".to_owned()],
            ttl: Some(Duration::from_secs(300)),
            ..TokenRequest::default()
        },
        Credentials::Channel,
    );
    tokens.token().await?;
    let ledger = Channel::from_shared(format!("http://{ledger_addr}"))?.connect_lazy();
    let mut ledger = HealthClient::with_interceptor(ledger, AttachToken::new(tokens));
    for _ in 0..3 {
        ledger.check(HealthCheckRequest::default()).await?;
    }
    println!("orders: three calls accepted, one IssueToken");
    Ok(())
}
