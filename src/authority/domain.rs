//! Typed, validated request values. The gRPC layer turns each request into these first;
//! only values that passed every check go further.

use std::fmt;

use serde_json::{Map, Value};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

use token_authority_jose::jwt::json::{parse_object, JsonError};

/// The registered claims the authority sets itself; callers may not supply them.
pub(crate) const RESERVED_CLAIMS: [&str; 8] =
    ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "status"];

/// Claims the authority derives from the caller's identity (RFC 8693 `act`, RFC 8705
/// `cnf`): a caller that could set them could claim to act for anyone or bind a token to
/// any certificate.
pub(crate) const IDENTITY_CLAIMS: [&str; 2] = ["act", "cnf"];

/// The claims of Transaction Tokens, which only the token endpoint issues: an access token
/// carrying them could pass for one with a verifier that does not check `typ`.
pub(crate) const TXN_CLAIMS: [&str; 4] = ["txn", "tctx", "rctx", "req_wl"];

pub(crate) const MAX_SUBJECT_BYTES: usize = 1024;
pub(crate) const MAX_AUDIENCES: usize = 16;
pub(crate) const MAX_AUDIENCE_BYTES: usize = 256;
pub(crate) const MAX_CLAIMS_JSON_BYTES: usize = 16 * 1024;

/// A request that is wrong as a request: names the field and says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidArgument {
    pub(crate) field: &'static str,
    pub(crate) reason: String,
}

fn invalid<T>(field: &'static str, reason: impl Into<String>) -> Result<T, InvalidArgument> {
    Err(InvalidArgument {
        field,
        reason: reason.into(),
    })
}

/// The ttl rules of this authority, in whole seconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TtlPolicy {
    pub(crate) default: u64,
    pub(crate) max: u64,
}

/// A requested lifetime as the wire carries it (a protobuf Duration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestedTtl {
    pub(crate) seconds: i64,
    pub(crate) nanos: i32,
}

/// A validated IssueToken request.
#[derive(Clone, PartialEq)]
pub(crate) struct IssueRequest {
    pub(crate) subject: String,
    pub(crate) audiences: Vec<String>,
    /// Whole seconds, 1..=max.
    pub(crate) ttl: u64,
    /// The request named no ttl: `ttl` is the server's default, which a caller policy may
    /// lower to its own maximum instead of refusing.
    pub(crate) ttl_is_default: bool,
    pub(crate) claims: Map<String, Value>,
}

impl fmt::Debug for IssueRequest {
    // Custom claims may hold personal data: logs get their names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssueRequest")
            .field("subject_len", &self.subject.len())
            .field("audiences", &self.audiences.len())
            .field("ttl", &self.ttl)
            .field("ttl_is_default", &self.ttl_is_default)
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl IssueRequest {
    pub(crate) fn parse(
        subject: String,
        audiences: Vec<String>,
        ttl: Option<RequestedTtl>,
        claims_json: &str,
        policy: TtlPolicy,
    ) -> Result<IssueRequest, InvalidArgument> {
        Ok(IssueRequest {
            subject: parse_subject(subject)?,
            audiences: parse_audiences(audiences)?,
            ttl_is_default: ttl.is_none(),
            ttl: parse_ttl(ttl, policy)?,
            claims: parse_claims(claims_json)?,
        })
    }
}

fn parse_subject(subject: String) -> Result<String, InvalidArgument> {
    if subject.trim().is_empty() {
        return invalid("subject", "is required");
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return invalid(
            "subject",
            format!("is longer than {MAX_SUBJECT_BYTES} bytes"),
        );
    }
    if let Some(c) = subject.chars().find(|&c| is_invisible(c)) {
        return invalid("subject", hidden_character(c));
    }
    Ok(subject)
}

/// Control characters (general category Cc: `\n`, `\0`, ...), format characters (Cf:
/// bidi overrides, zero-width spaces and joiners, ...) and the line and paragraph separators
/// (Zl U+2028, Zp U+2029). Names holding them print like other names in logs and dashboards
/// (`ad\u{200b}min` shows as `admin`), or split a log line in two for readers that break
/// lines on them, so they are refused everywhere a name enters: subjects, audiences and
/// caller names.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// Why a name holding `c` (for which `is_invisible` holds) is refused.
pub(crate) fn hidden_character(c: char) -> String {
    let kind = match c.general_category() {
        GeneralCategory::Control => "a control character",
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
            "a line or paragraph separator"
        }
        _ => "an invisible format character",
    };
    format!(
        "contains {kind} (U+{:04X}), which would make one name look like another",
        u32::from(c)
    )
}

fn parse_audiences(audiences: Vec<String>) -> Result<Vec<String>, InvalidArgument> {
    if audiences.len() > MAX_AUDIENCES {
        return invalid("audience", format!("has more than {MAX_AUDIENCES} entries"));
    }
    for audience in &audiences {
        if audience.trim().is_empty() {
            return invalid("audience", "holds an empty entry");
        }
        if audience.len() > MAX_AUDIENCE_BYTES {
            return invalid(
                "audience",
                format!("holds an entry longer than {MAX_AUDIENCE_BYTES} bytes"),
            );
        }
        if let Some(c) = audience.chars().find(|&c| is_invisible(c)) {
            return invalid("audience", hidden_character(c));
        }
    }
    Ok(audiences)
}

