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

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    identity::Caller,
    issuers::{check_fetch_url, IssuerConfig, JwksSource, SubjectBound},
};
use crate::{crypto::Algorithm, domain::IssueRequest};

/// Claims a rule may neither fix nor let callers set: the authority sets them itself.
pub const RESERVED: [&str; 9] = [
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "act", "cnf",
];

/// The default cap on a caller token's total lifetime (`exp - iat`).
pub const DEFAULT_MAX_TOKEN_LIFETIME: u64 = 3600;

// The file as written. Unknown fields are errors: a misspelt `max_tl` must not silently
// lift a limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default, rename = "issuer")]
    issuers: Vec<IssuerToml>,
    #[serde(default, rename = "client")]
    clients: Vec<ClientToml>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerToml {
    name: String,
    issuer: String,
    jwks_uri: Option<String>,
    #[serde(default)]
    discovery: bool,
    jwks_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    audiences: Vec<String>,
    max_token_lifetime: Option<String>,
    algorithms: Option<Vec<String>>,
    subjects: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientToml {
    id: String,
    secret_sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    callers: Vec<String>,
    subjects: Option<Vec<String>>,
    #[serde(default)]
    audiences: Vec<String>,
    max_ttl: Option<String>,
    #[serde(default)]
    claims: toml::Table,
    #[serde(default)]
    allow_claims: Vec<String>,
    #[serde(default)]
    admin: bool,
    bind: Option<String>,
}

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
pub struct Client {
    pub id: String,
    pub secret_sha256: [u8; 32],
}

#[derive(Clone, Debug)]
enum SubjectPattern {
    /// Exactly the caller's name.
    Caller,
    /// A glob, possibly with `{caller}` inside.
    Glob(String),
    /// A glob without `{caller}`, compiled once.
    Fixed(GlobMatcher),
}

/// One `[[rule]]`, checked and compiled.
#[derive(Clone, Debug)]
pub struct Rule {
    /// 0-based position in the file.
    pub index: usize,
    callers: GlobSet,
    subjects: Vec<SubjectPattern>,
    audiences: HashSet<String>,
    /// Seconds.
    pub max_ttl: Option<u64>,
    claims: Map<String, Value>,
    allow_claims: HashSet<String>,
    pub admin: bool,
    pub bind_mtls: bool,
}

impl Rule {
    pub fn covers_caller(&self, name: &str) -> bool {
        self.callers.is_match(name)
    }

    fn covers_subject(&self, caller: &str, subject: &str) -> bool {
        self.subjects.iter().any(|pattern| match pattern {
            SubjectPattern::Caller => subject == caller,
            SubjectPattern::Fixed(glob) => glob.is_match(subject),
            SubjectPattern::Glob(text) => {
                let pattern = text.replace("{caller}", &globset::escape(caller));
                glob(&pattern).is_ok_and(|glob| glob.compile_matcher().is_match(subject))
            }
        })
    }
}

/// A checked policy.
#[derive(Clone, Debug)]
pub struct Policy {
    pub issuers: Vec<IssuerConfig>,
    pub clients: HashMap<String, Client>,
    pub rules: Vec<Rule>,
}

/// Why a request is refused: the field, never the policy's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
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
}

impl Refusal {
    /// The metrics label: which field was refused.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoRule(_) => "no_rule",
            Refusal::Subject { .. } => "subject",
            Refusal::NoAudience | Refusal::Audience { .. } => "audience",
            Refusal::Ttl { .. } => "ttl",
            Refusal::Claim { .. } => "claims",
            Refusal::Binding(_) => "cnf",
            Refusal::NotAdmin(_) => "not_admin",
        }
    }
}

/// What an allowed request gets beyond what it asked: its ttl and the claims the authority
/// adds (the rule's fixed claims, `act`, `cnf`).
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    /// The rule that allowed it (0-based); none when no policy is in force.
    pub rule: Option<usize>,
    pub ttl: u64,
    pub claims: Map<String, Value>,
}

