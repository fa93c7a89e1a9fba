//! `audit verify`'s check of a whole log: each line's own hash and its link to the line
//! before.

use std::{fs::File, io::BufRead as _, path::Path};

use serde_json::{Map, Value};

use super::{
    line::{hex, split_hash},
    AuditError,
};
use crate::crypto;

/// Checks a whole log; returns the number of lines, or the first broken one (1-based).
pub fn verify_file(path: &Path) -> Result<usize, AuditError> {
    let read_error = |source| AuditError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut prev: Option<String> = None;
    let mut count = 0;
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let broken = |reason: &str| AuditError::Broken {
            line: number,
            reason: reason.to_owned(),
        };
        let line = line.map_err(|_| broken("is not UTF-8 text"))?;
        let members: Map<String, Value> =
            serde_json::from_str(&line).map_err(|_| broken("is not a JSON object"))?;
        let (prefix, hash) =
            split_hash(&line).ok_or_else(|| broken("does not end with its hash"))?;
        if members.get("hash").and_then(Value::as_str) != Some(hash) {
            return Err(broken("does not end with its hash"));
        }
        if hex(&crypto::sha256(prefix.as_bytes())) != hash {
            return Err(broken("its content does not match its hash (edited)"));
        }
        let claimed_prev = members
            .get("prev")
            .and_then(Value::as_str)
            .ok_or_else(|| broken("has no prev"))?;
        if let Some(expected) = &prev {
            if claimed_prev != expected {
                return Err(broken(
                    "its prev is not the hash of the line before (a line was removed, inserted or reordered)",
                ));
            }
        }
        prev = Some(hash.to_owned());
        count = number;
    }
    Ok(count)
}
