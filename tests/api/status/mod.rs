//! Status lists over the real server: tokens that get a status, SetTokenStatus by jti and
//! by list and index, VerifyToken's refusals, the lists on the HTTP listener, restarts and
//! rollover, and the draft's encoding vectors read by an independent decoder.

mod audit;
mod crash;
mod lists_http;
mod outage;
mod own_tokens;
mod perf_script;
mod policy;
mod readme;
mod replicas;
mod restart;
mod set_status;
mod vectors;

use token_authority::pb;
use token_authority_jose::{b64, status_list::StatusReference};

use crate::helpers::TestServer;

/// Issues a token for `subject` living `ttl` seconds.
pub async fn issue_for(server: &TestServer, subject: &str, ttl: u64) -> pb::IssueTokenResponse {
    server
        .client
        .clone()
        .issue_token(pb::IssueTokenRequest {
            subject: subject.into(),
            audience: vec!["ledger".into()],
            ttl: Some(prost_types::Duration {
                seconds: ttl as i64,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The payload of a compact JWS, unverified.
pub fn payload(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&b64::decode(payload).unwrap()).unwrap()
}

pub fn header(token: &str) -> serde_json::Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&b64::decode(header).unwrap()).unwrap()
}

/// The token's `status.status_list`, when it has one.
pub fn reference(token: &str) -> Option<StatusReference> {
    let payload = payload(token);
    StatusReference::from_claims(payload.as_object().unwrap()).unwrap()
}

/// The list id at the end of a reference's uri.
pub fn list_id(reference: &StatusReference) -> u64 {
    reference.uri.rsplit('/').next().unwrap().parse().unwrap()
}

pub fn set_request(jti: &str, status: pb::TokenStatus) -> pb::SetTokenStatusRequest {
    pb::SetTokenStatusRequest {
        jti: jti.into(),
        status: status as i32,
        ..Default::default()
    }
}

pub fn at_index(list: u64, index: u64, status: pb::TokenStatus) -> pb::SetTokenStatusRequest {
    pb::SetTokenStatusRequest {
        list_id: list,
        index,
        status: status as i32,
        ..Default::default()
    }
}

/// VerifyToken's reason for `token` (Unspecified when valid).
pub async fn verdict(server: &TestServer, token: &str) -> pb::VerifyFailureReason {
    let response = server.verify(token, "ledger").await;
    assert_eq!(response.valid, response.reason == 0, "{response:?}");
    pb::VerifyFailureReason::try_from(response.reason).unwrap()
}

pub const LONG: u64 = 3600;
pub const SHORT: u64 = 60;
