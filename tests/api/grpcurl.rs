//! The admin's tool: the real grpcurl, discovering the API by reflection.

use std::process::{Command, Output};

use crate::helpers::{DataDir, TestServer, TlsSetup, ADMIN_TOKEN};

fn run(args: &[&str]) -> Output {
    Command::new(crate::tools::grpcurl())
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

// grpcurl runs as a blocking child process: a second worker keeps the server answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_discovers_and_drives_the_api() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    let addr = server.grpc_addr.to_string();
    let auth = format!("authorization: Bearer {ADMIN_TOKEN}");

    let services = ok(&["-plaintext", &addr, "list"]);
    assert!(
        services.contains("tokenauthority.v1.TokenAuthority"),
        "{services}"
    );
    assert!(services.contains("grpc.health.v1.Health"), "{services}");
    let methods = ok(&[
        "-plaintext",
        &addr,
        "list",
        "tokenauthority.v1.TokenAuthority",
    ]);
    for method in [
        "IssueToken",
        "VerifyToken",
        "GetJwks",
        "RotateKeys",
        "ListKeys",
    ] {
        assert!(
            methods.contains(&format!("tokenauthority.v1.TokenAuthority.{method}")),
            "{methods}"
        );
    }
    let described = ok(&[
        "-plaintext",
        &addr,
        "describe",
        "tokenauthority.v1.IssueTokenRequest",
    ]);
    assert!(described.contains("claims_json"), "{described}");

    let health = ok(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    // The README's check of the keystore's health (a single authority is always in step).
    let keystore = ok(&[
        "-plaintext",
        "-d",
        r#"{"service":"keystore"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(keystore.contains("\"SERVING\""), "{keystore}");

    let issued: serde_json::Value = serde_json::from_str(&ok(&[
        "-plaintext", "-d", r#"{"subject":"billing","audience":["ledger"],"ttl":"300s","claims_json":"{\"tenant\":\"acme\"}"}"#,
        &addr, "tokenauthority.v1.TokenAuthority/IssueToken",
    ]))
    .unwrap();
    let token = issued["token"].as_str().unwrap();
    let verify_body = serde_json::json!({ "token": token, "audience": "ledger" }).to_string();
    let verdict: serde_json::Value = serde_json::from_str(&ok(&[
        "-plaintext",
        "-d",
        &verify_body,
        &addr,
        "tokenauthority.v1.TokenAuthority/VerifyToken",
    ]))
    .unwrap();
    assert_eq!(verdict["valid"], true, "{verdict}");

    let listed = ok(&[
        "-plaintext",
        "-H",
        &auth,
        &addr,
        "tokenauthority.v1.TokenAuthority/ListKeys",
    ]);
    assert!(listed.contains("KEY_STATE_CURRENT"), "{listed}");
    // Right after the first start the next key has not been published for the lead yet.
    let early = run(&[
        "-plaintext",
        "-H",
        &auth,
        &addr,
        "tokenauthority.v1.TokenAuthority/RotateKeys",
    ]);
    assert_eq!(early.status.code(), Some(64 + 9), "{early:?}");
    assert!(String::from_utf8_lossy(&early.stderr).contains("set force"));
    let rotated: serde_json::Value = serde_json::from_str(&ok(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"force":true}"#,
        &addr,
        "tokenauthority.v1.TokenAuthority/RotateKeys",
    ]))
    .unwrap();
    assert_eq!(rotated["previousKeyId"], issued["keyId"], "{rotated}");
    let revoke_body =
        serde_json::json!({ "key_id": issued["keyId"], "reason": "drill" }).to_string();
    let revoked = ok(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        &revoke_body,
        &addr,
        "tokenauthority.v1.TokenAuthority/RevokeKey",
    ]);
    assert!(
        revoked.contains("KEY_STATE_REVOKED") && revoked.contains("drill"),
        "{revoked}"
    );

    // Errors are readable: the code and the message, exit status 64 + code.
    let denied = run(&[
        "-plaintext",
        &addr,
        "tokenauthority.v1.TokenAuthority/RotateKeys",
    ]);
    assert_eq!(denied.status.code(), Some(64 + 16));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("Unauthenticated") && stderr.contains("authorization: Bearer"),
        "{stderr}"
    );
    let bad = run(&[
        "-plaintext",
        "-d",
        r#"{"subject":""}"#,
        &addr,
        "tokenauthority.v1.TokenAuthority/IssueToken",
    ]);
    assert_eq!(bad.status.code(), Some(64 + 3));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("subject: is required"),
        "{stderr}"
    );
    server.stop().await;
}

