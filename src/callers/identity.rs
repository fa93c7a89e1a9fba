//! Who is calling: the three ways a caller proves a name, each producing the caller name
//! that policy rules match.
//!
//! - A client certificate (mTLS): its SPIFFE ID (the one URI SAN of an X.509-SVID, checked
//!   against the SPIFFE ID rules), else its first DNS SAN (a host name). The TLS layer chained
//!   it to `--client-ca` at the handshake and checks that it still chains to the bundle in
//!   use at each request; here its validity period is checked against the request's time.
//! - `authorization: Bearer <jwt>` from a trusted issuer: verified offline against that
//!   issuer's JWKS with the same RFC 8725 rules as VerifyToken, plus the issuer's accepted
//!   audiences, algorithms and lifetime cap. The name is the token's `sub`. A token bound
//!   by `cnf` needs its certificate too; one carrying `act` is a delegation (`token_claims`).
//! - `authorization: Basic base64(id:secret)`: the policy keeps only the secret's SHA-256,
//!   compared in constant time. The name is `client:<id>`.
//!
//! `client:` is reserved for the last kind: a token or certificate naming itself
//! `client:...` is refused, so no issuer can mint a name that passes for a client.

use std::sync::Arc;

use serde_json::Value;

use super::{
    issuers::{IssuerConfig, IssuerKeys, TrustedIssuer},
    CallerSettings, StatusLists,
};
use token_authority_jose::{
    b64, crypto,
    jwt::{
        json::parse_object,
        verify::{self, Expectations, Reason, TokenType},
    },
};

mod authorization;
mod certificate;
mod token_claims;

#[cfg(test)]
pub(crate) use self::authorization::client_caller;
pub(crate) use self::authorization::{basic_caller, parse_authorization, Presented};
pub(crate) use self::certificate::certificate_caller;

pub(crate) use token_claims::carries_cnf;

/// Longest caller name accepted.
pub(crate) const MAX_NAME_BYTES: usize = 1024;

/// Why a credential does not prove a caller. Every variant is UNAUTHENTICATED; the text
/// says what is wrong with the credential, never its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("authorization: unsupported scheme; use Bearer or Basic")]
    Scheme,
    #[error("authorization: present one credential: the call carries more than one authorization header")]
    SeveralAuthorizations,
    #[error("authorization: Basic credentials are not base64(id:secret)")]
    BasicMalformed,
    #[error("the client id or secret is not valid")]
    BadSecret,
    #[error("the admin token is not valid")]
    AdminToken,
    #[error("bearer token: not the admin token, nor a JWT from a trusted issuer")]
    NotAJwt,
    #[error("bearer token: its issuer is not trusted")]
    UnknownIssuer,
    #[error("bearer token: {0}")]
    Rejected(String),
    #[error("client certificate: {0}")]
    Certificate(String),
    #[error("caller name {0}")]
    Name(&'static str),
}

/// How the caller proved its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CallerKind {
    Certificate,
    /// A token of the trusted issuer with this policy name.
    IssuerToken(String),
    /// A token of the trusted issuer `issuer` carrying `act`: `actor` (the chain, RFC 8693
    /// §4.1) acts for the caller. Only from an issuer with `allow_delegation`.
    Delegated {
        issuer: String,
        actor: Value,
    },
    ClientSecret,
}

impl CallerKind {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            CallerKind::Certificate => "mtls",
            CallerKind::IssuerToken(_) | CallerKind::Delegated { .. } => "jwt",
            CallerKind::ClientSecret => "secret",
        }
    }
}

/// A caller whose name was proven.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) kind: CallerKind,
    /// The client certificate, when the call came over mTLS.
    certificate: Option<ClientCertificate>,
}

/// The client certificate a caller proved its name with.
#[derive(Clone, Debug)]
struct ClientCertificate {
    der: Arc<[u8]>,
    /// Seconds from the request's time to its notAfter (at least 1).
    lifetime_left: u64,
    /// Its notAfter, unix seconds.
    not_after: u64,
}

impl Caller {
    /// Whether the call that proved this caller came with its client certificate.
    pub(crate) fn has_certificate(&self) -> bool {
        self.certificate.is_some()
    }

    /// The RFC 8705 thumbprint of the caller's certificate: base64url(SHA-256(DER)).
    pub(crate) fn certificate_thumbprint(&self) -> Option<String> {
        self.certificate
            .as_ref()
            .map(|certificate| b64::encode(crypto::sha256(&certificate.der)))
    }

