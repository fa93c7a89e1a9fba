//! [`ForwardTxnToken`]: the outgoing side. Every call made while a request holds a
//! Txn-Token (behind [`super::RequireTxnTokenLayer`] or [`super::ExchangeTxnTokenLayer`],
//! or inside [`super::scope`]) carries it, unchanged, as `txn-token` metadata.

use tonic::{metadata::MetadataValue, service::Interceptor, Request, Status};

use super::{current, TXN_TOKEN_HEADER};

/// Attaches the current request's Txn-Token to outgoing calls. A call made outside any
/// request that holds one is refused before it is sent (FAILED_PRECONDITION): it would
/// only be refused by the next service.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardTxnToken;

impl Interceptor for ForwardTxnToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = current().ok_or_else(|| {
            Status::failed_precondition(
                "no Txn-Token to forward: the call is not made while handling a request that holds one",
            )
        })?;
        let value: MetadataValue<_> = token
            .as_str()
            .parse()
            .map_err(|_| Status::internal("the Txn-Token is not valid metadata"))?;
        request.metadata_mut().insert(TXN_TOKEN_HEADER, value);
        Ok(request)
    }
}
