//! The policy file's `[[issuer]]` tables: each trusted issuer's name, `iss`, where its keys
//! come from and what it may assert, checked whole.

use std::{collections::HashSet, path::PathBuf};

use globset::GlobSetBuilder;
use serde::Deserialize;

use super::{duration, glob};
use crate::callers::{
    issuers::{check_fetch_url, IssuerConfig, JwksSource, SubjectBound},
    policy::{Problem, DEFAULT_MAX_TOKEN_LIFETIME},
};
use token_authority_jose::crypto::Algorithm;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssuerToml {
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
    #[serde(default)]
    allow_delegation: bool,
    #[serde(default)]
    allow_own_issuer: bool,
}

pub(super) fn check_issuers(
    issuers: &[IssuerToml],
    problems: &mut Vec<Problem>,
) -> Vec<IssuerConfig> {
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
                allow_delegation: issuer.allow_delegation,
                allow_own_issuer: issuer.allow_own_issuer,
            });
        }
    }
    out
}