    /// Seconds the caller's certificate has left, from the time of the request: a token
    /// bound to it must not outlive it.
    pub(crate) fn certificate_lifetime_left(&self) -> Option<u64> {
        self.certificate.as_ref().map(|c| c.lifetime_left)
    }

    /// The caller's certificate's notAfter (unix seconds).
    pub(crate) fn certificate_not_after(&self) -> Option<u64> {
        self.certificate.as_ref().map(|c| c.not_after)
    }

    /// The `act` of a token this caller gets for `subject` (RFC 8693 §4.1): the current
    /// actor outermost, the prior chain nested inside. A caller acting for another subject
    /// is the current actor; a delegated caller asking for itself keeps its chain.
    pub(crate) fn act_for(&self, subject: &str) -> Option<Value> {
        let prior = match &self.kind {
            CallerKind::Delegated { actor, .. } => Some(actor),
            _ => None,
        };
        match (subject == self.name, prior) {
            (true, prior) => prior.cloned(),
            (false, None) => Some(serde_json::json!({ "sub": self.name })),
            (false, Some(prior)) => Some(serde_json::json!({ "sub": self.name, "act": prior })),
        }
    }
}

/// A trusted issuer's token, verified with that issuer's keys and bounds (audiences,
/// lifetime, algorithms), and the issuer it came from. What the token proves is for the
/// caller to decide: a caller (`token_caller`) or a Txn-Token's subject. A token of the
/// authority's own (an `[[issuer]]` with `allow_own_issuer`) is checked against its status
/// lists (`own_status`) too: a token revoked one by one proves nothing anywhere.
pub(crate) async fn verify_issuer_token<'a>(
    issuers: &'a [Arc<TrustedIssuer>],
    token: &str,
    settings: &CallerSettings,
    own_status: Option<&StatusLists>,
    now: u64,
) -> Result<(verify::Verified, &'a Arc<TrustedIssuer>, Arc<IssuerKeys>), IdentityError> {
    let max_token_bytes = settings.max_token_bytes;
    if token.len() > max_token_bytes {
        return Err(IdentityError::Rejected(format!(
            "the token is longer than {max_token_bytes} bytes"
        )));
    }
    // The issuer is chosen by the unverified iss; the signature is then checked against
    // that issuer's keys only, and iss again, exactly, by the verifier.
    let iss = unverified_iss(token).ok_or(IdentityError::NotAJwt)?;
    let issuer = issuers
        .iter()
        .find(|issuer| issuer.config.issuer == iss)
        .ok_or(IdentityError::UnknownIssuer)?;
    let config = &issuer.config;
    // Our own tokens, minted for whatever subject a rule allowed, would otherwise become
    // that subject's identity in the hands of anyone holding one.
    if config.issuer == *settings.own_issuer && !config.allow_own_issuer {
        return Err(IdentityError::Rejected(format!(
            "its issuer is this authority's own --issuer, and the [[issuer]] {:?} does not set allow_own_issuer",
            config.name
        )));
    }
    let rules = verify::Policy {
        issuer: config.issuer.clone(),
        leeway: settings.leeway,
        max_token_bytes,
    };
    let audiences: Vec<&str> = config.audiences.iter().map(String::as_str).collect();
    let expect = Expectations {
        audiences: &audiences,
        max_lifetime: Some(config.max_token_lifetime),
        algorithms: Some(&config.algorithms),
        // A Txn-Token never proves who a workload is, nor stands for an access token (the
        // draft, "Transaction Tokens Are Not Authentication Credentials").
        // Another issuer's: RFC 9068's `at+jwt` too.
        token_type: TokenType::IssuerAccess,
    };
    let mut keys = issuer.keys();
    let mut verdict = verify::verify_with(token, &*keys, &rules, &expect, now);
    if let Err(rejection) = &verdict {
        if rejection.reason == Reason::UnknownKey {
            if let Some(kid) = unverified_kid(token) {
                if let Some(fetched) = issuer.refetch_for_unknown_kid(&kid).await {
                    verdict = verify::verify_with(token, &*fetched, &rules, &expect, now);
                    keys = fetched;
                }
            }
        }
    }
    let verified = verdict.map_err(|rejection| {
        IdentityError::Rejected(match rejection.reason {
            Reason::UnknownKey => "its kid is not a key of the issuer's JWKS".into(),
            _ => rejection.detail,
        })
    })?;
    if config.issuer == *settings.own_issuer {
        match own_status {
            Some(lists) => lists
                .check_fresh(&verified.claims)
                .await
                .map_err(|rejection| IdentityError::Rejected(rejection.detail))?,
            // As VerifyToken answers: a status no list here can say is no status known.
            None if verified.claims.has_status() => {
                return Err(IdentityError::Rejected(
                    "the token names a status list, and this authority keeps none".into(),
                ))
            }
            None => {}
        }
    }
    Ok((verified, issuer, keys))
}

