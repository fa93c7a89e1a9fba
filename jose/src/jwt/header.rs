//! The JOSE header of a token being verified: the members the rules look at, read once,
//! and the rules that need nothing but the header.
//!
//! The header is read in place (`borrowed`); one that reader refuses (a syntax error, a
//! duplicate, an unexpected type, too many members) is parsed again into a map by
//! `json::parse_object`, so the rejection is the reference parser's, word for word.

use std::{borrow::Cow, fmt};

use serde::de::{MapAccess, Visitor};
use serde_json::{Map, Value};

use super::{
    borrowed::{read_object, Checked, Seen, Text},
    verify::{reject, Reason, Rejection},
    TokenType, TXN_TOKEN_TYP,
};

/// Header members that point at keys outside our key set: following them would let the
/// token choose its own key.
const KEY_REFERENCE_HEADERS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];

/// A header member the rules read: absent, a string, or something else.
#[derive(Debug, Default)]
pub(super) enum Member<'a> {
    #[default]
    Absent,
    Text(Cow<'a, str>),
    NotText,
}

impl<'a> Member<'a> {
    fn from_value(value: Option<&'a Value>) -> Member<'a> {
        match value {
            None => Member::Absent,
            Some(Value::String(text)) => Member::Text(Cow::Borrowed(text)),
            Some(_) => Member::NotText,
        }
    }
}

/// What the rules read of a header.
#[derive(Debug, Default)]
pub(super) struct Header<'a> {
    pub(super) alg: Member<'a>,
    pub(super) kid: Member<'a>,
    typ: Member<'a>,
    crit: bool,
    /// Which of `KEY_REFERENCE_HEADERS` are present, one bit each.
    key_references: u8,
}

impl<'a> Header<'a> {
    /// Reads the decoded header in place when it can, else from `parsed`, which is filled
    /// by the reference parser (its rejection is returned as it words it).
    pub(super) fn read(
        bytes: &'a [u8],
        parsed: &'a mut Option<Map<String, Value>>,
    ) -> Result<Header<'a>, Rejection> {
        let read_here = std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| read_object(text, HeaderVisitor).ok());
        if let Some(header) = read_here {
            return Ok(header);
        }
        let map = super::verify::parse_segment(bytes, "header")?;
        Ok(Header::from_map(parsed.insert(map)))
    }

    fn from_map(map: &'a Map<String, Value>) -> Header<'a> {
        let mut key_references = 0;
        for (bit, name) in KEY_REFERENCE_HEADERS.iter().enumerate() {
            if map.contains_key(*name) {
                key_references |= 1 << bit;
            }
        }
        Header {
            alg: Member::from_value(map.get("alg")),
            kid: Member::from_value(map.get("kid")),
            typ: Member::from_value(map.get("typ")),
            crit: map.contains_key("crit"),
            key_references,
        }
    }

    /// `crit`, key references and `typ` (for `expected`), in that order.
    pub(super) fn check_members(&self, expected: TokenType) -> Result<(), Rejection> {
        if self.crit {
            return reject(
                Reason::UnsupportedHeader,
                "crit names extensions this authority does not understand",
            );
        }
        if let Some(name) = KEY_REFERENCE_HEADERS
            .iter()
            .enumerate()
            .find(|(bit, _)| self.key_references & (1 << bit) != 0)
            .map(|(_, name)| name)
        {
            return reject(
                Reason::UnsupportedHeader,
                format!("the header carries {name}: keys named inside a token are never trusted"),
            );
        }
        // Media type names compare without regard to case (RFC 7515 section 4.1.9).
        let typ_is =
            |name: &str| matches!(&self.typ, Member::Text(typ) if typ.eq_ignore_ascii_case(name));
        let txn = typ_is(TXN_TOKEN_TYP);
        match (expected, &self.typ) {
            (TokenType::Txn, _) if txn => Ok(()),
            (TokenType::Txn, _) => reject(
                Reason::WrongTokenType,
                "not a Txn-Token: its typ is not txntoken+jwt",
            ),
            (TokenType::StatusList, _) if typ_is(crate::status_list::TYP) => Ok(()),
            (TokenType::StatusList, _) => reject(
                Reason::WrongTokenType,
                "not a Status List Token: its typ is not statuslist+jwt",
            ),
            (TokenType::Access | TokenType::IssuerAccess, _) if txn => reject(
                Reason::WrongTokenType,
                "a Txn-Token (typ txntoken+jwt) is not accepted where an access token is expected",
            ),
            (TokenType::Access | TokenType::IssuerAccess, Member::Absent) => Ok(()),
            (TokenType::Access | TokenType::IssuerAccess, _) if typ_is("JWT") => Ok(()),
            // RFC 9068 section 2.1: another issuer's JWT access token may carry `at+jwt` (its
            // full media type `application/at+jwt` is the same value, RFC 7515 section
            // 4.1.9). The authority's own never do.
            (TokenType::IssuerAccess, _) if typ_is("at+jwt") || typ_is("application/at+jwt") => {
                Ok(())
            }
            (TokenType::IssuerAccess, _) => reject(
                Reason::UnsupportedHeader,
                "typ, when present, must be JWT or at+jwt",
            ),
            (TokenType::Access, _) => {
                reject(Reason::UnsupportedHeader, "typ, when present, must be JWT")
            }
        }
    }
}

/// Reads `alg`, `kid` and `typ` as strings and notes `crit` and key references; every
/// other member is checked and dropped. A member of the wrong type is left to the
/// reference parser.
struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Header<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JOSE header")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Header<'de>, A::Error> {
        let mut header = Header::default();
        let mut seen = Seen::new();
        while let Some(Text(name)) = access.next_key::<Text<'de>>()? {
            let slot = match &*name {
                "alg" => Some(&mut header.alg),
                "kid" => Some(&mut header.kid),
                "typ" => Some(&mut header.typ),
                other => {
                    if other == "crit" {
                        header.crit = true;
                    }
                    if let Some(bit) = KEY_REFERENCE_HEADERS.iter().position(|n| *n == other) {
                        header.key_references |= 1 << bit;
                    }
                    None
                }
            };
            seen.insert(name)?;
            match slot {
                Some(slot) => *slot = Member::Text(access.next_value::<Text<'de>>()?.0),
                None => access.next_value_seed(Checked { depth: 1 })?,
            }
        }
        Ok(header)
    }
}
