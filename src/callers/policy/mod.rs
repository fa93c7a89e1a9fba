//! The policy: which callers may get which tokens. Read from a TOML file the platform team
//! writes, checked whole (every problem reported, each naming its table and field), and
//! only then used: a file with any problem is refused as a whole.
//!
//! Deny by default: a request is allowed only when one rule covers all of it (the caller,
//! the subject, every audience, the ttl, every claim the caller sets, the binding). When no
//! rule does, the refusal names the field of the rule that came closest, never the policy.
//!
//! Caller and subject patterns are globs (`globset`: `*`, `?`, `[abc]`, `{a,b}`) matched
//! against the whole name. `*` matches any run of characters, `/` included, so
//! `spiffe://prod.example/ns/payments/*` covers every workload of that namespace
//! (`.../ns/payments/sa/api`), as SPIFFE IDs are laid out. In subjects, `{caller}` stands
//! for the caller's own name (escaped: a caller named `*` does not become a wildcard).

use std::collections::{HashMap, HashSet};

use globset::{Glob, GlobBuilder, GlobSet};
use serde_json::{Map, Value};

mod file;
mod subjects;
pub(crate) mod txn;

use self::subjects::SubjectPattern;
use super::{identity::Caller, issuers::IssuerConfig};
use crate::{authority::domain::IssueRequest, metrics::DecisionOutcome};

/// Claims a rule may neither fix nor let callers set: the authority sets them itself (the
/// last four only in Txn-Tokens, which an access token must never pass for).
pub(crate) const RESERVED: [&str; 13] = [
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "act", "cnf", "txn", "tctx", "rctx", "req_wl",
];

/// The default cap on a caller token's total lifetime (`exp - iat`).
pub(crate) const DEFAULT_MAX_TOKEN_LIFETIME: u64 = 3600;

/// One problem of a policy file, naming where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem(pub String);

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client that authenticates with a secret; only the secret's SHA-256 is kept.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    pub(crate) secret_sha256: [u8; 32],
}

/// One `[[rule]]`, checked and compiled.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    /// 0-based position in the file.
    pub(crate) index: usize,
    callers: GlobSet,
    subjects: Vec<SubjectPattern>,
    audiences: HashSet<String>,
    /// Seconds.
    pub(crate) max_ttl: Option<u64>,
    claims: Map<String, Value>,
    allow_claims: HashSet<String>,
    pub(crate) admin: bool,
    pub(crate) bind_mtls: bool,
    pub(crate) status: StatusRule,
}

/// Whether a rule's tokens get a status (an index in a status list, revocable one by one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum StatusRule {
    /// When they live at least `--status-min-ttl`.
    #[default]
    ByTtl,
    /// Always, however short.
    Required,
    /// Never.
    Forbidden,
}

impl StatusRule {
    pub(crate) fn name(self) -> &'static str {
        match self {
            StatusRule::ByTtl => "by ttl",
            StatusRule::Required => "required",
            StatusRule::Forbidden => "forbidden",
        }
    }
}

impl Rule {
    pub(crate) fn covers_caller(&self, name: &str) -> bool {
        self.callers.is_match(name)
    }

    fn covers_subject(&self, caller: &str, subject: &str) -> bool {
        self.subjects
            .iter()
            .any(|pattern| pattern.covers(caller, subject))
    }
}

/// A checked policy.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) issuers: Vec<IssuerConfig>,
    pub(crate) clients: HashMap<String, Client>,
    pub(crate) rules: Vec<Rule>,
    /// `[txn]`: Transaction Tokens are issued only when it is there.
    pub(crate) txn: Option<txn::TxnPolicy>,
}

