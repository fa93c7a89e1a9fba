//! The client against an authority (or a network) that misbehaves: pushes and fetched JWKS
//! that list a key already revoked, a JWKS URL that accepts and never answers, an authority
//! that never answers or refuses everything, a keepalive that overflows; and what `Debug`
//! shows of the types holding secrets. A scripted stand-in authority (tonic, written out as
//! generated server code would be) and raw TCP peers.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use token_authority_client::{
    keys::KeySet, pb, txn::TxnExchanger, ClientError, Credentials, Reason, TokenRequest,
    TokenSource, Verifier, VerifierSettings,
};
use token_authority_jose::{
    crypto::{generate_pkcs8, Algorithm, SigningKey},
    jwk::{render_jwks, PublicJwk},
    jwt::{sign_as, Signer, TokenType},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::{
    server::{Grpc, NamedService},
    transport::{Channel, Server},
    Status,
};

const ISS: &str = "https://token-authority.test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signer(kid: &str) -> Signer {
    let key = generate_pkcs8(Algorithm::ES256).unwrap();
    Signer::new(
        kid.into(),
        SigningKey::from_pkcs8(Algorithm::ES256, &key).unwrap(),
    )
}

fn jwks(signers: &[&Signer]) -> String {
    let keys: Vec<_> = signers
        .iter()
        .map(|s| {
            PublicJwk::new(
                &s.kid,
                Algorithm::ES256,
                s.key.verifying_key().unwrap().components(),
            )
        })
        .collect();
    String::from_utf8(render_jwks(&keys)).unwrap()
}

fn access_token(signer: &Signer) -> String {
    let n = now();
    let claims = serde_json::json!({"iss": ISS, "sub": "orders", "iat": n, "exp": n + 600});
    sign_as(signer, TokenType::Access, claims.as_object().unwrap(), 8192).unwrap()
}

fn key_set(
    jwks: &str,
    revoked: &[&str],
    keepalive: prost_types::Duration,
) -> pb::WatchKeysResponse {
    pb::WatchKeysResponse {
        event: Some(pb::watch_keys_response::Event::KeySet(pb::WatchedKeySet {
            jwks_json: jwks.into(),
            etag: format!("\"{}\"", jwks.len()),
            keys: revoked
                .iter()
                .map(|kid| pb::WatchedKey {
                    key_id: (*kid).into(),
                    state: pb::KeyState::Revoked as i32,
                    ..Default::default()
                })
                .collect(),
            keepalive_interval: Some(keepalive),
            status_lists: false,
        })),
    }
}

