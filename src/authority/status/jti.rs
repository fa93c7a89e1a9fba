//! The `jti` of a token with a status: its list, index and `exp`, under a MAC.
//!
//! SetTokenStatus names a token by its `jti`, so the authority must find the token's list
//! and index from it until the token expires. Writing a record per token for that cost a
//! fifth of ES256 issuance (a sled or PostgreSQL write for every token); a jti that carries
//! them costs nothing to keep, is the same on every replica, and survives a crash.
//!
//! The MAC (HMAC-SHA-256, cut to 128 bits) is what makes an unknown jti unknown: a jti
//! mistyped, made up, or minted by another authority names no index here, instead of
//! changing the status of whichever token a garbled number would point at. Its key is kept
//! with the lists (`StatusStore::jti_key`), shared by the replicas. It guards against
//! mistakes, not against the admins who call SetTokenStatus (they can name any index by
//! list and index anyway), so it is stored as the lists are, not sealed like a private key.
//! The list, index and `exp` it reveals are in the token already.

use token_authority_jose::{b64, crypto::mac::MacKey};

/// A place in a list, as handed out to one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) list: u64,
    pub(crate) idx: u64,
}

/// list (8 bytes), index (8), exp (8), then the MAC of those 24 bytes, cut to 16.
const BODY: usize = 24;
const TAG: usize = 16;
const LEN: usize = BODY + TAG;
/// Domain separation: this key MACs nothing else, but a tag says what it is about.
const CONTEXT: &[u8] = b"token-authority status jti v1";

/// Mints and reads status jtis.
pub(crate) struct JtiMinter(MacKey);

impl std::fmt::Debug for JtiMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JtiMinter(..)")
    }
}

impl JtiMinter {
    pub(crate) fn new(key: &[u8; 32]) -> JtiMinter {
        JtiMinter(MacKey::new(key))
    }

    fn tag(&self, body: &[u8; BODY]) -> [u8; 32] {
        let mut data = [0u8; CONTEXT.len() + BODY];
        data[..CONTEXT.len()].copy_from_slice(CONTEXT);
        data[CONTEXT.len()..].copy_from_slice(body);
        self.0.sign(&data)
    }

    /// The jti of the token holding `slot` and expiring at `exp` (unix seconds): 54
    /// base64url characters, unique because no slot is handed out twice.
    pub(crate) fn mint(&self, slot: Slot, exp: u64) -> String {
        let mut bytes = [0u8; LEN];
        bytes[..8].copy_from_slice(&slot.list.to_be_bytes());
        bytes[8..16].copy_from_slice(&slot.idx.to_be_bytes());
        bytes[16..BODY].copy_from_slice(&exp.to_be_bytes());
        let body: [u8; BODY] = bytes[..BODY].try_into().unwrap_or([0; BODY]);
        bytes[BODY..].copy_from_slice(&self.tag(&body)[..TAG]);
        b64::encode(bytes)
    }

    /// The slot and `exp` a jti minted here names; `None` for any other string.
    pub(crate) fn read(&self, jti: &str) -> Option<(Slot, u64)> {
        if jti.len() > 64 {
            return None;
        }
        let bytes: [u8; LEN] = b64::decode(jti).ok()?.try_into().ok()?;
        let body: [u8; BODY] = bytes[..BODY].try_into().ok()?;
        let expected = self.tag(&body);
        // Constant time: whether a guess was close says nothing.
        let differs = expected[..TAG]
            .iter()
            .zip(&bytes[BODY..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs != 0 {
            return None;
        }
        let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().unwrap_or([0; 8]));
        Some((
            Slot {
                list: u64_at(0),
                idx: u64_at(8),
            },
            u64_at(16),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: Slot = Slot {
        list: 7,
        idx: 1_048_575,
    };

    #[test]
    fn a_minted_jti_reads_back_and_nothing_else_does() {
        let minter = JtiMinter::new(&[1u8; 32]);
        let jti = minter.mint(SLOT, 1_800_000_000);
        assert_eq!(jti.len(), 54);
        assert_eq!(minter.read(&jti), Some((SLOT, 1_800_000_000)));
        // Unique per slot.
        assert_ne!(
            jti,
            minter.mint(
                Slot {
                    idx: SLOT.idx - 1,
                    ..SLOT
                },
                1_800_000_000
            )
        );
        let cases: Vec<(&str, String)> = vec![
            (
                "another authority's key",
                JtiMinter::new(&[2u8; 32]).mint(SLOT, 1_800_000_000),
            ),
            ("a random jti", b64::encode([9u8; 16])),
            ("empty", String::new()),
            ("not base64url", "*".repeat(54)),
            ("too long", format!("{jti}AA")),
            ("too short", jti[..53].to_owned()),
            ("far too long", "A".repeat(10_000)),
        ];
        for (case, jti) in cases {
            assert_eq!(minter.read(&jti), None, "{case}");
        }
    }

    /// Any change to any byte (the index, the exp, the tag) is refused, not read as a
    /// different token.
    #[test]
    fn every_altered_byte_is_refused() {
        let minter = JtiMinter::new(&[1u8; 32]);
        let bytes = b64::decode(minter.mint(SLOT, 1_800_000_000)).unwrap();
        for at in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[at] ^= 0x01;
            assert_eq!(minter.read(&b64::encode(&altered)), None, "byte {at}");
        }
    }
}
