//! A trusted issuer reached the way an in-cluster authority reaches the Kubernetes API
//! server: OIDC discovery over HTTPS, the issuer's certificate trusted through `ca_file`,
//! and every fetch carrying the bearer token of `bearer_token_file`. The issuer here is a
//! small HTTPS server of the test's own that refuses any request without that token.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tonic::Code;

use crate::{
    callers::{ask, issue_as, payload, start_with_policy, Issuer, PAYMENTS_SA},
    helpers::{now, DataDir},
    pki::Pki,
};

const SA_TOKEN: &str = "projected-token-of-the-authority";

/// What a test HTTPS server saw: each request's path and `authorization` header.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, Option<String>)>>,
}

impl Seen {
    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.requests.lock().unwrap().clone()
    }

    fn with_token(&self) -> usize {
        self.requests()
            .iter()
            .filter(|(_, auth)| auth.as_deref() == Some(format!("Bearer {SA_TOKEN}").as_str()))
            .count()
    }

    fn without_token(&self) -> usize {
        self.requests().len() - self.with_token()
    }
}

/// One answer of a test server: status, `location` header (for redirects), body.
type Route = (u16, Option<String>, String);

/// An HTTPS server on 127.0.0.1 with `pki`'s server certificate, answering `routes` by path
/// (404 otherwise), and only to requests bearing `SA_TOKEN` when `require_token` (401
/// otherwise). Returns its origin (`https://127.0.0.1:PORT`).
async fn serve_https(
    pki: &Pki,
    routes: impl Fn(&str) -> HashMap<&'static str, Route> + Send + Sync + 'static,
    require_token: bool,
    seen: Arc<Seen>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("https://{}", listener.local_addr().unwrap());
    let identity = pki.server(&["127.0.0.1"]);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let routes = Arc::new(routes(&origin));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let (routes, seen) = (Arc::clone(&routes), Arc::clone(&seen));
            let service = service_fn(move |request: Request<Incoming>| {
                let authorization = request
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                let path = request.uri().path().to_owned();
                let authorized = authorization.as_deref() == Some(&format!("Bearer {SA_TOKEN}"));
                seen.requests
                    .lock()
                    .unwrap()
                    .push((path.clone(), authorization));
                let (status, location, body) = match routes.get(path.as_str()) {
                    _ if require_token && !authorized => (401, None, String::new()),
                    Some(route) => route.clone(),
                    None => (404, None, String::new()),
                };
                let mut response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json");
                if let Some(location) = location {
                    response = response.header("location", location);
                }
                async move { Ok::<_, Infallible>(response.body(Full::new(Bytes::from(body))).unwrap()) }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tls), service));
        }
    });
    origin
}

/// Serves `{iss}/.well-known/openid-configuration` (naming `{iss}/keys`) and `{iss}/keys`
/// to requests bearing `SA_TOKEN` only. Returns the issuer URL.
async fn serve_issuer(pki: &Pki, jwks: String, seen: Arc<Seen>) -> String {
    let routes = move |iss: &str| {
        let discovery =
            serde_json::json!({ "issuer": iss, "jwks_uri": format!("{iss}/keys") }).to_string();
        HashMap::from([
            ("/.well-known/openid-configuration", (200, None, discovery)),
            ("/keys", (200, None, jwks.clone())),
        ])
    };
    serve_https(pki, routes, true, seen).await
}

fn policy(iss: &str, ca_file: &std::path::Path, token_file: &std::path::Path) -> String {
    policy_with(iss, "discovery = true", ca_file, token_file)
}

/// The policy with `source` (`discovery = true` or `jwks_uri = "..."`).
fn policy_with(
    iss: &str,
    source: &str,
    ca_file: &std::path::Path,
    token_file: &std::path::Path,
) -> String {
    format!(
        r#"
[[issuer]]
name = "cluster"
issuer = "{iss}"
{source}
ca_file = "{}"
bearer_token_file = "{}"
audiences = ["token-authority"]

[[rule]]
callers = ["system:serviceaccount:payments:*"]
audiences = ["ledger"]
"#,
        ca_file.display(),
        token_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_over_https_with_the_ca_file_and_the_bearer_token_file() {
    // The keys: those of another authority whose signing key the test holds.
    let keys = Issuer::start().await;
    let jwks = keys.server.http_jwks().await.to_string();
    let pki = Pki::new();
    let seen = Arc::new(Seen::default());
    let iss = serve_issuer(&pki, jwks, Arc::clone(&seen)).await;

    let dir = DataDir::new();
    let secrets = tempfile::tempdir().unwrap();
    let ca_file = pki.write_ca(secrets.path(), "issuer-ca");
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, format!("{SA_TOKEN}\n")).unwrap();
    let (server, _) = start_with_policy(&dir, &policy(&iss, &ca_file, &token_file), &[]).await;
    let t = now();
    let caller_token = keys.key.forge(
        &keys.key.header(),
        &format!(
            r#"{{"iss":"{iss}","sub":"{PAYMENTS_SA}","aud":"token-authority","iat":{t},"exp":{}}}"#,
            t + 600
        ),
    );
    let issued = issue_as(
        &server,
        Some(&format!("Bearer {caller_token}")),
        ask(PAYMENTS_SA, &["ledger"], None, ""),
    )
    .await
    .expect("a caller of the discovered issuer");
    assert_eq!(payload(&issued.token)["sub"], PAYMENTS_SA);
    // Discovery, then the keys: every request carried the token, none went without.
    assert!(seen.with_token() >= 2);
    assert_eq!(seen.without_token(), 0);
    server.stop().await;

    // The same issuer behind a CA the authority was not told to trust: its keys never load
    // and its callers are refused.
    let other_dir = DataDir::new();
    let wrong_ca = Pki::named("another CA").write_ca(secrets.path(), "wrong-ca");
    let (server, _) =
        start_with_policy(&other_dir, &policy(&iss, &wrong_ca, &token_file), &[]).await;
    let status = issue_as(
        &server,
        Some(&format!("Bearer {caller_token}")),
        ask(PAYMENTS_SA, &["ledger"], None, ""),
    )
    .await
    .expect_err("an issuer whose certificate is not trusted");
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "bearer token: its kid is not a key of the issuer's JWKS"
        )
    );
    server.stop().await;
    keys.server.stop().await;
}