fn secs(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

/// One scripted WatchKeys answer: messages with a delay before each; then end or hang.
#[derive(Clone)]
struct Script {
    messages: Vec<(Duration, pb::WatchKeysResponse)>,
    end: bool,
}

#[derive(Clone, Default)]
struct Stand {
    watches: Arc<Mutex<VecDeque<Script>>>,
    watch_calls: Arc<AtomicUsize>,
    issue_calls: Arc<AtomicUsize>,
    /// 0: answer; 1: UNAVAILABLE; 2: expires_at far in the future.
    issue_mode: Arc<AtomicUsize>,
}

impl NamedService for Stand {
    const NAME: &'static str = "tokenauthority.v1.TokenAuthority";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchKeysResponse, Status>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Stand {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                "/tokenauthority.v1.TokenAuthority/IssueToken" => {
                    let issue = tower::service_fn(|_: tonic::Request<pb::IssueTokenRequest>| {
                        let n = me.issue_calls.fetch_add(1, Ordering::SeqCst);
                        let mode = me.issue_mode.load(Ordering::SeqCst);
                        if mode == 1 {
                            return std::future::ready(Err(Status::unavailable("overloaded")));
                        }
                        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                        let ts = |d: Duration| prost_types::Timestamp {
                            seconds: d.as_secs() as i64,
                            nanos: d.subsec_nanos() as i32,
                        };
                        std::future::ready(Ok::<_, Status>(tonic::Response::new(
                            pb::IssueTokenResponse {
                                token: format!("issued-token-{n}"),
                                key_id: "k".into(),
                                jti: "j".into(),
                                issued_at: Some(ts(t)),
                                expires_at: Some(if mode == 2 {
                                    prost_types::Timestamp {
                                        seconds: i64::MAX,
                                        nanos: 0,
                                    }
                                } else {
                                    ts(t + Duration::from_secs(600))
                                }),
                            },
                        )))
                    });
                    Grpc::new(tonic_prost::ProstCodec::default())
                        .unary(issue, request)
                        .await
                }
                "/tokenauthority.v1.TokenAuthority/WatchKeys" => {
                    me.watch_calls.fetch_add(1, Ordering::SeqCst);
                    let script = me.watches.lock().unwrap().pop_front();
                    let watch =
                        tower::service_fn(move |_: tonic::Request<pb::WatchKeysRequest>| {
                            let script = script.clone();
                            async move {
                                let Some(script) = script else {
                                    return Err(Status::unavailable("draining"));
                                };
                                let (tx, rx) = tokio::sync::mpsc::channel(16);
                                tokio::spawn(async move {
                                    for (delay, message) in script.messages {
                                        tokio::time::sleep(delay).await;
                                        if tx.send(Ok(message)).await.is_err() {
                                            return;
                                        }
                                    }
                                    if !script.end {
                                        std::future::pending::<()>().await;
                                    }
                                });
                                let stream: WatchStream =
                                    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
                                Ok(tonic::Response::new(stream))
                            }
                        });
                    Grpc::new(tonic_prost::ProstCodec::default())
                        .server_streaming(watch, request)
                        .await
                }
                _ => Status::unimplemented("no").into_http(),
            })
        })
    }
}

async fn start(stand: Stand) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(stand)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// A tiny HTTP/1.1 server: `/.well-known/jwks.json` answers `body` (counted in `fetches`),
/// anything else 404.
async fn http_jwks_counted(body: String, fetches: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let body = body.clone();
            let fetches = Arc::clone(&fetches);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let answer = if request.starts_with("GET /.well-known/jwks.json") {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                        body.len(),
                        body
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .into()
                };
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

/// Two keys, `k-old` and `k-new`, and the JWKS with both and with `k-new` alone.
struct Keys {
    old: Signer,
    new: Signer,
    both: String,
    only_new: String,
}

fn keys() -> Keys {
    let (old, new) = (signer("k-old"), signer("k-new"));
    let (both, only_new) = (jwks(&[&old, &new]), jwks(&[&new]));
    Keys {
        old,
        new,
        both,
        only_new,
    }
}

/// Waits until `done`, checking every 20 ms; fails with `why` after `seconds`.
async fn until(seconds: u64, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", why());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A listener that accepts connections and never answers on them.
async fn black_hole() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            held.push(socket);
        }
    });
    addr
}

fn verdict(verifier: &Verifier, token: &str) -> Result<String, Reason> {
    verifier.verify(token).map(|v| v.kid).map_err(|r| r.reason)
}

