//! A claim set written back as `serde_json` writes its map (compact, members in name order
//! at every depth), without building the map when the text is in that order already, as
//! every payload the authority signs is.

use std::{borrow::Cow, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::borrowed::Text;

/// `json` (an object that passed the strict reader) rewritten compact, when its members are
/// in name order at every depth; `None` otherwise, for the caller to go through the map.
pub(super) fn rewrite_if_sorted(json: &str) -> Option<String> {
    let mut out = Vec::with_capacity(json.len());
    let mut deserializer = serde_json::Deserializer::from_str(json);
    Sorted { out: &mut out }
        .deserialize(&mut deserializer)
        .ok()?;
    deserializer.end().ok()?;
    String::from_utf8(out).ok()
}

/// Writes one value to `out`; fails on members out of order (or repeated).
struct Sorted<'w> {
    out: &'w mut Vec<u8>,
}

impl Sorted<'_> {
    fn write<T: serde::Serialize + ?Sized, E: de::Error>(self, value: &T) -> Result<(), E> {
        serde_json::to_writer(self.out, value).map_err(E::custom)
    }
}

impl<'de> DeserializeSeed<'de> for Sorted<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Sorted<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.write(&v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.write(&v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.write(&v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // What `serde_json::Number::from_f64` keeps: the reader refused anything else.
        if !v.is_finite() {
            return Err(E::custom("number out of range"));
        }
        self.write(&v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.write(v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let comma = self.out.len();
            if !first {
                self.out.push(b',');
            }
            if seq.next_element_seed(Sorted { out: self.out })?.is_none() {
                self.out.truncate(comma);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let mut previous: Option<Cow<'de, str>> = None;
        while let Some(Text(name)) = access.next_key::<Text<'de>>()? {
            if let Some(previous) = &previous {
                self.out.push(b',');
                if *previous >= name {
                    return Err(de::Error::custom("members out of order"));
                }
            }
            serde_json::to_writer(&mut *self.out, &*name).map_err(de::Error::custom)?;
            self.out.push(b':');
            access.next_value_seed(Sorted { out: self.out })?;
            previous = Some(name);
        }
        self.out.push(b'}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sorted input comes out as the map would write it; unsorted input is left to the map.
    #[test]
    fn rewrites_what_is_sorted_as_the_map_would() {
        let sorted = [
            r#"{"a":[1,-2,3.5,true,null,"x\u00e9\n"],"b":{"c":[],"d":{}},"exp":1800000600}"#,
            "{ \"a\" : [ ] , \"b\" : 1e3 }",
            "{}",
            r#"{"a\/b":"\/","é":0}"#,
        ];
        for json in sorted {
            let map: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(rewrite_if_sorted(json).unwrap(), map.to_string(), "{json}");
        }
        for json in [
            r#"{"b":1,"a":2}"#,
            r#"{"a":{"d":1,"c":2}}"#,
            r#"{"a":[{"y":1,"x":1}]}"#,
        ] {
            assert_eq!(rewrite_if_sorted(json), None, "{json}");
        }
    }
}
