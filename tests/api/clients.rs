//! Real verifier clients, as teams run them, verifying our tokens from the HTTP JWKS URL
//! alone: PyJWT's PyJWKClient, Node's jose (createRemoteJWKSet), jsonwebtoken + jwks-rsa,
//! and Node by hand (jwk-to-pem + crypto.createVerify). Each verifies old and new tokens
//! across a rotation and rejects a tampered one, for every algorithm it supports.

use std::{io::Write as _, path::PathBuf, process::Stdio};

use serde_json::{json, Value};
use token_authority::pb;

use crate::{
    helpers::{config, DataDir, TestServer, TlsSetup},
    tools,
};

/// Runs a client script with the request on stdin; returns one verdict per token.
pub fn run_client(program: PathBuf, script: PathBuf, request: &Value) -> Vec<Value> {
    run_client_with(program, script, request, &[])
}

/// Like `run_client`, with extra environment variables.
fn run_client_with(
    program: PathBuf,
    script: PathBuf,
    request: &Value,
    env: &[(&str, &std::path::Path)],
) -> Vec<Value> {
    let mut child = std::process::Command::new(&program)
        .arg(&script)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// One real verifier: its name, the program and script that run it, the algorithms it
/// supports.
pub type VerifierClient = (&'static str, PathBuf, PathBuf, &'static [&'static str]);

/// The verifiers teams run, installed on first use: PyJWT, jose, jsonwebtoken + jwks-rsa,
/// and Node by hand.
pub fn verifier_clients() -> Vec<VerifierClient> {
    let node = PathBuf::from("node");
    let clients_dir = tokio::task::block_in_place(tools::node_clients);
    let python = tokio::task::block_in_place(tools::python);
    vec![
        (
            "PyJWT",
            python,
            clients_dir.join("pyjwt_verify.py"),
            &["RS256", "PS256", "ES256", "EdDSA"],
        ),
        (
            "jose",
            node.clone(),
            clients_dir.join("jose_verify.js"),
            &["RS256", "PS256", "ES256", "EdDSA"],
        ),
        (
            "jsonwebtoken + jwks-rsa",
            node.clone(),
            clients_dir.join("jwks_rsa_verify.js"),
            &["RS256", "PS256", "ES256"],
        ),
        (
            "by hand (jwk-to-pem)",
            node,
            clients_dir.join("by_hand_verify.js"),
            &["RS256"],
        ),
    ]
}

async fn issue(server: &TestServer, alg: &str, subject: &str) -> String {
    server
        .client
        .clone()
        .issue_token(pb::IssueTokenRequest {
            subject: subject.into(),
            audience: vec!["billing".into()],
            algorithm: alg.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

pub fn tamper(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&token_authority_jose::b64::decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = "admin".into();
    let forged = token_authority_jose::b64::encode(payload.to_string());
    format!("{}.{}.{}", parts[0], forged, parts[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_verify_across_a_rotation_and_reject_tampering() {
    let dir = DataDir::new();
    let server =
        TestServer::start_with(config(&dir, &["--algorithms", "RS256,PS256,ES256,EdDSA"])).await;
    let clients = verifier_clients();
    for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
        let old = issue(&server, alg, "before").await;
        server
            .client
            .clone()
            .rotate_keys(crate::helpers::admin(pb::RotateKeysRequest {
                force: true,
                algorithm: alg.into(),
            }))
            .await
            .unwrap();
        let new = issue(&server, alg, "after").await;
        let request = json!({
            "jwks_uri": server.url("/.well-known/jwks.json"),
            "issuer": server.issuer,
            "audience": "billing",
            "algorithms": [alg],
            "tokens": [old, new, tamper(&old)],
        });
        for (name, program, script, supported) in &clients {
            if !supported.contains(&alg) {
                continue;
            }
            let verdicts = tokio::task::block_in_place(|| {
                run_client(program.clone(), script.clone(), &request)
            });
            assert_eq!(verdicts.len(), 3, "{name} {alg}: {verdicts:?}");
            assert_eq!(
                verdicts[0],
                json!({"valid": true, "sub": "before"}),
                "{name} {alg}: old token"
            );
            assert_eq!(
                verdicts[1],
                json!({"valid": true, "sub": "after"}),
                "{name} {alg}: new token"
            );
            assert_eq!(
                verdicts[2]["valid"], false,
                "{name} {alg}: tampered token accepted"
            );
        }
    }
    server.stop().await;
}

/// The same clients fetch the JWKS over HTTPS, trusting the test CA the way each documents
/// it: PyJWKClient with an SSL context, Node with NODE_EXTRA_CA_CERTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_fetch_the_jwks_over_https_with_a_private_ca() {
    let dir = DataDir::new();
    let tls = TlsSetup::new();
    let server = tls.start(&dir, false, &[]).await;
    let ca_file = tls.dir.path().join("ca-for-clients.pem");
    std::fs::write(&ca_file, tls.pki.ca_pem()).unwrap();
    let node = PathBuf::from("node");
    let clients_dir = tokio::task::block_in_place(tools::node_clients);
    let python = tokio::task::block_in_place(tools::python);
    let token = issue(&server, "RS256", "over-https").await;
    let jwks_uri = server.url("/.well-known/jwks.json");
    assert!(jwks_uri.starts_with("https://"), "{jwks_uri}");
    let request = json!({
        "jwks_uri": jwks_uri,
        "issuer": server.issuer,
        "audience": "billing",
        "algorithms": ["RS256"],
        "tokens": [token, tamper(&token)],
        "ca_file": ca_file,
    });
    type Env<'a> = Vec<(&'a str, &'a std::path::Path)>;
    let clients: Vec<(&str, PathBuf, PathBuf, Env)> = vec![
        ("PyJWT", python, clients_dir.join("pyjwt_verify.py"), vec![]),
        (
            "jose",
            node.clone(),
            clients_dir.join("jose_verify.js"),
            vec![("NODE_EXTRA_CA_CERTS", &ca_file)],
        ),
        (
            "jsonwebtoken + jwks-rsa",
            node.clone(),
            clients_dir.join("jwks_rsa_verify.js"),
            vec![("NODE_EXTRA_CA_CERTS", &ca_file)],
        ),
        (
            "by hand (jwk-to-pem)",
            node,
            clients_dir.join("by_hand_verify.js"),
            vec![("NODE_EXTRA_CA_CERTS", &ca_file)],
        ),
    ];
    for (name, program, script, env) in &clients {
        let verdicts = tokio::task::block_in_place(|| {
            run_client_with(program.clone(), script.clone(), &request, env)
        });
        assert_eq!(
            verdicts,
            vec![
                json!({"valid": true, "sub": "over-https"}),
                verdicts[1].clone()
            ],
            "{name}"
        );
        assert_eq!(
            verdicts[1]["valid"], false,
            "{name}: tampered token accepted"
        );
    }
    // Without the CA, the JWKS cannot be fetched: the verdict says so, nothing is trusted.
    let mut untrusting = request.clone();
    untrusting.as_object_mut().unwrap().remove("ca_file");
    let (_, program, script, _) = &clients[0];
    let verdicts =
        tokio::task::block_in_place(|| run_client(program.clone(), script.clone(), &untrusting));
    assert_eq!(verdicts[0]["valid"], false, "{verdicts:?}");
    assert!(
        verdicts[0]["error"]
            .as_str()
            .unwrap()
            .contains("CERTIFICATE_VERIFY_FAILED"),
        "{verdicts:?}"
    );
    server.stop().await;
}
