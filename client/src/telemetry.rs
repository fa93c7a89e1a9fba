//! Tracing: the trace context the client sends with its calls to the authority, and what
//! its spans say.
//!
//! IssueToken, WatchKeys and ExchangeToken carry the context of the client's own span for
//! the call, in the metadata the application's OpenTelemetry propagator writes
//! (`traceparent` and `tracestate` with the W3C propagator), so the authority's span for
//! the call joins the application's trace. The client's spans are `tracing` spans: they reach OpenTelemetry
//! through the application's `tracing-opentelemetry` layer, which gives them their trace
//! and span ids. With no such layer there is no context to send, and with the default
//! (no-op) propagator nothing is written: the calls go out as before.
//!
//! No span records a token, a credential or a claim value: the refresh span counts the
//! audiences, the exchange span says only how it ended, the verification span names the
//! algorithm, the kid (only one the key set knows: a kid is whatever the token's sender
//! wrote) and the verdict.

use opentelemetry::propagation::Injector;
use token_authority_jose::jwt::verify::{KeyLookup, Reason, Rejection, Verified};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::error::ClientError;

/// The gRPC service, as the `rpc.service` attribute of the client's call spans.
pub(crate) const SERVICE: &str = "tokenauthority.v1.TokenAuthority";

/// Writes `span`'s trace context into `metadata` with the global propagator. Nothing when
/// the span has no OpenTelemetry context (no tracer) or no propagator is installed.
pub(crate) fn inject(span: &tracing::Span, metadata: &mut MetadataMap) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Metadata(metadata));
    });
}

/// Records how a call to the authority ended on its span: `outcome` (`ok_outcome`, or
/// `failed` with the error's kind), the gRPC code when there is one, and an error status.
/// Never the error's message: the authority's refusal can name what was asked for.
pub(crate) fn record_call<T>(
    span: &tracing::Span,
    result: &Result<T, ClientError>,
    ok_outcome: &'static str,
) {
    match result {
        Ok(_) => {
            span.record("outcome", ok_outcome);
            span.record("rpc.grpc.status_code", tonic::Code::Ok as i64);
        }
        Err(error) => {
            span.record("outcome", "failed");
            span.record("error", error_kind(error));
            span.record("otel.status_code", "error");
            if let ClientError::Rpc(status) = error {
                span.record("rpc.grpc.status_code", status.code() as i64);
            }
        }
    }
}

/// tonic's metadata as the propagator's carrier. A key or value that is not valid ASCII
/// metadata is left out: a propagator writes none such, and a call must not fail over it.
/// So is an empty value (the W3C propagator writes an empty `tracestate` when there is no
/// state): it says nothing.
struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes()),
            MetadataValue::try_from(value),
        ) else {
            return;
        };
        self.0.insert(key, value);
    }
}

/// A rejection's reason as VerifyToken names it (`VerifyFailureReason`, and the server's
/// metrics label).
pub(crate) fn reason_name(reason: Reason) -> &'static str {
    match reason {
        Reason::Malformed => "MALFORMED",
        Reason::UnknownKey => "UNKNOWN_KEY",
        Reason::BadSignature => "BAD_SIGNATURE",
        Reason::AlgorithmNotAllowed => "ALGORITHM_NOT_ALLOWED",
        Reason::Expired => "EXPIRED",
        Reason::NotYetValid => "NOT_YET_VALID",
        Reason::IssuerMismatch => "ISSUER_MISMATCH",
        Reason::AudienceMismatch => "AUDIENCE_MISMATCH",
        Reason::RevokedKey => "REVOKED_KEY",
        Reason::MissingClaim => "MISSING_CLAIM",
        Reason::UnsupportedHeader => "UNSUPPORTED_HEADER",
        Reason::LifetimeTooLong => "LIFETIME_TOO_LONG",
        Reason::WrongTokenType => "WRONG_TOKEN_TYPE",
        Reason::RevokedToken => "REVOKED_TOKEN",
        Reason::SuspendedToken => "SUSPENDED_TOKEN",
        Reason::StatusUnavailable => "STATUS_UNAVAILABLE",
    }
}

/// What kind of failure a `ClientError` is, for a span: never its text, which may quote
/// the authority's message or a file path.
pub(crate) fn error_kind(error: &ClientError) -> &'static str {
    match error {
        ClientError::Rpc(_) => "rpc",
        ClientError::BadAnswer(_) => "bad_answer",
        ClientError::TokenFile { .. } => "token_file",
        ClientError::BadCredential => "bad_credential",
        ClientError::Shared(_) => "shared",
        ClientError::NoToken => "no_token",
        ClientError::Jwks(_) => "jwks",
        ClientError::StatusList(_) => "status_list",
        ClientError::NoReplica => "no_replica",
        ClientError::TxnToken(_) => "txn_token",
        ClientError::NoKeySet(_) => "no_key_set",
    }
}

/// Records a verification's verdict on its `verify_token` span: the outcome, the reason
/// of a rejection, and the kid and algorithm of the key, from `keys` (the set it was
/// verified against) rather than from the token.
pub(crate) fn record_verdict<K: KeyLookup + ?Sized>(
    span: &tracing::Span,
    keys: &K,
    token: &str,
    verdict: &Result<Verified, Rejection>,
) {
    let known;
    let kid = match verdict {
        Ok(verified) => {
            span.record("outcome", "valid");
            Some(verified.kid.as_str())
        }
        Err(rejection) => {
            span.record("outcome", "rejected");
            span.record("reason", reason_name(rejection.reason));
            known = known_kid(token, keys);
            known.as_deref()
        }
    };
    let Some(kid) = kid else {
        return;
    };
    span.record("kid", kid);
    if let Some(key) = keys.verifying_key(kid) {
        span.record("alg", key.algorithm().name());
    }
}

/// The longest header segment read for the verification span's kid: a header the
/// authority signs is well under this.
const MAX_HEADER_B64: usize = 1024;

/// The kid a rejected token's header names, when `keys` knows it (published or revoked):
/// a kid the key set does not know is the sender's text, and is not recorded. Read only
/// for a span someone records (a verified token's kid comes with the verdict).
fn known_kid<K: KeyLookup + ?Sized>(token: &str, keys: &K) -> Option<String> {
    let header = token.split('.').next()?;
    if header.len() > MAX_HEADER_B64 {
        return None;
    }
    let header = token_authority_jose::b64::decode(header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let kid = header.get("kid")?.as_str()?;
    (keys.verifying_key(kid).is_some() || keys.is_revoked(kid)).then(|| kid.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_takes_valid_pairs_and_skips_the_rest() {
        let mut map = MetadataMap::new();
        let mut carrier = Metadata(&mut map);
        carrier.set(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        );
        carrier.set("TraceState", "a=b".into());
        carrier.set("bad key", "x".into());
        carrier.set("badvalue", "line\nbreak".into());
        carrier.set("empty", String::new());
        assert_eq!(map.len(), 2);
        assert_eq!(
            map.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(
            map.get("tracestate").and_then(|v| v.to_str().ok()),
            Some("a=b")
        );
    }
}
