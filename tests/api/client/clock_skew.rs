//! `TokenSource` against an authority whose clock the test sets: however far the two
//! clocks disagree, and however short the tokens, one IssueToken per refresh. The fake
//! authority answers IssueToken with `issued_at` = its clock, `expires_at` = that + ttl.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use token_authority::pb::{self, token_authority_server as server};
use token_authority_client::{Credentials, TokenRequest, TokenSource};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use crate::helpers::now;

/// An authority whose clock is `skew` seconds off this machine's, issuing `ttl`-second
/// tokens, counting its IssueToken calls.
struct SkewedAuthority {
    skew: i64,
    ttl: u64,
    calls: Arc<AtomicU64>,
}

type Empty = tokio_stream::Empty<Result<pb::WatchKeysResponse, Status>>;

#[tonic::async_trait]
impl server::TokenAuthority for SkewedAuthority {
    async fn issue_token(
        &self,
        _: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let issued_at = now().checked_add_signed(self.skew).unwrap();
        let at = |seconds: u64| prost_types::Timestamp {
            seconds: seconds as i64,
            nanos: 0,
        };
        Ok(Response::new(pb::IssueTokenResponse {
            token: format!("token-{n}"),
            key_id: "k".into(),
            jti: n.to_string(),
            issued_at: Some(at(issued_at)),
            expires_at: Some(at(issued_at + self.ttl)),
        }))
    }

    async fn verify_token(
        &self,
        _: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }

    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }

    type WatchKeysStream = Empty;

    async fn watch_keys(
        &self,
        _: Request<pb::WatchKeysRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }

    async fn exchange_token(
        &self,
        _: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::ExchangeTokenResponse>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }

    async fn rotate_keys(
        &self,
        _: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::RotateKeysResponse>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }

    async fn revoke_key(
        &self,
        _: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }

    async fn list_keys(
        &self,
        _: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }

    async fn set_token_status(
        &self,
        _: Request<pb::SetTokenStatusRequest>,
    ) -> Result<Response<pb::SetTokenStatusResponse>, Status> {
        Err(Status::unimplemented("not part of this test"))
    }
}

/// IssueToken calls while 100 tasks call `token()` for `run` (of tokio's time, paused by
/// the test: the runs pass in moments). The connections are in-memory pipes: on paused
/// time nothing may wait on the network, or time would jump ahead meanwhile.
async fn issue_calls(skew: i64, ttl: u64, run: Duration) -> u64 {
    let calls = Arc::new(AtomicU64::new(0));
    let authority = server::TokenAuthorityServer::new(SkewedAuthority {
        skew,
        ttl,
        calls: Arc::clone(&calls),
    });
    let (connections, incoming) = tokio::sync::mpsc::unbounded_channel();
    let served = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(authority)
            .serve_with_incoming(
                tokio_stream::wrappers::UnboundedReceiverStream::new(incoming)
                    .map(Ok::<_, std::io::Error>),
            ),
    );
    let channel = tonic::transport::Endpoint::from_static("http://in-memory.test")
        .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let sent = connections.send(server);
            async move {
                sent.map_err(|_| std::io::Error::other("the server stopped"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        }));
    let request = TokenRequest {
        subject: "svc".into(),
        audience: vec!["ledger".into()],
        ..TokenRequest::default()
    };
    let source = TokenSource::new(channel, request, Credentials::Channel);
    let deadline = tokio::time::Instant::now() + run;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let source = source.clone();
        tasks.spawn(async move {
            while tokio::time::Instant::now() < deadline {
                source.token().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    tasks.join_all().await;
    drop(source);
    served.abort();
    calls.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn one_issue_token_per_refresh_whatever_the_clocks_say() {
    // 60 s tokens, 3 s of calls: the first token serves throughout, in step or 50 s or
    // 70 s apart either way.
    for skew in [0, 50, -50, 70, -70] {
        assert_eq!(
            issue_calls(skew, 60, Duration::from_secs(3)).await,
            1,
            "authority clock {skew:+} s off"
        );
    }
    // 1 s tokens for 3 s: refreshed at 0.75 to 0.8 s of life, so at 0 s and then 3 or 4
    // times, not hundreds.
    for skew in [0, 50, -70] {
        let calls = issue_calls(skew, 1, Duration::from_secs(3)).await;
        assert!(
            (4..=5).contains(&calls),
            "{calls} calls, clock {skew:+} s off"
        );
    }
}
