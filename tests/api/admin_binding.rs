//! A rule's conditions apply to every RPC it grants, the admin RPCs included: an admin rule
//! with `bind = "mtls"` admits a caller only with its client certificate, whatever else
//! proves the same name. Every admin RPC, every kind of identity, both values of `bind`.

use token_authority::pb;
use token_authority_jose::crypto;
use tonic::{Code, Status};

use crate::{
    callers::{basic, hex, with_auth, Issuer, CLUSTER_ISS},
    helpers::{config, connect_tls, now, DataDir, TestServer, TlsSetup},
};

const OPS: &str = "spiffe://prod.example/ns/ops/sa/admin";
const SECRET: &str = "ops-secret-9876543210";

fn policy(jwks_uri: &str, bind: &str) -> String {
    let digest = hex(&crypto::sha256(SECRET.as_bytes()));
    format!(
        r#"
[[issuer]]
name = "spire"
issuer = "{CLUSTER_ISS}"
jwks_uri = "{jwks_uri}"
audiences = ["token-authority"]

[[client]]
id = "ops"
secret_sha256 = "{digest}"

[[rule]]
callers = ["spiffe://prod.example/ns/ops/*", "client:ops"]
subjects = ["nobody"]
admin = true
{bind}
"#
    )
}

/// The three admin RPCs, as `who` calls them; each answer as (code, message).
async fn admin_calls(
    client: &mut pb::token_authority_client::TokenAuthorityClient<tonic::transport::Channel>,
    authorization: Option<&str>,
) -> Vec<(&'static str, Result<(), (Code, String)>)> {
    let status = |result: Result<(), Status>| {
        result.map_err(|status| (status.code(), status.message().to_owned()))
    };
    let list = client
        .list_keys(with_auth(pb::ListKeysRequest {}, authorization))
        .await
        .map(drop);
    let rotate = client
        .rotate_keys(with_auth(
            pb::RotateKeysRequest {
                force: true,
                ..Default::default()
            },
            authorization,
        ))
        .await
        .map(drop);
    // A kid nobody has: NOT_FOUND once the caller is admitted, the refusal before.
    let revoke = match client
        .revoke_key(with_auth(
            pb::RevokeKeyRequest {
                key_id: "no-such-kid".into(),
                ..Default::default()
            },
            authorization,
        ))
        .await
    {
        Err(status) if status.code() == Code::NotFound => Ok(()),
        other => other.map(drop),
    };
    vec![
        ("ListKeys", status(list)),
        ("RotateKeys", status(rotate)),
        ("RevokeKey", status(revoke)),
    ]
}

#[tokio::test]
async fn admin_rules_bind_every_admin_rpc_for_every_identity_kind() {
    let issuer = Issuer::start().await;
    let svid = issuer.token(OPS, "token-authority", now() - 5, now() + 600);
    let bearer = format!("Bearer {svid}");
    let secret = basic("ops", SECRET);
    let unbound = |name: &str| {
        Err((
            Code::PermissionDenied,
            format!("caller \"{name}\" may call admin RPCs only with its client certificate: its admin rule binds to mtls, and the call presented none"),
        ))
    };
    for bind in ["", "bind = \"mtls\""] {
        let dir = DataDir::new();
        dir.create();
        let tls = TlsSetup::new();
        let policy_path = dir.path.parent().unwrap().join("policy.toml");
        std::fs::write(&policy_path, policy(&issuer.jwks_uri(), bind)).unwrap();
        let mut args = tls.args(true);
        args.extend(["--policy-file".into(), policy_path.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = TestServer::start_tls(config(&dir, &args), tls.client(None)).await;

        let mut with_certificate = connect_tls(
            server.grpc_addr,
            &tls.client(Some(tls.pki.client(Some(OPS), None))),
        )
        .await
        .unwrap();
        let mut without = server.client.clone();
        let bound = !bind.is_empty();
        let cases = [
            (
                "client certificate",
                admin_calls(&mut with_certificate, None).await,
                Ok(()),
            ),
            (
                "JWT-SVID, no certificate",
                admin_calls(&mut without, Some(&bearer)).await,
                if bound { unbound(OPS) } else { Ok(()) },
            ),
            (
                "client secret",
                admin_calls(&mut without, Some(&secret)).await,
                if bound { unbound("client:ops") } else { Ok(()) },
            ),
        ];
        for (kind, answers, expected) in cases {
            for (method, answer) in answers {
                assert_eq!(answer, expected, "{bind:?}, {kind}, {method}");
            }
        }
        if bound {
            // Each refusal is counted under the binding's label.
            let sample =
                r#"token_authority_caller_decisions_total{method="RotateKeys",outcome="cnf"}"#;
            assert_eq!(crate::helpers::metric(&server, sample).await, 2.0);
        }
        server.stop().await;
    }
}
