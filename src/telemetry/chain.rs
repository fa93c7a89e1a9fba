//! An error shown with its causes, on one line: how the log and the `error:` line show
//! every error.
//!
//! An error keeps what caused it as its `source()`, and its own message may stop short of
//! it ("cannot open the keystore /data/keystore"); the chain adds why ("...: IO error:
//! Permission denied (os error 13)"). Many messages show their direct cause themselves
//! (`cannot read {path}: {source}`): a cause whose text the line already holds is not
//! repeated.

use std::{error::Error, fmt};

/// `error`, then each of its causes not already in the line, joined by ": ".
pub fn chain<'a>(error: &'a (dyn Error + 'a)) -> Chain<'a> {
    Chain(error)
}

/// See [`chain`].
#[derive(Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&line)
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message leaves its cause to the chain.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot open {0}")]
    struct Open(&'static str, #[source] std::io::Error);

    /// An error whose message shows its cause too.
    #[derive(Debug, thiserror::Error)]
    #[error("starting: {0}")]
    struct Start(#[source] Open);

    #[test]
    fn causes_follow_the_message_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(
            chain(&Open("the store", io())).to_string(),
            "cannot open the store: disk on fire"
        );
        // `Start` shows `Open` itself; the I/O error only the chain shows.
        assert_eq!(
            chain(&Start(Open("the store", io()))).to_string(),
            "starting: cannot open the store: disk on fire"
        );
        assert_eq!(chain(&io()).to_string(), "disk on fire");
    }
}
