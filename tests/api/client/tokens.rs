//! `TokenSource` beyond the steady state: a token a callee refused, dropped with
//! `invalidate`; a credential refused because it was rotated between the read and the answer;
//! a projected token file rotated the way the kubelet does it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use token_authority_client::{Credentials, TokenRequest, TokenSource};
use tonic::Code;

use super::{channel, counter, request, rpc_error, verifier};
use crate::{
    callers::{policy_text, start_with_policy, Issuer, PAYMENTS_SA},
    helpers::{metric, now, DataDir, TestServer},
};

const ISSUED: &str = r#"token_authority_tokens_issued_total{algorithm="RS256"}"#;
/// Every IssueToken call the server answered, refused ones included.
const ISSUE_CALLS: &str = r#"token_authority_rpc_duration_seconds_count{method="IssueToken"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_a_refused_token_costs_one_issue_token_however_many_callers_do_it() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let source = TokenSource::new(channel(&server), request(None), Credentials::Channel);
    let refused = source.token().await.unwrap();
    let before = metric(&server, ISSUED).await;

    // A callee refused the token: a hundred callers drop it and ask again at once.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let source = source.clone();
        let refused = refused.clone();
        calls.spawn(async move {
            source.invalidate(&refused);
            source.token().await.unwrap()
        });
    }
    let tokens = calls.join_all().await;
    let fresh = tokens[0].clone();
    assert_ne!(fresh, refused);
    assert!(tokens.iter().all(|token| *token == fresh));
    assert_eq!(metric(&server, ISSUED).await - before, 1.0);

    // A late caller drops the old token again: the new one stays.
    source.invalidate(&refused);
    assert_eq!(source.cached_token().as_deref(), Some(fresh.as_str()));
    assert_eq!(source.token().await.unwrap(), fresh);
    assert_eq!(metric(&server, ISSUED).await - before, 1.0);

    // Nobody calls token(): the background task replaces a dropped token by itself, so a
    // synchronous reader (AttachToken) recovers.
    source.invalidate(&fresh);
    let started = Instant::now();
    let replaced = loop {
        match source.cached_token() {
            Some(token) if token != fresh => break token,
            _ => assert!(started.elapsed() < Duration::from_secs(5), "not replaced"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(metric(&server, ISSUED).await - before, 2.0);
    let local = verifier(&server).await;
    assert_eq!(local.verify(&replaced).unwrap().subject, "orders");
    server.stop().await;
}

/// An authority whose policy trusts `issuer` for service-account tokens.
async fn authority_for(issuer: &Issuer, dir: &DataDir) -> TestServer {
    start_with_policy(dir, &policy_text(&issuer.jwks_uri()), &[])
        .await
        .0
}

fn ask_as_payments() -> TokenRequest {
    TokenRequest {
        subject: PAYMENTS_SA.into(),
        audience: vec!["ledger".into()],
        ..TokenRequest::default()
    }
}

/// An expired service-account token, as the kubelet leaves it when it could not refresh.
fn expired(issuer: &Issuer) -> String {
    let t = now();
    issuer.token(PAYMENTS_SA, "token-authority", t - 3000, t - 120)
}

/// Waits until the server has answered `calls` IssueToken calls.
async fn wait_for_issue_calls(server: &TestServer, calls: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(server, ISSUE_CALLS).await < calls {
        assert!(Instant::now() < deadline, "no IssueToken call arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_credential_rotated_between_the_read_and_the_answer_is_read_again_and_sent_once_more() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let server = authority_for(&issuer, &dir).await;
    let before = counter(&server, ISSUE_CALLS).await;

    // A FIFO orders the reads: the first open of the "file" gets the expired token, the
    // next one the replacement, written only once the first was refused.
    let fifo = dir.path.parent().unwrap().join("sa-token");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let (go, wait) = std::sync::mpsc::channel::<String>();
    let writer = {
        let fifo = fifo.clone();
        let first = expired(&issuer);
        // A thread of its own: each open blocks until a reader opens the FIFO.
        std::thread::spawn(move || {
            std::fs::write(&fifo, first).unwrap();
            if let Ok(second) = wait.recv() {
                std::fs::write(&fifo, second).unwrap();
            }
        })
    };
    let source = TokenSource::new(
        channel(&server),
        ask_as_payments(),
        Credentials::BearerFile(fifo),
    );
    let fetch = tokio::spawn(async move { source.token().await });
    wait_for_issue_calls(&server, before + 1.0).await;
    go.send(issuer.good(PAYMENTS_SA) + "\n").unwrap();

    let token = fetch
        .await
        .unwrap()
        .expect("the retry with the new token failed");
    writer.join().unwrap();
    let local = verifier(&server).await;
    assert_eq!(local.verify(&token).unwrap().subject, PAYMENTS_SA);
    assert_eq!(counter(&server, ISSUE_CALLS).await - before, 2.0);
    server.stop().await;
    issuer.server.stop().await;
}

/// A projected volume as the kubelet writes it: `token -> ..data/token`, `..data -> <dir>`.
struct Projected {
    root: PathBuf,
    generation: u32,
}

impl Projected {
    fn new(root: &Path, token: &str) -> Projected {
        std::fs::create_dir(root).unwrap();
        let mut projected = Projected {
            root: root.to_owned(),
            generation: 0,
        };
        projected.update(token);
        std::os::unix::fs::symlink("..data/token", root.join("token")).unwrap();
        projected
    }

    /// The kubelet's atomic update: the new files in a new timestamped directory, a
    /// `..data_tmp` symlink to it renamed over `..data`, the old directory removed.
    fn update(&mut self, token: &str) {
        self.generation += 1;
        let name = format!(
            "..2026_11_26_00_00_{:02}.{}",
            self.generation,
            1000 + self.generation
        );
        std::fs::create_dir(self.root.join(&name)).unwrap();
        std::fs::write(self.root.join(&name).join("token"), token).unwrap();
        let old = std::fs::read_link(self.root.join("..data")).ok();
        std::os::unix::fs::symlink(&name, self.root.join("..data_tmp")).unwrap();
        std::fs::rename(self.root.join("..data_tmp"), self.root.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.root.join(old)).unwrap();
        }
    }

    fn token(&self) -> PathBuf {
        self.root.join("token")
    }
}

#[tokio::test]
async fn a_projected_token_swapped_in_by_the_kubelet_is_used_at_the_next_fetch() {
    let issuer = Issuer::start().await;
    let dir = DataDir::new();
    let server = authority_for(&issuer, &dir).await;
    let mut volume = Projected::new(&dir.path.parent().unwrap().join("sa"), &expired(&issuer));
    let source = TokenSource::new(
        channel(&server),
        ask_as_payments(),
        Credentials::BearerFile(volume.token()),
    );
    let before = counter(&server, ISSUE_CALLS).await;
    assert_eq!(
        rpc_error(source.token().await),
        (
            Code::Unauthenticated,
            "bearer token: the token has expired".to_owned()
        )
    );
    // Refused, and the file unchanged: the same token is not sent twice.
    assert_eq!(counter(&server, ISSUE_CALLS).await - before, 1.0);

    volume.update(&(issuer.good(PAYMENTS_SA) + "\n"));
    let token = source.token().await.unwrap();
    let local = verifier(&server).await;
    assert_eq!(local.verify(&token).unwrap().subject, PAYMENTS_SA);
    assert_eq!(counter(&server, ISSUE_CALLS).await - before, 2.0);

    // And back: a token that is refused again after the next swap shows the file is read
    // each time, not once.
    volume.update(&expired(&issuer));
    source.invalidate(&token);
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&server, ISSUE_CALLS).await - before < 3.0 {
        assert!(Instant::now() < deadline, "no fetch after the invalidation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(source.cached_token().is_none());
    server.stop().await;
    issuer.server.stop().await;
}
