//! Transaction Tokens (draft-ietf-oauth-transaction-tokens-10) for the services of a call
//! chain: the edge exchanges the incoming access token for a Txn-Token once per request;
//! every service behind it verifies the Txn-Token locally and forwards it unchanged.
//!
//! - [`Verifier::verify_txn`]: the authority's own rules for a Txn-Token (`typ`
//!   `txntoken+jwt`, `aud` the trust domain, a `txn`, at most five minutes of life). An
//!   access token is refused there, and a Txn-Token is refused by [`Verifier::verify`]
//!   (`Reason::WrongTokenType`): neither stands for the other.
//! - [`RequireTxnTokenLayer`]: a tower layer for incoming requests (tonic's server, hyper,
//!   axum) that verifies the `Txn-Token` header (gRPC metadata `txn-token`; never
//!   `authorization`, as the draft requires), puts the [`TxnToken`] in the request's
//!   extensions, and keeps it current while the handler runs, for [`ForwardTxnToken`].
//! - [`ForwardTxnToken`]: a tonic interceptor for outgoing calls that sends the current
//!   Txn-Token as it was received.
//! - [`TxnExchanger`] and [`ExchangeTxnTokenLayer`]: the edge's side, one ExchangeToken per
//!   incoming request, from its `authorization: Bearer` access token.

mod exchange;
mod forward;
mod layer;

use serde_json::{Map, Value};
use token_authority_jose::jwt::verify::{
    Expectations, Rejection, TokenType, Verified, TXN_TOKEN_MAX_LIFETIME,
};

pub use self::{
    exchange::{ExchangeTxnToken, ExchangeTxnTokenLayer, TxnExchanger, TxnRequest},
    forward::ForwardTxnToken,
    layer::{RequireTxnToken, RequireTxnTokenLayer},
};
use crate::Verifier;

/// The header (and gRPC metadata key) that carries a Txn-Token between workloads.
pub const TXN_TOKEN_HEADER: &str = "txn-token";

/// A Txn-Token that verified: the token as received (to forward unchanged) and its claims,
/// read on first use. Its `Debug` shows the transaction, not the token.
#[derive(Clone)]
pub struct TxnToken {
    token: String,
    verified: Verified,
}

impl std::fmt::Debug for TxnToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnToken")
            .field("txn", &self.txn())
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl TxnToken {
    /// The token exactly as received: what outgoing calls carry.
    pub fn as_str(&self) -> &str {
        &self.token
    }

    /// `txn`: the transaction's identifier, the same all along the call chain.
    pub fn txn(&self) -> &str {
        self.text("txn")
    }

    /// `sub`: whom the transaction is for.
    pub fn subject(&self) -> &str {
        &self.verified.subject
    }

    /// `scope`: what the transaction may do.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.text("scope")
            .split(' ')
            .filter(|scope| !scope.is_empty())
    }

    /// Whether `scope` is one of the transaction's.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|held| held == scope)
    }

    /// `req_wl`: the workloads that requested this token, oldest first (more than one
    /// when it replaced another).
    pub fn requesters(&self) -> impl Iterator<Item = &str> {
        self.text("req_wl").split(',')
    }

    /// `tctx`: the transaction's context, immutable along the chain.
    pub fn tctx(&self) -> Option<&Map<String, Value>> {
        self.verified.claims.get("tctx").and_then(Value::as_object)
    }

    /// `rctx`: the requester's environment (`req_ip`, `authn`).
    pub fn rctx(&self) -> Option<&Map<String, Value>> {
        self.verified.claims.get("rctx").and_then(Value::as_object)
    }

    /// `exp`, unix seconds.
    pub fn expires_at(&self) -> i64 {
        self.verified.expires_at
    }

    /// Every claim.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.verified.claims
    }

    fn text(&self, name: &str) -> &str {
        self.verified
            .claims
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

impl Verifier {
    /// Verifies a Txn-Token of `trust_domain` now: VerifyToken's rules for a Txn-Token.
    pub fn verify_txn(&self, token: &str, trust_domain: &str) -> Result<TxnToken, Rejection> {
        let now = self.clock().unix_now();
        self.verify_txn_at(token, trust_domain, now)
    }

    /// Verifies a Txn-Token of `trust_domain` at `now` (unix seconds).
    pub fn verify_txn_at(
        &self,
        token: &str,
        trust_domain: &str,
        now: u64,
    ) -> Result<TxnToken, Rejection> {
        let verdict = self.verify_with(
            token,
            &Expectations {
                audiences: &[trust_domain],
                max_lifetime: Some(TXN_TOKEN_MAX_LIFETIME),
                algorithms: None,
                token_type: TokenType::Txn,
            },
            now,
        );
        verdict.map(|verified| TxnToken {
            token: token.to_owned(),
            verified,
        })
    }
}

/// The Txn-Token the current request carries, inside a handler behind
/// [`RequireTxnTokenLayer`] or [`ExchangeTxnTokenLayer`].
pub fn current() -> Option<TxnToken> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `future` with `token` as the current Txn-Token (what the layers do around a
/// handler), for code that verified a token by other means.
pub async fn scope<F: std::future::Future>(token: TxnToken, future: F) -> F::Output {
    CURRENT.scope(token, future).await
}

tokio::task_local! {
    static CURRENT: TxnToken;
}
