//! HMAC-SHA-256 under a secret key: what keys the audit log's chain, so that a chain
//! recomputed by someone without the key does not verify.

use super::provider::lib::hmac;

/// A 32-byte HMAC-SHA-256 key, prepared once.
pub struct MacKey(hmac::Key);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    pub fn new(secret: &[u8; 32]) -> MacKey {
        MacKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    pub fn sign(&self, data: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.0, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `tag` is the MAC of `data`, compared in constant time.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.0, data, tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_verifies_only_for_its_data_and_key() {
        let key = MacKey::new(&[7u8; 32]);
        let tag = key.sign(b"line");
        assert!(key.verify(b"line", &tag));
        assert!(!key.verify(b"lime", &tag));
        assert!(!MacKey::new(&[8u8; 32]).verify(b"line", &tag));
    }
}
