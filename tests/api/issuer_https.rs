//! A trusted issuer reached the way an in-cluster authority reaches the Kubernetes API
//! server: OIDC discovery over HTTPS, the issuer's certificate trusted through `ca_file`,
//! and every fetch carrying the bearer token of `bearer_token_file`. The issuer here is a
//! small HTTPS server of the test's own that refuses any request without that token.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
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

/// What the issuer saw.
#[derive(Default)]
struct Seen {
    with_token: AtomicUsize,
    without_token: AtomicUsize,
}

/// Serves `{iss}/.well-known/openid-configuration` and `{iss}/keys` over HTTPS with `pki`'s
/// server certificate, to requests bearing `SA_TOKEN` only. Returns the issuer URL.
async fn serve_issuer(pki: &Pki, jwks: String, seen: Arc<Seen>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let iss = format!("https://{}", listener.local_addr().unwrap());
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
    let discovery =
        serde_json::json!({ "issuer": iss, "jwks_uri": format!("{iss}/keys") }).to_string();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let (jwks, discovery, seen) = (jwks.clone(), discovery.clone(), Arc::clone(&seen));
            let service = service_fn(move |request: Request<Incoming>| {
                let authorized = request
                    .headers()
                    .get("authorization")
                    .is_some_and(|v| v == format!("Bearer {SA_TOKEN}").as_str());
                let (status, body) = if !authorized {
                    seen.without_token.fetch_add(1, Ordering::SeqCst);
                    (401, String::new())
                } else {
                    seen.with_token.fetch_add(1, Ordering::SeqCst);
                    match request.uri().path() {
                        "/.well-known/openid-configuration" => (200, discovery.clone()),
                        "/keys" => (200, jwks.clone()),
                        _ => (404, String::new()),
                    }
                };
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tls), service));
        }
    });
    iss
}

fn policy(iss: &str, ca_file: &std::path::Path, token_file: &std::path::Path) -> String {
    format!(
        r#"
[[issuer]]
name = "cluster"
issuer = "{iss}"
discovery = true
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
    assert!(seen.with_token.load(Ordering::SeqCst) >= 2);
    assert_eq!(seen.without_token.load(Ordering::SeqCst), 0);
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
