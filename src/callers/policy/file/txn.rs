//! The policy file's `[txn]` table and `[[txn_rule]]`s, checked whole.

use std::collections::HashSet;

use globset::GlobSetBuilder;
use serde::Deserialize;

use super::{duration, glob};
use crate::callers::{
    issuers::IssuerConfig,
    policy::{
        txn::{TxnPolicy, TxnRule, DEFAULT_REQUEST_CONTEXT, TXN_DEFAULT_TTL, TXN_MAX_TTL},
        Problem,
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TxnToml {
    trust_domain: String,
    ttl: Option<String>,
    subject_issuers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TxnRuleToml {
    callers: Vec<String>,
    scopes: Vec<String>,
    #[serde(default)]
    context: Vec<String>,
    request_context: Option<Vec<String>>,
    max_ttl: Option<String>,
}

/// A life in seconds, positive and at most `TXN_MAX_TTL`.
fn txn_ttl(text: &str) -> Result<u64, String> {
    let seconds = duration(text)?;
    if seconds > TXN_MAX_TTL {
        return Err(format!(
            "{seconds}s is longer than the {TXN_MAX_TTL}s a Txn-Token may live"
        ));
    }
    Ok(seconds)
}

pub(super) fn check_txn(
    txn: Option<&TxnToml>,
    rules: &[TxnRuleToml],
    issuers: &[IssuerConfig],
    problems: &mut Vec<Problem>,
) -> Option<TxnPolicy> {
    let Some(txn) = txn else {
        if !rules.is_empty() {
            problems.push(Problem(
                "txn_rule: [[txn_rule]] needs a [txn] table naming the trust_domain".into(),
            ));
        }
        return None;
    };
    let before = problems.len();
    let trust_domain = txn.trust_domain.trim();
    if trust_domain.is_empty() || trust_domain != txn.trust_domain {
        problems.push(Problem(
            "txn.trust_domain: must be non-empty, without surrounding spaces".into(),
        ));
    }
    let ttl = match txn.ttl.as_deref().map(txn_ttl) {
        None => TXN_DEFAULT_TTL,
        Some(Ok(ttl)) => ttl,
        Some(Err(reason)) => {
            problems.push(Problem(format!("txn.ttl: {reason}")));
            TXN_DEFAULT_TTL
        }
    };
    let subject_issuers = txn
        .subject_issuers
        .as_ref()
        .map(|names| check_subject_issuers(names, issuers, problems));
    let rules = rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| check_rule(index, rule, problems))
        .collect();
    (problems.len() == before).then(|| TxnPolicy {
        trust_domain: txn.trust_domain.clone(),
        ttl,
        subject_issuers,
        rules,
    })
}

/// `[txn] subject_issuers`: `[[issuer]]` names, each once; several only when each bounds
/// its `subjects`, so that a `sub` can be told to come from one of them (the draft: a
/// Txn-Token's `sub` is unique in the trust domain).
fn check_subject_issuers(
    names: &[String],
    issuers: &[IssuerConfig],
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    let at = |problem: String| Problem(format!("txn.subject_issuers: {problem}"));
    if names.is_empty() {
        problems.push(at(
            "names no issuer (leave it out for every [[issuer]])".into()
        ));
    }
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            problems.push(at(format!("{name:?} is listed twice")));
        }
        match issuers.iter().find(|issuer| issuer.name == *name) {
            None => problems.push(at(format!("{name:?} names no [[issuer]]"))),
            Some(issuer) if names.len() > 1 && issuer.subjects.is_none() => problems.push(at(format!(
                "{name:?} has no subjects: with several subject issuers, each needs `subjects`, so that a sub names one subject in the trust domain"
            ))),
            Some(_) => {}
        }
    }
    names.to_vec()
}