/// A key a push reported revoked stays revoked when the stream is down and the HTTP JWKS
/// still lists it (a cache serving `stale-if-error`, a lagging replica, a replayed answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_http_jwks_does_not_bring_a_revoked_key_back() {
    let Keys {
        old,
        new,
        both,
        only_new,
    } = keys();
    let stand = Stand::default();
    stand.watches.lock().unwrap().push_back(Script {
        messages: vec![
            (Duration::ZERO, key_set(&both, &[], secs(30))),
            (
                Duration::from_millis(500),
                key_set(&only_new, &["k-old"], secs(30)),
            ),
        ],
        end: true,
    });
    let channel = start(stand.clone()).await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let url = http_jwks_counted(both.clone(), Arc::clone(&fetches)).await; // the stale copy
    let settings = VerifierSettings {
        jwks_url: Some(url),
        ..VerifierSettings::new(ISS)
    };
    let verifier = Verifier::connect(channel, settings).await.unwrap();
    let token = access_token(&old);
    assert_eq!(verdict(&verifier, &token), Ok("k-old".into()));
    // The stream ends after the revocation; the polling then fetches the stale JWKS.
    until(
        20,
        || fetches.load(Ordering::SeqCst) > 0,
        || "the JWKS was never fetched".into(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(verdict(&verifier, &token), Err(Reason::RevokedKey));
    // The key the stale set lists beside it still verifies.
    assert_eq!(verdict(&verifier, &access_token(&new)), Ok("k-new".into()));
}

/// A reconnect to a replica that has not seen a revocation yet (or a database restored from
/// before it) pushes a set that lists the key as current: it stays revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_from_a_lagging_replica_does_not_bring_a_revoked_key_back() {
    let Keys {
        old,
        new,
        both,
        only_new,
    } = keys();
    let stand = Stand::default();
    stand.watches.lock().unwrap().push_back(Script {
        messages: vec![
            (Duration::ZERO, key_set(&both, &[], secs(30))),
            (
                Duration::from_millis(300),
                key_set(&only_new, &["k-old"], secs(30)),
            ),
        ],
        end: true,
    });
    stand.watches.lock().unwrap().push_back(Script {
        messages: vec![(Duration::ZERO, key_set(&both, &[], secs(30)))],
        end: false,
    });
    let channel = start(stand.clone()).await;
    let verifier = Verifier::connect(channel, VerifierSettings::new(ISS))
        .await
        .unwrap();
    let token = access_token(&old);
    until(
        20,
        || stand.watch_calls.load(Ordering::SeqCst) >= 2,
        || "the stream was not reopened".into(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(verdict(&verifier, &token), Err(Reason::RevokedKey));
    assert_eq!(verdict(&verifier, &access_token(&new)), Ok("k-new".into()));
}

/// A JWKS URL that accepts and never answers (each fetch takes its whole timeout) does not
/// hold up the stream's reconnect: a revocation pushed on the reopened stream arrives after
/// the reconnect's backoff, not after the fetches' timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_jwks_url_does_not_hold_up_the_streams_reconnect() {
    let Keys {
        old,
        new: _,
        both,
        only_new,
    } = keys();
    let stand = Stand::default();
    stand.watches.lock().unwrap().push_back(Script {
        messages: vec![(Duration::ZERO, key_set(&both, &[], secs(30)))],
        end: true,
    });
    stand.watches.lock().unwrap().push_back(Script {
        messages: vec![(Duration::ZERO, key_set(&only_new, &["k-old"], secs(30)))],
        end: false,
    });
    let channel = start(stand.clone()).await;
    let settings = VerifierSettings {
        jwks_url: Some(format!(
            "http://{}/.well-known/jwks.json",
            black_hole().await
        )),
        ..VerifierSettings::new(ISS)
    };
    let verifier = Verifier::connect(channel, settings).await.unwrap();
    let token = access_token(&old);
    // The fetch timeout alone is 10 s; the reconnect's backoff is 100 ms.
    until(8, || verdict(&verifier, &token).is_err(), || format!("the revocation on the reopened stream waited behind the hung JWKS fetch ({} WatchKeys calls)",
            stand.watch_calls.load(Ordering::SeqCst))).await;
    assert_eq!(verdict(&verifier, &token), Err(Reason::RevokedKey));
}

/// A keepalive interval out of range (here one that would overflow when doubled) neither
/// stops the background task nor freezes the key set: the stream is reopened and the next
/// push applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_out_of_range_does_not_stop_the_watch() {
    let Keys {
        old,
        new: _,
        both,
        only_new,
    } = keys();
    let stand = Stand::default();
    let huge = prost_types::Duration {
        seconds: i64::MAX,
        nanos: i32::MAX,
    };
    stand.watches.lock().unwrap().push_back(Script {
        messages: vec![
            (Duration::ZERO, key_set(&both, &[], secs(30))),
            (Duration::from_millis(300), key_set(&both, &[], huge)),
        ],
        end: true,
    });
    stand.watches.lock().unwrap().push_back(Script {
        messages: vec![(Duration::ZERO, key_set(&only_new, &["k-old"], secs(30)))],
        end: false,
    });
    let channel = start(stand.clone()).await;
    let verifier = Verifier::connect(channel, VerifierSettings::new(ISS))
        .await
        .unwrap();
    let token = access_token(&old);
    until(
        20,
        || verdict(&verifier, &token).is_err(),
        || {
            format!(
                "the watch stopped ({} WatchKeys calls)",
                stand.watch_calls.load(Ordering::SeqCst)
            )
        },
    )
    .await;
    assert_eq!(verdict(&verifier, &token), Err(Reason::RevokedKey));
    assert_eq!(stand.watch_calls.load(Ordering::SeqCst), 2);
}

