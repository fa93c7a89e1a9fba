//! The Token Status List (draft-ietf-oauth-status-list): the packed array of statuses a
//! Status List Token carries, its `lst` encoding (zlib-compressed, base64url), the
//! `status` claim of a referenced token, and the status values. The authority encodes
//! lists; the authority and the client decode them, with the same limits.
//!
//! Decoding takes a cap on the inflated size: a few kilobytes of `lst` can inflate to
//! gigabytes, and a verifier fetches lists from the network.

use std::io::{Read, Write};

use serde_json::{Map, Value};

use crate::{
    b64,
    jwt::verify::{Reason, Rejection},
};

/// The media type of a Status List Token in JWT form.
pub const MEDIA_TYPE: &str = "application/statuslist+jwt";
/// The `typ` header of a Status List Token.
pub const TYP: &str = "statuslist+jwt";
/// The most a decoder inflates unless told otherwise: 16 MiB, the bytes of 67,108,864
/// two-bit statuses (64 lists of the authority's default size).
pub const DEFAULT_MAX_INFLATED: usize = 16 * 1024 * 1024;

/// The statuses this authority sets (the draft's Status Types). Other values decode as
/// `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// 0x00: the token stands.
    Valid,
    /// 0x01: revoked; final.
    Invalid,
    /// 0x02: withdrawn until reinstated.
    Suspended,
    /// Any other value of the list's width (application-specific in the draft).
    Other(u8),
}

impl Status {
    pub fn from_value(value: u8) -> Status {
        match value {
            0 => Status::Valid,
            1 => Status::Invalid,
            2 => Status::Suspended,
            other => Status::Other(other),
        }
    }

    pub fn value(self) -> u8 {
        match self {
            Status::Valid => 0,
            Status::Invalid => 1,
            Status::Suspended => 2,
            Status::Other(value) => value,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Valid => "VALID",
            Status::Invalid => "INVALID",
            Status::Suspended => "SUSPENDED",
            Status::Other(_) => "OTHER",
        }
    }
}

/// Why a list could not be decoded or a reference read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusListError {
    #[error("bits must be 1, 2, 4 or 8 (got {0})")]
    Bits(u64),
    #[error("lst is not base64url")]
    Base64,
    #[error("lst is not zlib data: {0}")]
    Zlib(String),
    #[error("lst inflates past {cap} bytes")]
    TooLarge { cap: usize },
    #[error("index {index} is out of range (the list holds {size})")]
    OutOfRange { index: u64, size: u64 },
    #[error("status value {value} does not fit in {bits} bits")]
    ValueTooWide { value: u8, bits: u8 },
    #[error("{0}")]
    Claim(&'static str),
}

/// A list of statuses, `bits` wide each, packed least significant bit first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusList {
    bits: u8,
    bytes: Vec<u8>,
}

impl StatusList {
    /// A list of `size` VALID statuses (rounded up to a whole byte).
    pub fn new(bits: u8, size: u64) -> Result<StatusList, StatusListError> {
        check_bits(u64::from(bits))?;
        let per_byte = u64::from(8 / bits);
        let len = usize::try_from(size.div_ceil(per_byte))
            .map_err(|_| StatusListError::TooLarge { cap: usize::MAX })?;
        Ok(StatusList {
            bits,
            bytes: vec![0; len],
        })
    }

