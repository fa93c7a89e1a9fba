//! The policy file as written (TOML, unknown fields refused) and its checks: every problem
//! found, each naming its table and field, before a `Policy` is built from it.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use globset::GlobSetBuilder;
use serde::Deserialize;
use serde_json::{Map, Value};

mod issuers;
mod txn;

use self::{
    issuers::{check_issuers, IssuerToml},
    txn::{check_txn, TxnRuleToml, TxnToml},
};
use super::{glob, Client, Policy, Problem, Rule, StatusRule, SubjectPattern, RESERVED};

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
    txn: Option<TxnToml>,
    #[serde(default, rename = "txn_rule")]
    txn_rules: Vec<TxnRuleToml>,
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
    /// "required" or "forbidden"; absent: by `--status-min-ttl`.
    status: Option<String>,
}

impl Policy {
    /// Parses and checks `text`; every problem is reported.
    pub(crate) fn parse(text: &str) -> Result<Policy, Vec<Problem>> {
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
        let txn = check_txn(file.txn.as_ref(), &file.txn_rules, &issuers, &mut problems);
        if let Some(txn) = &txn {
            check_trust_domain_audience(&file.rules, &txn.trust_domain, &mut problems);
        }
        if problems.is_empty() {
            Ok(Policy {
                issuers,
                clients,
                rules,
                txn,
            })
        } else {
            Err(problems)
        }
    }
}

fn duration(text: &str) -> Result<u64, String> {
    let parsed: Duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if parsed.subsec_nanos() != 0 || parsed.as_secs() == 0 {
        return Err("must be a positive whole number of seconds".into());
    }
    Ok(parsed.as_secs())
}

fn check_clients(clients: &[ClientToml], problems: &mut Vec<Problem>) -> HashMap<String, Client> {
    let mut out = HashMap::new();
    for (i, client) in clients.iter().enumerate() {
        let at = |field: &str, problem: String| Problem(format!("client[{i}].{field}: {problem}"));
        if client.id.is_empty()
            || client.id.contains(':')
            || client
                .id
                .chars()
                .any(crate::authority::domain::is_invisible)
        {
            problems.push(at(
                "id",
                "must be non-empty, without ':', control, format or line separator characters"
                    .into(),
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
        if digest == token_authority_jose::crypto::sha256(b"") {
            // `printf %s "$UNSET" | sha256sum`: a client anyone can be.
            problems.push(at(
                "secret_sha256",
                "is the SHA-256 of the empty string; a client needs a secret".into(),
            ));
            continue;
        }
        if out.contains_key(&client.id) {
            problems.push(at("id", format!("{:?} is defined twice", client.id)));
            continue;
        }
        out.insert(
            client.id.clone(),
            Client {
                secret_sha256: digest,
            },
        );
    }
    out
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

/// An access token for the trust domain, from IssueToken, would pass for a Txn-Token with a
/// verifier that checks signature, `aud` and `exp` as the draft lists but not `typ`: only
/// the token endpoint issues for the trust domain.
fn check_trust_domain_audience(
    rules: &[RuleToml],
    trust_domain: &str,
    problems: &mut Vec<Problem>,
) {
    for (index, rule) in rules.iter().enumerate() {
        if rule
            .audiences
            .iter()
            .any(|audience| audience == trust_domain)
        {
            problems.push(Problem(format!(
                "rule[{index}].audiences: {trust_domain:?} is the [txn] trust_domain; only the token endpoint issues tokens for it (an access token for it could pass for a Txn-Token)"
            )));
        }
    }
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
        } else {
            match SubjectPattern::parse(&pattern) {
                Ok(parsed) => subjects.push(parsed),
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
    let status = match rule.status.as_deref() {
        None => StatusRule::ByTtl,
        Some("required") => StatusRule::Required,
        Some("forbidden") => StatusRule::Forbidden,
        Some(other) => {
            problems.push(at(
                "status",
                format!("{other:?} is not a choice; use \"required\" or \"forbidden\" (or leave it out: by --status-min-ttl)"),
            ));
            StatusRule::ByTtl
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
        status,
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

#[cfg(test)]
mod tests {
    use super::decode_hex;

    #[test]
    fn a_secret_digest_is_exactly_64_hex_digits() {
        let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(decode_hex(digest).unwrap()[0], 0x9f);
        assert_eq!(decode_hex(&digest.to_uppercase()), decode_hex(digest));
        assert_eq!(decode_hex(&format!(" {digest}\n")), decode_hex(digest));
        // A sign is not a digit: "+a" is not the byte 0x0a (u8::from_str_radix took it).
        assert_eq!(decode_hex(&"+a".repeat(32)), None);
        assert_eq!(decode_hex(&digest[..62]), None);
        assert_eq!(decode_hex(&format!("{digest}00")), None);
        assert_eq!(decode_hex(&digest.replace('9', "g")), None);
    }
}
