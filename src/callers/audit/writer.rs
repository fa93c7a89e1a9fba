//! The writer: one thread that owns the log file. It takes lines from a bounded channel,
//! chains a batch of them and writes the batch with one `write` (group commit), fsynced when
//! asked, then answers each line's sender. A write that fails is cut back to the last whole
//! line with `set_len`, so a line is in the file whole or not at all and the chain never
//! breaks on its own; its senders hear that it was not written.
//!
//! Before each batch, and on `Reopen` (SIGHUP), it checks whether the path still names the
//! file it holds; when the file was renamed or removed (log rotation) it opens a new one
//! whose opening line names the old file and carries its last tag as `prev`.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    head::{Head, Heads},
    line::{self, Tagger, GENESIS},
};
use crate::{metrics::AuditMetrics, telemetry};
use token_authority_jose::{clock::Clock, crypto};

/// Lines chained and written in one write at most.
const MAX_BATCH: usize = 512;

pub(crate) enum Job {
    Line {
        members: Map<String, Value>,
        /// Told whether the line was written; `None` for lines nobody waits on.
        done: Option<oneshot::Sender<bool>>,
    },
    /// Check now whether the file was rotated away (SIGHUP).
    Reopen,
    /// Answered once every line queued before it is written (or failed).
    Sync(oneshot::Sender<()>),
}

/// A line to write, and who waits to hear whether it was.
type Pending = (Map<String, Value>, Option<oneshot::Sender<bool>>);

/// What the writer shares with the rest of the process.
pub(crate) struct Shared {
    pub(crate) heads: Heads,
    pub(crate) writable: watch::Sender<bool>,
    pub(crate) metrics: AuditMetrics,
    pub(crate) clock: Clock,
}

enum Sink {
    File(OpenFile),
    Stderr,
}

struct OpenFile {
    file: File,
    /// (device, inode), to notice a rename or removal of the path.
    identity: (u64, u64),
    /// The length up to the last whole line.
    good_len: u64,
    /// Whether a failed write could not be cut back: bytes after `good_len` to cut first.
    torn: bool,
    id: String,
    lines: u64,
    /// The opening line of a new file, until it is written with the first batch.
    opening: Option<Map<String, Value>>,
}

pub(crate) struct Writer {
    path: PathBuf,
    tagger: Tagger,
    sync: bool,
    sink: Sink,
    prev: String,
    shared: Arc<Shared>,
}

impl Writer {
    /// Opens `path` (`-`: stderr), continuing the chain of what it holds.
    pub(crate) fn open(
        path: &Path,
        tagger: Tagger,
        sync: bool,
        shared: Arc<Shared>,
    ) -> std::io::Result<Writer> {
        let mut writer = Writer {
            path: path.to_owned(),
            tagger,
            sync,
            sink: Sink::Stderr,
            prev: GENESIS.to_owned(),
            shared,
        };
        if path != Path::new("-") {
            let (file, prev) = open_file(path, None, writer.shared.clock.unix_now())?;
            writer.prev = prev.unwrap_or_else(|| GENESIS.to_owned());
            writer.sink = Sink::File(file);
            writer.publish_head();
            // A new file gets its opening line now: a log the authority opened is never empty.
            if writer.opening_pending() {
                writer.write_batch(Vec::new());
                if writer.opening_pending() {
                    return Err(std::io::Error::other("cannot write its opening line"));
                }
            }
        }
        Ok(writer)
    }

