//! Reading the files the configuration names (keys, tokens, PINs, the policy, certificates):
//! only regular files, and only up to a size. A FIFO read with a plain `read` blocks until a
//! writer comes, which at start held the server before its signal handling and, on a reload,
//! held a runtime worker for good; a device (`/dev/zero`) never ends.

use std::{
    io::{self, Read as _},
    path::Path,
};

/// The limit for a secret of a line or a few (a token, a PIN, a key): 64 KiB.
pub(crate) const SECRET_MAX: u64 = 64 * 1024;
/// The limit for a document (a policy, a PEM bundle, a JWKS): 16 MiB.
pub(crate) const DOCUMENT_MAX: u64 = 16 * 1024 * 1024;

/// The bytes of the regular file at `path`, at most `max` of them. Opened without blocking,
/// so a FIFO is refused rather than waited on.
pub(crate) fn regular_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device, socket or directory)",
        ));
    }
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        )
    };
    if meta.len() > max {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The same, as UTF-8 text.
pub(crate) fn regular_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(regular_file(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(regular_file(&file, 10).unwrap(), b"0123456789");
        assert_eq!(
            regular_file(&file, 9).unwrap_err().to_string(),
            "larger than 9 bytes"
        );
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for path in [fifo.as_path(), dir.path(), Path::new("/dev/zero")] {
            assert_eq!(
                regular_file(path, SECRET_MAX).unwrap_err().to_string(),
                "not a regular file (a FIFO, device, socket or directory)",
                "{}",
                path.display()
            );
        }
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        assert_eq!(
            regular_text(&file, 10).unwrap_err().to_string(),
            "not UTF-8 text"
        );
    }
}