/// An authority that accepts the connection and never answers: `token()` and an exchange
/// end with DEADLINE_EXCEEDED after the call timeout (10 s) instead of hanging, and callers
/// queued behind the call are released with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_an_authority_that_never_answers_end_at_their_timeout() {
    let addr = black_hole().await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let source = TokenSource::new(
        channel.clone(),
        TokenRequest::default(),
        Credentials::Channel,
    );
    let mut callers = Vec::new();
    for _ in 0..5 {
        let source = source.clone();
        callers.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(40), source.token()).await
        }));
    }
    for caller in callers {
        match caller.await.unwrap().expect("token() hung") {
            Err(ClientError::Rpc(status)) => assert!(timed_out(&status), "{status:?}"),
            // Another caller's attempt, ended by whichever timeout came first.
            Err(ClientError::Shared(shared)) => assert!(
                shared.contains("Timeout expired") || shared.contains("did not answer within"),
                "{shared}"
            ),
            other => panic!("{other:?}"),
        }
    }
    let verifier = Verifier::with_keys(
        KeySet::from_jwks(jwks(&[&signer("k")]).as_bytes(), String::new()).unwrap(),
        VerifierSettings::new(ISS),
    );
    let exchanger = TxnExchanger::new(channel, Credentials::Channel, verifier, "td");
    let outcome = tokio::time::timeout(
        Duration::from_secs(40),
        exchanger.exchange("x.y.z", &Default::default()),
    )
    .await
    .expect("the exchange hung");
    match outcome {
        Err(ClientError::Rpc(status)) => assert!(timed_out(&status), "{status:?}"),
        other => panic!("{other:?}"),
    }
}

/// The call's timeout, as tonic's channel ends it (the `grpc-timeout` it sent), or as the
/// client's own backstop does.
fn timed_out(status: &Status) -> bool {
    matches!(
        (status.code(), status.message()),
        (tonic::Code::Cancelled, "Timeout expired") | (tonic::Code::DeadlineExceeded, _)
    )
}

/// A callee that refuses every token (its clock behind, a wrong audience): each refusal
/// invalidates the token, and the source still makes at most one IssueToken a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_every_token_makes_at_most_one_issue_token_a_second() {
    let stand = Stand::default();
    let channel = start(stand.clone()).await;
    let source = TokenSource::new(channel, TokenRequest::default(), Credentials::Channel);
    let started = std::time::Instant::now();
    let mut refusals = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let token = source.token().await.unwrap();
        source.invalidate(&token);
        refusals += 1;
    }
    let calls = stand.issue_calls.load(Ordering::SeqCst);
    // At 0, 1, 2 s, and one more when the loop ends just after a fetch began.
    assert!(
        calls <= 4,
        "{refusals} refusals in 2.5 s made {calls} IssueToken calls"
    );
    assert!(refusals >= 3, "{refusals}");
}

/// Request-driven callers while the authority answers UNAVAILABLE: at most one IssueToken a
/// second, whatever the number of callers and calls; each caller gets the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_of_a_failing_authority_make_at_most_one_issue_token_a_second() {
    let stand = Stand::default();
    stand.issue_mode.store(1, Ordering::SeqCst);
    let channel = start(stand.clone()).await;
    let source = TokenSource::new(channel, TokenRequest::default(), Credentials::Channel);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let source = source.clone();
        tasks.push(tokio::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_millis(2500);
            let mut failures = 0;
            while std::time::Instant::now() < until {
                if source.token().await.is_err() {
                    failures += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            failures
        }));
    }
    let mut failures = 0;
    for task in tasks {
        failures += task.await.unwrap();
    }
    let calls = stand.issue_calls.load(Ordering::SeqCst);
    assert!(
        calls <= 4,
        "{failures} failed token() made {calls} IssueToken calls"
    );
    assert!(failures >= 4, "{failures}");
}

