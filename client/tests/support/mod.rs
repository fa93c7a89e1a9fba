//! A stand-in authority for the tracing tests: an in-process tonic server answering
//! IssueToken, WatchKeys and ExchangeToken (the client crate generates no server code, so the service is
//! written out here as tonic's generated code would be), recording each call's trace
//! context metadata; and an application's tracer: a `tracing-opentelemetry` layer over an
//! SDK tracer provider exporting to memory.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use token_authority_client::pb;
use token_authority_jose::{
    crypto::{generate_pkcs8, Algorithm, SigningKey},
    jwk::{render_jwks, PublicJwk},
    jwt::{sign_as, Signer, TokenType},
};
use tokio_stream::StreamExt as _;
use tonic::{
    server::{Grpc, NamedService},
    transport::{Channel, Server},
    Status,
};
use tracing_subscriber::{filter::Targets, layer::SubscriberExt as _, Layer as _};

pub const ISSUER: &str = "https://token-authority.test";
pub const KID: &str = "trace-test";
/// What the stand-in answers IssueToken with; never to be found in a span.
pub const ISSUED_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJvcmRlcnMifQ.c2lnbmF0dXJl";
/// The message of a refused IssueToken or ExchangeToken; never to be found in a span either.
pub const REFUSAL: &str = "orders may not ask for audience ledger";
/// The trust domain of the Txn-Tokens the stand-in issues.
pub const TRUST_DOMAIN: &str = "orders.example";

/// One call the stand-in received: its method and trace context metadata.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: &'static str,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// How the stand-in answers a WatchKeys call.
#[derive(Clone, Copy, Debug)]
pub enum Watch {
    /// UNAVAILABLE.
    Refuse,
    /// No answer for a minute.
    Stall,
    /// The key set, then the end of the stream, so the verifier reconnects.
    End,
}

/// How the stand-in behaves.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// The life of the tokens it issues; default 600 s.
    pub token_life: Option<Duration>,
    /// How many IssueTokens to refuse (PERMISSION_DENIED) before answering.
    pub refuse_issues: usize,
    /// How many ExchangeTokens to refuse (PERMISSION_DENIED) before answering.
    pub refuse_exchanges: usize,
    /// How to answer the first WatchKeys calls, in turn; once these are used up, with the
    /// key set on a stream held open.
    pub watches: VecDeque<Watch>,
}

#[derive(Clone)]
pub struct Authority {
    calls: Arc<Mutex<Vec<Call>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    jwks: Arc<String>,
    pub signer: Arc<Signer>,
}

impl Authority {
    /// Starts the stand-in on a loopback port; returns it and a channel to it.
    pub async fn start(behaviour: Behaviour) -> (Authority, Channel) {
        let key =
            SigningKey::from_pkcs8(Algorithm::ES256, &generate_pkcs8(Algorithm::ES256).unwrap())
                .unwrap();
        let public = key.verifying_key().unwrap();
        let jwks = render_jwks(&[PublicJwk::new(KID, Algorithm::ES256, public.components())]);
        let authority = Authority {
            calls: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            jwks: Arc::new(String::from_utf8(jwks).unwrap()),
            signer: Arc::new(Signer::new(KID.into(), key)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            Server::builder()
                .add_service(authority.clone())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        (authority, channel)
    }

    /// The calls received so far of `method` ("IssueToken", "WatchKeys", "ExchangeToken").
    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|call| call.method == method)
            .cloned()
            .collect()
    }

    /// The stand-in's key set, as WatchKeys pushes it.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }
}

impl NamedService for Authority {
    const NAME: &'static str = "tokenauthority.v1.TokenAuthority";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Authority {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        let method = match request.uri().path() {
            "/tokenauthority.v1.TokenAuthority/IssueToken" => "IssueToken",
            "/tokenauthority.v1.TokenAuthority/WatchKeys" => "WatchKeys",
            "/tokenauthority.v1.TokenAuthority/ExchangeToken" => "ExchangeToken",
            _ => "other",
        };
        self.calls.lock().unwrap().push(Call {
            method,
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
        });
        let authority = self.clone();
        Box::pin(async move {
            Ok(match method {
                "IssueToken" => {
                    let issue = tower::service_fn(|_: tonic::Request<pb::IssueTokenRequest>| {
                        std::future::ready(authority.issue())
                    });
                    Grpc::new(tonic_prost::ProstCodec::default())
                        .unary(issue, request)
                        .await
                }
                "WatchKeys" => {
                    let watch = tower::service_fn(|_: tonic::Request<pb::WatchKeysRequest>| {
                        authority.watch()
                    });
                    Grpc::new(tonic_prost::ProstCodec::default())
                        .server_streaming(watch, request)
                        .await
                }
                "ExchangeToken" => {
                    let exchange =
                        tower::service_fn(|request: tonic::Request<pb::ExchangeTokenRequest>| {
                            std::future::ready(authority.exchange(request.into_inner()))
                        });
                    Grpc::new(tonic_prost::ProstCodec::default())
                        .unary(exchange, request)
                        .await
                }
                _ => Status::unimplemented("not in the stand-in").into_http(),
            })
        })
    }
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchKeysResponse, Status>> + Send>>;

