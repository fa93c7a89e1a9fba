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
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    file::{identity, open_file, write_whole, OpenFile},
    head::{Head, Heads},
    line::{Tagger, GENESIS},
};
use crate::{metrics::AuditMetrics, telemetry};
use token_authority_jose::clock::Clock;

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
    /// When the write in progress began (`None` between writes), for the stall watchdog.
    pub(crate) writing: Mutex<Option<Instant>>,
    /// Set by the watchdog while a write has not returned for `stall_after`; cleared when
    /// it returns. Read without a lock on every `record`.
    pub(crate) stalled: AtomicBool,
    pub(crate) stall_after: Duration,
}

impl Shared {
    pub(crate) fn new(metrics: AuditMetrics, clock: Clock, stall_after: Duration) -> Shared {
        Shared {
            heads: Heads::default(),
            writable: watch::Sender::new(true),
            metrics,
            clock,
            writing: Mutex::new(None),
            stalled: AtomicBool::new(false),
            stall_after,
        }
    }

    fn begin_write(&self) {
        *self.writing.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Ends the write begun last, and says whether the log is writable after it. Under the
    /// same lock as `check_stall`, so a stall declared just as the write returned never
    /// outlives it.
    fn end_write(&self, ok: bool) {
        let mut writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        *writing = None;
        self.stalled.store(false, Ordering::Release);
        self.publish(ok);
    }

    /// Marks the log not writable when the write in progress has not returned for
    /// `stall_after` (a hung disk or filesystem, or a pipe nobody reads): `true` the first
    /// time it does, for the one log line that says so.
    pub(crate) fn check_stall(&self) -> bool {
        let writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let stalled = writing.is_some_and(|since| since.elapsed() >= self.stall_after);
        if !stalled || self.stalled.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.publish(false);
        true
    }

    fn publish(&self, ok: bool) {
        self.metrics.writable.set(i64::from(ok));
        self.writable.send_if_modified(|writable| {
            let changed = *writable != ok;
            *writable = ok;
            changed
        });
    }
}

enum Sink {
    File(OpenFile),
    Stderr,
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
        self.shared.begin_write();
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
        // Tests hold a write here (`pause`) to play a disk whose writes do not return.
        fail::fail_point!(&format!("audit.write:{}", self.path.display()));
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
                if *self.shared.writable.borrow() || self.shared.stalled.load(Ordering::Acquire) {
                    tracing::error!(path = %self.path.display(), error = %telemetry::chain(&error), "cannot write the audit log; IssueToken and admin RPCs answer UNAVAILABLE until a write succeeds");
                }
                self.shared.metrics.write_failures.inc_by(count);
                false
            }
        };
        self.shared.end_write(ok);
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
