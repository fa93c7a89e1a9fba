//! Signing with a key held in the token, as a `SignatureSource` the server's signers use.
//!
//! Each signature is verified with the stored public key before it is returned: a token
//! that signs with another key (a stale handle after a reset, a replaced object) yields an
//! error, never a wrong signature.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use token_authority_jose::crypto::{sha256, Algorithm, CryptoError, VerifyingKey};
use token_authority_jose::jwt::SignatureSource;

use super::error::{failed, Pkcs11Error};
use super::keys::{find_private, object_id};
use super::mechanisms::sign_mechanism;
use super::session_pool::{Connection, Try};
use crate::telemetry::chain;

/// The order n of the P-256 group, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// What the signer knows of its private key object in one epoch of the connection.
#[derive(Clone, Copy, Debug)]
enum Handle {
    /// Not looked up yet (a start that did not find it): looked up at the next call.
    Unknown,
    Found {
        epoch: u64,
        handle: ObjectHandle,
    },
    Mismatch {
        epoch: u64,
        at: Instant,
    },
}

/// How long a key found to be another is refused without asking the token again.
const MISMATCH_RECHECK: Duration = Duration::from_secs(5);

pub(super) struct TokenSigner {
    connection: Arc<Connection>,
    alg: Algorithm,
    id: Vec<u8>,
    verifying: VerifyingKey,
    handle: Mutex<Handle>,
}

impl TokenSigner {
    pub(super) fn new(
        connection: Arc<Connection>,
        alg: Algorithm,
        id: Vec<u8>,
        verifying: VerifyingKey,
        found: Option<(u64, ObjectHandle)>,
    ) -> TokenSigner {
        let handle = found.map_or(Handle::Unknown, |(epoch, handle)| Handle::Found {
            epoch,
            handle,
        });
        TokenSigner {
            connection,
            alg,
            id,
            verifying,
            handle: Mutex::new(handle),
        }
    }

    /// One try: sign `input` (the message, or for ES256 its digest) and check the signature
    /// against `message`. A failure that calls for a reconnection leaves the handle as it
    /// is, to be looked up again in the next epoch; the same failure right after a
    /// reconnection is the key's own, remembered for the epoch so that later calls fail at
    /// once rather than reconnect again.
    fn sign_once(
        &self,
        session: &Session,
        attempt: Try,
        message: &[u8],
        input: &[u8],
    ) -> Result<Vec<u8>, Pkcs11Error> {
        // Refused by the memo: not a new finding, so the memo keeps its time (else calls
        // every few seconds would keep the key from ever being looked up again).
        if let Some(refused) = self.refused_by_memo(attempt.epoch) {
            return Err(refused);
        }
        let result = self
            .handle(session, attempt.epoch)
            .and_then(|(handle, fresh)| {
                let mut signature = session
                    .sign(&sign_mechanism(self.alg), handle, input)
                    .map_err(failed(self.connection.label(), "signing"))?;
                if self.alg == Algorithm::ES256 && signature.len() == 64 {
                    normalize_p256_low_s(&mut signature);
                }
                if self.verifying.verify(message, &signature) {
                    Ok(signature)
                } else if fresh {
                    // The handle was found by CKA_ID in this very epoch: it is not stale, so the
                    // object under that CKA_ID is another key, and reconnecting cures nothing
                    // (with two such keys, each reconnection would undo the other's memo).
                    Err(self.mismatch("the object under its CKA_ID signs with another key"))
                } else {
                    Err(Pkcs11Error::WrongSignature {
                        label: self.connection.label().to_owned(),
                        object_id: object_id(&self.id),
                    })
                }
            });
        if let Err(error) = &result {
            let own = matches!(error, Pkcs11Error::KeyMismatch { .. })
                || (attempt.after_reconnect && error.calls_for_reconnect() && !error.token_gone());
            if own {
                self.remember(Handle::Mismatch {
                    epoch: attempt.epoch,
                    at: Instant::now(),
                });
            }
        }
        result
    }

    fn mismatch(&self, reason: &str) -> Pkcs11Error {
        Pkcs11Error::KeyMismatch {
            label: self.connection.label().to_owned(),
            object_id: object_id(&self.id),
            reason: reason.to_owned(),
        }
    }