/// `name`, a `sub` of `config`'s token, when the issuer may assert it (its `subjects`).
pub(crate) fn asserted_subject(
    config: &IssuerConfig,
    name: String,
) -> Result<String, IdentityError> {
    let name = checked_name(name)?;
    if let Some(bound) = &config.subjects {
        if !bound.allows(&name) {
            return Err(IdentityError::Rejected(format!(
                "its sub is not one the issuer {:?} may assert (its subjects)",
                config.name
            )));
        }
    }
    Ok(name)
}

/// The caller a trusted issuer's token proves; `certificate` is the call's client
/// certificate, which goes with a token only when the token's `cnf` names it. `settings`
/// gives the server's own leeway, token size limit and issuer.
pub(crate) async fn token_caller(
    issuers: &[Arc<TrustedIssuer>],
    token: &str,
    certificate: Option<Arc<[u8]>>,
    settings: &CallerSettings,
    own_status: Option<&StatusLists>,
    now: u64,
) -> Result<Caller, IdentityError> {
    let (verified, issuer, _) =
        verify_issuer_token(issuers, token, settings, own_status, now).await?;
    let config = &issuer.config;
    let bound =
        token_claims::check_confirmation(verified.claims.get("cnf"), certificate.as_deref())?;
    let kind = match verified.claims.get("act") {
        None => CallerKind::IssuerToken(config.name.clone()),
        Some(_) if !config.allow_delegation => {
            return Err(IdentityError::Rejected(format!(
                "it carries act: a delegation (RFC 8693), not a caller's own token, and the [[issuer]] {:?} does not set allow_delegation",
                config.name
            )))
        }
        Some(act) => CallerKind::Delegated {
            issuer: config.name.clone(),
            actor: token_claims::actor_chain(act)?,
        },
    };
    let name = asserted_subject(config, verified.subject)?;
    Ok(Caller {
        name,
        kind,
        // A bound token proved possession of the certificate: a rule with bind = "mtls"
        // binds the new token to it as well.
        // A bound token with an expired certificate proves nothing, like the certificate alone.
        certificate: certificate
            .filter(|_| bound)
            .map(|der| certificate::valid_certificate(der, now))
            .transpose()?,
    })
}