/// `Debug` of the types that hold a secret or a token shows neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_shows_no_secret_and_no_token() {
    let stand = Stand::default();
    let channel = start(stand.clone()).await;
    let secret = "S3CR3T-client-secret";
    let source = TokenSource::new(
        channel.clone(),
        TokenRequest::default(),
        Credentials::ClientSecret {
            id: "orders".into(),
            secret: secret.into(),
        },
    );
    let token = source.token().await.unwrap();
    let k = signer("k");
    let verifier = Verifier::with_keys(
        KeySet::from_jwks(jwks(&[&k]).as_bytes(), String::new()).unwrap(),
        VerifierSettings::new(ISS),
    );
    let n = now();
    let claims = serde_json::json!({"iss": ISS, "sub": "alice", "aud": "td", "txn": "t1", "iat": n, "exp": n + 60});
    let txn = sign_as(&k, TokenType::Txn, claims.as_object().unwrap(), 8192).unwrap();
    let verified = verifier.verify_txn(&txn, "td").unwrap();
    let exchanger = TxnExchanger::new(
        channel,
        Credentials::ClientSecret {
            id: "edge".into(),
            secret: secret.into(),
        },
        verifier,
        "td",
    );
    let shown = [
        format!("{source:?}"),
        format!(
            "{:?}",
            token_authority_client::interceptor::AttachToken::new(source.clone())
        ),
        format!("{verified:?}"),
        format!("{exchanger:?}"),
    ];
    for shown in &shown {
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains(&token), "{shown}");
        assert!(!shown.contains(&txn), "{shown}");
        assert!(!shown.contains(txn.split('.').nth(2).unwrap()), "{shown}");
    }
    // What they show is still of use.
    assert!(
        shown[0].contains("orders") && shown[3].contains("edge"),
        "{shown:?}"
    );
    assert!(shown[2].contains("t1"), "{}", shown[2]);
}

/// Access, Txn and status-list tokens do not stand for each other.
#[tokio::test]
async fn token_types_do_not_stand_for_each_other() {
    let k = signer("k");
    let verifier = Verifier::with_keys(
        KeySet::from_jwks(jwks(&[&k]).as_bytes(), String::new()).unwrap(),
        VerifierSettings::new(ISS),
    );
    let n = now();
    let txn_claims = serde_json::json!({"iss": ISS, "sub": "alice", "aud": "td", "txn": "t1", "iat": n, "exp": n + 60});
    let txn = sign_as(&k, TokenType::Txn, txn_claims.as_object().unwrap(), 8192).unwrap();
    let access = sign_as(&k, TokenType::Access, txn_claims.as_object().unwrap(), 8192).unwrap();
    let list_claims = serde_json::json!({"iss": ISS, "sub": "https://token-authority.test/statuslists/1", "iat": n, "exp": n + 60, "status_list": {"bits": 1, "lst": "eNrbuRgAAhcBXQ"}});
    let list = sign_as(
        &k,
        TokenType::StatusList,
        list_claims.as_object().unwrap(),
        8192,
    )
    .unwrap();
    let reason = |result: Result<(), token_authority_client::Rejection>| result.unwrap_err().reason;
    assert_eq!(
        reason(verifier.verify(&txn).map(drop)),
        Reason::WrongTokenType
    );
    assert_eq!(
        reason(verifier.verify(&list).map(drop)),
        Reason::UnsupportedHeader
    );
    assert_eq!(
        reason(verifier.verify_txn(&access, "td").map(drop)),
        Reason::WrongTokenType
    );
    assert_eq!(
        reason(verifier.verify_txn(&list, "td").map(drop)),
        Reason::WrongTokenType
    );
}
