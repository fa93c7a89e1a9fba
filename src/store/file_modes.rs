//! Owner-only files: the modes the authority creates its files and directories with, and
//! the start-up check that refuses secrets other local users could read.
//!
//! The data directory holds private keys (in the clear without a KEK) and the admin token,
//! so everything the authority writes there is 0600 (directories 0700) whatever the umask
//! and whoever created the directory. Like ssh with a private key, a data directory, admin
//! token file or KEK file that group or others may access is refused at start, naming the
//! `chmod` that fixes it, unless the operator says the platform sets those modes (a
//! Kubernetes Secret or volume with `fsGroup`).

use std::path::Path;

use crate::telemetry::chain;

/// The flag (and its environment variable) that accepts group- or world-accessible files.
pub(crate) const ALLOW_FLAG: &str =
    "--allow-group-readable-files (TA_ALLOW_GROUP_READABLE_FILES=true)";

#[derive(Debug, thiserror::Error)]
pub enum FileModeError {
    #[error("the {what} {path} is accessible to group or others (mode {mode:04o}); run `chmod {fix:o} {path}`, or start with {ALLOW_FLAG} where the platform sets these modes")]
    TooOpen {
        what: &'static str,
        path: String,
        mode: u32,
        fix: u32,
    },
    #[error("cannot read the mode of {path}: {source}")]
    Stat {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make {path} owner-only: {source}")]
    Chmod {
        path: String,
        source: std::io::Error,
    },
}

/// Sets the process umask to 077, so files that libraries create (sled's snapshots and
/// segments) are owner-only too. Called by the binary before anything is opened.
pub(crate) fn restrict_umask() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Refuses `path` (a directory or a file holding a secret) if group or others have any
/// access to it, unless `allow`; then it only warns.
pub(crate) fn check_private(
    path: &Path,
    what: &'static str,
    allow: bool,
) -> Result<(), FileModeError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let metadata = std::fs::metadata(path).map_err(|source| FileModeError::Stat {
            path: path.display().to_string(),
            source,
        })?;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            let error = FileModeError::TooOpen {
                what,
                path: path.display().to_string(),
                mode,
                fix: if metadata.is_dir() { 0o700 } else { 0o600 },
            };
            if !allow {
                return Err(error);
            }
            tracing::warn!(error = %chain(&error), "accepted because of --allow-group-readable-files");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what, allow);
    Ok(())
}

/// Creates a directory (and its parents) owner-only; an existing one is left as it is.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Opens `path` for writing, created or truncated, mode 0600 whatever the umask or the mode
/// of a file left there before.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Makes `path` owner-only: a directory 0700 with everything below it 0700/0600, a file
/// 0600. For what another program created with the umask's modes (sled's files).
pub(crate) fn make_private(path: &Path) -> Result<(), FileModeError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let chmod = |source| FileModeError::Chmod {
            path: path.display().to_string(),
            source,
        };
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(chmod(e)),
        };
        if metadata.file_type().is_symlink() {
            return Ok(());
        }
        let mode = if metadata.is_dir() { 0o700 } else { 0o600 };
        if metadata.permissions().mode() & 0o777 != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(chmod)?;
        }
        if metadata.is_dir() {
            for entry in std::fs::read_dir(path).map_err(chmod)? {
                make_private(&entry.map_err(chmod)?.path())?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