/// Why a request is refused: the field, never the policy's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("caller {0:?} is not allowed to issue tokens")]
    NoRule(String),
    #[error("subject: {subject:?} is not allowed for caller {caller:?}")]
    Subject { caller: String, subject: String },
    #[error("audience: at least one audience is required")]
    NoAudience,
    #[error("audience: {audience:?} is not allowed for caller {caller:?}")]
    Audience { caller: String, audience: String },
    #[error("ttl: {asked}s is above the {max}s allowed for caller {caller:?}")]
    Ttl {
        caller: String,
        asked: u64,
        max: u64,
    },
    #[error("claims_json: caller {caller:?} may not set the claim {claim:?}")]
    Claim { caller: String, claim: String },
    #[error("cnf: tokens for caller {0:?} are bound to its client certificate, and the call presented none")]
    Binding(String),
    #[error("caller {0:?} may not call admin RPCs")]
    NotAdmin(String),
    #[error("caller {0:?} may call admin RPCs only with its client certificate: its admin rule binds to mtls, and the call presented none")]
    AdminBinding(String),
}

impl Refusal {
    /// The metrics label: which field was refused.
    pub(crate) fn label(&self) -> DecisionOutcome {
        match self {
            Refusal::NoRule(_) => DecisionOutcome::NoRule,
            Refusal::Subject { .. } => DecisionOutcome::Subject,
            Refusal::NoAudience | Refusal::Audience { .. } => DecisionOutcome::Audience,
            Refusal::Ttl { .. } => DecisionOutcome::Ttl,
            Refusal::Claim { .. } => DecisionOutcome::Claims,
            Refusal::Binding(_) | Refusal::AdminBinding(_) => DecisionOutcome::Cnf,
            Refusal::NotAdmin(_) => DecisionOutcome::NotAdmin,
        }
    }
}

/// What an allowed request gets beyond what it asked: its ttl and the claims the authority
/// adds (the rule's fixed claims, `act`, `cnf`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Grant {
    /// The rule that allowed it (0-based); none when no policy is in force.
    pub(crate) rule: Option<usize>,
    pub(crate) ttl: u64,
    pub(crate) claims: Map<String, Value>,
    /// The latest `exp` the token may carry (unix seconds): a bound token's certificate's
    /// notAfter. The ttl is capped again at signing time, which may come later.
    pub(crate) expires_by: Option<u64>,
    /// Whether the token gets a status.
    pub(crate) status: StatusRule,
}

impl Policy {
    /// Whether `caller` may call the admin RPCs: a rule must grant admin and every one of
    /// its conditions must hold, the binding included (a rule's `bind` is not only about
    /// the tokens it issues).
    pub(crate) fn allows_admin(&self, caller: &Caller) -> Result<(), Refusal> {
        let mut unbound = false;
        for rule in self
            .rules
            .iter()
            .filter(|rule| rule.admin && rule.covers_caller(&caller.name))
        {
            if !rule.bind_mtls || caller.has_certificate() {
                return Ok(());
            }
            unbound = true;
        }
        Err(if unbound {
            Refusal::AdminBinding(caller.name.clone())
        } else {
            Refusal::NotAdmin(caller.name.clone())
        })
    }

    /// Decides an IssueToken request of `caller`. `default_ttl` says whether the request
    /// left its ttl to the server (it is then capped at the rule's maximum).
    pub(crate) fn decide(&self, caller: &Caller, request: &IssueRequest) -> Result<Grant, Refusal> {
        let mut closest: Option<(usize, Refusal)> = None;
        for rule in self
            .rules
            .iter()
            .filter(|rule| rule.covers_caller(&caller.name))
        {
            match judge(rule, caller, request) {
                Ok(grant) => return Ok(grant),
                Err((progress, refusal)) => {
                    if closest.as_ref().is_none_or(|(best, _)| progress > *best) {
                        closest = Some((progress, refusal));
                    }
                }
            }
        }
        Err(closest.map_or_else(|| Refusal::NoRule(caller.name.clone()), |(_, r)| r))
    }
}

