//! Strict JSON objects for JOSE headers, JWT payloads and custom claims.
//!
//! serde_json keeps the last of two members with the same name; RFC 7515 section 4 lets a
//! parser reject them instead, and RFC 8725 advises it (two parsers that pick differently
//! disagree about what was signed). This parser rejects them, at every depth, and bounds
//! nesting so a hostile document cannot exhaust the stack.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// How deep objects and arrays may nest.
pub const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JsonError {
    #[error("not valid JSON: {0}")]
    Syntax(String),
    #[error("not a JSON object")]
    NotAnObject,
}

/// Parses `bytes` as one JSON object with unique member names and bounded depth.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Strict { depth: 0 }
        .deserialize(&mut deserializer)
        .map_err(|e| JsonError::Syntax(e.to_string()))?;
    deserializer
        .end()
        .map_err(|e| JsonError::Syntax(e.to_string()))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::NotAnObject),
    }
}

struct Strict {
    depth: usize,
}

impl Strict {
    fn deeper<E: de::Error>(&self) -> Result<Strict, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(Strict {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.deeper()?)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            // One lookup per member: the vacant entry is filled once its value is parsed.
            match map.entry(name) {
                serde_json::map::Entry::Occupied(entry) => {
                    return Err(de::Error::custom(format!(
                        "duplicate member {:?}",
                        entry.key()
                    )));
                }
                serde_json::map::Entry::Vacant(entry) => {
                    entry.insert(access.next_value_seed(self.deeper()?)?);
                }
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_objects_and_rejects_the_rest() {
        assert_eq!(
            parse_object(br#"{"a":1,"b":{"c":[1,2]}}"#).unwrap().len(),
            2
        );
        let cases: &[(&[u8], &str)] = &[
            (br#"{"a":1,"a":2}"#, "duplicate member"),
            (br#"{"a":{"b":1,"b":1}}"#, "duplicate member"),
            (b"[1]", "not a JSON object"),
            (b"\"x\"", "not a JSON object"),
            (b"{} {}", "trailing"),
            (b"{", "EOF"),
            (b"", "EOF"),
        ];
        for (input, expected) in cases {
            let err = parse_object(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn bounds_depth() {
        let ok = format!(
            "{}{}",
            "{\"a\":".repeat(MAX_DEPTH),
            "1".to_owned() + &"}".repeat(MAX_DEPTH)
        );
        assert!(parse_object(ok.as_bytes()).is_ok());
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        let deep = format!("{{\"a\":{deep}}}");
        assert!(parse_object(deep.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("nested deeper"));
    }
}
