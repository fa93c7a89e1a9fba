use token_authority::pb::VerifyFailureReason as R;
use token_authority_jose::b64;

use token_authority_client::{Verifier, VerifierSettings};

use crate::helpers::{endpoint, now, DataDir, KnownKey, TestServer};

/// Each bad token gets `valid = false` and its own reason; none is an RPC error. The client
/// crate's `Verifier`, fed by WatchKeys, gives every token the same verdict and reason.
#[tokio::test]
async fn bad_tokens_are_rejected_with_their_reason() {
    let dir = DataDir::new();
    let key = KnownKey::seed(&dir);
    let server = TestServer::start_with(crate::helpers::config(&dir, &["--leeway", "30s"])).await;
    let iss = server.issuer.clone();
    let mut settings = VerifierSettings::new(iss.clone());
    settings.leeway = 30;
    let local = Verifier::connect(endpoint(server.grpc_addr, None).connect_lazy(), settings)
        .await
        .unwrap();
    let t = now();
    let claims = |extra: &str| {
        format!(
            r#"{{"iss":"{iss}","sub":"svc","aud":"api","iat":{t},"exp":{}{extra}}}"#,
            t + 300
        )
    };
    let good = key.forge(&key.header(), &claims(""));
    assert!(
        server.verify(&good, "api").await.valid,
        "the forged baseline must be valid"
    );

    let segments: Vec<&str> = good.split('.').collect();
    let with =
        |header: &str, payload: &str, signature: &str| format!("{header}.{payload}.{signature}");
    let tampered_payload = with(
        segments[0],
        &b64::encode(claims(r#","admin":true"#)),
        segments[2],
    );
    let mut signature = b64::decode(segments[2]).unwrap();
    signature[10] ^= 0x01;
    let tampered_signature = with(segments[0], segments[1], &b64::encode(&signature));
    let unknown_kid = key.forge(
        r#"{"alg":"RS256","kid":"not-a-key","typ":"JWT"}"#,
        &claims(""),
    );
    let no_kid = key.forge(r#"{"alg":"RS256","typ":"JWT"}"#, &claims(""));
    let alg_none = with(
        &b64::encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid)),
        segments[1],
        "",
    );
    // The classic confusion: HMAC keyed with the public key the JWKS publishes.
    let hs256 = {
        let jwks = server.http_jwks().await;
        let public = serde_json::to_vec(&jwks["keys"][0]).unwrap();
        let header = b64::encode(format!(
            r#"{{"alg":"HS256","kid":"{}","typ":"JWT"}}"#,
            key.kid
        ));
        let input = format!("{header}.{}", segments[1]);
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public),
            input.as_bytes(),
        );
        format!("{input}.{}", b64::encode(mac.as_ref()))
    };
    let lower_alg = key.forge(
        &format!(r#"{{"alg":"rs256","kid":"{}"}}"#, key.kid),
        &claims(""),
    );
    let expired = key.forge(
        &key.header(),
        &format!(
            r#"{{"iss":"{iss}","sub":"svc","iat":{},"exp":{}}}"#,
            t - 600,
            t - 31
        ),
    );
    let within_leeway = key.forge(
        &key.header(),
        &format!(
            r#"{{"iss":"{iss}","sub":"svc","iat":{},"exp":{}}}"#,
            t - 600,
            t - 5
        ),
    );
    let not_yet = key.forge(&key.header(), &claims(&format!(r#","nbf":{}"#, t + 120)));
    let wrong_iss = key.forge(
        &key.header(),
        &format!(
            r#"{{"iss":"https://evil.example","sub":"svc","aud":"api","exp":{}}}"#,
            t + 300
        ),
    );
    let no_exp = key.forge(&key.header(), &format!(r#"{{"iss":"{iss}","sub":"svc"}}"#));
    let string_exp = key.forge(
        &key.header(),
        &format!(r#"{{"iss":"{iss}","sub":"svc","exp":"{}"}}"#, t + 300),
    );
    let duplicate = key.forge(
        &key.header(),
        &format!(
            r#"{{"iss":"{iss}","sub":"svc","exp":{},"sub":"admin"}}"#,
            t + 300
        ),
    );
    let crit = key.forge(
        &format!(r#"{{"alg":"RS256","kid":"{}","crit":["exp"]}}"#, key.kid),
        &claims(""),
    );
    let typ = key.forge(
        &format!(r#"{{"alg":"RS256","kid":"{}","typ":"at+jwt"}}"#, key.kid),
        &claims(""),
    );
    let typ_lower = key.forge(
        &format!(r#"{{"alg":"RS256","kid":"{}","typ":"jwt"}}"#, key.kid),
        &claims(""),
    );
    let jku = key.forge(
        &format!(
            r#"{{"alg":"RS256","kid":"{}","jku":"https://evil.example/jwks.json"}}"#,
            key.kid
        ),
        &claims(""),
    );
    let payload_array = key.forge(&key.header(), "[1,2,3]");
    let padded = format!("{}=.{}.{}", segments[0], segments[1], segments[2]);
    let truncated_signature = with(
        segments[0],
        segments[1],
        &b64::encode(&b64::decode(segments[2]).unwrap()[..200]),
    );
    let oversized = key.forge(
        &key.header(),
        &claims(&format!(r#","pad":"{}""#, "x".repeat(9000))),
    );

    let cases: Vec<(&str, String, &str, R)> = vec![
        ("tampered payload", tampered_payload, "api", R::BadSignature),
        (
            "tampered signature",
            tampered_signature,
            "api",
            R::BadSignature,
        ),
        (
            "truncated signature",
            truncated_signature,
            "api",
            R::BadSignature,
        ),
        ("unknown kid", unknown_kid, "api", R::UnknownKey),
        ("no kid", no_kid, "api", R::UnknownKey),
        ("alg none", alg_none, "api", R::AlgorithmNotAllowed),
        (
            "HS256 keyed with the public key",
            hs256,
            "api",
            R::AlgorithmNotAllowed,
        ),
        (
            "alg in lower case",
            lower_alg,
            "api",
            R::AlgorithmNotAllowed,
        ),
        ("expired beyond leeway", expired, "", R::Expired),
        ("not yet valid", not_yet, "api", R::NotYetValid),
        ("wrong issuer", wrong_iss, "api", R::IssuerMismatch),
        ("wrong audience", good.clone(), "other", R::AudienceMismatch),
        ("no exp", no_exp, "", R::MissingClaim),
        ("exp a string", string_exp, "", R::Malformed),
        ("duplicate claim", duplicate, "", R::Malformed),
        ("crit header", crit, "api", R::UnsupportedHeader),
        ("typ not JWT", typ, "api", R::UnsupportedHeader),
        ("jku header", jku, "api", R::UnsupportedHeader),
        ("payload not an object", payload_array, "", R::Malformed),
        ("padded base64", padded, "api", R::Malformed),
        ("four segments", format!("{good}.x"), "api", R::Malformed),
        ("garbage", "definitely not a token".into(), "", R::Malformed),
        ("empty", String::new(), "", R::Malformed),
        ("over 8 KiB", oversized, "api", R::Malformed),
    ];
    let mut cases = cases;
    let h = |header: &str| key.forge(header, &claims(""));
    let kid = &key.kid;
    let raw = |header: &str, payload: &str, signature: &str| {
        format!(
            "{}.{}.{}",
            b64::encode(header),
            b64::encode(payload),
            signature
        )
    };
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let es_shaped = b64::encode([7u8; 64]);
    cases.extend([
        (
            "alg with a trailing space",
            h(&format!(r#"{{"alg":"RS256 ","kid":"{kid}"}}"#)),
            "api",
            R::AlgorithmNotAllowed,
        ),
        (
            "alg a number",
            h(&format!(r#"{{"alg":256,"kid":"{kid}"}}"#)),
            "api",
            R::Malformed,
        ),
        (
            "alg absent",
            h(&format!(r#"{{"kid":"{kid}"}}"#)),
            "api",
            R::Malformed,
        ),
        (
            "duplicate alg in the header",
            h(&format!(r#"{{"alg":"RS256","alg":"none","kid":"{kid}"}}"#)),
            "api",
            R::Malformed,
        ),
        (
            "kid with path characters",
            h(r#"{"alg":"RS256","kid":"../../../../etc/passwd"}"#),
            "api",
            R::UnknownKey,
        ),
        (
            "kid with SQL characters",
            h(r#"{"alg":"RS256","kid":"x' OR '1'='1' --"}"#),
            "api",
            R::UnknownKey,
        ),
        (
            "kid a number",
            h(r#"{"alg":"RS256","kid":1}"#),
            "api",
            R::Malformed,
        ),
        (
            "embedded jwk header",
            h(&format!(
                r#"{{"alg":"RS256","kid":"{kid}","jwk":{{"kty":"RSA","n":"AQAB","e":"AQAB"}}}}"#
            )),
            "api",
            R::UnsupportedHeader,
        ),
        (
            "x5u header",
            h(&format!(
                r#"{{"alg":"RS256","kid":"{kid}","x5u":"https://evil.example/cert.pem"}}"#
            )),
            "api",
            R::UnsupportedHeader,
        ),
        (
            "x5c header",
            h(&format!(
                r#"{{"alg":"RS256","kid":"{kid}","x5c":["MIIB"]}}"#
            )),
            "api",
            R::UnsupportedHeader,
        ),
        (
            "typ a number",
            h(&format!(r#"{{"alg":"RS256","kid":"{kid}","typ":1}}"#)),
            "api",
            R::UnsupportedHeader,
        ),
        (
            "header a JSON array",
            raw("[1]", &claims(""), &b64::encode([0u8; 256])),
            "api",
            R::Malformed,
        ),
        (
            "huge header over the limit",
            h(&format!(
                r#"{{"alg":"RS256","kid":"{kid}","x":"{}"}}"#,
                "a".repeat(8200)
            )),
            "api",
            R::Malformed,
        ),
        (
            "deep nesting in the payload",
            key.forge(&key.header(), &claims(&format!(r#","deep":{deep}"#))),
            "api",
            R::Malformed,
        ),
        (
            "an ES256-shaped signature on an RS256 key",
            with(segments[0], segments[1], &es_shaped),
            "api",
            R::BadSignature,
        ),
        (
            "empty signature",
            with(segments[0], segments[1], ""),
            "api",
            R::BadSignature,
        ),
        (
            "empty header segment",
            with("", segments[1], segments[2]),
            "api",
            R::Malformed,
        ),
        ("only dots", "..".into(), "", R::Malformed),
        (
            "whitespace inside a segment",
            format!("{} .{}.{}", segments[0], segments[1], segments[2]),
            "api",
            R::Malformed,
        ),
        (
            "a '+' (standard base64) in the signature",
            with(segments[0], segments[1], &format!("+{}", &segments[2][1..])),
            "api",
            R::Malformed,
        ),
        (
            "non-ASCII in a segment",
            format!("{}é.{}.{}", segments[0], segments[1], segments[2]),
            "api",
            R::Malformed,
        ),
        (
            "iat in the future beyond leeway",
            key.forge(
                &key.header(),
                &format!(
                    r#"{{"iss":"{iss}","sub":"svc","aud":"api","iat":{},"exp":{}}}"#,
                    t + 600,
                    t + 900
                ),
            ),
            "api",
            R::NotYetValid,
        ),
        (
            "aud a number",
            key.forge(
                &key.header(),
                &format!(r#"{{"iss":"{iss}","sub":"svc","aud":7,"exp":{}}}"#, t + 300),
            ),
            "api",
            R::Malformed,
        ),
        (
            "aud array holding a number",
            key.forge(
                &key.header(),
                &format!(
                    r#"{{"iss":"{iss}","sub":"svc","aud":["api",7],"exp":{}}}"#,
                    t + 300
                ),
            ),
            "api",
            R::Malformed,
        ),
        (
            "nbf a string",
            key.forge(&key.header(), &claims(&format!(r#","nbf":"{t}""#))),
            "api",
            R::Malformed,
        ),
        (
            "sub absent",
            key.forge(
                &key.header(),
                &format!(r#"{{"iss":"{iss}","aud":"api","exp":{}}}"#, t + 300),
            ),
            "api",
            R::MissingClaim,
        ),
        (
            "iss absent",
            key.forge(
                &key.header(),
                &format!(r#"{{"sub":"svc","aud":"api","exp":{}}}"#, t + 300),
            ),
            "api",
            R::MissingClaim,
        ),
    ]);
    // Times a protobuf Timestamp cannot carry (years 0001 to 9999): MALFORMED, never an
    // expires_at outside Timestamp's range.
    let with_times = |exp: &str, iat: &str| {
        key.forge(
            &key.header(),
            &format!(r#"{{"iss":"{iss}","sub":"svc","aud":"api","iat":{iat},"exp":{exp}}}"#),
        )
    };
    let latest = with_times("253402300799", &t.to_string());
    for (name, exp, iat) in [
        ("exp 1e300", "1e300".to_owned(), t.to_string()),
        ("exp 2^64", "18446744073709551616".to_owned(), t.to_string()),
        (
            "exp in the year 10000",
            "253402300800".to_owned(),
            t.to_string(),
        ),
        (
            "iat before the year 1",
            (t + 300).to_string(),
            "-62135596801".to_owned(),
        ),
    ] {
        cases.push((name, with_times(&exp, &iat), "api", R::Malformed));
    }
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (name, token, audience, reason) in cases {
        let rejection = local
            .verify_at(&token, Some(audience).filter(|a| !a.is_empty()), t)
            .expect_err(name);
        assert_eq!(
            format!("{:?}", rejection.reason),
            format!("{reason:?}"),
            "{name}: the client verifier disagrees: {rejection}"
        );
        let verdict = server.verify(&token, audience).await;
        assert!(!verdict.valid, "{name}: accepted");
        assert_eq!(verdict.reason, reason as i32, "{name}: {verdict:?}");
        assert!(
            verdict.subject.is_empty() && verdict.claims_json.is_empty(),
            "{name}: leaked claims"
        );
        assert!(!verdict.detail.is_empty(), "{name}: no detail");
    }
    // Within the leeway is still valid; typ is compared case-insensitively.
    assert!(server.verify(&within_leeway, "").await.valid);
    assert!(server.verify(&typ_lower, "api").await.valid);
    assert!(local.verify_at(&within_leeway, None, t).is_ok());
    assert!(local.verify_at(&typ_lower, Some("api"), t).is_ok());
    assert_eq!(
        local.verify_at(&latest, Some("api"), t).unwrap().expires_at,
        253_402_300_799
    );
    // The last second a Timestamp can carry is still a time.
    let verdict = server.verify(&latest, "api").await;
    assert!(verdict.valid, "{verdict:?}");
    assert_eq!(verdict.expires_at.unwrap().seconds, 253_402_300_799);
    server.stop().await;
}