    /// A key found to be another in `epoch` is refused at once for `MISMATCH_RECHECK`
    /// after that finding, then looked up again (an operator may have put the right object
    /// back).
    fn refused_by_memo(&self, epoch: u64) -> Option<Pkcs11Error> {
        let known = *self.handle.lock().unwrap_or_else(PoisonError::into_inner);
        match known {
            Handle::Mismatch { epoch: e, at } if e == epoch && at.elapsed() < MISMATCH_RECHECK => {
                Some(self.mismatch(
                    "it made no signature the stored public key verifies, even after reconnecting",
                ))
            }
            _ => None,
        }
    }

    /// The private key's handle in `epoch`, looked up again by CKA_ID in a new epoch (then
    /// `fresh`).
    fn handle(&self, session: &Session, epoch: u64) -> Result<(ObjectHandle, bool), Pkcs11Error> {
        let known = *self.handle.lock().unwrap_or_else(PoisonError::into_inner);
        let label = self.connection.label();
        match known {
            Handle::Found { epoch: e, handle } if e == epoch => Ok((handle, false)),
            _ => {
                let handle = find_private(session, label, &self.id)?;
                self.remember(Handle::Found { epoch, handle });
                Ok((handle, true))
            }
        }
    }

    fn remember(&self, handle: Handle) {
        *self.handle.lock().unwrap_or_else(PoisonError::into_inner) = handle;
    }
}

impl SignatureSource for TokenSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }

    fn signature_len(&self) -> usize {
        self.verifying.signature_len()
    }

    fn verifying_key(&self) -> Result<VerifyingKey, CryptoError> {
        Ok(self.verifying.clone())
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let digest;
        let input = if self.alg == Algorithm::ES256 {
            digest = sha256(message);
            &digest[..]
        } else {
            message
        };
        let signed = self.connection.run("signing", |session, attempt| {
            self.sign_once(session, attempt, message, input)
        });
        match &signed {
            Ok(_) => self.connection.key_signed(&self.id, true),
            Err(error) if error.is_the_keys_own() => self.connection.key_signed(&self.id, false),
            Err(_) => {}
        }
        signed.map_err(|error| {
            tracing::warn!(
                token = %self.connection.label(),
                object_id = %object_id(&self.id),
                alg = self.alg.name(),
                transient = error.is_transient(),
                error = %chain(&error),
                "signing with a PKCS#11 key failed"
            );
            CryptoError::Signing
        })
    }
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("token", &self.connection.label())
            .field("alg", &self.alg)
            .field("object_id", &object_id(&self.id))
            .finish_non_exhaustive()
    }
}

/// Replaces s by n - s in a raw P-256 r || s signature when s > n/2: both verify, and low S
/// is the form verifiers that refuse malleable signatures accept.
pub(super) fn normalize_p256_low_s(signature: &mut [u8]) {
    let s = &mut signature[32..64];
    if !p256_scalar_is_high(s) {
        return;
    }
    let mut borrow = 0u16;
    for (byte, &order) in s.iter_mut().zip(P256_ORDER.iter()).rev() {
        let difference = u16::from(order)
            .wrapping_sub(u16::from(*byte))
            .wrapping_sub(borrow);
        *byte = difference.to_le_bytes()[0];
        borrow = (difference >> 8) & 1;
    }
}

/// s > n/2 for a big-endian 32-byte scalar.
fn p256_scalar_is_high(s: &[u8]) -> bool {
    let mut half = [0u8; 32];
    let mut carry = 0u8;
    for (h, &b) in half.iter_mut().zip(P256_ORDER.iter()) {
        *h = (b >> 1) | (carry << 7);
        carry = b & 1;
    }
    s > half.as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half_order() -> [u8; 32] {
        let mut half = [0u8; 32];
        let mut carry = 0;
        for (h, &b) in half.iter_mut().zip(P256_ORDER.iter()) {
            *h = (b >> 1) | (carry << 7);
            carry = b & 1;
        }
        half
    }

    #[test]
    fn low_s_at_the_boundaries() {
        let half = half_order();
        let mut signature = [[7u8; 32], half].concat();
        normalize_p256_low_s(&mut signature);
        assert_eq!(signature[32..], half, "n/2 is low and stays");

        let mut above = half;
        above[31] += 1;
        let mut signature = [[7u8; 32], above].concat();
        normalize_p256_low_s(&mut signature);
        assert_eq!(signature[32..], half, "n - (n/2 + 1) = n/2 for an odd n");
        assert_eq!(signature[..32], [7u8; 32], "r is untouched");

        let mut n_minus_1 = P256_ORDER;
        n_minus_1[31] -= 1;
        let mut signature = [[0u8; 32], n_minus_1].concat();
        normalize_p256_low_s(&mut signature);
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(signature[32..], one, "a borrow across every byte");
    }
}