fn check_rule(index: usize, rule: &TxnRuleToml, problems: &mut Vec<Problem>) -> Option<TxnRule> {
    let before = problems.len();
    let at =
        |field: &str, problem: String| Problem(format!("txn_rule[{index}].{field}: {problem}"));
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
    }
    if rule.scopes.is_empty() {
        problems.push(at("scopes", "names no scope".into()));
    }
    // RFC 6749 section 3.3: a scope token is one or more of %x21 / %x23-5B / %x5D-7E.
    for scope in &rule.scopes {
        let valid = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if !valid {
            problems.push(at(
                "scopes",
                format!("{scope:?} is not a scope token (RFC 6749 section 3.3)"),
            ));
        }
    }
    for (field, keys) in [
        ("context", Some(&rule.context)),
        ("request_context", rule.request_context.as_ref()),
    ] {
        let mut seen = HashSet::new();
        for key in keys.into_iter().flatten() {
            if key.trim().is_empty() {
                problems.push(at(field, "holds an empty entry".into()));
            } else if !seen.insert(key) {
                problems.push(at(field, format!("{key:?} is listed twice")));
            }
        }
    }
    let max_ttl = match rule.max_ttl.as_deref().map(txn_ttl) {
        None => TXN_MAX_TTL,
        Some(Ok(ttl)) => ttl,
        Some(Err(reason)) => {
            problems.push(at("max_ttl", reason));
            TXN_MAX_TTL
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
    Some(TxnRule {
        index,
        callers,
        scopes: rule.scopes.iter().cloned().collect(),
        context: rule.context.clone(),
        request_context: rule.request_context.clone().unwrap_or_else(|| {
            DEFAULT_REQUEST_CONTEXT
                .iter()
                .map(|key| (*key).to_owned())
                .collect()
        }),
        max_ttl,
    })
}

#[cfg(test)]
mod tests {
    use crate::callers::policy::Policy;

    fn problems(text: &str) -> Vec<String> {
        Policy::parse(text)
            .unwrap_err()
            .into_iter()
            .map(|p| p.0)
            .collect()
    }

    #[test]
    fn bad_txn_tables_are_refused_with_every_problem_named() {
        assert_eq!(
            problems("[[txn_rule]]\ncallers = [\"a\"]\nscopes = [\"s\"]\n"),
            ["txn_rule: [[txn_rule]] needs a [txn] table naming the trust_domain"]
        );
        assert_eq!(
            problems(
                r#"
[txn]
trust_domain = " example.internal"
ttl = "10m"

[[txn_rule]]
callers = []
scopes = ["ok", "has space", ""]
context = ["order_id", "order_id", ""]
request_context = ["req_ip", "req_ip"]
max_ttl = "6m"

[[txn_rule]]
callers = ["a[b"]
scopes = []
max_ttl = "1.5s"
"#
            ),
            [
                "txn.trust_domain: must be non-empty, without surrounding spaces",
                "txn.ttl: 600s is longer than the 300s a Txn-Token may live",
                "txn_rule[0].callers: names no caller",
                "txn_rule[0].scopes: \"has space\" is not a scope token (RFC 6749 section 3.3)",
                "txn_rule[0].scopes: \"\" is not a scope token (RFC 6749 section 3.3)",
                "txn_rule[0].context: \"order_id\" is listed twice",
                "txn_rule[0].context: holds an empty entry",
                "txn_rule[0].request_context: \"req_ip\" is listed twice",
                "txn_rule[0].max_ttl: 360s is longer than the 300s a Txn-Token may live",
                "txn_rule[1].callers: \"a[b\": unclosed character class; missing ']'",
                "txn_rule[1].scopes: names no scope",
                "txn_rule[1].max_ttl: must be a positive whole number of seconds",
            ]
        );
        assert_eq!(
            problems("[txn]\ntrust_domain = \"d\"\nissuer = \"x\"\n")[0],
            "line 3: unknown field `issuer`, expected one of `trust_domain`, `ttl`, `subject_issuers`"
        );
        let issuers = r#"
[[issuer]]
name = "idp"
issuer = "https://login.example.com"
jwks_file = "/dev/null"
audiences = ["api"]
subjects = ["user-*"]

[[issuer]]
name = "partner"
issuer = "https://partner.example.net"
jwks_file = "/dev/null"
audiences = ["api"]
"#;
        for (names, expected) in [
            ("[]", vec!["txn.subject_issuers: names no issuer (leave it out for every [[issuer]])"]),
            (r#"["idp", "idp"]"#, vec!["txn.subject_issuers: \"idp\" is listed twice"]),
            (r#"["ghost"]"#, vec!["txn.subject_issuers: \"ghost\" names no [[issuer]]"]),
            (
                r#"["idp", "partner"]"#,
                vec!["txn.subject_issuers: \"partner\" has no subjects: with several subject issuers, each needs `subjects`, so that a sub names one subject in the trust domain"],
            ),
        ] {
            let text = format!("{issuers}\n[txn]\ntrust_domain = \"d\"\nsubject_issuers = {names}\n");
            assert_eq!(problems(&text), expected, "{names}");
        }
        // One subject issuer needs no subjects; several that all bound theirs are fine.
        for names in [r#"["partner"]"#, r#"["idp"]"#] {
            let text =
                format!("{issuers}\n[txn]\ntrust_domain = \"d\"\nsubject_issuers = {names}\n");
            assert!(Policy::parse(&text).is_ok(), "{names}");
        }
        // Access tokens never pass for Txn-Tokens: none for the trust domain, none with
        // their claims.
        assert_eq!(
            problems(
                r#"
[txn]
trust_domain = "example.internal"

[[rule]]
callers = ["svc"]
audiences = ["ledger", "example.internal"]
claims = { tctx = "x" }
allow_claims = ["txn", "req_wl", "rctx"]
"#
            ),
            [
                "rule[0].claims: \"tctx\" is set by the authority and cannot be fixed by a rule",
                "rule[0].allow_claims: \"txn\" is set by the authority; callers can never set it",
                "rule[0].allow_claims: \"req_wl\" is set by the authority; callers can never set it",
                "rule[0].allow_claims: \"rctx\" is set by the authority; callers can never set it",
                "rule[0].audiences: \"example.internal\" is the [txn] trust_domain; only the token endpoint issues tokens for it (an access token for it could pass for a Txn-Token)",
            ]
        );
    }

    #[test]
    fn a_txn_rule_grants_the_first_matching_caller_every_scope_or_says_which_not() {
        use crate::callers::policy::txn::TxnRefusal;
        let policy = Policy::parse(
            r#"
[txn]
trust_domain = "example.internal"
ttl = "2m"

[[txn_rule]]
callers = ["spiffe://example.internal/ns/edge/*"]
scopes = ["orders.read"]

[[txn_rule]]
callers = ["spiffe://example.internal/ns/edge/*"]
scopes = ["orders.read", "orders.write"]
context = ["order_id"]
max_ttl = "30s"
"#,
        )
        .unwrap();
        let txn = policy.txn.unwrap();
        assert_eq!(
            (txn.trust_domain.as_str(), txn.ttl),
            ("example.internal", 120)
        );
        let edge = "spiffe://example.internal/ns/edge/sa/gw";
        let scopes = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            txn.decide(edge, &scopes(&["orders.read"])).unwrap().index,
            0
        );
        let both = txn
            .decide(edge, &scopes(&["orders.read", "orders.write"]))
            .unwrap();
        assert_eq!((both.index, both.max_ttl), (1, 30));
        assert_eq!(both.request_context, ["req_ip", "authn"]);
        assert_eq!(
            txn.decide(edge, &scopes(&["ledger.write"])).unwrap_err(),
            TxnRefusal::Scope {
                caller: edge.into(),
                scope: "ledger.write".into()
            }
        );
        assert_eq!(
            txn.decide(
                "spiffe://example.internal/ns/other/sa/x",
                &scopes(&["orders.read"])
            )
            .unwrap_err(),
            TxnRefusal::NoRule("spiffe://example.internal/ns/other/sa/x".into())
        );
    }
}
