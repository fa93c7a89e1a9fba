//! The in-place header and claims readers against the rules: every header or payload they
//! read must get the verdict the reference parser (`json::parse_object`) gives, including
//! the ones they hand over to it (escapes, duplicates, wrong types, many members, depth).

use serde_json::json;

use super::verify::{verify, KeyLookup, Policy, Reason};
use crate::{
    b64,
    crypto::{generate_pkcs8, Algorithm, SigningKey, VerifyingKey},
};

const NOW: u64 = 1_800_000_000;

struct OneKey(VerifyingKey);

impl KeyLookup for OneKey {
    fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey> {
        (kid == "k1").then_some(&self.0)
    }
    fn is_revoked(&self, _kid: &str) -> bool {
        false
    }
}

fn policy() -> Policy {
    Policy {
        issuer: "https://issuer.test".into(),
        leeway: 0,
        max_token_bytes: 16 * 1024,
    }
}

/// A token of these exact header and payload bytes, signed.
fn token(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64::encode(header), b64::encode(payload));
    format!(
        "{input}.{}",
        b64::encode(key.sign(input.as_bytes()).unwrap())
    )
}

const GOOD_HEADER: &str = r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#;
const GOOD_PAYLOAD: &str =
    r#"{"aud":"ledger","exp":1800000600,"iss":"https://issuer.test","sub":"svc"}"#;

/// Ok(subject) or Err((reason, the start of the detail)).
type Expected = Result<&'static str, (Reason, &'static str)>;

fn check(cases: &[(String, String, Expected)]) {
    let key = SigningKey::from_pkcs8(Algorithm::ES256, &generate_pkcs8(Algorithm::ES256).unwrap())
        .unwrap();
    let keys = OneKey(key.verifying_key().unwrap());
    for (header, payload, expected) in cases {
        let token = token(&key, header.as_bytes(), payload.as_bytes());
        let verdict = verify(&token, &keys, &policy(), Some("ledger"), NOW);
        match (verdict, expected) {
            (Ok(verified), Ok(subject)) => {
                assert_eq!(verified.subject, *subject, "{header} {payload}");
                assert_eq!(verified.claims.json(), payload);
                let reference: serde_json::Value = serde_json::from_str(payload).unwrap();
                assert_eq!(
                    serde_json::Value::Object(verified.claims.clone().into_map()),
                    reference
                );
                assert_eq!(verified.claims.to_sorted_json(), reference.to_string());
                assert_eq!(verified.claims.get("sub"), reference.get("sub"));
                assert_eq!(
                    verified.claims.has_status(),
                    reference.get("status").is_some(),
                    "{header} {payload}: has_status"
                );
            }
            (Err(rejection), Err((reason, detail))) => {
                assert_eq!(rejection.reason, *reason, "{header} {payload}: {rejection}");
                assert!(
                    rejection.detail.starts_with(detail),
                    "{header} {payload}: {rejection}"
                );
            }
            (verdict, expected) => panic!("{header} {payload}: {verdict:?}, not {expected:?}"),
        }
    }
}

fn with_header(header: &str) -> (String, String) {
    (header.to_owned(), GOOD_PAYLOAD.to_owned())
}

