//! base64url without padding (RFC 7515 section 2), strict on input: no padding, no
//! whitespace, nothing outside the alphabet, no non-canonical trailing bits.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn decode(text: impl AsRef<[u8]>) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

/// Decodes into `out` without allocating: `Ok(None)` when the bytes would not fit, for the
/// caller to `decode` instead. Accepts and refuses exactly what `decode` does.
pub fn decode_into(
    text: impl AsRef<[u8]>,
    out: &mut [u8],
) -> Result<Option<&[u8]>, base64::DecodeError> {
    match URL_SAFE_NO_PAD.decode_slice(text, out) {
        Ok(len) => Ok(out.get(..len)),
        Err(base64::DecodeSliceError::DecodeError(e)) => Err(e),
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => Ok(None),
    }
}

/// Standard base64 with padding, the form `openssl rand -base64 32` writes.
pub fn decode_standard(text: impl AsRef<[u8]>) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_strict() {
        assert_eq!(decode("AQAB").unwrap(), vec![1, 0, 1]);
        use base64::DecodeError::{InvalidByte, InvalidLastSymbol, InvalidLength};
        for (bad, error) in [
            ("AQAB=", InvalidByte(4, b'=')),
            ("AQ AB", InvalidByte(2, b' ')),
            ("AQ+B", InvalidByte(2, b'+')),
            ("AQ/B", InvalidByte(2, b'/')),
            ("AR", InvalidLastSymbol(1, b'R')),
            ("A", InvalidLength(1)),
        ] {
            assert_eq!(decode(bad), Err(error.clone()), "{bad:?}");
            assert_eq!(decode_into(bad, &mut [0; 8]), Err(error), "{bad:?}");
        }
        assert_eq!(
            decode_into("AQAB", &mut [0; 3]).unwrap(),
            Some(&[1, 0, 1][..])
        );
        assert_eq!(decode_into("AQAB", &mut [0; 2]).unwrap(), None);
    }
}
