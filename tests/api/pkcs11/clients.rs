//! Tokens signed in the token verify with what services run: PyJWT, jose (Node),
//! jsonwebtoken with jwks-rsa (Node) and Node by hand from the JWKS URL, and the client
//! crate's `Verifier`; a tampered one is refused by each. For every algorithm each supports.

use serde_json::json;
use token_authority::pb;
use token_authority_client::{Verifier, VerifierSettings};

use super::{args, signer_flags, softhsm, ALGORITHMS};
use crate::{
    clients::{run_client, tamper, verifier_clients},
    helpers::{config, endpoint, DataDir, TestServer},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_in_the_token_verify_with_pyjwt_jose_jwks_rsa_and_the_client_crate() {
    let label = softhsm::new_token("clients");
    let dir = DataDir::new();
    let flags = signer_flags(&dir, &label);
    let server = TestServer::start_with(config(&dir, &args(&flags))).await;
    let clients = verifier_clients();
    let verifier = Verifier::connect(
        endpoint(server.grpc_addr, None).connect_lazy(),
        VerifierSettings::new(server.issuer.clone()),
    )
    .await
    .unwrap();
    for alg in ALGORITHMS {
        let token = server
            .client
            .clone()
            .issue_token(pb::IssueTokenRequest {
                subject: format!("svc-{alg}"),
                audience: vec!["billing".into()],
                algorithm: alg.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let request = json!({
            "jwks_uri": server.url("/.well-known/jwks.json"),
            "issuer": server.issuer,
            "audience": "billing",
            "algorithms": [alg],
            "tokens": [token, tamper(&token)],
        });
        for (name, program, script, supported) in &clients {
            if !supported.contains(&alg) {
                continue;
            }
            let verdicts = tokio::task::block_in_place(|| {
                run_client(program.clone(), script.clone(), &request)
            });
            assert_eq!(
                verdicts[0],
                json!({"valid": true, "sub": format!("svc-{alg}")}),
                "{name} {alg}"
            );
            assert_eq!(verdicts[1]["valid"], false, "{name} {alg}: tampered");
        }
        let verified = verifier
            .verify_at(&token, Some("billing"), crate::helpers::now())
            .unwrap_or_else(|e| panic!("the client crate {alg}: {e:?}"));
        assert_eq!(verified.subject, format!("svc-{alg}"));
        assert!(verifier
            .verify_at(&tamper(&token), Some("billing"), crate::helpers::now())
            .is_err());
    }
    server.stop().await;
}