    /// The list a `status_list` object's `bits` and `lst` encode, inflating at most
    /// `max_inflated` bytes.
    pub fn decode(
        bits: u64,
        lst: &str,
        max_inflated: usize,
    ) -> Result<StatusList, StatusListError> {
        let bits = check_bits(bits)?;
        let compressed = b64::decode(lst).map_err(|_| StatusListError::Base64)?;
        let mut bytes = Vec::new();
        // One byte past the cap tells "exactly the cap" from "more".
        let limit = u64::try_from(max_inflated)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        flate2::read::ZlibDecoder::new(compressed.as_slice())
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| StatusListError::Zlib(e.to_string()))?;
        if bytes.len() > max_inflated {
            return Err(StatusListError::TooLarge { cap: max_inflated });
        }
        Ok(StatusList { bits, bytes })
    }

    /// The same list from its packed bytes.
    pub fn from_bytes(bits: u8, bytes: Vec<u8>) -> Result<StatusList, StatusListError> {
        check_bits(u64::from(bits))?;
        Ok(StatusList { bits, bytes })
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// How many statuses the list holds.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64 * u64::from(8 / self.bits)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many statuses hold each value (indexed by value; 2^bits counts).
    pub fn tally(&self) -> Vec<u64> {
        let per_byte = 8 / self.bits;
        let mask = ((1u16 << self.bits) - 1) as u8;
        let mut counts = vec![0u64; 1 << self.bits];
        for &byte in &self.bytes {
            // Most bytes of a list are all VALID.
            if byte == 0 {
                counts[0] += u64::from(per_byte);
                continue;
            }
            for slot in 0..per_byte {
                counts[usize::from((byte >> (slot * self.bits)) & mask)] += 1;
            }
        }
        counts
    }

    /// The status at `index`; past the end is a refusal, as the draft requires.
    pub fn get(&self, index: u64) -> Result<Status, StatusListError> {
        let (byte, shift) = self.position(index)?;
        let mask = ((1u16 << self.bits) - 1) as u8;
        Ok(Status::from_value((self.bytes[byte] >> shift) & mask))
    }

    pub fn set(&mut self, index: u64, status: Status) -> Result<(), StatusListError> {
        let value = status.value();
        let mask = ((1u16 << self.bits) - 1) as u8;
        if value > mask {
            return Err(StatusListError::ValueTooWide {
                value,
                bits: self.bits,
            });
        }
        let (byte, shift) = self.position(index)?;
        self.bytes[byte] = (self.bytes[byte] & !(mask << shift)) | (value << shift);
        Ok(())
    }

    fn position(&self, index: u64) -> Result<(usize, u8), StatusListError> {
        let out_of_range = StatusListError::OutOfRange {
            index,
            size: self.size(),
        };
        if index >= self.size() {
            return Err(out_of_range);
        }
        let per_byte = u64::from(8 / self.bits);
        let byte = usize::try_from(index / per_byte).map_err(|_| out_of_range)?;
        // The remainder is below 8: the shift fits a byte.
        let shift = ((index % per_byte) * u64::from(self.bits)) as u8;
        Ok((byte, shift))
    }

    /// `lst`: the bytes zlib-compressed at the highest level (as the draft recommends),
    /// base64url without padding.
    pub fn encode(&self) -> String {
        let mut encoder = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(self.bytes.len() / 8 + 64),
            flate2::Compression::best(),
        );
        // Writing to a Vec cannot fail.
        let compressed = encoder
            .write_all(&self.bytes)
            .and_then(|()| encoder.finish())
            .unwrap_or_default();
        b64::encode(compressed)
    }

    /// The `status_list` claim: `{"bits": .., "lst": ..}`.
    pub fn to_claim(&self) -> Value {
        let mut claim = Map::with_capacity(2);
        claim.insert("bits".into(), self.bits.into());
        claim.insert("lst".into(), Value::String(self.encode()));
        Value::Object(claim)
    }

    /// The list a `status_list` claim carries.
    pub fn from_claim(claim: &Value, max_inflated: usize) -> Result<StatusList, StatusListError> {
        let bits = claim
            .get("bits")
            .and_then(Value::as_u64)
            .ok_or(StatusListError::Claim("status_list.bits is not a number"))?;
        let lst = claim
            .get("lst")
            .and_then(Value::as_str)
            .ok_or(StatusListError::Claim("status_list.lst is not a string"))?;
        StatusList::decode(bits, lst, max_inflated)
    }
}

/// What a referenced token's status means to a verifier, the server's and the client's
/// alike: VALID passes; INVALID is `RevokedToken`, SUSPENDED `SuspendedToken`; anything
/// else, or an index out of the list, `StatusUnavailable`. `list` names the list in the
/// detail.
pub fn judge(list: &StatusList, idx: u64, named: &str) -> Result<(), Rejection> {
    let refuse = |reason, detail: String| Err(Rejection { reason, detail });
    match list.get(idx) {
        Ok(Status::Valid) => Ok(()),
        Ok(Status::Invalid) => refuse(
            Reason::RevokedToken,
            format!("the token was revoked (status list {named}, index {idx})"),
        ),
        Ok(Status::Suspended) => refuse(
            Reason::SuspendedToken,
            format!("the token is suspended (status list {named}, index {idx})"),
        ),
        Ok(Status::Other(value)) => refuse(
            Reason::StatusUnavailable,
            format!("status list {named} holds an unknown status {value} at index {idx}"),
        ),
        Err(e) => refuse(
            Reason::StatusUnavailable,
            format!("status list {named}: {e}"),
        ),
    }
}

fn check_bits(bits: u64) -> Result<u8, StatusListError> {
    match bits {
        1 | 2 | 4 | 8 => Ok(bits as u8),
        other => Err(StatusListError::Bits(other)),
    }
}

/// A referenced token's `status.status_list`: where its status is, and at which index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReference {
    pub idx: u64,
    pub uri: String,
}

impl StatusReference {
    /// The `status` claim naming this reference.
    pub fn to_claim(&self) -> Value {
        serde_json::json!({ "status_list": { "idx": self.idx, "uri": self.uri } })
    }

