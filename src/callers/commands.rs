//! `token-authority policy check FILE` and `token-authority audit verify PATH`: what an
//! operator runs before deploying a policy, and after suspecting the audit log.

use std::path::Path;

use super::{audit, issuers::TrustedIssuer, policy, reload};
use crate::{config::pg_settings, config::AuditVerifyArgs, store::audit_heads, telemetry::chain};

/// Checks a policy file as the server would load it, then tries each issuer's JWKS source.
/// `Ok` holds the summary, with a warning for each issuer whose keys cannot be fetched from
/// here: the machine running the check may not reach a cluster-internal issuer, nor hold
/// the files a pod mounts (`ca_file`, `bearer_token_file`). `Err` every problem of the file.
pub(crate) async fn policy_check(path: &Path) -> Result<String, String> {
    let text = crate::config::read::regular_file(path, crate::config::read::DOCUMENT_MAX).map_err(
        |source| {
            let error = reload::LoadError::Read {
                path: path.display().to_string(),
                source,
            };
            format!("{error}\n")
        },
    )?;
    let policy = policy::Policy::parse(&String::from_utf8_lossy(&text)).map_err(|problems| {
        let mut out = format!("{}: {} problem(s)\n", path.display(), problems.len());
        for problem in problems {
            out.push_str(&format!("  {problem}\n"));
        }
        out
    })?;
    let mut out = policy::summary(&policy);
    out.push_str(&widened_trust(&policy));
    // All at once, as the server fetches them: one issuer that does not answer costs its
    // timeout once, not once per issuer after it.
    let mut fetches = tokio::task::JoinSet::new();
    for (index, config) in policy.issuers.iter().enumerate() {
        let config = config.clone();
        fetches.spawn(async move {
            let fetched = match TrustedIssuer::new(config, None) {
                Ok(issuer) => issuer.fetch().await,
                Err(error) => Err(error),
            };
            (index, fetched)
        });
    }
    let mut results: Vec<_> = fetches.join_all().await;
    results.sort_by_key(|(index, _)| *index);
    for (index, fetched) in results {
        let config = &policy.issuers[index];
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
    if let Some(txn) = &policy.txn {
        if txn.subject_issuers.is_none() && policy.issuers.len() > 1 {
            out.push_str(&format!(
                "  warning: [txn]: all {} [[issuer]]s supply subject tokens, and a sub two of them assert would name two subjects in one trust domain; name those that do in [txn] subject_issuers\n",
                policy.issuers.len()
            ));
        }
    }
    out
}

/// Verifies an audit log: its chain, with the key its MACs, with the keystore the recorded
/// head. `Ok` says what was checked and what could not be; `Err` names the first bad line.
pub(crate) async fn audit_verify(args: &AuditVerifyArgs) -> Result<String, String> {
    let shown = args.path.display();
    let key = args
        .audit_key_file
        .as_deref()
        .map(|path| {
            crate::store::file_modes::check_private(
                path,
                "audit key file",
                args.allow_group_readable_files,
            )
            .map_err(|e| e.to_string())?;
            audit::load_key(path).map_err(|e| e.to_string())
        })
        .transpose()
        .map_err(|error| format!("error: {error}"))?;
    let file = audit::file_id_of(&args.path).map_err(|error| format!("error: {error}"))?;
    let (head, missing) = match read_head(args, file.as_deref()).await {
        Err(error) => return Err(format!("error: cannot read the recorded head: {error}")),
        Ok(Lookup::Found(head)) => (Some(head), false),
        Ok(Lookup::Missing) => (None, true),
        Ok(Lookup::NotAsked) => (None, false),
    };
    // The chain first: a file whose head was cut has no head to find, and that is the
    // better report.
    let verified = audit::verify(&args.path, key.as_ref(), head.as_ref())
        .map_err(|error| format!("{shown}: chain broken at {error}"))?;
    if missing {
        return Err(format!(
            "{shown}: no head is recorded for this file (id {}) in the keystore given: it was not written by an authority over that keystore",
            file.unwrap_or_default()
        ));
    }
    let mut out = format!("{shown}: {} line(s), chain intact", verified.lines);
    if let Some(head) = &head {
        out.push_str(&format!(
            "; the recorded head (line {} of file {}) is in it",
            head.lines, head.file
        ));
    }
    if !verified.keyed {
        out.push_str("\n  not checked: MACs (the log was written without --audit-key-file: a recomputed chain is not detected)");
    } else if !verified.macs_checked {
        out.push_str("\n  not checked: MACs (no --audit-key-file: an edited line with a recomputed chain is not detected)");
    }
    if !verified.head_checked {
        out.push_str("\n  not checked: the tail (no --data-dir or --store with its recorded head: a cut tail is not detected)");
    }
    Ok(out)
}

enum Lookup {
    NotAsked,
    Missing,
    Found(audit::Head),
}

async fn read_head(args: &AuditVerifyArgs, file: Option<&str>) -> Result<Lookup, String> {
    let Some(file) = file else {
        return Ok(Lookup::NotAsked);
    };
    let text = if let Some(data_dir) = &args.data_dir {
        audit_heads::read_from_sled(&data_dir.join("keystore"), file)
            .map_err(|e| chain(&e).to_string())?
    } else if let Some(url) = &args.store {
        let settings = pg_settings(
            url,
            args.store_password_file.as_ref(),
            args.store_ca_file.as_ref(),
        );
        audit_heads::read_from_postgres(&settings, file)
            .await
            .map_err(|e| chain(&e).to_string())?
    } else {
        return Ok(Lookup::NotAsked);
    };
    match text {
        None => Ok(Lookup::Missing),
        Some(text) => audit::Head::from_text(&text)
            .map(Lookup::Found)
            .ok_or_else(|| "the recorded head is unreadable".to_owned()),
    }
}