#[test]
fn headers_get_the_reference_verdict() {
    let malformed = |detail| Err((Reason::Malformed, detail));
    let unsupported = |detail| Err((Reason::UnsupportedHeader, detail));
    let many: String = (0..40).map(|i| format!(r#""x{i}":{i},"#)).collect();
    let deep = format!(
        r#"{{"alg":"ES256","kid":"k1","x":{}1{}}}"#,
        "[".repeat(16),
        "]".repeat(16)
    );
    let long = format!(
        r#"{{"alg":"ES256","kid":"k1","pad":"{}"}}"#,
        "x".repeat(600)
    );
    let cases: Vec<(&str, Expected)> = vec![
        (GOOD_HEADER, Ok("svc")),
        (r#"{"alg":"ES256","kid":"k\u0031"}"#, Ok("svc")),
        (r#"{"\u0061lg":"ES256","kid":"k1"}"#, Ok("svc")),
        (r#"{"alg":"ES256","kid":"k1","typ":"jwt"}"#, Ok("svc")),
        // The authority's own tokens are JWT: RFC 9068's type is another issuer's.
        (
            r#"{"alg":"ES256","kid":"k1","typ":"at+jwt"}"#,
            unsupported("typ, when present, must be JWT"),
        ),
        (
            r#"{"alg":"ES256","kid":"k1","cty":{"a":[1,{"b":2}]}}"#,
            Ok("svc"),
        ),
        (&long, Ok("svc")),
        (
            r#"{"alg":"ES256","kid":"k1","alg":"ES256"}"#,
            malformed("the header: not valid JSON: duplicate member \"alg\""),
        ),
        (
            r#"{"alg":"ES256","kid":"k1","\u0061lg":"ES256"}"#,
            malformed("the header: not valid JSON: duplicate member \"alg\""),
        ),
        (
            r#"{"alg":"ES256","kid":"k1","cty":{"a":1,"a":2}}"#,
            malformed("the header: not valid JSON: duplicate member \"a\""),
        ),
        (
            &deep,
            malformed("the header: not valid JSON: nested deeper than 16"),
        ),
        (
            r#"{"alg":"ES256","kid":"k1"} x"#,
            malformed("the header: not valid JSON: trailing"),
        ),
        (r#"["alg"]"#, malformed("the header: not a JSON object")),
        (
            r#"{"alg":"ES256","kid":"k1","crit":["exp"]}"#,
            unsupported("crit names extensions"),
        ),
        (
            r#"{"alg":"ES256","kid":"k1","x5c":["AA"],"jku":"https://x"}"#,
            unsupported("the header carries jku"),
        ),
        (
            r#"{"alg":"ES256","kid":"k1","typ":"JOSE"}"#,
            unsupported("typ, when present, must be JWT"),
        ),
        (
            r#"{"alg":"ES256","kid":"k1","typ":1}"#,
            unsupported("typ, when present, must be JWT"),
        ),
        (
            r#"{"alg":"ES256","kid":1}"#,
            malformed("the header's kid is not a string"),
        ),
        (
            r#"{"alg":"ES256","kid":null}"#,
            malformed("the header's kid is not a string"),
        ),
        (
            r#"{"alg":"ES256"}"#,
            Err((Reason::UnknownKey, "the header names no kid")),
        ),
        (
            r#"{"alg":null,"kid":"k1"}"#,
            malformed("the header has no alg string"),
        ),
        (
            r#"{"alg":"es256","kid":"k1"}"#,
            Err((Reason::AlgorithmNotAllowed, "the header's alg is not ES256")),
        ),
    ];
    let mut cases: Vec<_> = cases
        .into_iter()
        .map(|(header, expected)| {
            let (header, payload) = with_header(header);
            (header, payload, expected)
        })
        .collect();
    // Past the members the in-place reader tracks: the reference parser reads it.
    let (header, payload) = with_header(&format!(r#"{{{many}"alg":"ES256","kid":"k1"}}"#));
    cases.push((header, payload, Ok("svc")));
    check(&cases);
}

#[test]
fn payloads_get_the_reference_verdict() {
    let malformed = |detail| Err((Reason::Malformed, detail));
    let claims = |extra: serde_json::Value| {
        let mut claims = serde_json::from_str::<serde_json::Value>(GOOD_PAYLOAD).unwrap();
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims.to_string()
    };
    let many = claims(serde_json::Value::Object(
        (0..40).map(|i| (format!("c{i}"), json!(i))).collect(),
    ));
    let cases: Vec<(String, Expected)> = vec![
        (GOOD_PAYLOAD.into(), Ok("svc")),
        (claims(json!({"sub": "svc\u{e9}\n"})), Ok("svc\u{e9}\n")),
        (
            r#"{"aud":["a","ledger"],"exp":1800000600,"iss":"https:\/\/issuer.test","sub":"s\u0076c"}"#.into(),
            Ok("svc"),
        ),
        (claims(json!({"x": {"y": [1, {"z": null}], "w": 1.5}})), Ok("svc")),
        (many.clone(), Ok("svc")),
        // A `status` member, however its name is written, and only at the top level.
        (claims(json!({"status": {"status_list": {"idx": 1, "uri": "u"}}})), Ok("svc")),
        (
            GOOD_PAYLOAD.replace('}', r#","st\u0061tus":{}}"#),
            Ok("svc"),
        ),
        (claims(json!({"x": {"status": 1}})), Ok("svc")),
        (many.replace("\"c0\"", "\"status\""), Ok("svc")),
        (
            r#"{"aud":"ledger","exp":1800000600,"iss":"https://issuer.test","sub":"svc","s\u0075b":"x"}"#.into(),
            malformed("the payload: not valid JSON: duplicate member \"sub\""),
        ),
        (
            claims(json!({"x": 1})).replace(r#""x":1"#, r#""x":{"y":1,"y":2}"#),
            malformed("the payload: not valid JSON: duplicate member \"y\""),
        ),
        (claims(json!({"exp": "soon"})), malformed("exp is not a number")),
        (claims(json!({"iat": NOW + 10})), Err((Reason::NotYetValid, "iat is in the future"))),
        (claims(json!({"exp": 1e300})), malformed("exp is outside the years 0001 to 9999")),
        (claims(json!({"iss": 7})), malformed("iss is not a string")),
        (claims(json!({"sub": ["svc"]})), malformed("sub is not a string")),
        (claims(json!({"aud": [1]})), malformed("aud holds a value that is not a string")),
        (claims(json!({"aud": {}})), malformed("aud is neither a string nor an array of strings")),
        (
            claims(json!({"aud": ["a", "b"]})),
            Err((Reason::AudienceMismatch, "aud does not contain the expected audience")),
        ),
        ("[1]".into(), malformed("the payload: not a JSON object")),
        (format!("{GOOD_PAYLOAD} {{}}"), malformed("the payload: not valid JSON: trailing")),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(payload, expected)| (GOOD_HEADER.to_owned(), payload, expected))
        .collect();
    check(&cases);
}

/// Access tokens and Txn-Tokens are told apart by `typ`, in both directions; a Txn-Token
/// also needs a `txn` string and at most `TXN_TOKEN_MAX_LIFETIME` of life.
#[test]
fn txn_tokens_and_access_tokens_are_told_apart_by_typ() {
    use super::verify::{verify_with, Expectations, TokenType, TXN_TOKEN_MAX_LIFETIME};
    let key = SigningKey::from_pkcs8(Algorithm::ES256, &generate_pkcs8(Algorithm::ES256).unwrap())
        .unwrap();
    let keys = OneKey(key.verifying_key().unwrap());
    let typed = |typ: &str| format!(r#"{{"alg":"ES256","kid":"k1"{typ}}}"#);
    let payload = |extra: &str| {
        format!(
            r#"{{"aud":"ledger","iat":{},"exp":{},"iss":"https://issuer.test","sub":"svc"{extra}}}"#,
            NOW - 10,
            NOW + 50
        )
    };
    let wrong = |detail| Err((Reason::WrongTokenType, detail));
    let cases: Vec<(TokenType, String, String, Expected)> = vec![
        (TokenType::Access, typed(""), payload(""), Ok("svc")),
        (
            TokenType::Access,
            typed(r#","typ":"JWT""#),
            payload(r#","txn":5"#),
            Ok("svc"),
        ),
        (
            TokenType::Access,
            typed(r#","typ":"txntoken+jwt""#),
            payload(r#","txn":"t""#),
            wrong(
                "a Txn-Token (typ txntoken+jwt) is not accepted where an access token is expected",
            ),
        ),
        // Another issuer's access token may be typed as RFC 9068 has it; still never a
        // Txn-Token or another kind.
        (
            TokenType::IssuerAccess,
            typed(r#","typ":"at+jwt""#),
            payload(""),
            Ok("svc"),
        ),
        (
            TokenType::IssuerAccess,
            typed(r#","typ":"application/AT+JWT""#),
            payload(""),
            Ok("svc"),
        ),
        (
            TokenType::IssuerAccess,
            typed(r#","typ":"JWT""#),
            payload(""),
            Ok("svc"),
        ),
        (TokenType::IssuerAccess, typed(""), payload(""), Ok("svc")),
        (
            TokenType::IssuerAccess,
            typed(r#","typ":"txntoken+jwt""#),
            payload(r#","txn":"t""#),
            wrong("a Txn-Token (typ txntoken+jwt)"),
        ),
        (
            TokenType::IssuerAccess,
            typed(r#","typ":"statuslist+jwt""#),
            payload(""),
            Err((
                Reason::UnsupportedHeader,
                "typ, when present, must be JWT or at+jwt",
            )),
        ),
        (
            TokenType::Access,
            typed(r#","typ":"at+jwt""#),
            payload(""),
            Err((Reason::UnsupportedHeader, "typ, when present, must be JWT")),
        ),
        (
            TokenType::Access,
            typed(r#","typ":"TxnToken+JWT""#),
            payload(r#","txn":"t""#),
            wrong("a Txn-Token (typ txntoken+jwt)"),
        ),
        (
            TokenType::Txn,
            typed(r#","typ":"txntoken+jwt""#),
            payload(r#","txn":"t""#),
            Ok("svc"),
        ),
        (
            TokenType::Txn,
            typed(r#","typ":"TXNTOKEN+JWT""#),
            payload(r#","txn":"t""#),
            Ok("svc"),
        ),
        (
            TokenType::Txn,
            typed(""),
            payload(r#","txn":"t""#),
            wrong("not a Txn-Token: its typ is not txntoken+jwt"),
        ),
        (
            TokenType::Txn,
            typed(r#","typ":"JWT""#),
            payload(r#","txn":"t""#),
            wrong("not a Txn-Token"),
        ),
        (
            TokenType::Txn,
            typed(r#","typ":"txntoken+jwt""#),
            payload(""),
            Err((Reason::MissingClaim, "txn is required in a Txn-Token")),
        ),
        (
            TokenType::Txn,
            typed(r#","typ":"txntoken+jwt""#),
            payload(r#","txn":"""#),
            Err((Reason::MissingClaim, "txn is empty")),
        ),
        (
            TokenType::Txn,
            typed(r#","typ":"txntoken+jwt""#),
            payload(r#","txn":7"#),
            Err((Reason::Malformed, "txn is not a string")),
        ),
        (
            TokenType::Txn,
            typed(r#","typ":"txntoken+jwt""#),
            format!(
                r#"{{"aud":"ledger","iat":{},"exp":{},"iss":"https://issuer.test","sub":"svc","txn":"t"}}"#,
                NOW - 10,
                NOW - 10 + TXN_TOKEN_MAX_LIFETIME + 1
            ),
            Err((Reason::LifetimeTooLong, "the token lives longer than 300s")),
        ),
    ];
    for (token_type, header, payload, expected) in cases {
        let token = token(&key, header.as_bytes(), payload.as_bytes());
        let expect = Expectations {
            audiences: &["ledger"],
            max_lifetime: (token_type == TokenType::Txn).then_some(TXN_TOKEN_MAX_LIFETIME),
            algorithms: None,
            token_type,
        };
        let verdict = verify_with(&token, &keys, &policy(), &expect, NOW);
        match (verdict, expected) {
            (Ok(verified), Ok(subject)) => assert_eq!(verified.subject, subject),
            (Err(rejection), Err((reason, detail))) => {
                assert_eq!(rejection.reason, reason, "{header} {payload}: {rejection}");
                assert!(
                    rejection.detail.starts_with(detail),
                    "{header} {payload}: {rejection}"
                );
            }
            (verdict, expected) => panic!("{header} {payload}: {verdict:?}, not {expected:?}"),
        }
    }
}
