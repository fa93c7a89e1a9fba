//! The payload of a token being verified: the registered claims the rules check, read in
//! place, and the whole claim set, kept as the JSON text that was signed and turned into a
//! map only when someone asks for it.
//!
//! A payload the in-place reader refuses is parsed again into a map by
//! `json::parse_object`, so a rejection is the reference parser's, word for word.

use std::{borrow::Cow, fmt, ops::Deref, sync::OnceLock};

use serde::de::{MapAccess, Visitor};
use serde_json::{Map, Value};

use super::{
    borrowed::{read_object, Checked, Num, Seen, Text},
    json::parse_object,
    sorted,
    verify::{parse_segment, reject, Reason, Rejection},
};

/// The claims of a verified token: the payload as signed (`json`), and as a map through
/// `Deref`, parsed on first use (most callers read only the subject).
#[derive(Clone)]
pub struct Claims {
    json: String,
    map: OnceLock<Map<String, Value>>,
    /// Whether the claim set has a top-level `status` member, seen as it was read.
    status: bool,
}

impl Claims {
    /// The payload exactly as the token carries it: a JSON object with unique member names.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Whether the claim set has a top-level `status` member (a Token Status List
    /// reference), known without parsing the claims into a map: most tokens have none,
    /// and their verification need not parse them.
    pub fn has_status(&self) -> bool {
        self.status
    }

    /// The claims as compact JSON with their members in name order, as `serde_json` writes
    /// their map: straight from the payload when it is in that order already.
    pub fn to_sorted_json(&self) -> String {
        if let Some(map) = self.map.get() {
            return serde_json::to_string(map).unwrap_or_default();
        }
        sorted::rewrite_if_sorted(&self.json)
            .unwrap_or_else(|| serde_json::to_string(&**self).unwrap_or_default())
    }

    /// The claims as a map, parsing them if that was not done yet.
    pub fn into_map(mut self) -> Map<String, Value> {
        self.map.take().unwrap_or_else(|| parse(&self.json))
    }
}

/// The payload was parsed by the strict reader before a `Claims` was made, so this
/// cannot fail; were it ever to, no claims is the answer that grants nothing.
fn parse(json: &str) -> Map<String, Value> {
    parse_object(json.as_bytes()).unwrap_or_default()
}

impl Deref for Claims {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        self.map.get_or_init(|| parse(&self.json))
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Claims").field(&self.json).finish()
    }
}

/// A registered claim as the rules see it.
#[derive(Debug, Default)]
enum Claim<T> {
    #[default]
    Absent,
    Present(T),
    WrongType,
}

/// `aud`: one string, several, or neither.
#[derive(Debug, Default)]
enum Audience<'a> {
    #[default]
    Absent,
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
    /// An array holding something other than a string.
    NotAllStrings,
    NeitherStringNorArray,
}

/// The registered claims the rules check, borrowed from the payload or from its map.
#[derive(Debug, Default)]
pub(super) struct Registered<'a> {
    exp: Claim<f64>,
    nbf: Claim<f64>,
    iat: Claim<f64>,
    iss: Claim<Cow<'a, str>>,
    sub: Claim<Cow<'a, str>>,
    aud: Audience<'a>,
    txn: Claim<Cow<'a, str>>,
    /// A top-level `status` member is there (its value is read from the map, if asked).
    status: bool,
}

