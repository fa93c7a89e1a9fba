//! `audit verify`'s check of a whole log. Each line's tag (its MAC with the key, or its
//! hash in a log written without one) must cover its text, and its `prev` must be the tag
//! of the line before; the first line must open the file (the genesis, or naming the file
//! it follows); with the recorded head, the file must reach the head's line and that line
//! must carry the head's tag. What could not be checked (no key, no head) is said.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    path::Path,
};

use serde_json::{Map, Value};

use super::{
    file::file_id,
    head::Head,
    line::{self, GENESIS},
    AuditError,
};
use token_authority_jose::crypto::{self, mac::MacKey};

/// Why a log does not verify: the first bad line (1-based) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error(transparent)]
    Unreadable(#[from] AuditError),
    #[error("line {line}: {reason}")]
    Broken { line: u64, reason: String },
}

/// A log that verified, and what was checked.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) lines: u64,
    /// Whether the lines carry MACs that the key checked.
    pub(crate) macs_checked: bool,
    /// Whether the lines carry MACs (a log written with a key).
    pub(crate) keyed: bool,
    /// Whether the tail was checked against a recorded head.
    pub(crate) head_checked: bool,
}

/// The longest line read: far above any the authority writes (a few KiB at most), so that a
/// file that is not an audit log cannot make `audit verify` hold it whole in memory.
const MAX_LINE: u64 = 1024 * 1024;

enum Line {
    End,
    Whole,
    TooLong,
}

/// The next line of `reader` into `bytes`, without its `\n` (the last one may lack it).
fn next_line(reader: &mut impl std::io::BufRead, bytes: &mut Vec<u8>) -> std::io::Result<Line> {
    bytes.clear();
    let read = std::io::Read::take(&mut *reader, MAX_LINE + 1).read_until(b'\n', bytes)?;
    if read == 0 {
        return Ok(Line::End);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        return Ok(Line::Whole);
    }
    Ok(if bytes.len() as u64 > MAX_LINE {
        Line::TooLong
    } else {
        Line::Whole
    })
}

/// The id of the file at `path` (from its first line); `None` when it is empty.
pub(crate) fn file_id_of(path: &Path) -> Result<Option<String>, AuditError> {
    let read_error = |source| AuditError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut first = Vec::new();
    next_line(
        &mut BufReader::new(File::open(path).map_err(read_error)?),
        &mut first,
    )
    .map_err(read_error)?;
    Ok((!first.is_empty()).then(|| file_id(&String::from_utf8_lossy(&first))))
}

/// Checks the log at `path`, with the chain's key and its recorded head when given.
pub(crate) fn verify(
    path: &Path,
    key: Option<&MacKey>,
    head: Option<&Head>,
) -> Result<Verified, VerifyError> {
    let read_error = |source| AuditError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut prev: Option<String> = None;
    let mut count = 0u64;
    let mut keyed = false;
    let mut reader = BufReader::new(file);
    let mut bytes = Vec::new();
    let mut number = 0u64;
    loop {
        let read = next_line(&mut reader, &mut bytes).map_err(read_error)?;
        number += 1;
        let broken = |reason: &str| VerifyError::Broken {
            line: number,
            reason: reason.to_owned(),
        };
        match read {
            Line::End => break,
            Line::TooLong => {
                return Err(broken(
                    "is longer than 1 MiB, which no line the authority writes is",
                ))
            }
            Line::Whole => {}
        }
        let line = String::from_utf8(std::mem::take(&mut bytes))
            .map_err(|_| broken("is not UTF-8 text"))?;
        let members: Map<String, Value> =
            serde_json::from_str(&line).map_err(|_| broken("is not a JSON object"))?;
        let tagged = line::split(&line).ok_or_else(|| broken("does not end with its tag"))?;
        let member = if tagged.keyed { "mac" } else { "hash" };
        if members.get(member).and_then(Value::as_str) != Some(tagged.tag) {
            return Err(broken("does not end with its tag"));
        }
        if number == 1 {
            keyed = tagged.keyed;
        } else if tagged.keyed != keyed {
            return Err(broken(if keyed {
                "carries a plain hash where the lines before carry MACs (forged)"
            } else {
                "carries a MAC where the lines before carry plain hashes"
            }));
        }
        match (tagged.keyed, key) {
            (true, Some(key)) => {
                let tag = line::unhex(tagged.tag).unwrap_or_default();
                if !key.verify(tagged.covered.as_bytes(), &tag) {
                    return Err(broken(
                        "its MAC does not match its content (edited, forged, or another key)",
                    ));
                }
            }
            // Without the key a MAC cannot be checked, only the links.
            (true, None) => {}
            (false, Some(_)) => {
                return Err(broken(
                    "carries a plain hash, not a MAC (written without the key, or forged)",
                ))
            }
            (false, None) => {
                if line::hex(&crypto::sha256(tagged.covered.as_bytes())) != tagged.tag {
                    return Err(broken("its content does not match its hash (edited)"));
                }
            }
        }
        let claimed_prev = members
            .get("prev")
            .and_then(Value::as_str)
            .ok_or_else(|| broken("has no prev"))?;
        match &prev {
            Some(expected) if claimed_prev != expected => {
                return Err(broken(
                    "its prev is not the tag of the line before (a line was removed, inserted or reordered)",
                ))
            }
            Some(_) => {}
            None => check_first(&members, claimed_prev).map_err(&broken)?,
        }
        if head.is_some_and(|head| head.lines == number && head.tag != tagged.tag) {
            return Err(broken(
                "is not the line the recorded head names (the log was replaced from here on)",
            ));
        }
        prev = Some(tagged.tag.to_owned());
        count = number;
    }
    if count == 0 {
        return Err(VerifyError::Broken {
            line: 1,
            reason: "missing: the file is empty (every file the authority opens starts with an opening line)".into(),
        });
    }
    if let Some(head) = head {
        if head.lines > count {
            return Err(VerifyError::Broken {
                line: count + 1,
                reason: format!(
                    "missing: the recorded head is at line {} (the tail was cut)",
                    head.lines
                ),
            });
        }
    }
    Ok(Verified {
        lines: count,
        macs_checked: keyed && key.is_some(),
        keyed,
        head_checked: head.is_some(),
    })
}

/// The first line must open the file: the chain's genesis, or naming the file it follows.
fn check_first(members: &Map<String, Value>, prev: &str) -> Result<(), &'static str> {
    let opening = members.get("event").and_then(Value::as_str) == Some("open")
        && members.get("file").and_then(Value::as_str).is_some();
    if !opening {
        return Err("is not an opening line (the head of the file was cut)");
    }
    let follows = members.get("predecessor").and_then(Value::as_str).is_some();
    if !follows && prev != GENESIS {
        return Err("links to a line before it but names no predecessor file (the head was cut)");
    }
    Ok(())
}