fn checked_name(name: String) -> Result<String, IdentityError> {
    if name.is_empty() {
        return Err(IdentityError::Name("is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(IdentityError::Name("is longer than 1024 bytes"));
    }
    if name.chars().any(crate::authority::domain::is_invisible) {
        return Err(IdentityError::Name(
            "contains a control, format or line separator character",
        ));
    }
    if name.starts_with("client:") {
        return Err(IdentityError::Name(
            "starts with client:, which only client secrets may prove",
        ));
    }
    Ok(name)
}

fn segment_member(segment: Option<&str>, member: &str) -> Option<String> {
    let bytes = b64::decode(segment?).ok()?;
    parse_object(&bytes)
        .ok()?
        .get(member)?
        .as_str()
        .map(str::to_owned)
}

fn unverified_iss(token: &str) -> Option<String> {
    let mut segments = token.split('.');
    if token.split('.').count() != 3 {
        return None;
    }
    segments.next();
    segment_member(segments.next(), "iss")
}

fn unverified_kid(token: &str) -> Option<String> {
    segment_member(token.split('.').next(), "kid")
}

#[cfg(test)]
mod tests {
    use x509_parser::{certificate::X509Certificate, prelude::FromDer as _};

    use super::{certificate::certificate_name, *};

    /// A time inside rcgen's default validity (1975 to 4096).
    const NOW: u64 = 1_800_000_000;

    fn certificate(sans: Vec<rcgen::SanType>) -> Arc<[u8]> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        Arc::from(params.self_signed(&key).unwrap().der().to_vec())
    }

    #[test]
    fn certificate_names_prefer_spiffe_then_dns() {
        use rcgen::SanType;
        let uri = |s: &str| SanType::URI(s.try_into().unwrap());
        let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
        let cases = [
            (
                vec![
                    dns("api.payments.svc"),
                    uri("spiffe://prod.example/ns/payments/sa/api"),
                ],
                Ok("spiffe://prod.example/ns/payments/sa/api".to_owned()),
            ),
            (
                vec![
                    uri("https://example.com"),
                    dns("api.payments.svc"),
                    dns("second.svc"),
                ],
                Ok("api.payments.svc".to_owned()),
            ),
            (
                vec![uri("https://example.com")],
                Err(IdentityError::Certificate(
                    "has no spiffe:// URI SAN nor DNS SAN".into(),
                )),
            ),
            (
                vec![],
                Err(IdentityError::Certificate(
                    "has no spiffe:// URI SAN nor DNS SAN".into(),
                )),
            ),
        ];
        for (sans, expected) in cases {
            assert_eq!(certificate_name(&certificate(sans)), expected);
        }
        assert_eq!(
            certificate_name(b"not DER"),
            Err(IdentityError::Certificate("does not parse".into()))
        );
        let der = certificate(vec![uri("spiffe://prod.example/x")]);
        let caller = certificate_caller(Arc::clone(&der), NOW).unwrap();
        assert_eq!(caller.kind, CallerKind::Certificate);
        assert_eq!(
            caller.certificate_thumbprint().unwrap(),
            b64::encode(crypto::sha256(&der))
        );
    }

    /// Each hostile SAN set of the adversarial pass, with the message the caller gets.
    #[test]
    fn hostile_certificate_names_are_refused() {
        use rcgen::SanType;
        let uri = |s: &str| SanType::URI(s.try_into().unwrap());
        let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
        let spiffe = |why: &str| format!("client certificate: its SPIFFE ID {why}");
        let segment = "has a path segment of other than A-Z, a-z, 0-9, '.', '-' and '_'";
        let several = "client certificate: an X.509-SVID must have exactly one URI SAN, and this one has several";
        let not_host = "client certificate: its DNS SAN is not a host name (labels of a-z, 0-9 and -, joined by dots)";
        let empty_segment = "has an empty path segment (// or a trailing /)";
        let dot = "has a . or .. path segment";
        let scheme = "must start with spiffe:// (lowercase scheme, then an authority)";
        let long = format!("spiffe://prod.example/{}", "a".repeat(2040));
        let cases: Vec<(Vec<SanType>, String)> = vec![
            (
                vec![uri("spiffe://prod.example/ns/../sa/admin")],
                spiffe(dot),
            ),
            (vec![uri("spiffe://prod.example/ns/./sa")], spiffe(dot)),
            (
                vec![uri("spiffe://prod.example/ns/%2e%2e/sa")],
                spiffe("is percent-encoded"),
            ),
            (
                vec![uri("spiffe://prod.example/ns//sa")],
                spiffe(empty_segment),
            ),
            (
                vec![uri("spiffe://prod.example/ns/sa/")],
                spiffe(empty_segment),
            ),
            (vec![uri("spiffe://prod.example/")], spiffe(empty_segment)),
            (
                vec![uri("spiffe://prod.example/ns/sa?x#y")],
                spiffe("has a query or fragment"),
            ),
            (
                vec![uri("spiffe://prod.example/ns/sa#y")],
                spiffe("has a query or fragment"),
            ),
            (vec![uri("spiffe://prod.example/ns/a b")], spiffe(segment)),
            (vec![uri("spiffe://prod.example/ns/*")], spiffe(segment)),
            (vec![uri("spiffe://prod.example/ns/a+b")], spiffe(segment)),
            (
                vec![uri("spiffe://Prod.Example/ns/a")],
                spiffe("has a trust domain of other than a-z, 0-9, '.', '-' and '_'"),
            ),
            (
                vec![uri("spiffe://prod.example:8443/ns/a")],
                spiffe("has a port"),
            ),
            (
                vec![uri("spiffe://admin@prod.example/ns/a")],
                spiffe("has userinfo"),
            ),
            (
                vec![uri("spiffe:///ns/a")],
                spiffe("has an empty trust domain"),
            ),
            (
                vec![uri("spiffe://prod.example")],
                spiffe("has no path: a workload's ID names more than its trust domain"),
            ),
            (vec![uri("SPIFFE://prod.example/ns/a")], spiffe(scheme)),
            (vec![uri("spiffe:prod.example/ns/a")], spiffe(scheme)),
            (vec![uri(&long)], spiffe("is longer than 2048 bytes")),
            (
                vec![
                    uri("spiffe://prod.example/ns/a"),
                    uri("spiffe://prod.example/ns/admin"),
                ],
                several.into(),
            ),
            (
                vec![
                    uri("spiffe://prod.example/ns/a"),
                    uri("https://example.com"),
                ],
                several.into(),
            ),
            (
                vec![dns("system:serviceaccount:payments:api")],
                not_host.into(),
            ),
            (vec![dns("*.payments.svc")], not_host.into()),
            (vec![dns("-api.svc")], not_host.into()),
        ];
        for (sans, expected) in cases {
            let shown = format!("{sans:?}");
            let error = certificate_caller(certificate(sans), NOW).unwrap_err();
            assert_eq!(error.to_string(), expected, "{shown}");
        }
    }

    #[test]
    fn certificates_prove_a_caller_only_within_their_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://prod.example/a".try_into().unwrap(),
        )];
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 1, 2);
        let der: Arc<[u8]> = Arc::from(params.self_signed(&key).unwrap().der().to_vec());
        let not_before = 1_767_225_600; // 2026-01-01T00:00:00Z
        let not_after = not_before + 86_400;
        let at = |now| certificate_caller(Arc::clone(&der), now).map_err(|e| e.to_string());
        assert_eq!(
            at(not_before - 1).unwrap_err(),
            "client certificate: not valid before 2026-01-01T00:00:00Z (its notBefore)"
        );
        assert_eq!(
            at(not_before).unwrap().certificate_lifetime_left(),
            Some(86_400)
        );
        assert_eq!(
            at(not_after - 1).unwrap().certificate_lifetime_left(),
            Some(1)
        );
        for now in [not_after, not_after + 12] {
            assert_eq!(
                at(now).unwrap_err(),
                "client certificate: expired at 2026-01-02T00:00:00Z (its notAfter); reconnect with a renewed certificate"
            );
        }
    }

    /// A token bound to the certificate never outlives it: the ttl is capped at what the
    /// certificate has left, whether the ttl was asked for or the default.
    #[test]
    fn bound_tokens_are_capped_at_the_certificate_lifetime() {
        let policy = crate::callers::policy::Policy::parse(
            "[[rule]]\ncallers = [\"spiffe://prod.example/*\"]\naudiences = [\"a\"]\nmax_ttl = \"1h\"\nbind = \"mtls\"\n",
        )
        .unwrap();
        let der = certificate(vec![rcgen::SanType::URI(
            "spiffe://prod.example/a".try_into().unwrap(),
        )]);
        let (_, parsed) = X509Certificate::from_der(&der).unwrap();
        let not_after = u64::try_from(parsed.validity().not_after.timestamp()).unwrap();
        let caller = certificate_caller(Arc::clone(&der), not_after - 90).unwrap();
        for (ttl, ttl_is_default, granted) in [(3600, true, 90), (600, false, 90), (60, false, 60)]
        {
            let request = crate::authority::domain::IssueRequest {
                subject: caller.name.clone(),
                audiences: vec!["a".into()],
                ttl,
                ttl_is_default,
                claims: serde_json::Map::new(),
            };
            let grant = policy.decide(&caller, &request).unwrap();
            assert_eq!(grant.ttl, granted, "{ttl}");
            assert!(grant.claims.contains_key("cnf"));
        }
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(checked_name("svc".into()), Ok("svc".into()));
        assert_eq!(
            checked_name("client:batch".into()),
            Err(IdentityError::Name(
                "starts with client:, which only client secrets may prove"
            ))
        );
        assert_eq!(
            checked_name(String::new()),
            Err(IdentityError::Name("is empty"))
        );
        for hidden in [
            "a\nb",
            "a\u{2028}b",
            "a\u{2029}b",
            "ad\u{200b}min",
            "a\u{202e}b",
        ] {
            assert_eq!(
                checked_name(hidden.into()),
                Err(IdentityError::Name(
                    "contains a control, format or line separator character"
                )),
                "{hidden:?}"
            );
        }
        assert_eq!(
            checked_name("x".repeat(1025)),
            Err(IdentityError::Name("is longer than 1024 bytes"))
        );
    }
}
