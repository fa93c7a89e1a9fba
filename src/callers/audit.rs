//! The audit trail: one JSON line per decision (IssueToken allowed or refused, and every
//! admin action), hash-chained so that editing, inserting or deleting a line is detected.
//!
//! Each line is a JSON object whose second-to-last member `prev` is the `hash` of the line
//! before it (64 zeros for the first line of a new log), and whose last member `hash` is
//! the hex SHA-256 of the line's own text up to (not including) `,"hash":`. So a line's
//! `prev` is the SHA-256 of the line before it (of all of it but its own hash member, which
//! that SHA-256 determines), and `audit verify` names the first line whose own hash or link
//! does not hold. After a restart the chain continues from the last line of the file.
//!
//! Lines never carry a token, a secret or custom claim values: caller, method, outcome,
//! reason, subject, audiences, ttl, jti, kid, rule. Refused and malformed calls are
//! rate-limited (a flood of bad calls must not become a flood of disk writes); what was
//! suppressed is summed up, by reason, in the next line written.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::{Map, Value};

use crate::crypto;

/// Refused or malformed lines written per second at most; the rest are summed up.
pub const REFUSED_LINES_PER_SECOND: u32 = 20;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_MEMBER: &str = ",\"hash\":\"";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read the audit log {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {reason}")]
    Broken { line: usize, reason: String },
}

/// How a decision went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// Credentials missing or invalid, or a policy refusal.
    Refused,
    /// The request itself was wrong (INVALID_ARGUMENT).
    Malformed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
            Outcome::Malformed => "malformed",
        }
    }
}

/// One decision, as the audit log records it.
#[derive(Clone, Debug, Default)]
pub struct Entry<'a> {
    /// Unix seconds.
    pub at: u64,
    pub method: &'a str,
    /// The caller's name (`admin` for the admin token, empty when unauthenticated).
    pub caller: &'a str,
    /// How the caller proved it: mtls, jwt, secret, admin-token, none, open (no policy).
    pub via: &'a str,
    pub outcome: Option<Outcome>,
    /// Why it was refused: the message the caller got.
    pub reason: Option<&'a str>,
    /// A short label for the reason (the metrics label), used in suppression summaries.
    pub reason_label: &'a str,
    pub subject: Option<&'a str>,
    pub audiences: &'a [String],
    pub ttl: Option<u64>,
    pub jti: Option<&'a str>,
    pub kid: Option<&'a str>,
    /// The rule that allowed it (0-based index in the policy file).
    pub rule: Option<usize>,
    /// For admin actions: what was done (e.g. the kid rotated in or revoked).
    pub detail: Option<&'a str>,
}

enum Sink {
    File(File),
    Stderr,
}

struct Chain {
    sink: Sink,
    prev: String,
}

/// A window of at most N admissions per second, counting what it turns away.
#[derive(Debug)]
pub struct Limiter {
    per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    used: u32,
    suppressed: BTreeMap<String, u64>,
}

/// What was turned away since the last summary, by reason.
pub type Suppressed = BTreeMap<String, u64>;

impl Limiter {
    pub fn new(per_second: u32) -> Limiter {
        Limiter {
            per_second,
            state: Mutex::new(Window {
                started: Instant::now(),
                used: 0,
                suppressed: BTreeMap::new(),
            }),
        }
    }

    /// `Some(what was suppressed before)` when this one may be written; `None` when it is
    /// suppressed (and counted under `reason`).
    pub fn admit(&self, reason: &str) -> Option<Suppressed> {
        let Ok(mut window) = self.state.lock() else {
            return Some(Suppressed::new());
        };
        if window.started.elapsed() >= Duration::from_secs(1) {
            window.started = Instant::now();
            window.used = 0;
        }
        if window.used < self.per_second {
            window.used += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            *window.suppressed.entry(reason.to_owned()).or_default() += 1;
            None
        }
    }

    /// What was suppressed and not yet reported, once the window it happened in is over.
    pub fn take_suppressed(&self) -> Suppressed {
        match self.state.lock() {
            Ok(mut window) if window.started.elapsed() >= Duration::from_secs(1) => {
                std::mem::take(&mut window.suppressed)
            }
            _ => Suppressed::new(),
        }
    }
}

