//! Logs never carry a token, the admin token or key material, even at debug level and while
//! the server is fed hostile tokens.

use token_authority::pb;
use token_authority_jose::b64;

use crate::{
    binary::spawn_binary_logging,
    helpers::{admin, connect, now, DataDir, KnownKey, ADMIN_TOKEN},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_token_and_no_key_material() {
    let dir = DataDir::new();
    let key = KnownKey::seed(&dir);
    let mut process = tokio::task::block_in_place(|| {
        spawn_binary_logging(
            &dir,
            &["--issuer", "http://token-authority.test"],
            Some("debug"),
        )
    });
    let mut client = connect(&process.grpc).await;
    let t = now();
    let claims = format!(
        r#"{{"iss":"http://token-authority.test","sub":"svc","exp":{}}}"#,
        t + 300
    );
    let mut tokens: Vec<String> = Vec::new();
    for _ in 0..3 {
        let issued = client
            .issue_token(pb::IssueTokenRequest {
                subject: "svc".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(issued.token);
    }
    tokens.push(key.forge(&key.header(), &claims));
    let good = tokens[0].clone();
    let parts: Vec<&str> = good.split('.').collect();
    tokens.extend([
        format!(
            "{}.{}.{}",
            parts[0],
            b64::encode(r#"{"sub":"admin"}"#),
            parts[2]
        ),
        key.forge(r#"{"alg":"none","kid":"../../etc/passwd"}"#, &claims),
        key.forge(
            &format!(r#"{{"alg":"HS256","kid":"{}"}}"#, key.kid),
            &claims,
        ),
        format!("{good}.extra"),
        "x".repeat(9000),
    ]);
    for token in &tokens {
        client
            .verify_token(pb::VerifyTokenRequest {
                token: token.clone(),
                audience: "api".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    client
        .rotate_keys(admin(pb::RotateKeysRequest {
            force: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    client
        .list_keys(admin(pb::ListKeysRequest {}))
        .await
        .unwrap();
    let log = process.terminate().join("\n");
    assert!(
        log.contains("rpc finished") && log.contains("token rejected"),
        "the log is not what was expected:\n{log}"
    );

    // No token, and no segment of one longer than 20 characters.
    for token in &tokens {
        for segment in token.split('.').filter(|s| s.len() > 20) {
            assert!(
                !log.contains(&segment[..20]),
                "a token segment is in the log"
            );
        }
    }
    assert!(!log.contains(ADMIN_TOKEN), "the admin token is in the log");
    // No 16-byte window of the private key, raw or base64(url).
    let (_, records) =
        token_authority::store::KeyStore::open(&dir.path.join("keystore"), None).unwrap();
    for record in &records {
        let der = record.private_key.as_bytes();
        for start in (0..der.len().saturating_sub(16)).step_by(8) {
            let window = &der[start..start + 16];
            assert!(
                !log.contains(&b64::encode(window)[..20]),
                "private key bytes (base64url) in the log"
            );
            let std_b64 = b64::encode(window).replace('-', "+").replace('_', "/");
            assert!(
                !log.contains(&std_b64[..20]),
                "private key bytes (base64) in the log"
            );
            assert!(
                !log.as_bytes().windows(16).any(|w| w == window),
                "raw private key bytes in the log"
            );
        }
    }
}