/// Checks one rule against a request, in field order; on refusal also says how many
/// fields passed, so the closest rule's refusal can be reported.
fn judge(rule: &Rule, caller: &Caller, request: &IssueRequest) -> Result<Grant, (usize, Refusal)> {
    let name = &caller.name;
    if !rule.covers_subject(name, &request.subject) {
        return Err((
            0,
            Refusal::Subject {
                caller: name.clone(),
                subject: request.subject.clone(),
            },
        ));
    }
    if request.audiences.is_empty() {
        return Err((1, Refusal::NoAudience));
    }
    if let Some(audience) = request
        .audiences
        .iter()
        .find(|audience| !rule.audiences.contains(*audience))
    {
        return Err((
            1,
            Refusal::Audience {
                caller: name.clone(),
                audience: audience.clone(),
            },
        ));
    }
    let mut ttl = match rule.max_ttl {
        Some(max) if request.ttl > max && request.ttl_is_default => max,
        Some(max) if request.ttl > max => {
            return Err((
                2,
                Refusal::Ttl {
                    caller: name.clone(),
                    asked: request.ttl,
                    max,
                },
            ))
        }
        _ => request.ttl,
    };
    if let Some(claim) = request
        .claims
        .keys()
        .find(|claim| !rule.allow_claims.contains(*claim))
    {
        return Err((
            3,
            Refusal::Claim {
                caller: name.clone(),
                claim: claim.clone(),
            },
        ));
    }
    let mut claims = rule.claims.clone();
    if rule.bind_mtls {
        let (Some(thumbprint), Some(left)) = (
            caller.certificate_thumbprint(),
            caller.certificate_lifetime_left(),
        ) else {
            return Err((4, Refusal::Binding(name.clone())));
        };
        // A token bound to the certificate never outlives it: capped, not refused, since the
        // caller cannot know how long the server counts its certificate as valid; the
        // response's expires_at says what it got.
        ttl = ttl.min(left);
        claims.insert("cnf".into(), serde_json::json!({ "x5t#S256": thumbprint }));
    }
    // RFC 8693 section 4.1: the caller acts for the subject; a delegated caller's chain nests.
    if let Some(act) = caller.act_for(&request.subject) {
        claims.insert("act".into(), act);
    }
    Ok(Grant {
        rule: Some(rule.index),
        ttl,
        claims,
        expires_by: rule
            .bind_mtls
            .then(|| caller.certificate_not_after())
            .flatten(),
        status: rule.status,
    })
}

fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    // Backslash escapes on every platform: `{caller}` relies on them.
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
}

