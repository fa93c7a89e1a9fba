//! Reading a JOSE header or JWT payload without building a `serde_json::Map`: strings are
//! borrowed from the decoded bytes (copied only when they hold escapes), members nobody
//! reads are checked and dropped.
//!
//! The rules are those of `json::parse_object` (valid JSON, one object, no duplicate member
//! names at any depth, nesting bounded by `json::MAX_DEPTH`), and may be stricter: a
//! document this reader refuses is read again by `parse_object`, whose verdict and message
//! stand. So a reader here only has to be right when it accepts.

use std::{borrow::Cow, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::json::MAX_DEPTH;

/// Why a document was not read here; never shown: the reference parser then decides.
#[derive(Debug)]
pub(super) struct NotRead;

/// Reads one JSON object from `text` with `visitor`; anything left over is refused. Text
/// known to be UTF-8 spares the parser checking it string by string.
pub(super) fn read_object<'de, V: Visitor<'de>>(
    text: &'de str,
    visitor: V,
) -> Result<V::Value, NotRead> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = deserializer.deserialize_map(visitor).map_err(|_| NotRead)?;
    deserializer.end().map_err(|_| NotRead)?;
    Ok(value)
}

/// A JSON string, borrowed from the input when it has no escapes.
pub(super) struct Text<'de>(pub(super) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// A JSON number, as `serde_json::Number::as_f64` reads it.
pub(super) struct Num(pub(super) f64);

impl<'de> de::Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumVisitor;
        impl Visitor<'_> for NumVisitor {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                if v.is_finite() {
                    Ok(Num(v))
                } else {
                    Err(E::custom("number out of range"))
                }
            }
        }
        deserializer.deserialize_any(NumVisitor)
    }
}

/// The member names of one object seen so far, to refuse a second one of the same name.
/// Objects with more members than it holds are left to the reference parser.
pub(super) struct Seen<'de> {
    names: [Cow<'de, str>; Seen::CAPACITY],
    len: usize,
    /// One bit per (length, last byte) class of the names seen: names are compared only
    /// when their class was seen before, which for distinct claim names is rare.
    classes: u64,
}

impl<'de> Seen<'de> {
    const CAPACITY: usize = 32;

    pub(super) fn new() -> Seen<'de> {
        Seen {
            names: std::array::from_fn(|_| Cow::Borrowed("")),
            len: 0,
            classes: 0,
        }
    }

    /// Records `name`; an error when it was seen before or there is no room left.
    pub(super) fn insert<E: de::Error>(&mut self, name: Cow<'de, str>) -> Result<(), E> {
        let last = name.as_bytes().last().copied().unwrap_or(0) as usize;
        let class = 1u64 << ((name.len() * 7 + last) % 64);
        if self.classes & class != 0 && self.names[..self.len].contains(&name) {
            return Err(E::custom("duplicate member"));
        }
        self.classes |= class;
        let Some(slot) = self.names.get_mut(self.len) else {
            return Err(E::custom("too many members to read here"));
        };
        *slot = name;
        self.len += 1;
        Ok(())
    }
}

/// Checks one value by the strict rules and keeps nothing of it. `depth` counts as in
/// `json::parse_object`: the top-level object is 0.
pub(super) struct Checked {
    pub(super) depth: usize,
}

impl Checked {
    fn deeper<E: de::Error>(&self) -> Result<Checked, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom("nested too deep"));
        }
        Ok(Checked {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number out of range"))
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.deeper()?)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
        let mut seen = Seen::new();
        while let Some(Text(name)) = access.next_key::<Text<'de>>()? {
            seen.insert(name)?;
            access.next_value_seed(self.deeper()?)?;
        }
        Ok(())
    }
}