impl Authority {
    fn issue(&self) -> Result<tonic::Response<pb::IssueTokenResponse>, Status> {
        let life = {
            let mut behaviour = self.behaviour.lock().unwrap();
            if behaviour.refuse_issues > 0 {
                behaviour.refuse_issues -= 1;
                return Err(Status::permission_denied(REFUSAL));
            }
            behaviour.token_life.unwrap_or(Duration::from_secs(600))
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let at = |t: Duration| prost_types::Timestamp {
            seconds: t.as_secs() as i64,
            nanos: t.subsec_nanos() as i32,
        };
        let answer = pb::IssueTokenResponse {
            token: ISSUED_TOKEN.into(),
            key_id: KID.into(),
            jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            issued_at: Some(at(now)),
            expires_at: Some(at(now + life)),
        };
        Ok(tonic::Response::new(answer))
    }

    /// A Txn-Token of `TRUST_DOMAIN` for the scope asked, signed with the stand-in's key.
    fn exchange(
        &self,
        request: pb::ExchangeTokenRequest,
    ) -> Result<tonic::Response<pb::ExchangeTokenResponse>, Status> {
        {
            let mut behaviour = self.behaviour.lock().unwrap();
            if behaviour.refuse_exchanges > 0 {
                behaviour.refuse_exchanges -= 1;
                return Err(Status::permission_denied(REFUSAL));
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "txn-subject-value", "aud": TRUST_DOMAIN,
            "txn": "txn-id-value", "scope": request.scope, "iat": now, "exp": now + 60,
        });
        let token = sign_as(
            &self.signer,
            TokenType::Txn,
            claims.as_object().unwrap(),
            8 * 1024,
        )
        .unwrap();
        Ok(tonic::Response::new(pb::ExchangeTokenResponse {
            access_token: token,
            issued_token_type: "urn:ietf:params:oauth:token-type:txn_token".into(),
            token_type: "N_A".into(),
            txn: "txn-id-value".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: now as i64 + 60,
                nanos: 0,
            }),
        }))
    }

    async fn watch(&self) -> Result<tonic::Response<WatchStream>, Status> {
        let key_set = pb::WatchKeysResponse {
            event: Some(pb::watch_keys_response::Event::KeySet(pb::WatchedKeySet {
                jwks_json: self.jwks.to_string(),
                etag: "\"1\"".into(),
                keys: Vec::new(),
                keepalive_interval: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                status_lists: false,
            })),
        };
        let answer = self.behaviour.lock().unwrap().watches.pop_front();
        let first = tokio_stream::once(Ok(key_set));
        let stream: WatchStream = match answer {
            Some(Watch::Refuse) => return Err(Status::unavailable("draining")),
            Some(Watch::Stall) => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return Err(Status::unavailable("stalled"));
            }
            Some(Watch::End) => Box::pin(first),
            None => Box::pin(first.chain(tokio_stream::pending())),
        };
        Ok(tonic::Response::new(stream))
    }
}

/// An application's tracer: a `tracing` subscriber whose OpenTelemetry layer exports to
/// the returned exporter as each span ends, with each span's level as its `level`
/// attribute. Spans of the client and of target `app` only (not tonic's, hyper's or h2's).
pub fn tracer() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    impl tracing::Subscriber + Send + Sync,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tracing-test"))
        .with_level(true)
        .with_filter(
            Targets::new()
                .with_target("token_authority_client", tracing::Level::TRACE)
                .with_target("app", tracing::Level::TRACE),
        );
    (
        exporter,
        provider,
        tracing_subscriber::registry().with(layer),
    )
}

/// The finished spans named `name`.
pub fn spans(exporter: &InMemorySpanExporter, name: &str) -> Vec<SpanData> {
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.name == name)
        .collect()
}

/// A span's attribute, as text.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// Every text a span carries: its name, attributes, events and their attributes, status.
pub fn texts(span: &SpanData) -> Vec<String> {
    let mut texts = vec![span.name.to_string(), format!("{:?}", span.status)];
    for kv in &span.attributes {
        texts.push(kv.key.to_string());
        texts.push(kv.value.as_str().into_owned());
    }
    for event in span.events.iter() {
        texts.push(event.name.to_string());
        for kv in &event.attributes {
            texts.push(kv.key.to_string());
            texts.push(kv.value.as_str().into_owned());
        }
    }
    texts
}

/// The trace id and parent span id of a W3C `traceparent` (version 00), as hex.
pub fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    assert_eq!(parts[1].len(), 32, "{value}");
    assert_eq!(parts[2].len(), 16, "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}