/// The bearer token of `bearer_token_file` goes only to the configured origin: the issuer's,
/// for discovery. A discovered `jwks_uri` on another origin (another port here; another host
/// on EKS and GKE) is fetched without it, and a redirect to another origin is not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_credential_goes_only_to_the_configured_origin() {
    let keys = Issuer::start().await;
    let jwks = keys.server.http_jwks().await.to_string();
    let pki = Pki::new();
    // The keys host: another origin, which needs no credential (a public JWKS).
    let keys_seen = Arc::new(Seen::default());
    let keys_origin = serve_https(
        &pki,
        move |_| HashMap::from([("/keys", (200, None, jwks.clone()))]),
        false,
        Arc::clone(&keys_seen),
    )
    .await;
    // The issuer: its discovery document names the keys host; /moved redirects there.
    let issuer_seen = Arc::new(Seen::default());
    let keys_url = format!("{keys_origin}/keys");
    let iss = serve_https(
        &pki,
        move |iss| {
            let discovery = serde_json::json!({ "issuer": iss, "jwks_uri": keys_url }).to_string();
            HashMap::from([
                ("/.well-known/openid-configuration", (200, None, discovery)),
                ("/moved", (302, Some(keys_url.clone()), String::new())),
            ])
        },
        true,
        Arc::clone(&issuer_seen),
    )
    .await;

    let dir = DataDir::new();
    let secrets = tempfile::tempdir().unwrap();
    let ca_file = pki.write_ca(secrets.path(), "issuer-ca");
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, format!("{SA_TOKEN}\n")).unwrap();
    let t = now();
    let caller_token = keys.key.forge(
        &keys.key.header(),
        &format!(
            r#"{{"iss":"{iss}","sub":"{PAYMENTS_SA}","aud":"token-authority","iat":{t},"exp":{}}}"#,
            t + 600
        ),
    );
    let bearer = format!("Bearer {caller_token}");

    let (server, _) = start_with_policy(&dir, &policy(&iss, &ca_file, &token_file), &[]).await;
    let issued = issue_as(
        &server,
        Some(&bearer),
        ask(PAYMENTS_SA, &["ledger"], None, ""),
    )
    .await
    .expect("a caller of the discovered issuer");
    assert_eq!(payload(&issued.token)["sub"], PAYMENTS_SA);
    let token = Some(format!("Bearer {SA_TOKEN}"));
    assert_eq!(
        issuer_seen.requests(),
        [(
            "/.well-known/openid-configuration".to_owned(),
            token.clone()
        )]
    );
    assert_eq!(keys_seen.requests(), [("/keys".to_owned(), None)]);
    server.stop().await;

    // A configured jwks_uri that redirects to another origin: not followed, so the keys host
    // hears nothing (with or without the credential) and the fetch fails.
    let moved_dir = DataDir::new();
    let moved = policy_with(
        &iss,
        &format!("jwks_uri = \"{iss}/moved\""),
        &ca_file,
        &token_file,
    );
    let (server, _) = start_with_policy(&moved_dir, &moved, &[]).await;
    let status = issue_as(
        &server,
        Some(&bearer),
        ask(PAYMENTS_SA, &["ledger"], None, ""),
    )
    .await
    .expect_err("keys behind a redirect");
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "bearer token: its kid is not a key of the issuer's JWKS"
        )
    );
    assert_eq!(
        issuer_seen.requests()[1..],
        [
            ("/moved".to_owned(), token.clone()),
            ("/moved".to_owned(), token)
        ]
    );
    assert_eq!(keys_seen.requests().len(), 1);
    server.stop().await;
    keys.server.stop().await;
}
