//! Detection of keys written twice in one JSON object. `serde_json`
//! silently keeps the last value of such a key, so a set with
//! `"project": "a", ..., "project": "b"` would mean `b`. A second pass
//! over the text walks every value and records repeated keys with the
//! path of their object.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A key that appears more than once in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DuplicateKey {
    /// The JSON path of the object, e.g. `cryptoconfigsets[0].apqns[1]`;
    /// empty for the top-level object.
    pub(crate) path: String,
    pub(crate) key: String,
}

/// Lists every repeated key in `text`, in text order. Text that is not
/// JSON yields what was found before the error (the parse proper reports
/// the error).
pub(crate) fn duplicate_keys(text: &str) -> Vec<DuplicateKey> {
    let mut found = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let walk = Walk {
        path: String::new(),
        found: &mut found,
    };
    // Errors are the main parse's to report.
    let _ = walk.deserialize(&mut deserializer);
    found
}

/// Visits one value at `path`.
struct Walk<'a> {
    path: String,
    found: &'a mut Vec<DuplicateKey>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
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

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let found = self.found;
        let mut index = 0usize;
        loop {
            let element = Walk {
                path: format!("{}[{index}]", self.path),
                found: &mut *found,
            };
            if seq.next_element_seed(element)?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let found = self.found;
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            map.next_value_seed(Walk {
                path,
                found: &mut *found,
            })?;
            if keys.contains(&key) {
                found.push(DuplicateKey {
                    path: self.path.clone(),
                    key,
                });
            } else {
                keys.insert(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_repeated_keys_with_their_object() {
        let text = r#"{"cryptoconfigsets": [{"setname": "a", "project": "x", "project": "y",
            "apqns": [{"adapter": 1, "adapter": 2, "domain": 5}]}]}"#;
        let found = duplicate_keys(text);
        let shown: Vec<(&str, &str)> = found
            .iter()
            .map(|dup| (dup.path.as_str(), dup.key.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("cryptoconfigsets[0]", "project"),
                ("cryptoconfigsets[0].apqns[0]", "adapter")
            ]
        );
    }

    #[test]
    fn same_key_in_different_objects_is_fine() {
        let text = r#"{"a": {"k": 1}, "b": {"k": 2}, "c": [{"k": 1}, {"k": 2}]}"#;
        assert!(duplicate_keys(text).is_empty());
    }
}
