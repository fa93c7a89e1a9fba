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

//!
//! # Layout
//! - `line`: the members of a line and the hash that chains it.
//! - `limiter`: the per-second limit on refused lines.
//! - `verify`: `audit verify`'s check of a whole log.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde_json::{Map, Value};

use crate::crypto;

mod limiter;
mod line;
mod verify;

pub use self::limiter::{Limiter, Suppressed};
use self::line::{chained_line, hex, last_hash, line_members, split_hash, summary};
pub use self::verify::verify_file;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
