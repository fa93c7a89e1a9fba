//! What a caller token's `cnf` and `act` mean for the caller it proves.
//!
//! - `cnf` (RFC 8705): the token is bound to a client certificate; it proves a caller only
//!   over a connection presenting that certificate (`x5t#S256`, the thumbprint of its DER).
//!   Other confirmation methods (`jkt`, `jwk`, ...) cannot be checked here and are refused:
//!   ignoring a binding would make a stolen bound token as good as a bearer one.
//! - `act` (RFC 8693 §4.1): the token is a delegation, someone acting for its `sub`. It proves
//!   a caller only when the issuer entry says `allow_delegation = true`, and then the chain
//!   is kept: the tokens that caller gets carry it, nested under any new actor.

use serde_json::{Map, Value};

use super::{checked_name, IdentityError};
use token_authority_jose::{b64, crypto, jwt::json::parse_object};

/// Deepest `act` chain accepted: each hop is a service acting for the one inside.
pub(crate) const MAX_ACT_DEPTH: usize = 8;

/// Whether `token`'s payload carries `cnf`, unverified: whether it may go together with a
/// client certificate (it is verified before anything else is believed).
pub(crate) fn carries_cnf(token: &str) -> bool {
    let mut segments = token.split('.');
    segments
        .nth(1)
        .and_then(|payload| b64::decode(payload).ok())
        .and_then(|bytes| parse_object(&bytes).ok())
        .is_some_and(|payload| payload.contains_key("cnf"))
}

/// Checks a verified token's `cnf` against the call's certificate. Returns whether the
/// token is bound (to that certificate).
pub(crate) fn check_confirmation(
    cnf: Option<&Value>,
    certificate: Option<&[u8]>,
) -> Result<bool, IdentityError> {
    let Some(cnf) = cnf else {
        return Ok(false);
    };
    let thumbprint = cnf
        .as_object()
        .filter(|members| members.len() == 1)
        .and_then(|members| members.get("x5t#S256")?.as_str())
        .ok_or_else(|| {
            rejected("its cnf is not a client certificate thumbprint (x5t#S256), the only binding checked here")
        })?;
    let Some(der) = certificate else {
        return Err(rejected(
            "its cnf binds it to a client certificate, and the call presented none",
        ));
    };
    if b64::encode(crypto::sha256(der)) != thumbprint {
        return Err(rejected(
            "its cnf binds it to another client certificate than the call's",
        ));
    }
    Ok(true)
}

/// The delegation chain of a verified token's `act`, kept to its identity members (`sub`,
/// `iss`) and nested `act`s.
pub(crate) fn actor_chain(act: &Value) -> Result<Value, IdentityError> {
    actor_at(act, 1)
}

fn actor_at(act: &Value, depth: usize) -> Result<Value, IdentityError> {
    if depth > MAX_ACT_DEPTH {
        return Err(rejected("its act chain nests deeper than 8 actors"));
    }
    let members = act
        .as_object()
        .ok_or_else(|| rejected("its act is not a JSON object"))?;
    let sub = members
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| rejected("its act has no sub"))?;
    let sub = checked_name(sub.to_owned())
        .map_err(|error| IdentityError::Rejected(format!("its act.sub: {error}")))?;
    let mut out = Map::new();
    out.insert("sub".into(), Value::String(sub));
    match members.get("iss") {
        None => {}
        Some(Value::String(iss)) => {
            out.insert("iss".into(), Value::String(iss.clone()));
        }
        Some(_) => return Err(rejected("its act.iss is not a string")),
    }
    if let Some(inner) = members.get("act") {
        out.insert("act".into(), actor_at(inner, depth + 1)?);
    }
    Ok(Value::Object(out))
}

fn rejected(reason: &str) -> IdentityError {
    IdentityError::Rejected(reason.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn act_chains_keep_identity_members_and_are_bounded() {
        assert_eq!(
            actor_chain(
                &json!({"sub": "gw", "iss": "https://i", "exp": 1, "act": {"sub": "edge", "role": "x"}})
            ),
            Ok(json!({"sub": "gw", "iss": "https://i", "act": {"sub": "edge"}}))
        );
        let mut deep = json!({"sub": "a0"});
        for i in 1..MAX_ACT_DEPTH {
            deep = json!({"sub": format!("a{i}"), "act": deep});
        }
        assert!(actor_chain(&deep).is_ok());
        let too_deep = json!({"sub": "top", "act": deep});
        let refused = |act: Value| actor_chain(&act).unwrap_err().to_string();
        for (act, message) in [
            (
                too_deep,
                "bearer token: its act chain nests deeper than 8 actors",
            ),
            (json!("gw"), "bearer token: its act is not a JSON object"),
            (json!({"iss": "x"}), "bearer token: its act has no sub"),
            (json!({"sub": 7}), "bearer token: its act has no sub"),
            (
                json!({"sub": "gw", "iss": 1}),
                "bearer token: its act.iss is not a string",
            ),
            (
                json!({"sub": "a\nb"}),
                "bearer token: its act.sub: caller name contains a control, format or line separator character",
            ),
            (
                json!({"sub": "gw", "act": {"sub": ""}}),
                "bearer token: its act.sub: caller name is empty",
            ),
        ] {
            assert_eq!(refused(act.clone()), message, "{act}");
        }
    }

    #[test]
    fn confirmations_need_the_certificate_they_name() {
        let der: &[u8] = b"certificate DER";
        let thumbprint = b64::encode(crypto::sha256(der));
        let bound = json!({ "x5t#S256": thumbprint });
        assert_eq!(check_confirmation(None, None), Ok(false));
        assert_eq!(check_confirmation(None, Some(der)), Ok(false));
        assert_eq!(check_confirmation(Some(&bound), Some(der)), Ok(true));
        let refused = |cnf: &Value, der: Option<&[u8]>| {
            check_confirmation(Some(cnf), der).unwrap_err().to_string()
        };
        let cases: [(Value, Option<&[u8]>, &str); 4] = [
            (bound.clone(), None, "bearer token: its cnf binds it to a client certificate, and the call presented none"),
            (bound.clone(), Some(b"another"), "bearer token: its cnf binds it to another client certificate than the call's"),
            (json!({ "jkt": "abc" }), Some(der), "bearer token: its cnf is not a client certificate thumbprint (x5t#S256), the only binding checked here"),
            (json!({ "x5t#S256": thumbprint, "jkt": "abc" }), Some(der), "bearer token: its cnf is not a client certificate thumbprint (x5t#S256), the only binding checked here"),
        ];
        for (cnf, der, message) in cases {
            assert_eq!(refused(&cnf, der), message, "{cnf}");
        }
    }

    #[test]
    fn cnf_is_seen_before_verification() {
        let token = |payload: &str| format!("e30.{}.sig", b64::encode(payload));
        assert!(carries_cnf(&token(r#"{"cnf":{"x5t#S256":"x"}}"#)));
        assert!(!carries_cnf(&token(r#"{"sub":"x"}"#)));
        assert!(!carries_cnf("some.caller.jwt"));
        assert!(!carries_cnf("not-a-jwt"));
    }
}