/// Reads the decoded payload, in place when it can, else through the reference parser
/// (whose map then becomes the claims), and runs `check` on its registered claims before
/// the payload is handed over to the claim set.
pub(super) fn read<T>(
    bytes: Vec<u8>,
    check: impl FnOnce(&Registered<'_>) -> Result<T, Rejection>,
) -> Result<(T, Claims), Rejection> {
    let json = match String::from_utf8(bytes) {
        Ok(json) => json,
        Err(not_utf8) => {
            // serde_json refuses it too, and words the rejection.
            parse_segment(not_utf8.as_bytes(), "payload")?;
            return reject(Reason::Malformed, "the payload is not UTF-8");
        }
    };
    if let Ok(registered) = read_object(&json, RegisteredVisitor) {
        let checked = check(&registered)?;
        let status = registered.status;
        let claims = Claims {
            json,
            map: OnceLock::new(),
            status,
        };
        return Ok((checked, claims));
    }
    let map = parse_segment(json.as_bytes(), "payload")?;
    let registered = Registered::from_map(&map);
    let checked = check(&registered)?;
    let status = registered.status;
    let claims = Claims {
        json,
        map: OnceLock::from(map),
        status,
    };
    Ok((checked, claims))
}

impl<'a> Registered<'a> {
    fn from_map(map: &'a Map<String, Value>) -> Registered<'a> {
        let number = |name: &str| match map.get(name) {
            None => Claim::Absent,
            Some(Value::Number(n)) => n.as_f64().map_or(Claim::Absent, Claim::Present),
            Some(_) => Claim::WrongType,
        };
        let text = |name: &str| match map.get(name) {
            None => Claim::Absent,
            Some(Value::String(text)) => Claim::Present(Cow::Borrowed(text.as_str())),
            Some(_) => Claim::WrongType,
        };
        let aud = match map.get("aud") {
            None => Audience::Absent,
            Some(Value::String(one)) => Audience::One(Cow::Borrowed(one.as_str())),
            Some(Value::Array(many)) => many
                .iter()
                .map(|value| value.as_str().map(Cow::Borrowed))
                .collect::<Option<Vec<_>>>()
                .map_or(Audience::NotAllStrings, Audience::Many),
            Some(_) => Audience::NeitherStringNorArray,
        };
        Registered {
            exp: number("exp"),
            nbf: number("nbf"),
            iat: number("iat"),
            iss: text("iss"),
            sub: text("sub"),
            aud,
            txn: text("txn"),
            status: map.contains_key("status"),
        }
    }

    /// Checks `exp` (required), `nbf` and `iat`; returns `exp`.
    pub(super) fn check_times(&self, leeway: u64, now: u64) -> Result<i64, Rejection> {
        // What a protobuf Timestamp can carry (0001-01-01 to 9999-12-31), the range every
        // time the authority answers with must fit.
        const EARLIEST: f64 = -62_135_596_800.0;
        const LATEST: f64 = 253_402_300_799.0;
        // Checked in this order.
        let mut times = [None; 3];
        for (slot, (name, claim)) in
            times
                .iter_mut()
                .zip([("exp", &self.exp), ("nbf", &self.nbf), ("iat", &self.iat)])
        {
            *slot = match claim {
                Claim::Absent => None,
                Claim::Present(time) => Some(*time),
                Claim::WrongType => {
                    return reject(Reason::Malformed, format!("{name} is not a number"))
                }
            };
            if let Some(time) = *slot {
                if !(EARLIEST..=LATEST).contains(&time) {
                    return reject(
                        Reason::Malformed,
                        format!("{name} is outside the years 0001 to 9999"),
                    );
                }
            }
        }
        let [exp, nbf, iat] = times;
        let now = now as f64;
        let leeway = leeway as f64;
        let Some(exp) = exp else {
            return reject(Reason::MissingClaim, "exp is required");
        };
        if now >= exp + leeway {
            return reject(Reason::Expired, "the token has expired");
        }
        if let Some(nbf) = nbf {
            if nbf > now + leeway {
                return reject(Reason::NotYetValid, "nbf is in the future");
            }
        }
        if let Some(iat) = iat {
            if iat > now + leeway {
                return reject(Reason::NotYetValid, "iat is in the future");
            }
        }
        Ok(exp.floor() as i64)
    }

    /// Bounds the token's total lifetime: a verifier that caps it cannot be handed a
    /// year-long token (a legacy Kubernetes service-account token) that merely has not
    /// expired.
    pub(super) fn check_lifetime(&self, max: u64) -> Result<(), Rejection> {
        let (Claim::Present(iat), Claim::Present(exp)) = (&self.iat, &self.exp) else {
            return reject(
                Reason::MissingClaim,
                "iat is required to bound the token's lifetime",
            );
        };
        if exp - iat > max as f64 {
            return reject(
                Reason::LifetimeTooLong,
                format!("the token lives longer than {max}s (exp - iat)"),
            );
        }
        Ok(())
    }

    pub(super) fn check_issuer(&self, issuer: &str) -> Result<(), Rejection> {
        match &self.iss {
            Claim::Present(iss) if iss == issuer => Ok(()),
            Claim::Present(_) => reject(Reason::IssuerMismatch, "iss is not this authority"),
            Claim::WrongType => reject(Reason::Malformed, "iss is not a string"),
            Claim::Absent => reject(Reason::MissingClaim, "iss is required"),
        }
    }

    pub(super) fn check_audience(&self, accepted: &[&str]) -> Result<(), Rejection> {
        let audiences: &[Cow<'_, str>] = match &self.aud {
            Audience::Absent => &[],
            Audience::One(one) => std::slice::from_ref(one),
            Audience::Many(many) => many,
            Audience::NotAllStrings => {
                return reject(Reason::Malformed, "aud holds a value that is not a string")
            }
            Audience::NeitherStringNorArray => {
                return reject(
                    Reason::Malformed,
                    "aud is neither a string nor an array of strings",
                )
            }
        };
        let contains = |wanted: &str| audiences.iter().any(|aud| aud == wanted);
        match accepted {
            [] => Ok(()),
            [expected] if !contains(expected) => reject(
                Reason::AudienceMismatch,
                "aud does not contain the expected audience",
            ),
            many if !many.iter().any(|accepted| contains(accepted)) => reject(
                Reason::AudienceMismatch,
                "aud contains none of the accepted audiences",
            ),
            _ => Ok(()),
        }
    }

    /// `txn`, the transaction's identifier, which every Txn-Token carries.
    pub(super) fn check_txn(&self) -> Result<(), Rejection> {
        match &self.txn {
            Claim::Present(txn) if !txn.is_empty() => Ok(()),
            Claim::Present(_) => reject(Reason::MissingClaim, "txn is empty"),
            Claim::WrongType => reject(Reason::Malformed, "txn is not a string"),
            Claim::Absent => reject(Reason::MissingClaim, "txn is required in a Txn-Token"),
        }
    }

    /// `sub`, required, as a string.
    pub(super) fn subject(&self) -> Result<&str, Rejection> {
        match &self.sub {
            Claim::Present(sub) => Ok(sub),
            Claim::WrongType => reject(Reason::Malformed, "sub is not a string"),
            Claim::Absent => reject(Reason::MissingClaim, "sub is required"),
        }
    }
}

/// Reads the registered claims as their rules want them (numbers, strings, an audience
/// string or array of strings); every other member is checked and dropped. A registered
/// claim of another type is left to the reference parser, which words the rejection.
struct RegisteredVisitor;

impl<'de> Visitor<'de> for RegisteredVisitor {
    type Value = Registered<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JWT claim set")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Registered<'de>, A::Error> {
        let mut registered = Registered::default();
        let mut seen = Seen::new();
        while let Some(Text(name)) = access.next_key::<Text<'de>>()? {
            let which = ["exp", "nbf", "iat", "iss", "sub", "aud", "txn"]
                .iter()
                .position(|claim| *claim == name);
            registered.status |= name == "status";
            seen.insert(name)?;
            match which {
                Some(0) => registered.exp = Claim::Present(access.next_value::<Num>()?.0),
                Some(1) => registered.nbf = Claim::Present(access.next_value::<Num>()?.0),
                Some(2) => registered.iat = Claim::Present(access.next_value::<Num>()?.0),
                Some(3) => registered.iss = Claim::Present(access.next_value::<Text<'de>>()?.0),
                Some(4) => registered.sub = Claim::Present(access.next_value::<Text<'de>>()?.0),
                Some(5) => registered.aud = access.next_value::<Aud<'de>>()?.0,
                Some(_) => registered.txn = Claim::Present(access.next_value::<Text<'de>>()?.0),
                None => access.next_value_seed(Checked { depth: 1 })?,
            }
        }
        Ok(registered)
    }
}

/// `aud` as a string or an array of strings.
struct Aud<'de>(Audience<'de>);

impl<'de> serde::Deserialize<'de> for Aud<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AudVisitor;
        impl<'de> Visitor<'de> for AudVisitor {
            type Value = Aud<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Aud<'de>, E> {
                Ok(Aud(Audience::One(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Aud<'de>, E> {
                Ok(Aud(Audience::One(Cow::Owned(v.to_owned()))))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Aud<'de>, A::Error> {
                let mut many = Vec::new();
                while let Some(Text(one)) = seq.next_element::<Text<'de>>()? {
                    many.push(one);
                }
                Ok(Aud(Audience::Many(many)))
            }
        }
        deserializer.deserialize_any(AudVisitor)
    }
}
