//! The log file itself: opening it (continuing its chain, or an opening line for a new
//! one, a torn last line cut off), writing whole lines or none, and telling one file from
//! another when the path is rotated away.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
};

use serde_json::{Map, Value};

use super::line;
use crate::telemetry;
use token_authority_jose::crypto;

pub(super) struct OpenFile {
    pub(super) file: File,
    /// (device, inode), to notice a rename or removal of the path.
    pub(super) identity: (u64, u64),
    /// The length up to the last whole line.
    pub(super) good_len: u64,
    /// Whether a failed write could not be cut back: bytes after `good_len` to cut first.
    pub(super) torn: bool,
    pub(super) id: String,
    pub(super) lines: u64,
    /// The opening line of a new file, until it is written with the first batch.
    pub(super) opening: Option<Map<String, Value>>,
}

/// Writes `bytes` after the last whole line, or cuts the file back to it.
pub(super) fn write_whole(open: &mut OpenFile, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    // A failed cut-back earlier left a torn line: cut it before writing after it.
    if open.torn {
        open.file.set_len(open.good_len)?;
        open.torn = false;
    }
    let written =
        open.file
            .write_all(bytes)
            .and_then(|()| if sync { open.file.sync_data() } else { Ok(()) });
    if let Err(error) = written {
        if let Err(cut) = open.file.set_len(open.good_len) {
            open.torn = true;
            tracing::error!(cut = %telemetry::chain(&cut), "cannot cut the audit log back to its last whole line; retried before the next write");
        }
        return Err(error);
    }
    Ok(())
}

#[cfg(unix)]
pub(super) fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
pub(super) fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (0, meta.len())
}

/// Opens (or creates) the log at `path`. An empty file gets an opening line (naming
/// `predecessor`, the file it follows) dated `now`; a file with lines continues its chain,
/// whose last tag is returned. A torn last line (a crash mid-write) is cut off.
pub(super) fn open_file(
    path: &Path,
    predecessor: Option<(&str, u64)>,
    now: u64,
) -> std::io::Result<(OpenFile, Option<String>)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    // A FIFO would hold the start on its first read, and a device (`/dev/null`) would take
    // every line and keep none: the chain needs a file it can read back and cut.
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(
            "not a regular file (a FIFO, device or socket); name a file, or - for stderr",
        ));
    }
    let mut reader = BufReader::new(&file);
    let mut good_len = 0u64;
    let mut lines = 0u64;
    let mut first = None;
    let mut last = Vec::new();
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = reader.read_until(b'\n', &mut buffer)?;
        if read == 0 || buffer.last() != Some(&b'\n') {
            break;
        }
        good_len += read as u64;
        lines += 1;
        if first.is_none() {
            first = Some(buffer.clone());
        }
        std::mem::swap(&mut last, &mut buffer);
    }
    let len = file.metadata()?.len();
    if len != good_len {
        tracing::warn!(path = %path.display(), bytes = len - good_len, "the audit log ends in a torn line; cut back to its last whole line");
        file.set_len(good_len)?;
    }
    let identity = identity(&file.metadata()?);
    let Some(first) = first else {
        let id = new_file_id()?;
        let opening = line::opening(now, &id, predecessor);
        return Ok((
            OpenFile {
                file,
                identity,
                good_len: 0,
                torn: false,
                id,
                lines: 0,
                opening: Some(opening),
            },
            None,
        ));
    };
    let id = file_id(&String::from_utf8_lossy(&first));
    let last = String::from_utf8_lossy(&last);
    let last = last.trim_end();
    // A damaged last line still links: the next line carries the SHA-256 of its text, and
    // `audit verify` reports the damage.
    let prev = match line::split(last) {
        Some(tagged) if tagged.tag.len() == 64 => tagged.tag.to_owned(),
        _ => line::hex(&crypto::sha256(last.as_bytes())),
    };
    Ok((
        OpenFile {
            file,
            identity,
            good_len,
            torn: false,
            id,
            lines,
            opening: None,
        },
        Some(prev),
    ))
}

pub(super) fn new_file_id() -> std::io::Result<String> {
    crypto::random_bytes(8)
        .map(|bytes| line::hex(&bytes))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A file's id: what its opening line names, or for a log without one (written before
/// opening lines existed) the start of its first line's SHA-256.
pub(crate) fn file_id(first_line: &str) -> String {
    serde_json::from_str::<Map<String, Value>>(first_line.trim_end())
        .ok()
        .filter(|members| members.get("event").and_then(Value::as_str) == Some("open"))
        .and_then(|members| {
            members
                .get("file")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| line::hex(&crypto::sha256(first_line.trim_end().as_bytes())[..8]))
}