impl Policy {
    /// Parses and checks `text`; every problem is reported.
    pub fn parse(text: &str) -> Result<Policy, Vec<Problem>> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            vec![Problem(format!("{at}{message}"))]
        })?;
        let mut problems = Vec::new();
        let issuers = check_issuers(&file.issuers, &mut problems);
        let clients = check_clients(&file.clients, &mut problems);
        let rules = file
            .rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| check_rule(index, rule, &clients, &mut problems))
            .collect();
        if problems.is_empty() {
            Ok(Policy {
                issuers,
                clients,
                rules,
            })
        } else {
            Err(problems)
        }
    }

    /// Whether `caller` may call the admin RPCs.
    pub fn allows_admin(&self, caller: &Caller) -> Result<(), Refusal> {
        if self
            .rules
            .iter()
            .any(|rule| rule.admin && rule.covers_caller(&caller.name))
        {
            Ok(())
        } else {
            Err(Refusal::NotAdmin(caller.name.clone()))
        }
    }

    /// Decides an IssueToken request of `caller`. `default_ttl` says whether the request
    /// left its ttl to the server (it is then capped at the rule's maximum).
    pub fn decide(&self, caller: &Caller, request: &IssueRequest) -> Result<Grant, Refusal> {
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
    let ttl = match rule.max_ttl {
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
        let Some(thumbprint) = caller.certificate_thumbprint() else {
            return Err((4, Refusal::Binding(name.clone())));
        };
        claims.insert("cnf".into(), serde_json::json!({ "x5t#S256": thumbprint }));
    }
    if request.subject != *name {
        // RFC 8693 section 4.1: the caller acts for the subject.
        claims.insert("act".into(), serde_json::json!({ "sub": name }));
    }
    Ok(Grant {
        rule: Some(rule.index),
        ttl,
        claims,
    })
}

fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(false).build()
}

fn duration(text: &str) -> Result<u64, String> {
    let parsed: Duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if parsed.subsec_nanos() != 0 || parsed.as_secs() == 0 {
        return Err("must be a positive whole number of seconds".into());
    }
    Ok(parsed.as_secs())
}

fn check_issuers(issuers: &[IssuerToml], problems: &mut Vec<Problem>) -> Vec<IssuerConfig> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut iss_values = HashSet::new();
    for (i, issuer) in issuers.iter().enumerate() {
        let at = |field: &str, problem: String| Problem(format!("issuer[{i}].{field}: {problem}"));
        let before = problems.len();
        if issuer.name.trim().is_empty() {
            problems.push(at("name", "is empty".into()));
        } else if !names.insert(issuer.name.clone()) {
            problems.push(at(
                "name",
                format!("{:?} is used by another issuer", issuer.name),
            ));
        }
        if issuer.issuer.trim().is_empty() {
            problems.push(at("issuer", "is empty".into()));
        } else if !iss_values.insert(issuer.issuer.clone()) {
            problems.push(at(
                "issuer",
                format!(
                    "{:?} is trusted twice; a token's iss must name one issuer",
                    issuer.issuer
                ),
            ));
        }
        let source = match (&issuer.jwks_uri, issuer.discovery, &issuer.jwks_file) {
            (Some(uri), false, None) => {
                if let Err(reason) = check_fetch_url(uri) {
                    problems.push(at("jwks_uri", reason));
                }
                Some(JwksSource::Uri(uri.clone()))
            }
            (None, true, None) => {
                if let Err(reason) = check_fetch_url(&issuer.issuer) {
                    problems.push(at("discovery", format!("the issuer URL: {reason}")));
                }
                Some(JwksSource::Discovery)
            }
            (None, false, Some(file)) => Some(JwksSource::File(file.clone())),
            _ => {
                problems.push(at(
                    "jwks_uri",
                    "give exactly one of jwks_uri, discovery = true, jwks_file".into(),
                ));
                None
            }
        };
        if issuer.bearer_token_file.is_some() && matches!(source, Some(JwksSource::File(_))) {
            problems.push(at(
                "bearer_token_file",
                "is only for fetching over HTTPS".into(),
            ));
        }
        if issuer.audiences.is_empty() {
            problems.push(at(
                "audiences",
                "is required: a token minted for another service must not work here".into(),
            ));
        }
        if issuer.audiences.iter().any(|a| a.trim().is_empty()) {
            problems.push(at("audiences", "holds an empty entry".into()));
        }
        let lifetime = match issuer.max_token_lifetime.as_deref().map(duration) {
            None => DEFAULT_MAX_TOKEN_LIFETIME,
            Some(Ok(seconds)) => seconds,
            Some(Err(reason)) => {
                problems.push(at("max_token_lifetime", reason));
                0
            }
        };
        let mut algorithms = Vec::new();
        match &issuer.algorithms {
            None => algorithms.extend_from_slice(Algorithm::ALL),
            Some(names) if names.is_empty() => {
                problems.push(at("algorithms", "names no algorithm".into()))
            }
            Some(names) => {
                for name in names {
                    match Algorithm::from_name(name) {
                        Some(alg) => algorithms.push(alg),
                        None => problems.push(at(
                            "algorithms",
                            format!("{name:?} is not one of RS256, PS256, ES256, EdDSA"),
                        )),
                    }
                }
            }
        }
        let subjects = issuer.subjects.as_ref().and_then(|patterns| {
            if patterns.is_empty() {
                problems.push(at("subjects", "names no subject".into()));
                return None;
            }
            let mut set = GlobSetBuilder::new();
            for pattern in patterns {
                match glob(pattern) {
                    Ok(glob) => {
                        set.add(glob);
                    }
                    Err(error) => {
                        problems.push(at("subjects", format!("{pattern:?}: {}", error.kind())))
                    }
                }
            }
            match set.build() {
                Ok(set) => Some(SubjectBound::new(patterns.clone(), set)),
                Err(error) => {
                    problems.push(at("subjects", error.to_string()));
                    None
                }
            }
        });
        if let (Some(source), true) = (source, problems.len() == before) {
            out.push(IssuerConfig {
                name: issuer.name.clone(),
                issuer: issuer.issuer.clone(),
                source,
                ca_file: issuer.ca_file.clone(),
                bearer_token_file: issuer.bearer_token_file.clone(),
                audiences: issuer.audiences.clone(),
                max_token_lifetime: lifetime,
                algorithms,
                subjects,
            });
        }
    }
    out
}

