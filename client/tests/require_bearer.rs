//! `RequireBearerLayer` in front of a real plain-hyper HTTP/1 server and a real tonic gRPC
//! server: a valid token reaches the handler with its claims in the extensions; every
//! refusal is answered by the layer, with the exact reason, and never reaches the handler.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use token_authority_client::{
    keys::KeySet, Reason, Rejection, RequireBearerLayer, Verified, Verifier, VerifierSettings,
};
use token_authority_jose::{
    crypto::{generate_pkcs8, Algorithm, SigningKey},
    jwk::{render_jwks, PublicJwk},
    jwt::{sign, Signer},
};
use tower_layer::Layer as _;

const ISSUER: &str = "https://token-authority.test";
const KID: &str = "layer-test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signer and a verifier over its public key, requiring the audience `ledger`.
fn keys() -> (Signer, Verifier) {
    let key = SigningKey::from_pkcs8(Algorithm::ES256, &generate_pkcs8(Algorithm::ES256).unwrap())
        .unwrap();
    let public = key.verifying_key().unwrap();
    let jwks = render_jwks(&[PublicJwk::new(KID, Algorithm::ES256, public.components())]);
    let mut settings = VerifierSettings::new(ISSUER);
    settings.audience = Some("ledger".into());
    let verifier = Verifier::with_keys(KeySet::from_jwks(&jwks, String::new()).unwrap(), settings);
    (Signer::new(KID.into(), key), verifier)
}

/// A token for `orders`, to `audience`, expiring at `exp`.
fn token(signer: &Signer, audience: &str, exp: u64) -> String {
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "orders", "aud": audience, "iat": exp - 600, "nbf": exp - 600,
        "exp": exp, "jti": "AAAAAAAAAAAAAAAAAAAAAA", "scope": "read",
    });
    sign(signer, claims.as_object().unwrap(), 8 * 1024).unwrap()
}

/// The handler behind the layer: counts its calls and echoes the verified subject and scope.
#[derive(Clone)]
struct Handler {
    calls: Arc<AtomicUsize>,
}

impl tower_service::Service<Request<hyper::body::Incoming>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<hyper::body::Incoming>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let text = match request.extensions().get::<Verified>() {
            Some(verified) => format!("{} {}", verified.subject, verified.claims["scope"]),
            None => "no claims".to_owned(),
        };
        std::future::ready(Ok(Response::new(Full::new(Bytes::from(text)))))
    }
}

/// Serves `verifier`'s layer around a `Handler` with plain hyper HTTP/1 on a port of its
/// own; returns the base URL and the handler's call counter.
async fn serve(verifier: Verifier) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RequireBearerLayer::new(verifier).layer(Handler {
        calls: Arc::clone(&calls),
    });
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, calls)
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: String,
}

async fn get(url: &str, authorization: Option<&str>) -> Answer {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::get(url);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        challenge,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// The rejection the verifier gives `token`, checked to be for `reason`.
fn rejection(verifier: &Verifier, token: &str, reason: Reason) -> Rejection {
    let rejection = verifier.verify(token).unwrap_err();
    assert_eq!(rejection.reason, reason, "{rejection}");
    rejection
}

#[tokio::test]
async fn plain_hyper_behind_the_layer_gets_only_verified_requests() {
    let (signer, verifier) = keys();
    let (url, calls) = serve(verifier.clone()).await;

    let good = token(&signer, "ledger", now() + 600);
    let answer = get(&url, Some(&format!("Bearer {good}"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "orders \"read\"");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // No credential, or not a bearer one: the bare challenge (RFC 6750 3.1), the reason in
    // the body.
    for (authorization, reason) in [
        (None, "authorization: Bearer <token> is required"),
        (
            Some("Basic b3JkZXJzOnNlY3JldA=="),
            "the authorization header is not Bearer <token>",
        ),
        (
            Some("Bearer "),
            "the authorization header is not Bearer <token>",
        ),
    ] {
        let answer = get(&url, authorization).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(answer.challenge.as_deref(), Some("Bearer"));
        assert_eq!(answer.body, format!("{reason}\n"));
    }

    // Refused tokens: invalid_token with the verifier's exact reason.
    let expired = token(&signer, "ledger", now() - 3600);
    let elsewhere = token(&signer, "payments", now() + 600);
    for (token, reason) in [
        ("garbage".to_owned(), Reason::Malformed),
        (expired, Reason::Expired),
        (elsewhere, Reason::AudienceMismatch),
    ] {
        let rejection = rejection(&verifier, &token, reason);
        let answer = get(&url, Some(&format!("Bearer {token}"))).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{rejection}");
        assert_eq!(
            answer.challenge.unwrap(),
            format!("Bearer error=\"invalid_token\", error_description=\"{rejection}\"")
        );
        assert_eq!(
            answer.body,
            format!("the bearer token is refused: {rejection}\n")
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a refused request reached the handler"
    );
}

/// A gRPC service behind the layer: answers only if the claims are in the extensions.
struct Echo {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Echo {
    async fn check(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let verified = request
            .extensions()
            .get::<Verified>()
            .ok_or_else(|| tonic::Status::internal("no verified token in the extensions"))?;
        assert_eq!(verified.subject, "orders");
        Ok(tonic::Response::new(
            tonic_health::pb::HealthCheckResponse { status: 1 },
        ))
    }

    type WatchStream =
        tokio_stream::Empty<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
}

#[tokio::test]
async fn grpc_requests_are_refused_with_unauthenticated_and_the_reason() {
    let (signer, verifier) = keys();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(RequireBearerLayer::new(verifier.clone()))
            .add_service(tonic_health::pb::health_server::HealthServer::new(Echo {
                calls: Arc::clone(&calls),
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let check = |authorization: Option<String>| {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        async move {
            let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
            if let Some(value) = authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().unwrap());
            }
            client.check(request).await
        }
    };

    let good = token(&signer, "ledger", now() + 600);
    check(Some(format!("Bearer {good}"))).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let refused = check(None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        "authorization: Bearer <token> is required"
    );
    let expired = token(&signer, "ledger", now() - 3600);
    let rejection = rejection(&verifier, &expired, Reason::Expired);
    let refused = check(Some(format!("Bearer {expired}"))).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        refused.message(),
        format!("the bearer token is refused: {rejection}")
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a refused call reached the service"
    );
}
