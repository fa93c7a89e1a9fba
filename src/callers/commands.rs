//! `token-authority policy check FILE` and `token-authority audit verify PATH`: what an
//! operator runs before deploying a policy, and after suspecting the audit log.

use std::path::Path;

use super::{audit, policy, reload};

/// Checks a policy file as the server would load it, then tries each issuer's JWKS source.
/// `Ok` holds the summary (with warnings for unreachable sources: the machine running the
/// check may not reach a cluster-internal issuer); `Err` every problem.
pub async fn policy_check(path: &Path) -> Result<String, String> {
    let active = reload::load(path, None, None, false)
        .await
        .map_err(|error| match error {
            reload::LoadError::Invalid { path, problems } => {
                let mut out = format!("{path}: {} problem(s)\n", problems.len());
                for problem in problems {
                    out.push_str(&format!("  {problem}\n"));
                }
                out
            }
            other => format!("{other}\n"),
        })?;
    let mut out = policy::summary(&active.policy);
    out.push_str(&widened_trust(&active.policy));
    for issuer in &active.issuers {
        match issuer.fetch().await {
            Ok(keys) => out.push_str(&format!(
                "  issuer {}: {} key(s) fetched\n",
                issuer.config.name,
                keys.len()
            )),
            Err(error) => out.push_str(&format!(
                "  warning: issuer {}: its keys cannot be fetched from here ({error}); the server retries when it needs them\n",
                issuer.config.name
            )),
        }
    }
    Ok(out)
}

/// Warnings for settings that make the authority trust more than callers' own credentials.
fn widened_trust(policy: &policy::Policy) -> String {
    let mut out = String::new();
    for issuer in policy
        .issuers
        .iter()
        .filter(|issuer| issuer.allow_own_issuer)
    {
        out.push_str(&format!(
            "  warning: issuer {}: allow_own_issuer = true: where {} is this authority's own --issuer, a token it minted for a subject proves that subject as a caller to whoever holds it\n",
            issuer.name, issuer.issuer
        ));
    }
    out
}

/// Verifies the hash chain of an audit log.
pub fn audit_verify(path: &Path) -> Result<String, String> {
    match audit::verify_file(path) {
        Ok(lines) => Ok(format!("{}: {lines} line(s), chain intact", path.display())),
        Err(error) => Err(format!("{}: chain broken at {error}", path.display())),
    }
}