/// The audit log writer.
pub struct AuditLog {
    chain: Mutex<Chain>,
    limiter: Limiter,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens `target` for appending (`-`: stderr), continuing the chain of what it holds.
    pub fn open(target: &Path) -> Result<AuditLog, AuditError> {
        if target == Path::new("-") {
            return Ok(AuditLog::with_sink(Sink::Stderr, GENESIS.to_owned(), None));
        }
        let open_error = |source| AuditError::Open {
            path: target.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(target)
            .map_err(open_error)?;
        let prev = last_hash(&mut file).map_err(open_error)?;
        Ok(AuditLog::with_sink(
            Sink::File(file),
            prev,
            Some(target.to_owned()),
        ))
    }

    fn with_sink(sink: Sink, prev: String, path: Option<PathBuf>) -> AuditLog {
        AuditLog {
            chain: Mutex::new(Chain { sink, prev }),
            limiter: Limiter::new(REFUSED_LINES_PER_SECOND),
            path,
        }
    }

    /// Records a decision. Refused and malformed ones may be suppressed by the rate limit;
    /// allowed ones and admin actions never are.
    pub fn record(&self, entry: &Entry<'_>) {
        let limited = matches!(entry.outcome, Some(Outcome::Refused | Outcome::Malformed));
        let suppressed = if limited {
            match self.limiter.admit(entry.reason_label) {
                Some(suppressed) => suppressed,
                None => return,
            }
        } else {
            self.limiter.take_suppressed()
        };
        if !suppressed.is_empty() {
            self.write(summary(entry.at, &suppressed));
        }
        self.write(line_members(entry));
    }

    /// Writes the summary of suppressed lines, if any is due (called periodically, so a
    /// flood that stops is still accounted for).
    pub fn flush_suppressed(&self, now: u64) {
        let suppressed = self.limiter.take_suppressed();
        if !suppressed.is_empty() {
            self.write(summary(now, &suppressed));
        }
    }

    fn write(&self, mut members: Map<String, Value>) {
        let Ok(mut chain) = self.chain.lock() else {
            return;
        };
        members.insert("prev".into(), Value::String(chain.prev.clone()));
        let line = chained_line(&members);
        let Some((prefix, hash)) = split_hash(&line) else {
            return;
        };
        let hash = hash.to_owned();
        debug_assert_eq!(hex(&crypto::sha256(prefix.as_bytes())), hash);
        let written = match &mut chain.sink {
            Sink::File(file) => file.write_all(format!("{line}\n").as_bytes()),
            Sink::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
        };
        match written {
            Ok(()) => chain.prev = hash,
            Err(error) => tracing::error!(%error, "cannot write the audit log"),
        }
    }
}

fn summary(at: u64, suppressed: &Suppressed) -> Map<String, Value> {
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

fn line_members(entry: &Entry<'_>) -> Map<String, Value> {
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
fn chained_line(members: &Map<String, Value>) -> String {
    let body = Value::Object(members.clone()).to_string();
    // `body` is an object with at least one member: drop its closing brace.
    let prefix = &body[..body.len() - 1];
    let hash = hex(&crypto::sha256(prefix.as_bytes()));
    format!("{prefix}{HASH_MEMBER}{hash}\"}}")
}

/// Splits a line into the text its hash covers and the hash it claims.
fn split_hash(line: &str) -> Option<(&str, &str)> {
    let at = line.rfind(HASH_MEMBER)?;
    let hash = line[at + HASH_MEMBER.len()..].strip_suffix("\"}")?;
    Some((&line[..at], hash))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of the last line of an existing log (64 zeros when it is empty).
fn last_hash(file: &mut File) -> std::io::Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(outcome: Outcome, reason: &str) -> Entry<'_> {
        Entry {
            at: 1_800_000_000,
            method: "IssueToken",
            caller: "client:batch",
            via: "secret",
            outcome: Some(outcome),
            reason: Some(reason),
            reason_label: reason,
            ..Entry::default()
        }
    }

    #[test]
    fn chain_continues_across_reopen_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        {
            let log = AuditLog::open(&path).unwrap();
            for _ in 0..3 {
                log.record(&entry(Outcome::Allowed, ""));
            }
        }
        let log = AuditLog::open(&path).unwrap();
        log.record(&entry(Outcome::Refused, "subject"));
        drop(log);
        assert_eq!(verify_file(&path).unwrap(), 4);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["prev"], GENESIS);

        let lines: Vec<&str> = text.lines().collect();
        let edited = text.replacen(
            lines[1],
            &lines[1].replace("client:batch", "client:other"),
            1,
        );
        std::fs::write(&path, edited).unwrap();
        assert_eq!(
            verify_file(&path).unwrap_err().to_string(),
            "line 2: its content does not match its hash (edited)"
        );
        let removed: String = [lines[0], lines[2], lines[3]]
            .map(|l| format!("{l}\n"))
            .concat();
        std::fs::write(&path, removed).unwrap();
        assert_eq!(
            verify_file(&path).unwrap_err().to_string(),
            "line 2: its prev is not the hash of the line before (a line was removed, inserted or reordered)"
        );
    }

    #[test]
    fn refused_lines_are_rate_limited_and_summed_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for _ in 0..1000 {
            log.record(&entry(Outcome::Refused, "no_credentials"));
        }
        let written = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(written, REFUSED_LINES_PER_SECOND as usize);
        // An allowed line is never suppressed; once the window is over it carries the sum.
        std::thread::sleep(Duration::from_millis(1100));
        log.record(&entry(Outcome::Allowed, ""));
        let text = std::fs::read_to_string(&path).unwrap();
        let summary: Value = serde_json::from_str(text.lines().nth(written).unwrap()).unwrap();
        assert_eq!(summary["event"], "suppressed");
        assert_eq!(summary["count"], 1000 - REFUSED_LINES_PER_SECOND as u64);
        assert_eq!(summary["reasons"]["no_credentials"], 980);
        assert_eq!(verify_file(&path).unwrap(), written + 2);
    }
}