fn parse_ttl(ttl: Option<RequestedTtl>, policy: TtlPolicy) -> Result<u64, InvalidArgument> {
    let Some(ttl) = ttl else {
        return Ok(policy.default);
    };
    if ttl.seconds < 0 || ttl.nanos < 0 || (ttl.seconds == 0 && ttl.nanos == 0) {
        return invalid("ttl", "must be positive");
    }
    if ttl.nanos != 0 {
        return invalid(
            "ttl",
            "must be a whole number of seconds (JWT times are in seconds)",
        );
    }
    let seconds = ttl.seconds.unsigned_abs();
    if seconds > policy.max {
        return invalid("ttl", format!("is above the maximum of {}s", policy.max));
    }
    Ok(seconds)
}

fn parse_claims(claims_json: &str) -> Result<Map<String, Value>, InvalidArgument> {
    if claims_json.trim().is_empty() {
        return Ok(Map::new());
    }
    if claims_json.len() > MAX_CLAIMS_JSON_BYTES {
        return invalid(
            "claims_json",
            format!("is larger than {MAX_CLAIMS_JSON_BYTES} bytes"),
        );
    }
    let claims = parse_object(claims_json.as_bytes()).or_else(|e| match e {
        JsonError::NotAnObject => invalid("claims_json", "must be a JSON object"),
        JsonError::Syntax(reason) => invalid(
            "claims_json",
            format!("is not a valid JSON object: {reason}"),
        ),
    })?;
    if let Some(reserved) = RESERVED_CLAIMS
        .iter()
        .find(|name| claims.contains_key(**name))
    {
        return invalid(
            "claims_json",
            format!("sets the reserved claim {reserved:?}; the authority sets iss, sub, aud, exp, nbf, iat, jti and status itself"),
        );
    }
    if let Some(identity) = IDENTITY_CLAIMS
        .iter()
        .find(|name| claims.contains_key(**name))
    {
        return invalid(
            "claims_json",
            format!("sets the reserved claim {identity:?}; the authority sets act and cnf from the caller's identity"),
        );
    }
    if let Some(txn) = TXN_CLAIMS.iter().find(|name| claims.contains_key(**name)) {
        return invalid(
            "claims_json",
            format!("sets the reserved claim {txn:?}; txn, tctx, rctx and req_wl are Txn-Token claims, which only the token endpoint issues"),
        );
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: TtlPolicy = TtlPolicy {
        default: 900,
        max: 86400,
    };

    fn ttl(seconds: i64, nanos: i32) -> Option<RequestedTtl> {
        Some(RequestedTtl { seconds, nanos })
    }

    #[test]
    fn ttl_rules() {
        assert_eq!(parse_ttl(None, POLICY), Ok(900));
        assert_eq!(parse_ttl(ttl(60, 0), POLICY), Ok(60));
        assert_eq!(parse_ttl(ttl(86400, 0), POLICY), Ok(86400));
        for (bad, reason) in [
            (ttl(0, 0), "must be positive"),
            (ttl(-5, 0), "must be positive"),
            (ttl(0, -1), "must be positive"),
            (
                ttl(0, 500_000_000),
                "must be a whole number of seconds (JWT times are in seconds)",
            ),
            (ttl(86401, 0), "is above the maximum of 86400s"),
        ] {
            let err = parse_ttl(bad, POLICY).unwrap_err();
            assert_eq!((err.field, err.reason.as_str()), ("ttl", reason), "{err}");
        }
    }

    #[test]
    fn claims_rules() {
        assert!(parse_claims("").unwrap().is_empty());
        assert_eq!(
            parse_claims(r#"{"role":"admin","n":12345678901234}"#).unwrap()["n"],
            12345678901234u64
        );
        const RESERVED_BY_AUTHORITY: &str =
            "the authority sets iss, sub, aud, exp, nbf, iat, jti and status itself";
        const RESERVED_BY_IDENTITY: &str =
            "the authority sets act and cnf from the caller's identity";
        for (bad, reason) in [
            ("[]", "must be a JSON object".to_owned()),
            ("1", "must be a JSON object".to_owned()),
            (
                "{",
                "is not a valid JSON object: EOF while parsing an object at line 1 column 1"
                    .to_owned(),
            ),
            (
                r#"{"a":1,"a":2}"#,
                r#"is not a valid JSON object: duplicate member "a" at line 1 column 10"#
                    .to_owned(),
            ),
            (
                r#"{"exp":1}"#,
                format!(r#"sets the reserved claim "exp"; {RESERVED_BY_AUTHORITY}"#),
            ),
            (
                r#"{"jti":"x"}"#,
                format!(r#"sets the reserved claim "jti"; {RESERVED_BY_AUTHORITY}"#),
            ),
            (
                r#"{"act":{"sub":"admin"}}"#,
                format!(r#"sets the reserved claim "act"; {RESERVED_BY_IDENTITY}"#),
            ),
            (
                r#"{"cnf":{"x5t#S256":"x"}}"#,
                format!(r#"sets the reserved claim "cnf"; {RESERVED_BY_IDENTITY}"#),
            ),
        ] {
            let err = parse_claims(bad).unwrap_err();
            assert_eq!((err.field, err.reason), ("claims_json", reason), "{bad}");
        }
    }
}