/// The README's TLS commands as written: the server on every address (not loopback) with
/// no policy, so IssueToken takes the admin token; `-cacert` alone, and `-cert/-key` for mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_runs_the_readme_tls_commands() {
    let dir = DataDir::new();
    let mut tls = TlsSetup::new();
    // The harness reaches the server at its bound address, 0.0.0.0: name it too.
    (tls.cert, tls.key) = tls
        .pki
        .server(&["localhost", "127.0.0.1", "0.0.0.0"])
        .write(tls.dir.path(), "server-any");
    let server = tls
        .start(
            &dir,
            true,
            &["--grpc-listen", "0.0.0.0:0", "--http-listen", "0.0.0.0:0"],
        )
        .await;
    let addr = format!("127.0.0.1:{}", server.grpc_addr.port());
    let auth = format!("authorization: Bearer {ADMIN_TOKEN}");
    let ca = tls.pki.write_ca(tls.dir.path(), "ca");
    let ca = ca.to_str().unwrap();
    let client = tls
        .pki
        .client(Some("spiffe://cluster.local/ns/ops/sa/grpcurl"), None);
    let (cert, key) = client.write(tls.dir.path(), "client");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    let health = ok(&["-cacert", ca, &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    let issue = |auth: Option<&str>| {
        let mut args = vec!["-cacert", ca];
        if let Some(auth) = auth {
            args.extend(["-H", auth]);
        }
        args.extend([
            "-d",
            r#"{"subject":"billing","audience":["ledger"]}"#,
            &addr,
            "tokenauthority.v1.TokenAuthority/IssueToken",
        ]);
        run(&args)
    };
    // Without the admin token it is refused, saying what would do.
    let refused = issue(None);
    assert_eq!(refused.status.code(), Some(64 + 16), "{refused:?}");
    let issued = issue(Some(&auth));
    assert!(issued.status.success(), "{issued:?}");
    let issued: serde_json::Value = serde_json::from_slice(&issued.stdout).unwrap();
    assert!(
        issued["token"].as_str().unwrap().starts_with("ey"),
        "{issued}"
    );
    let jwks = ok(&[
        "-cacert",
        ca,
        "-cert",
        cert,
        "-key",
        key,
        &addr,
        "tokenauthority.v1.TokenAuthority/GetJwks",
    ]);
    assert!(jwks.contains(issued["keyId"].as_str().unwrap()), "{jwks}");

    // What fails, and how grpcurl says it. (A certificate from another CA is not even sent:
    // Go offers only one issued by a CA the server names, and connects without one.)
    let expired = tls
        .pki
        .client_expired(Some("spiffe://cluster.local/ns/ops/sa/grpcurl"), None);
    let (bad_cert, bad_key) = expired.write(tls.dir.path(), "expired");
    let (bad_cert, bad_key) = (bad_cert.to_str().unwrap(), bad_key.to_str().unwrap());
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "server CA not trusted",
            vec![&addr, "grpc.health.v1.Health/Check"],
            "certificate signed by unknown authority",
        ),
        (
            "plaintext to a TLS port",
            vec!["-plaintext", &addr, "grpc.health.v1.Health/Check"],
            "Failed to dial target host",
        ),
        (
            "expired client certificate",
            vec![
                "-cacert",
                ca,
                "-cert",
                bad_cert,
                "-key",
                bad_key,
                &addr,
                "grpc.health.v1.Health/Check",
            ],
            // The alert races Go's next write: "expired certificate" or a broken pipe; the
            // exact alert is asserted in tls.rs.
            "Failed to dial target host",
        ),
    ];
    for (name, args, expected) in cases {
        let output = run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: succeeded");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    server.stop().await;
}
