//! Subject tokens verified once are not verified again while their verdict holds, and only
//! then: an expired token, or one whose issuer's keys changed since, is verified afresh.

use token_authority::pb;
use tonic::Code;

use super::{ask, edge, exchange_as, Fixture};
use crate::helpers::{admin, now};

/// The IdP revokes the key of a token the authority exchanged (and kept as verified); once
/// the authority has fetched the IdP's keys again, that token is refused.
#[tokio::test]
async fn a_kept_subject_token_is_verified_again_once_its_issuers_keys_change() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let idp = &fixture.idp;
    let old = idp.access_token("user-1234", "orders.read");
    exchange_as(server, Some(&edge()), ask("orders.read", &old))
        .await
        .unwrap();
    let revoked = idp
        .server
        .client
        .clone()
        .revoke_key(admin(pb::RevokeKeyRequest {
            key_id: idp.key.kid.clone(),
            reason: "test".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    // Still the verdict a verification gives: the authority has not fetched the IdP's keys.
    exchange_as(server, Some(&edge()), ask("orders.read", &old))
        .await
        .unwrap();
    assert_ne!(revoked.current_key_id, idp.key.kid);
    // A token naming a kid the authority does not know makes it fetch the IdP's keys.
    let t = now();
    let unknown_kid = idp.key.forge(
        r#"{"alg":"RS256","kid":"not-a-key-of-the-idp","typ":"JWT"}"#,
        &format!(
            r#"{{"iss":"{}","sub":"u","aud":"api.example","scope":"orders.read","iat":{},"exp":{}}}"#,
            super::IDP_ISS,
            t - 5,
            t + 60
        ),
    );
    let refused = exchange_as(server, Some(&edge()), ask("orders.read", &unknown_kid))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let status = exchange_as(server, Some(&edge()), ask("orders.read", &old))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "invalid_grant: the subject token is refused: its kid is not a key of the issuer's JWKS"
        )
    );
}

/// A kept subject token never outlives its `exp` (the server's leeway is 0 here).
#[tokio::test]
async fn a_kept_subject_token_is_refused_once_it_expires() {
    let fixture = Fixture::start().await;
    let server = &fixture.server;
    let t = now();
    let short = fixture.idp.token(&format!(
        r#""sub":"user-1234","aud":"api.example","scope":"orders.read","iat":{},"exp":{}"#,
        t - 5,
        t + 2
    ));
    exchange_as(server, Some(&edge()), ask("orders.read", &short))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let status = exchange_as(server, Some(&edge()), ask("orders.read", &short))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::InvalidArgument,
            "invalid_grant: the subject token is refused: the token has expired"
        )
    );
}
