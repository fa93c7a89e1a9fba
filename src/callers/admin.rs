//! The admin credential: where it comes from, and checking it in constant time.

use std::{
    fmt,
    io::Write as _,
    path::{Path, PathBuf},
};

use subtle::ConstantTimeEq as _;

use token_authority_jose::{b64, crypto};

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the admin token file {path} is empty")]
    Empty { path: String },
    #[error("the admin token in {path} is {length} characters: use at least {MIN_ADMIN_TOKEN} random ones (openssl rand -base64 32)")]
    Short { path: String, length: usize },
    #[error("cannot write a new admin token to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot generate an admin token: {0}")]
    Random(#[from] crypto::CryptoError),
}

/// Where the token came from, for the start-up log (which never shows the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdminTokenSource {
    Configured(PathBuf),
    Generated(PathBuf),
    Existing(PathBuf),
}

/// The admin token. Only its SHA-256 is kept, so comparing digests in constant time also
/// hides the token's length.
pub struct AdminToken {
    digest: [u8; 32],
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken {
            digest: crypto::sha256(token.as_bytes()),
        }
    }

    /// Reads the configured file, or, when none is configured, `<data_dir>/admin-token`,
    /// writing a fresh random token there (mode 0600) on the first start.
    pub(crate) fn load(
        configured: Option<&Path>,
        data_dir: &Path,
    ) -> Result<(AdminToken, AdminTokenSource), AdminTokenError> {
        if let Some(path) = configured {
            return Ok((read(path)?, AdminTokenSource::Configured(path.to_owned())));
        }
        let path = data_dir.join("admin-token");
        if path.exists() {
            return Ok((read(&path)?, AdminTokenSource::Existing(path)));
        }
        let token = b64::encode(crypto::random_bytes(32)?);
        let write_error = |source| AdminTokenError::Write {
            path: path.display().to_string(),
            source,
        };
        let mut file = open_private(&path).map_err(write_error)?;
        file.write_all(token.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(write_error)?;
        Ok((AdminToken::new(&token), AdminTokenSource::Generated(path)))
    }

    /// Whether `presented` is the admin token, in time independent of where they differ.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let presented = crypto::sha256(presented.as_bytes());
        self.digest.ct_eq(&presented).into()
    }
}

/// The shortest admin token accepted from a file.
const MIN_ADMIN_TOKEN: usize = 16;

fn read(path: &Path) -> Result<AdminToken, AdminTokenError> {
    let text = crate::config::read::regular_text(path, crate::config::read::SECRET_MAX).map_err(
        |source| AdminTokenError::Read {
            path: path.display().to_string(),
            source,
        },
    )?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AdminTokenError::Empty {
            path: path.display().to_string(),
        });
    }
    // The admin token is the only secret between a caller and RotateKeys, RevokeKey and
    // SetTokenStatus; the per-address failure limit can be turned off.
    let length = token.chars().count();
    if length < MIN_ADMIN_TOKEN {
        return Err(AdminTokenError::Short {
            path: path.display().to_string(),
            length,
        });
    }
    Ok(AdminToken::new(token))
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_private_mode_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = AdminToken::load(None, dir.path()).unwrap();
        let path = dir.path().join("admin-token");
        assert_eq!(source, AdminTokenSource::Generated(path.clone()));
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(first.matches(written.trim()));
        assert!(!first.matches("wrong"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, source) = AdminToken::load(None, dir.path()).unwrap();
        assert_eq!(source, AdminTokenSource::Existing(path));
        assert!(again.matches(written.trim()));
    }

    #[test]
    fn configured_file_must_hold_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  \n").unwrap();
        assert!(matches!(
            AdminToken::load(Some(&file), dir.path()),
            Err(AdminTokenError::Empty { .. })
        ));
        // A short one is refused, with its length and how to make a good one.
        std::fs::write(&file, "a\n").unwrap();
        assert_eq!(
            AdminToken::load(Some(&file), dir.path())
                .unwrap_err()
                .to_string(),
            format!(
                "the admin token in {} is 1 characters: use at least 16 random ones (openssl rand -base64 32)",
                file.display()
            )
        );
        std::fs::write(&file, "s3cret-s3cret-16\n").unwrap();
        let (token, _) = AdminToken::load(Some(&file), dir.path()).unwrap();
        assert!(token.matches("s3cret-s3cret-16"));
        assert!(!dir.path().join("admin-token").exists());
    }
}
