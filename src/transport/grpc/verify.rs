//! VerifyToken: an access token against the authority's keys and status lists, or a
//! Txn-Token against the policy's trust domain. A rejection is a verdict (`valid: false` with
//! its reason), not a failure of the RPC.

use tonic::Status;

use super::{traces, wire::reason_to_pb, GrpcService};
use crate::{metrics::LabelValue, pb};

impl GrpcService {
    pub(super) async fn verify(
        &self,
        request: pb::VerifyTokenRequest,
    ) -> Result<pb::VerifyTokenResponse, Status> {
        let audience = Some(request.audience.as_str()).filter(|a| !a.is_empty());
        let verdict = match pb::TokenType::try_from(request.expected_type) {
            Ok(pb::TokenType::Access) => {
                match self.authority.verify(&request.token, audience, self.now()) {
                    Ok(verified) => self
                        .authority
                        .check_status(&verified.claims)
                        .await
                        .map(|()| verified),
                    rejected => rejected,
                }
            }
            Ok(pb::TokenType::Txn) => {
                let trust_domain = self.trust_domain()?;
                if audience.is_some_and(|audience| audience != trust_domain) {
                    return Err(Status::invalid_argument(
                        "audience: a Txn-Token's audience is the trust domain; leave it empty or name it",
                    ));
                }
                self.authority
                    .verify_txn(&request.token, &trust_domain, self.now())
            }
            Err(_) => {
                return Err(Status::invalid_argument(
                    "expected_type: not a TokenType this server knows",
                ))
            }
        };
        self.metrics
            .verified(verdict.as_ref().err().map(|rejection| rejection.reason));
        if traces::enabled() {
            let rpc = traces::Trace::current();
            match &verdict {
                Ok(verified) => {
                    rpc.set("decision", "valid");
                    rpc.set("kid", verified.kid.clone());
                }
                Err(rejection) => {
                    rpc.set("decision", rejection.reason.as_str());
                }
            }
        }
        let response = match verdict {
            Ok(verified) => pb::VerifyTokenResponse {
                valid: true,
                reason: pb::VerifyFailureReason::Unspecified as i32,
                subject: verified.subject,
                key_id: verified.kid,
                claims_json: verified.claims.to_sorted_json(),
                expires_at: Some(prost_types::Timestamp {
                    seconds: verified.expires_at,
                    nanos: 0,
                }),
                detail: String::new(),
            },
            Err(rejection) => {
                // A verdict, not a failure of the RPC; counted by reason in the metrics.
                tracing::debug!(reason = ?rejection.reason, detail = %rejection.detail, "token rejected");
                pb::VerifyTokenResponse {
                    valid: false,
                    reason: reason_to_pb(rejection.reason) as i32,
                    detail: rejection.detail,
                    ..Default::default()
                }
            }
        };
        Ok(response)
    }
}
