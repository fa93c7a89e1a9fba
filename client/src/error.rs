//! The one error type of this crate: what can go wrong talking to the authority. A token
//! that fails verification is not an error but a [`crate::Rejection`], as with VerifyToken.

/// Why the client could not get what it asked the authority for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The authority answered with an error, or could not be reached.
    #[error("the authority refused or failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// The authority's answer lacks something it always sends.
    #[error("the authority's answer is incomplete: {0}")]
    BadAnswer(&'static str),
    /// The bearer token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A credential cannot be sent as gRPC metadata.
    #[error("the credential is not valid metadata (visible ASCII only)")]
    BadCredential,
    /// The request this call waited on (another caller's) failed; its error, as text.
    #[error("the token request this call waited on failed: {0}")]
    Shared(String),
    /// The authority has not been reached yet and there is nothing cached to serve.
    #[error("no token yet: the authority has not answered")]
    NoToken,
    /// The HTTP JWKS could not be fetched or read.
    #[error("the JWKS fallback failed: {0}")]
    Jwks(String),
    /// A status list token was refused (`Verifier::hold_status_list`).
    #[error("status list refused: {0}")]
    StatusList(String),
    /// A verifier was asked to watch an empty list of replicas.
    #[error("no authority replica to watch")]
    NoReplica,
    /// The Txn-Token the authority answered with does not verify.
    #[error("the Txn-Token received does not verify: {0}")]
    TxnToken(crate::Rejection),
    /// No key set arrived from the authority in time.
    #[error("no key set from the authority within {0:?}")]
    NoKeySet(std::time::Duration),
}