/// A one-paragraph summary for `policy check`.
pub(crate) fn summary(policy: &Policy) -> String {
    let mut out = format!(
        "policy OK: {} issuer(s), {} client(s), {} rule(s)\n",
        policy.issuers.len(),
        policy.clients.len(),
        policy.rules.len()
    );
    for issuer in &policy.issuers {
        out.push_str(&format!(
            "  issuer {}: iss {}, audiences {:?}, max token lifetime {}s\n",
            issuer.name, issuer.issuer, issuer.audiences, issuer.max_token_lifetime
        ));
    }
    for rule in &policy.rules {
        out.push_str(&format!(
            "  rule[{}]: max_ttl {}, admin {}, bind {}{}\n",
            rule.index,
            rule.max_ttl
                .map_or("server's".to_owned(), |s| format!("{s}s")),
            rule.admin,
            if rule.bind_mtls { "mtls" } else { "none" },
            match rule.status {
                StatusRule::ByTtl => String::new(),
                other => format!(", status {}", other.name()),
            }
        ));
    }
    if let Some(txn) = &policy.txn {
        out.push_str(&format!(
            "  txn ({}): trust domain {}, ttl {}s, {} txn_rule(s)\n",
            crate::authority::txn::DRAFT,
            txn.trust_domain,
            txn.ttl,
            txn.rules.len()
        ));
        for rule in &txn.rules {
            let mut scopes: Vec<&str> = rule.scopes.iter().map(String::as_str).collect();
            scopes.sort_unstable();
            out.push_str(&format!(
                "  txn_rule[{}]: scopes {scopes:?}, context {:?}, request_context {:?}, max_ttl {}s\n",
                rule.index, rule.context, rule.request_context, rule.max_ttl
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callers::identity::client_caller;

    const HEX: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
    /// `printf '' | sha256sum`
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn problems(text: &str) -> Vec<String> {
        Policy::parse(text)
            .unwrap_err()
            .into_iter()
            .map(|p| p.0)
            .collect()
    }

    #[test]
    fn bad_policies_are_refused_with_every_problem_named() {
        let issuer = r#"
            [[issuer]]
            name = "cluster"
            issuer = "https://kubernetes.default.svc"
            jwks_uri = "https://kubernetes.default.svc/openid/v1/jwks"
            audiences = ["token-authority"]
        "#;
        let cases: Vec<(String, Vec<&str>)> = vec![
            ("[[rule]]\ncallers = [\"a\"]\nmax_tl = \"1m\"\n".into(), vec!["line 3: unknown field `max_tl`, expected one of `callers`, `subjects`, `audiences`, `max_ttl`, `claims`, `allow_claims`, `admin`, `bind`, `status`"]),
            ("[[rule]]\ncallers = \"a\"\n".into(), vec!["line 2: invalid type: string \"a\", expected a sequence"]),
            (
                r#"[[issuer]]
                name = ""
                issuer = "https://i"
                jwks_uri = "http://issuer.example/jwks"
                bearer_token_file = "/t"
                max_token_lifetime = "soon"
                algorithms = ["HS256"]
                "#.into(),
                vec![
                    "issuer[0].name: is empty",
                    "issuer[0].jwks_uri: plain http is allowed only to a loopback host; use https",
                    "issuer[0].audiences: is required: a token minted for another service must not work here",
                    "issuer[0].max_token_lifetime: expected number at 0",
                    "issuer[0].algorithms: \"HS256\" is not one of RS256, PS256, ES256, EdDSA",
                ],
            ),
            (
                format!("{issuer}{}", issuer.replace("name = \"cluster\"", "name = \"cluster\"\ndiscovery = true")),
                vec![
                    "issuer[1].name: \"cluster\" is used by another issuer",
                    "issuer[1].issuer: \"https://kubernetes.default.svc\" is trusted twice; a token's iss must name one issuer",
                    "issuer[1].jwks_uri: give exactly one of jwks_uri, discovery = true, jwks_file",
                ],
            ),
            (
                format!("{issuer}subjects = []\n{}subjects = [\"system:serviceaccount:[x\"]\n", issuer.replace("cluster", "spire").replace("kubernetes.default.svc", "spire.example")),
                vec![
                    "issuer[0].subjects: names no subject",
                    "issuer[1].subjects: \"system:serviceaccount:[x\": unclosed character class; missing ']'",
                ],
            ),
            (
                format!("[[client]]\nid = \"a:b\"\nsecret_sha256 = \"{HEX}\"\n[[client]]\nid = \"x\"\nsecret_sha256 = \"abc\"\n[[client]]\nid = \"y\"\nsecret_sha256 = \"{HEX}\"\n[[client]]\nid = \"y\"\nsecret_sha256 = \"{HEX}\"\n[[client]]\nid = \"z\"\nsecret_sha256 = \"{EMPTY}\"\n[[client]]\nid = \"ops\\u2028forged\"\nsecret_sha256 = \"{HEX}\"\n"),
                vec![
                    "client[0].id: must be non-empty, without ':', control, format or line separator characters",
                    "client[1].secret_sha256: must be 64 hex digits (sha256sum of the secret)",
                    "client[3].id: \"y\" is defined twice",
                    "client[4].secret_sha256: is the SHA-256 of the empty string; a client needs a secret",
                    "client[5].id: must be non-empty, without ':', control, format or line separator characters",
                ],
            ),
            (
                r#"[[rule]]
                callers = ["client:ghost", "spiffe://x/[a"]
                subjects = []
                audiences = [""]
                max_ttl = "0s"
                claims = { sub = "x", when = 1979-05-27T07:32:00Z, tenant = "p" }
                allow_claims = ["act", "tenant"]
                bind = "dpop"
                "#.into(),
                vec![
                    "rule[0].callers: \"client:ghost\" names a client no [[client]] defines",
                    "rule[0].callers: \"spiffe://x/[a\": unclosed character class; missing ']'",
                    "rule[0].subjects: names no subject (leave it out for {caller})",
                    "rule[0].audiences: holds an empty entry",
                    "rule[0].max_ttl: must be a positive whole number of seconds",
                    "rule[0].claims: \"sub\" is set by the authority and cannot be fixed by a rule",
                    "rule[0].claims: \"when\" holds a TOML date-time, which JSON cannot carry; quote it",
                    "rule[0].allow_claims: \"act\" is set by the authority; callers can never set it",
                    "rule[0].allow_claims: \"tenant\" is also fixed in claims; a rule cannot both fix and free it",
                    "rule[0].bind: \"dpop\" is not a binding; the only one is \"mtls\"",
                ],
            ),
            ("[[rule]]\ncallers = []\n".into(), vec!["rule[0].callers: names no caller"]),
        ];
        for (text, expected) in cases {
            assert_eq!(problems(&text), expected, "{text}");
        }
    }

    fn policy() -> Policy {
        Policy::parse(&format!(
            r#"
            [[client]]
            id = "legacy-batch"
            secret_sha256 = "{HEX}"

            [[rule]]
            callers = ["spiffe://prod.example/ns/payments/*", "system:serviceaccount:payments:*", "client:legacy-batch"]
            audiences = ["ledger", "orders"]
            max_ttl = "15m"
            claims = {{ tenant = "payments", tier = 2 }}
            allow_claims = ["scope"]

            [[rule]]
            callers = ["system:serviceaccount:gateway:api"]
            subjects = ["user:*", "{{caller}}/worker-*"]
            audiences = ["orders"]
            admin = true
            "#
        ))
        .unwrap()
    }

    fn caller(name: &str) -> Caller {
        // The decision reads only the name (and the certificate, for bind).
        let clients = HashMap::from([(
            "x".to_owned(),
            Client {
                secret_sha256: token_authority_jose::crypto::sha256(b"s"),
            },
        )]);
        let mut caller = client_caller(&clients, "x", "s").unwrap();
        caller.name = name.into();
        caller
    }

    fn ask(subject: &str, audiences: &[&str], ttl: Option<u64>, claims: &[&str]) -> IssueRequest {
        IssueRequest {
            subject: subject.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            ttl: ttl.unwrap_or(3600),
            ttl_is_default: ttl.is_none(),
            claims: claims
                .iter()
                .map(|c| (c.to_string(), Value::from(1)))
                .collect(),
        }
    }

    #[test]
    fn decisions_table() {
        let policy = policy();
        let sa = "system:serviceaccount:payments:api";
        let spiffe = "spiffe://prod.example/ns/payments/api";
        let gateway = "system:serviceaccount:gateway:api";
        let refused = |name: &str, request: IssueRequest| {
            policy
                .decide(&caller(name), &request)
                .unwrap_err()
                .to_string()
        };
        let cases = [
            (sa, ask(sa, &["ledger"], Some(60), &["scope"]), Ok((60, None))),
            (spiffe, ask(spiffe, &["ledger", "orders"], None, &[]), Ok((900, None))),
            ("client:legacy-batch", ask("client:legacy-batch", &["orders"], Some(900), &[]), Ok((900, None))),
            (gateway, ask("user:alice", &["orders"], Some(60), &[]), Ok((60, Some(gateway)))),
            (gateway, ask(&format!("{gateway}/worker-1"), &["orders"], None, &[]), Ok((3600, Some(gateway)))),
            (gateway, ask(gateway, &["orders"], None, &[]), Err(format!("subject: \"{gateway}\" is not allowed for caller \"{gateway}\""))),
            ("spiffe://prod.example/ns/payments/sa/b", ask("spiffe://prod.example/ns/payments/sa/b", &["ledger"], None, &[]), Ok((900, None))),
            ("spiffe://prod.example/ns/billing/sa/b", ask("x", &["ledger"], None, &[]), Err("caller \"spiffe://prod.example/ns/billing/sa/b\" is not allowed to issue tokens".into())),
            ("spiffe://prod.example/ns/payments", ask("x", &["ledger"], None, &[]), Err("caller \"spiffe://prod.example/ns/payments\" is not allowed to issue tokens".into())),
            ("system:serviceaccount:billing:api", ask("x", &["ledger"], None, &[]), Err("caller \"system:serviceaccount:billing:api\" is not allowed to issue tokens".into())),
            (sa, ask("someone-else", &["ledger"], None, &[]), Err(format!("subject: \"someone-else\" is not allowed for caller \"{sa}\""))),
            (sa, ask(sa, &["ledger", "payroll"], None, &[]), Err(format!("audience: \"payroll\" is not allowed for caller \"{sa}\""))),
            (sa, ask(sa, &[], None, &[]), Err("audience: at least one audience is required".into())),
            (sa, ask(sa, &["ledger"], Some(901), &[]), Err(format!("ttl: 901s is above the 900s allowed for caller \"{sa}\""))),
            (sa, ask(sa, &["ledger"], None, &["role"]), Err(format!("claims_json: caller \"{sa}\" may not set the claim \"role\""))),
        ];
        for (name, request, expected) in cases {
            match expected {
                Ok((ttl, act)) => {
                    let grant = policy.decide(&caller(name), &request).unwrap();
                    assert_eq!(grant.ttl, ttl, "{name}");
                    assert_eq!(
                        grant.claims.get("act"),
                        act.map(|a| serde_json::json!({ "sub": a })).as_ref(),
                        "{name}"
                    );
                    let fixed = name != gateway;
                    assert_eq!(grant.claims.get("tenant").is_some(), fixed, "{name}");
                    assert!(!grant.claims.contains_key("cnf"));
                }
                Err(message) => assert_eq!(refused(name, request), message, "{name}"),
            }
        }
        assert!(policy.allows_admin(&caller(gateway)).is_ok());
        assert_eq!(
            policy.allows_admin(&caller(sa)).unwrap_err().to_string(),
            format!("caller \"{sa}\" may not call admin RPCs")
        );
    }

    #[test]
    fn bound_rules_need_a_certificate() {
        let policy = Policy::parse(
            "[[rule]]\ncallers = [\"spiffe://prod/*\"]\naudiences = [\"a\"]\nbind = \"mtls\"\n",
        )
        .unwrap();
        assert_eq!(
            policy
                .decide(&caller("spiffe://prod/x"), &ask("spiffe://prod/x", &["a"], None, &[]))
                .unwrap_err()
                .to_string(),
            "cnf: tokens for caller \"spiffe://prod/x\" are bound to its client certificate, and the call presented none"
        );
    }

    #[test]
    fn caller_names_are_escaped_inside_subject_globs() {
        let policy = Policy::parse(
            "[[rule]]\ncallers = [\"*\"]\nsubjects = [\"{caller}-*\"]\naudiences = [\"a\"]\n",
        )
        .unwrap();
        // A caller named `*` gets `*-x`, not every subject.
        assert!(policy
            .decide(&caller("*"), &ask("*-x", &["a"], None, &[]))
            .is_ok());
        assert_eq!(
            policy
                .decide(&caller("*"), &ask("other-x", &["a"], None, &[]))
                .unwrap_err()
                .to_string(),
            "subject: \"other-x\" is not allowed for caller \"*\""
        );
    }
}
