//! The guard file beside the keystore: the generation of the last write, kept outside sled.
//!
//! sled opens a damaged log as an empty (or older) database without an error; comparing its
//! generation counter with this file turns that into a refusal instead of a silent start
//! with new keys. The file is replaced atomically, so it is either the old or the new value.

use std::path::Path;

const GUARD_PREFIX: &str = "token-authority-keystore/1 generation ";

pub(crate) fn parse_guard(text: &str) -> Option<u64> {
    text.trim().strip_prefix(GUARD_PREFIX)?.parse().ok()
}

/// Replaces the guard file atomically and durably (failpoints `guard.*`).
pub(crate) fn write_guard(path: &Path, generation: u64) -> std::io::Result<()> {
    super::files::replace(
        path,
        format!("{GUARD_PREFIX}{generation}\n").as_bytes(),
        "guard",
    )
}