fn check_clients(clients: &[ClientToml], problems: &mut Vec<Problem>) -> HashMap<String, Client> {
    let mut out = HashMap::new();
    for (i, client) in clients.iter().enumerate() {
        let at = |field: &str, problem: String| Problem(format!("client[{i}].{field}: {problem}"));
        if client.id.is_empty()
            || client.id.contains(':')
            || client.id.chars().any(char::is_control)
        {
            problems.push(at(
                "id",
                "must be non-empty, without ':' or control characters".into(),
            ));
            continue;
        }
        let digest = decode_hex(&client.secret_sha256);
        let Some(digest) = digest else {
            problems.push(at(
                "secret_sha256",
                "must be 64 hex digits (sha256sum of the secret)".into(),
            ));
            continue;
        };
        if out.contains_key(&client.id) {
            problems.push(at("id", format!("{:?} is defined twice", client.id)));
            continue;
        }
        out.insert(
            client.id.clone(),
            Client {
                id: client.id.clone(),
                secret_sha256: digest,
            },
        );
    }
    out
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn check_rule(
    index: usize,
    rule: &RuleToml,
    clients: &HashMap<String, Client>,
    problems: &mut Vec<Problem>,
) -> Option<Rule> {
    let before = problems.len();
    let at = |field: &str, problem: String| Problem(format!("rule[{index}].{field}: {problem}"));
    if rule.callers.is_empty() {
        problems.push(at("callers", "names no caller".into()));
    }
    let mut callers = GlobSetBuilder::new();
    for pattern in &rule.callers {
        match glob(pattern) {
            Ok(glob) => {
                callers.add(glob);
            }
            Err(e) => problems.push(at("callers", format!("{pattern:?}: {}", e.kind()))),
        }
        if let Some(id) = pattern.strip_prefix("client:") {
            let is_glob = id.contains(['*', '?', '[', '{']);
            if !is_glob && !clients.contains_key(id) {
                problems.push(at(
                    "callers",
                    format!("{pattern:?} names a client no [[client]] defines"),
                ));
            }
        }
    }
    let mut subjects = Vec::new();
    for pattern in rule
        .subjects
        .clone()
        .unwrap_or_else(|| vec!["{caller}".into()])
    {
        if pattern.trim().is_empty() {
            problems.push(at("subjects", "holds an empty entry".into()));
        } else if pattern == "{caller}" {
            subjects.push(SubjectPattern::Caller);
        } else if pattern.contains("{caller}") {
            match glob(&pattern.replace("{caller}", "caller")) {
                Ok(_) => subjects.push(SubjectPattern::Glob(pattern)),
                Err(e) => problems.push(at("subjects", format!("{pattern:?}: {}", e.kind()))),
            }
        } else {
            match glob(&pattern) {
                Ok(glob) => subjects.push(SubjectPattern::Fixed(glob.compile_matcher())),
                Err(e) => problems.push(at("subjects", format!("{pattern:?}: {}", e.kind()))),
            }
        }
    }
    if rule.subjects.as_ref().is_some_and(Vec::is_empty) {
        problems.push(at(
            "subjects",
            "names no subject (leave it out for {caller})".into(),
        ));
    }
    if rule.audiences.iter().any(|a| a.trim().is_empty()) {
        problems.push(at("audiences", "holds an empty entry".into()));
    }
    let max_ttl = match rule.max_ttl.as_deref().map(duration) {
        None => None,
        Some(Ok(seconds)) => Some(seconds),
        Some(Err(reason)) => {
            problems.push(at("max_ttl", reason));
            None
        }
    };
    let mut claims = Map::new();
    for (name, value) in &rule.claims {
        if RESERVED.contains(&name.as_str()) {
            problems.push(at(
                "claims",
                format!("{name:?} is set by the authority and cannot be fixed by a rule"),
            ));
            continue;
        }
        match toml_to_json(value) {
            Some(json) => {
                claims.insert(name.clone(), json);
            }
            None => problems.push(at(
                "claims",
                format!("{name:?} holds a TOML date-time, which JSON cannot carry; quote it"),
            )),
        }
    }
    let mut allow_claims = HashSet::new();
    for name in &rule.allow_claims {
        if RESERVED.contains(&name.as_str()) {
            problems.push(at(
                "allow_claims",
                format!("{name:?} is set by the authority; callers can never set it"),
            ));
        } else if claims.contains_key(name) {
            problems.push(at(
                "allow_claims",
                format!("{name:?} is also fixed in claims; a rule cannot both fix and free it"),
            ));
        } else {
            allow_claims.insert(name.clone());
        }
    }
    let bind_mtls = match rule.bind.as_deref() {
        None => false,
        Some("mtls") => true,
        Some(other) => {
            problems.push(at(
                "bind",
                format!("{other:?} is not a binding; the only one is \"mtls\""),
            ));
            false
        }
    };
    if problems.len() > before {
        return None;
    }
    let callers = match callers.build() {
        Ok(set) => set,
        Err(e) => {
            problems.push(at("callers", e.to_string()));
            return None;
        }
    };
    Some(Rule {
        index,
        callers,
        subjects,
        audiences: rule.audiences.iter().cloned().collect(),
        max_ttl,
        claims,
        allow_claims,
        admin: rule.admin,
        bind_mtls,
    })
}

fn toml_to_json(value: &toml::Value) -> Option<Value> {
    Some(match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number)?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(_) => return None,
        toml::Value::Array(items) => {
            Value::Array(items.iter().map(toml_to_json).collect::<Option<_>>()?)
        }
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| Some((k.clone(), toml_to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// A one-paragraph summary for `policy check`.
pub fn summary(policy: &Policy) -> String {
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
            "  rule[{}]: max_ttl {}, admin {}, bind {}\n",
            rule.index,
            rule.max_ttl
                .map_or("server's".to_owned(), |s| format!("{s}s")),
            rule.admin,
            if rule.bind_mtls { "mtls" } else { "none" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callers::identity::client_caller;

    const HEX: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

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
            ("[[rule]]\ncallers = [\"a\"]\nmax_tl = \"1m\"\n".into(), vec!["line 3: unknown field `max_tl`, expected one of `callers`, `subjects`, `audiences`, `max_ttl`, `claims`, `allow_claims`, `admin`, `bind`"]),
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
                format!("[[client]]\nid = \"a:b\"\nsecret_sha256 = \"{HEX}\"\n[[client]]\nid = \"x\"\nsecret_sha256 = \"abc\"\n[[client]]\nid = \"y\"\nsecret_sha256 = \"{HEX}\"\n[[client]]\nid = \"y\"\nsecret_sha256 = \"{HEX}\"\n"),
                vec![
                    "client[0].id: must be non-empty, without ':' or control characters",
                    "client[1].secret_sha256: must be 64 hex digits (sha256sum of the secret)",
                    "client[3].id: \"y\" is defined twice",
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
                id: "x".into(),
                secret_sha256: crate::crypto::sha256(b"s"),
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
        assert!(policy
            .decide(&caller("*"), &ask("other-x", &["a"], None, &[]))
            .is_err());
    }
}
