//! `token-authority policy check FILE` and `token-authority audit verify PATH`: what an
//! operator runs before deploying a policy, and after suspecting the audit log.

use std::path::Path;

use super::{audit, issuers::TrustedIssuer, policy, reload};

/// Checks a policy file as the server would load it, then tries each issuer's JWKS source.
/// `Ok` holds the summary, with a warning for each issuer whose keys cannot be fetched from
/// here: the machine running the check may not reach a cluster-internal issuer, nor hold
/// the files a pod mounts (`ca_file`, `bearer_token_file`). `Err` every problem of the file.
pub async fn policy_check(path: &Path) -> Result<String, String> {
    let text = std::fs::read(path).map_err(|source| {
        let error = reload::LoadError::Read {
            path: path.display().to_string(),
            source,
        };
        format!("{error}\n")
    })?;
    let policy = policy::Policy::parse(&String::from_utf8_lossy(&text)).map_err(|problems| {
        let mut out = format!("{}: {} problem(s)\n", path.display(), problems.len());
        for problem in problems {
            out.push_str(&format!("  {problem}\n"));
        }
        out
    })?;
    let mut out = policy::summary(&policy);
    out.push_str(&widened_trust(&policy));
    for config in &policy.issuers {
        let fetched = match TrustedIssuer::new(config.clone(), None) {
            Ok(issuer) => issuer.fetch().await,
            Err(error) => Err(error),
        };
        match fetched {
            Ok(keys) => out.push_str(&format!(
                "  issuer {}: {} key(s) fetched\n",
                config.name,
                keys.len()
            )),
            Err(error) => out.push_str(&format!(
                "  warning: issuer {}: its keys cannot be fetched from here ({error}); the server retries when it needs them\n",
                config.name
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
