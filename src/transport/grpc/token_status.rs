//! SetTokenStatus: an admin sets one token's status in its status list, by jti or by list
//! and index. Audited before (`allowed`, what is asked) and after (`done` with the status it
//! replaced, or `failed` with why).

use token_authority_jose::status_list::Status as ListStatus;
use tonic::{Request, Status};

use super::GrpcService;
use crate::{
    authority::status::{Changed, StatusError, Target},
    callers::audit::Outcome,
    metrics::DecidedMethod,
    pb,
};

/// A jti longer than this is no jti of ours (ours are 22 characters).
const MAX_JTI_BYTES: usize = 256;

impl GrpcService {
    pub(super) async fn set_status(
        &self,
        request: Request<pb::SetTokenStatusRequest>,
    ) -> Result<pb::SetTokenStatusResponse, Status> {
        let principal = self
            .check_admin(&request, DecidedMethod::SetTokenStatus)
            .await?;
        let (target, status) = parse(&request.into_inner())?;
        let lists = self
            .authority
            .status_lists()
            .ok_or_else(|| Status::from(StatusError::Off))?;
        let asked = match &target {
            Target::Jti(jti) => format!("set status {} of jti {jti}", status.name()),
            Target::Index { list, idx } => {
                format!("set status {} of list {list} index {idx}", status.name())
            }
        };
        let method = DecidedMethod::SetTokenStatus;
        self.admin_line(&principal, method, Outcome::Allowed, &asked)
            .await?;
        match lists.set(&target, status, self.now()).await {
            Ok(changed) => {
                let done = format!(
                    "list {} index {}: {} -> {}",
                    changed.list,
                    changed.idx,
                    changed.previous.name(),
                    changed.status.name()
                );
                self.admin_result(&principal, method, Outcome::Done, &done)
                    .await;
                tracing::info!(
                    list = changed.list,
                    index = changed.idx,
                    previous = changed.previous.name(),
                    status = changed.status.name(),
                    "token status set"
                );
                Ok(response(changed, lists.uri(changed.list)))
            }
            Err(error) => {
                let status = Status::from(error);
                self.admin_result(&principal, method, Outcome::Failed, status.message())
                    .await;
                Err(status)
            }
        }
    }
}

fn parse(request: &pb::SetTokenStatusRequest) -> Result<(Target, ListStatus), Status> {
    let target = match (request.jti.as_str(), request.list_id) {
        (_, 0) if request.index != 0 => {
            return Err(Status::invalid_argument(
                "index: names a place in a list; give list_id with it, or the jti alone",
            ))
        }
        ("", 0) => {
            return Err(Status::invalid_argument(
                "name the token: jti, or list_id and index",
            ))
        }
        ("", list) => Target::Index {
            list,
            idx: request.index,
        },
        (jti, 0) if jti.len() > MAX_JTI_BYTES => {
            return Err(Status::invalid_argument(format!(
                "jti: is longer than {MAX_JTI_BYTES} bytes"
            )))
        }
        (jti, 0) => Target::Jti(jti.to_owned()),
        (_, _) => {
            return Err(Status::invalid_argument(
                "jti and list_id: give one, not both",
            ))
        }
    };
    let status = match pb::TokenStatus::try_from(request.status) {
        Ok(pb::TokenStatus::Valid) => ListStatus::Valid,
        Ok(pb::TokenStatus::Invalid) => ListStatus::Invalid,
        Ok(pb::TokenStatus::Suspended) => ListStatus::Suspended,
        Ok(pb::TokenStatus::Unspecified) => {
            return Err(Status::invalid_argument(
                "status: is required (TOKEN_STATUS_VALID, TOKEN_STATUS_INVALID or TOKEN_STATUS_SUSPENDED)",
            ))
        }
        Err(_) => {
            return Err(Status::invalid_argument(
                "status: not a TokenStatus this server knows",
            ))
        }
    };
    Ok((target, status))
}

fn to_pb(status: ListStatus) -> pb::TokenStatus {
    match status {
        ListStatus::Valid => pb::TokenStatus::Valid,
        ListStatus::Invalid => pb::TokenStatus::Invalid,
        ListStatus::Suspended => pb::TokenStatus::Suspended,
        ListStatus::Other(_) => pb::TokenStatus::Unspecified,
    }
}

fn response(changed: Changed, uri: String) -> pb::SetTokenStatusResponse {
    pb::SetTokenStatusResponse {
        list_id: changed.list,
        index: changed.idx,
        uri,
        previous: to_pb(changed.previous) as i32,
        status: to_pb(changed.status) as i32,
    }
}