    /// The reference in a token's claims: `None` when the token has no `status` claim (or
    /// one without `status_list`), an error when it has a malformed one.
    pub fn from_claims(
        claims: &Map<String, Value>,
    ) -> Result<Option<StatusReference>, StatusListError> {
        let Some(status) = claims.get("status") else {
            return Ok(None);
        };
        let status = status
            .as_object()
            .ok_or(StatusListError::Claim("status is not an object"))?;
        let Some(list) = status.get("status_list") else {
            return Ok(None);
        };
        let idx = list
            .get("idx")
            .and_then(Value::as_u64)
            .ok_or(StatusListError::Claim(
                "status.status_list.idx is not a non-negative integer",
            ))?;
        let uri = list
            .get("uri")
            .and_then(Value::as_str)
            .ok_or(StatusListError::Claim(
                "status.status_list.uri is not a string",
            ))?;
        Ok(Some(StatusReference {
            idx,
            uri: uri.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The draft's §4.1 examples, byte for byte.
    #[test]
    fn packs_least_significant_bit_first() {
        let mut one = StatusList::new(1, 16).unwrap();
        for (index, value) in [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
            .into_iter()
            .enumerate()
        {
            one.set(index as u64, Status::from_value(value)).unwrap();
        }
        assert_eq!(one.as_bytes(), [0xb9, 0xa3]);
        let mut two = StatusList::new(2, 12).unwrap();
        for (index, value) in [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3].into_iter().enumerate() {
            two.set(index as u64, Status::from_value(value)).unwrap();
        }
        assert_eq!(two.as_bytes(), [0xc9, 0x44, 0xf9]);
        // The draft's encodings decode to them.
        let decoded = StatusList::decode(1, "eNrbuRgAAhcBXQ", 1024).unwrap();
        assert_eq!(decoded.as_bytes(), [0xb9, 0xa3]);
        let decoded = StatusList::decode(2, "eNo76fITAAPfAgc", 1024).unwrap();
        assert_eq!(decoded, two);
        assert_eq!(decoded.get(1).unwrap(), Status::Suspended);
        assert_eq!(decoded.get(3).unwrap(), Status::Other(3));
        // And ours round-trip.
        assert_eq!(StatusList::decode(2, &two.encode(), 1024).unwrap(), two);
        // The §4.1 lists, counted.
        assert_eq!(one.tally(), [7, 9]);
        assert_eq!(two.tally(), [3, 4, 2, 3]);
        let eight = StatusList::from_bytes(8, vec![0, 3, 3, 255]).unwrap();
        let mut expected = vec![0u64; 256];
        expected[0] = 1;
        expected[3] = 2;
        expected[255] = 1;
        assert_eq!(eight.tally(), expected);
    }

    #[test]
    fn refusals() {
        let list = StatusList::new(2, 8).unwrap();
        assert_eq!(
            list.get(8).unwrap_err(),
            StatusListError::OutOfRange { index: 8, size: 8 }
        );
        let mut one = StatusList::new(1, 8).unwrap();
        assert_eq!(
            one.set(0, Status::Suspended).unwrap_err(),
            StatusListError::ValueTooWide { value: 2, bits: 1 }
        );
        assert_eq!(StatusList::new(3, 8).unwrap_err(), StatusListError::Bits(3));
        assert_eq!(
            StatusList::decode(2, "not base64!", 10).unwrap_err(),
            StatusListError::Base64
        );
        assert!(matches!(
            StatusList::decode(2, "AAAA", 10).unwrap_err(),
            StatusListError::Zlib(_)
        ));
        // A bomb: one byte past the cap, of zeros, compresses to a few kilobytes.
        let bomb = StatusList::from_bytes(8, vec![0; DEFAULT_MAX_INFLATED + 1])
            .unwrap()
            .encode();
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        assert_eq!(
            StatusList::decode(8, &bomb, DEFAULT_MAX_INFLATED).unwrap_err(),
            StatusListError::TooLarge {
                cap: DEFAULT_MAX_INFLATED
            }
        );
        // Exactly the cap is accepted.
        let full = StatusList::from_bytes(8, vec![0; 1024]).unwrap().encode();
        assert_eq!(StatusList::decode(8, &full, 1024).unwrap().size(), 1024);
    }

    #[test]
    fn reads_the_status_claim() {
        let reference = StatusReference {
            idx: 7,
            uri: "https://a.test/statuslists/1".into(),
        };
        let mut claims = Map::new();
        assert_eq!(StatusReference::from_claims(&claims).unwrap(), None);
        claims.insert("status".into(), reference.to_claim());
        assert_eq!(
            StatusReference::from_claims(&claims).unwrap(),
            Some(reference)
        );
        claims.insert(
            "status".into(),
            serde_json::json!({"status_list": {"idx": -1, "uri": "x"}}),
        );
        assert!(StatusReference::from_claims(&claims).is_err());
    }
}
