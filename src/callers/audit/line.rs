//! The format of one line: its members, and the hash that ends it and chains it to the
//! line before.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
};

use serde_json::{Map, Value};

use super::{Entry, Outcome, Suppressed, GENESIS, HASH_MEMBER};
use crate::crypto;

pub(super) fn summary(at: u64, suppressed: &Suppressed) -> Map<String, Value> {
    let mut members = Map::new();
    members.insert("ts".into(), at.into());
    members.insert("event".into(), "suppressed".into());
    members.insert("count".into(), suppressed.values().sum::<u64>().into());
    members.insert(
        "reasons".into(),
        Value::Object(
            suppressed
                .iter()
                .map(|(reason, count)| (reason.clone(), (*count).into()))
                .collect(),
        ),
    );
    members
}

pub(super) fn line_members(entry: &Entry<'_>) -> Map<String, Value> {
    let mut members = Map::new();
    members.insert("ts".into(), entry.at.into());
    members.insert("method".into(), entry.method.into());
    members.insert("caller".into(), entry.caller.into());
    members.insert("via".into(), entry.via.into());
    members.insert(
        "outcome".into(),
        entry.outcome.map_or("allowed", Outcome::name).into(),
    );
    let mut optional = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            members.insert(name.into(), value);
        }
    };
    optional("reason", entry.reason.map(Into::into));
    optional("subject", entry.subject.map(Into::into));
    optional(
        "audiences",
        (!entry.audiences.is_empty()).then(|| entry.audiences.iter().cloned().collect()),
    );
    optional("ttl", entry.ttl.map(Into::into));
    optional("jti", entry.jti.map(Into::into));
    optional("kid", entry.kid.map(Into::into));
    optional("rule", entry.rule.map(Into::into));
    optional("detail", entry.detail.map(Into::into));
    members
}

/// The members (with `prev`) as one line ending in its own `hash`.
pub(super) fn chained_line(members: &Map<String, Value>) -> String {
    let body = Value::Object(members.clone()).to_string();
    // `body` is an object with at least one member: drop its closing brace.
    let prefix = &body[..body.len() - 1];
    let hash = hex(&crypto::sha256(prefix.as_bytes()));
    format!("{prefix}{HASH_MEMBER}{hash}\"}}")
}

/// Splits a line into the text its hash covers and the hash it claims.
pub(super) fn split_hash(line: &str) -> Option<(&str, &str)> {
    let at = line.rfind(HASH_MEMBER)?;
    let hash = line[at + HASH_MEMBER.len()..].strip_suffix("\"}")?;
    Some((&line[..at], hash))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of the last line of an existing log (64 zeros when it is empty).
pub(super) fn last_hash(file: &mut File) -> std::io::Result<String> {
    let len = file.metadata()?.len();
    // Lines are short; the last one is within the final 64 KiB.
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = String::new();
    file.read_to_string(&mut tail)?;
    let Some(last) = tail.lines().rev().find(|line| !line.trim().is_empty()) else {
        return Ok(GENESIS.to_owned());
    };
    // A damaged last line still links: the next line carries the SHA-256 of its text,
    // and `audit verify` reports the damage.
    Ok(match split_hash(last) {
        Some((_, hash)) if hash.len() == 64 => hash.to_owned(),
        _ => hex(&crypto::sha256(last.as_bytes())),
    })
}
