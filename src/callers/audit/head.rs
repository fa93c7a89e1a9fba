//! The chain's head, recorded outside the log: which file, how many lines it holds and the
//! tag of its last line. The authority writes it to its keystore at least once a second and
//! at shutdown, so `audit verify` can tell a log whose tail was cut from a whole one.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Where one file of the chain ended, last time it was recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Head {
    /// The file's id, from its opening line.
    pub(crate) file: String,
    /// The path the authority wrote it at (a rotated file is renamed later).
    pub(crate) path: String,
    /// Lines in the file, its opening line included.
    pub(crate) lines: u64,
    /// The tag of its last line.
    pub(crate) tag: String,
    /// Unix seconds when it was recorded.
    pub(crate) at: u64,
}

impl Head {
    pub(crate) fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn from_text(text: &str) -> Option<Head> {
        serde_json::from_str(text).ok()
    }
}

/// The heads the writer moved and the recorder has not yet stored: the current file's, and
/// those of files it finished (rotated away from) since.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    state: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    current: Option<Head>,
    finished: Vec<Head>,
    changed: bool,
}

impl Heads {
    pub(crate) fn set_current(&self, head: Head) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.current = Some(head);
        state.changed = true;
    }

    pub(crate) fn finish(&self, head: Head) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.finished.push(head);
        state.changed = true;
    }

    /// What changed since the last call, to store (finished files first).
    pub(crate) fn take_changed(&self) -> Vec<Head> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.changed {
            return Vec::new();
        }
        state.changed = false;
        let mut heads = std::mem::take(&mut state.finished);
        heads.extend(state.current.clone());
        heads
    }

    /// Puts back what could not be stored, unless a newer head of the same file came since.
    pub(crate) fn restore(&self, heads: Vec<Head>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for head in heads {
            let newer = state.current.as_ref().is_some_and(|c| c.file == head.file)
                || state.finished.iter().any(|f| f.file == head.file);
            if !newer {
                state.finished.push(head);
            }
        }
        state.changed = true;
    }
}
