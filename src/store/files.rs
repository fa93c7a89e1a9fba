//! The files the store keeps beside sled (the guard, and the data keys): each replaced
//! atomically and durably, so after a crash it holds either the old or the new content.
//!
//! Every step of a replacement is a failpoint (`<label>.write`, `.fsync`, `.rename`,
//! `.dirsync`), active only in test builds, so the tests can fail each one in turn.

use std::{io::Write as _, path::Path};

/// Replaces `path` with `bytes`: a temporary file beside it, fsync, rename over `path`,
/// fsync of the directory (without it the rename itself may not survive a power cut).
pub(crate) fn replace(path: &Path, bytes: &[u8], label: &str) -> std::io::Result<()> {
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(".tmp");
    let temp = std::path::PathBuf::from(temp_name);
    step(label, "write")?;
    let mut file = crate::store::file_modes::create_private_file(&temp)?;
    file.write_all(bytes)?;
    step(label, "fsync")?;
    file.sync_all()?;
    drop(file);
    step(label, "rename")?;
    std::fs::rename(&temp, path)?;
    step(label, "dirsync")?;
    sync_dir(path)
}

/// Removes `path` durably; a file already gone is fine.
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// A point where the tests inject an I/O error (`fail::cfg("<label>.<step>", "return")`).
pub(crate) fn step(label: &str, step: &str) -> std::io::Result<()> {
    // Without the `failpoints` feature of `fail` (release builds) the macro is empty.
    let _ = (label, step);
    fail::fail_point!(&format!("{label}.{step}"), |_| Err(std::io::Error::other(
        format!("injected fault at {label}.{step}")
    )));
    Ok(())
}
