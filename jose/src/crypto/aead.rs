//! AES-256-GCM sealing of private keys at rest under a key-encryption key.

use super::provider::lib::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use super::{random_bytes, CryptoError};

pub const KEY_LEN: usize = 32;

/// A key-encryption key. `Debug` never shows the bytes.
pub struct Kek {
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    pub fn new(bytes: &[u8]) -> Result<Kek, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::Aead)?;
        Ok(Kek {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Returns (nonce, ciphertext with tag). A fresh random nonce per seal: each key
    /// is sealed a handful of times in its life, far from GCM's random-nonce bound.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let nonce_bytes = random_bytes(NONCE_LEN)?;
        let nonce =
            Nonce::try_assume_unique_for_key(&nonce_bytes).map_err(|_| CryptoError::Aead)?;
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| CryptoError::Aead)?;
        Ok((nonce_bytes, in_out))
    }

    pub fn open(&self, aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Aead)?;
        let mut in_out = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| CryptoError::Aead)?;
        Ok(plain.to_vec())
    }
}
