use token_authority::pb;
use tonic::{metadata::MetadataValue, Code, Request};

use crate::helpers::{DataDir, TestServer};

fn with_authorization<T>(message: T, value: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = value {
        let value: MetadataValue<_> = value.parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[tokio::test]
async fn admin_rpcs_need_the_admin_token() {
    let dir = DataDir::new();
    let server = TestServer::start(&dir).await;
    const NEEDED: &str = "admin RPCs need metadata `authorization: Bearer <admin token>`";
    const NOT_VALID: &str = "the admin token is not valid";
    // (case, authorization, the message every admin RPC answers with UNAUTHENTICATED)
    let cases = [
        ("missing", None, NEEDED),
        ("wrong token", Some("Bearer not-the-token"), NOT_VALID),
        ("prefix of the token", Some("Bearer test-admin"), NOT_VALID),
        (
            "wrong scheme",
            Some("Basic dGVzdDp0ZXN0"),
            "the client id or secret is not valid",
        ),
        (
            "no scheme",
            Some(crate::helpers::ADMIN_TOKEN),
            "authorization: unsupported scheme; use Bearer or Basic",
        ),
    ];
    for (name, value, message) in cases {
        let mut client = server.client.clone();
        let status = client
            .rotate_keys(with_authorization(pb::RotateKeysRequest::default(), value))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, message),
            "RotateKeys, {name}"
        );
        let status = client
            .list_keys(with_authorization(pb::ListKeysRequest {}, value))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, message),
            "ListKeys, {name}"
        );
        let status = client
            .revoke_key(with_authorization(
                pb::RevokeKeyRequest {
                    key_id: "x".into(),
                    reason: String::new(),
                },
                value,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, message),
            "RevokeKey, {name}"
        );
    }
    // Nothing rotated: still one current and one next.
    let jwks = server.http_jwks().await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn generated_admin_token_is_written_privately_and_works() {
    let dir = DataDir::new();
    // No --admin-token-file: the server generates one into the data directory.
    let data_dir = dir.path.display().to_string();
    let args = [
        "token-authority",
        "serve",
        "--data-dir",
        &data_dir,
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let token_authority::config::Command::Serve(args) =
        <token_authority::config::Cli as clap::Parser>::try_parse_from(args)
            .unwrap()
            .command
    else {
        unreachable!("serve was parsed")
    };
    let server =
        TestServer::start_with(token_authority::config::Config::try_from(args).unwrap()).await;
    let path = dir.path.join("admin-token");
    let token = std::fs::read_to_string(&path).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let listed = server
        .client
        .clone()
        .list_keys(with_authorization(
            pb::ListKeysRequest {},
            // The scheme is case-insensitive (RFC 7235).
            Some(&format!("bearer {}", token.trim())),
        ))
        .await
        .unwrap();
    assert_eq!(listed.into_inner().keys.len(), 2);
    server.stop().await;
}
