//! PKCS#8 private keys from PEM files, as `openssl genpkey` writes them.

use zeroize::Zeroizing;

/// Why a PEM file holds no usable PKCS#8 private key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PemError {
    #[error("not a PEM document: {0}")]
    NotPem(String),
    #[error("a PEM \"{label}\" block; expected \"PRIVATE KEY\" (PKCS#8). Convert with: openssl pkcs8 -topk8 -nocrypt -in key.pem")]
    NotPkcs8 { label: String },
}

/// The DER inside a PEM `PRIVATE KEY` block (PKCS#8, as `openssl genpkey` writes).
pub fn pkcs8_from_pem(pem: &[u8]) -> Result<Zeroizing<Vec<u8>>, PemError> {
    let (label, der) = pem_rfc7468::decode_vec(pem).map_err(|e| PemError::NotPem(e.to_string()))?;
    let der = Zeroizing::new(der);
    if label != "PRIVATE KEY" {
        return Err(PemError::NotPkcs8 {
            label: label.to_owned(),
        });
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two refusals say what was found and, for another block type, how to convert it.
    #[test]
    fn refusals_name_what_was_found() {
        assert!(matches!(pkcs8_from_pem(b"junk"), Err(PemError::NotPem(_))));
        assert!(pkcs8_from_pem(b"junk")
            .unwrap_err()
            .to_string()
            .starts_with("not a PEM document: "));
        let rsa = b"-----BEGIN RSA PRIVATE KEY-----\nAQAB\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            pkcs8_from_pem(rsa).unwrap_err().to_string(),
            "a PEM \"RSA PRIVATE KEY\" block; expected \"PRIVATE KEY\" (PKCS#8). Convert with: openssl pkcs8 -topk8 -nocrypt -in key.pem"
        );
        let pkcs8 = b"-----BEGIN PRIVATE KEY-----\nAQAB\n-----END PRIVATE KEY-----\n";
        assert_eq!(*pkcs8_from_pem(pkcs8).unwrap(), vec![1, 0, 1]);
    }
}