    /// Runs until every sender is gone.
    pub(crate) fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.blocking_recv() {
            // Let the callers woken with the last batch queue their next lines: on busy
            // cores this makes batches larger and wake-ups fewer.
            std::thread::yield_now();
            let mut batch = Vec::new();
            let mut synced = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Line { members, done } => batch.push((members, done)),
                    Job::Reopen => {
                        self.follow_rotation();
                        if self.opening_pending() {
                            self.write_batch(Vec::new());
                        }
                    }
                    Job::Sync(done) => synced.push(done),
                }
                if batch.len() < MAX_BATCH {
                    next = jobs.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.write_batch(batch);
            }
            for done in synced {
                let _ = done.send(());
            }
        }
    }

    fn write_batch(&mut self, batch: Vec<Pending>) {
        let followed = self.follow_rotation();
        let mut text = String::new();
        let mut prev = self.prev.clone();
        let mut chain = |mut members: Map<String, Value>, text: &mut String| {
            members.insert("prev".into(), Value::String(prev.clone()));
            let (line, tag) = self.tagger.line(&members);
            text.push_str(&line);
            text.push('\n');
            prev = tag;
        };
        let mut written = 0;
        if let Sink::File(open) = &self.sink {
            if let Some(opening) = &open.opening {
                chain(opening.clone(), &mut text);
                written += 1;
            }
        }
        let (lines, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let count = lines.len() as u64;
        for members in lines {
            chain(members, &mut text);
        }
        written += count;
        let result = match &mut self.sink {
            // Lines written to a file no longer at the path would be lost to every reader.
            Sink::File(_) if !followed => Err(std::io::Error::other(
                "the file was rotated away and no new one can be opened at the path",
            )),
            Sink::File(open) => write_whole(open, text.as_bytes(), self.sync),
            Sink::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
        };
        let ok = match result {
            Ok(()) => {
                self.prev = prev;
                if let Sink::File(open) = &mut self.sink {
                    open.good_len += text.len() as u64;
                    open.lines += written;
                    open.opening = None;
                }
                self.publish_head();
                true
            }
            Err(error) => {
                // Said once when writes start failing (the metrics count every line), so a
                // full disk does not also become a flood of server log lines.
                if *self.shared.writable.borrow() {
                    tracing::error!(path = %self.path.display(), error = %telemetry::chain(&error), "cannot write the audit log; IssueToken and admin RPCs answer UNAVAILABLE until a write succeeds");
                }
                self.shared.metrics.write_failures.inc_by(count);
                false
            }
        };
        self.shared.metrics.writable.set(i64::from(ok));
        self.shared.writable.send_if_modified(|writable| {
            let changed = *writable != ok;
            *writable = ok;
            changed
        });
        for sender in senders.into_iter().flatten() {
            let _ = sender.send(ok);
        }
    }

    fn opening_pending(&self) -> bool {
        matches!(&self.sink, Sink::File(open) if open.opening.is_some())
    }

    fn publish_head(&self) {
        if let Sink::File(open) = &self.sink {
            if open.opening.is_some() {
                return;
            }
            self.shared.heads.set_current(Head {
                file: open.id.clone(),
                path: self.path.display().to_string(),
                lines: open.lines,
                tag: self.prev.clone(),
                at: self.shared.clock.unix_now(),
            });
        }
    }

    /// Opens a new file when the path no longer names the one held (renamed or removed).
    /// `false` when that was needed and failed: the file held is no longer at the path.
    fn follow_rotation(&mut self) -> bool {
        let Sink::File(open) = &self.sink else {
            return true;
        };
        if std::fs::metadata(&self.path).is_ok_and(|meta| identity(&meta) == open.identity) {
            return true;
        }
        // Lines written to a file that was only opened are not part of the chain yet.
        let predecessor = (open.opening.is_none()).then(|| (open.id.clone(), open.lines));
        match open_file(
            &self.path,
            predecessor.as_ref().map(|(id, n)| (id.as_str(), *n)),
            self.shared.clock.unix_now(),
        ) {
            Ok((file, prev)) => {
                let Sink::File(old) = std::mem::replace(&mut self.sink, Sink::File(file)) else {
                    return true;
                };
                if old.opening.is_none() {
                    self.shared.heads.finish(Head {
                        file: old.id.clone(),
                        path: self.path.display().to_string(),
                        lines: old.lines,
                        tag: self.prev.clone(),
                        at: self.shared.clock.unix_now(),
                    });
                }
                if let Some(prev) = prev {
                    // The path held a log of its own: its chain goes on.
                    self.prev = prev;
                }
                tracing::info!(path = %self.path.display(), previous = %old.id, "audit log reopened (rotated)");
                self.publish_head();
                true
            }
            Err(error) => {
                tracing::error!(path = %self.path.display(), error = %telemetry::chain(&error), "cannot open a new audit log at the path after rotation; retried with the next line");
                false
            }
        }
    }
}

/// Writes `bytes` after the last whole line, or cuts the file back to it.
fn write_whole(open: &mut OpenFile, bytes: &[u8], sync: bool) -> std::io::Result<()> {
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
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (0, meta.len())
}

/// Opens (or creates) the log at `path`. An empty file gets an opening line (naming
/// `predecessor`, the file it follows) dated `now`; a file with lines continues its chain,
/// whose last tag is returned. A torn last line (a crash mid-write) is cut off.
fn open_file(
    path: &Path,
    predecessor: Option<(&str, u64)>,
    now: u64,
) -> std::io::Result<(OpenFile, Option<String>)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
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

fn new_file_id() -> std::io::Result<String> {
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
