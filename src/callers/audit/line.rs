//! The format of one line: its members, and the tag that ends it and chains it to the line
//! before.
//!
//! A line is a JSON object whose `prev` member is the tag of the line before it (64 zeros
//! for the first line of a chain) and whose last member is its own tag over the line's text
//! up to (not including) that member: `"mac"`, HMAC-SHA-256 under the audit key, or, in a
//! log written without a key, `"hash"`, a plain SHA-256 that anyone can recompute.

use serde_json::{Map, Value};

use super::{Entry, Outcome, Suppressed};
use crate::metrics::LabelValue;
use token_authority_jose::crypto::{self, mac::MacKey};

/// The `prev` of a chain's first line.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const MAC_MEMBER: &str = ",\"mac\":\"";
const HASH_MEMBER: &str = ",\"hash\":\"";

/// How lines are tagged: keyed (HMAC-SHA-256) or, without a key, plain SHA-256.
#[derive(Debug)]
pub(crate) enum Tagger {
    /// Boxed: aws-lc-rs's HMAC key is over a kilobyte.
    Mac(Box<MacKey>),
    Hash,
}

impl Tagger {
    /// The members (with `prev`) as one line ending in its own tag, and that tag.
    pub(crate) fn line(&self, members: &Map<String, Value>) -> (String, String) {
        let body = serde_json::to_string(members).unwrap_or_else(|_| "{}".into());
        // `body` is an object with at least one member: drop its closing brace.
        let prefix = &body[..body.len() - 1];
        let (member, tag) = match self {
            Tagger::Mac(key) => (MAC_MEMBER, hex(&key.sign(prefix.as_bytes()))),
            Tagger::Hash => (HASH_MEMBER, hex(&crypto::sha256(prefix.as_bytes()))),
        };
        (format!("{prefix}{member}{tag}\"}}"), tag)
    }
}

/// A line taken apart: the text its tag covers, the tag, and whether it is a MAC.
pub(crate) struct Tagged<'a> {
    pub(crate) covered: &'a str,
    pub(crate) tag: &'a str,
    pub(crate) keyed: bool,
}

/// Splits a line into what its tag covers and the tag it claims.
pub(crate) fn split(line: &str) -> Option<Tagged<'_>> {
    for (member, keyed) in [(MAC_MEMBER, true), (HASH_MEMBER, false)] {
        if let Some(at) = line.rfind(member) {
            let tag = line[at + member.len()..].strip_suffix("\"}")?;
            return Some(Tagged {
                covered: &line[..at],
                tag,
                keyed,
            });
        }
    }
    None
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// The first line of every file the authority opens: the file's id, and for a file that
/// follows another (log rotation) that file's id and line count; its `prev` is then the
/// last tag of that file, so the chain runs on across files.
pub(crate) fn opening(at: u64, file: &str, predecessor: Option<(&str, u64)>) -> Map<String, Value> {
    let mut members = Map::new();
    members.insert("ts".into(), at.into());
    members.insert("event".into(), "open".into());
    members.insert("file".into(), file.into());
    if let Some((before, lines)) = predecessor {
        members.insert("predecessor".into(), before.into());
        members.insert("predecessor_lines".into(), lines.into());
    }
    members
}

pub(crate) fn summary(at: u64, suppressed: &Suppressed) -> Map<String, Value> {
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

pub(crate) fn line_members(entry: &Entry<'_>) -> Map<String, Value> {
    let mut members = Map::new();
    members.insert("ts".into(), entry.at.into());
    members.insert("method".into(), entry.method.as_str().into());
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
    optional("txn", entry.txn.map(Into::into));
    optional("token_sha256", entry.token_sha256.map(Into::into));
    members
}
