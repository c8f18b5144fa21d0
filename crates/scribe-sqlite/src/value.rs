//! SQL values and statement parameters as they cross the API: [`Value`] maps to JSON (`null`,
//! numbers, strings, and blobs as `{"base64": "..."}`) and to SQLite, and [`Params`] are
//! positional (an array) or named (an object).

use base64::Engine as _;
use rusqlite::types::{ToSqlOutput, ValueRef};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer.
    Integer(i64),
    /// A double.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes; `{"base64": "..."}` in JSON.
    Blob(Vec<u8>),
}

impl Value {
    /// Copies a value SQLite handed out.
    pub fn from_ref(v: ValueRef<'_>) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Real(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Real(f) => s.serialize_str(if f.is_nan() {
                "NaN"
            } else if *f > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }),
            Value::Text(t) => s.serialize_str(t),
            Value::Blob(b) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(b),
                )?;
                m.end()
            }
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an SQL value: null, a number, a string, a boolean or {\"base64\": \"...\"}")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Integer(v as i64))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Integer(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Integer)
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64 signed bits")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Real(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Text(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Text(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(de::Error::custom("an array is not an SQL value"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut blob = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "base64" || blob.is_some() {
                return Err(de::Error::custom(format!(
                    "unexpected key {key:?} in a value object: only {{\"base64\": \"...\"}} is a value"
                )));
            }
            let text: String = map.next_value()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| de::Error::custom(format!("invalid base64 blob: {e}")))?;
            blob = Some(bytes);
        }
        blob.map(Value::Blob)
            .ok_or_else(|| de::Error::custom("an empty object is not an SQL value"))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// A statement's parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Params {
    /// No parameters.
    #[default]
    None,
    /// Bound by position: the first to `?1` (or the first `?`), and so on.
    Positional(Vec<Value>),
    /// Bound by name; a name without its `:`, `@` or `$` prefix is taken as `:name`.
    Named(Vec<(String, Value)>),
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Params, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Params;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of positional parameters or an object of named ones")
            }
            fn visit_unit<E>(self) -> Result<Params, E> {
                Ok(Params::None)
            }
            fn visit_none<E>(self) -> Result<Params, E> {
                Ok(Params::None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Params, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(Params::Positional(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = map.next_entry::<String, Value>()? {
                    v.push((k, x));
                }
                Ok(Params::Named(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Params {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Params::None => s.serialize_unit(),
            Params::Positional(v) => v.serialize(s),
            Params::Named(v) => {
                let mut m = s.serialize_map(Some(v.len()))?;
                for (k, x) in v {
                    m.serialize_entry(k, x)?;
                }
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json() {
        let v = vec![
            Value::Null,
            Value::Integer(-5),
            Value::Real(1.5),
            Value::Text("héllo".into()),
            Value::Blob(vec![0, 1, 255]),
        ];
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"[null,-5,1.5,"héllo",{"base64":"AAH/"}]"#);
        assert_eq!(serde_json::from_str::<Vec<Value>>(&json).unwrap(), v);
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        for (json, needle) in [
            (r#"[[1]]"#, "array"),
            (r#"[{"hex":"00"}]"#, "unexpected key"),
            (r#"[{"base64":"!!"}]"#, "base64"),
            (r#"[18446744073709551615]"#, "does not fit"),
        ] {
            let e = serde_json::from_str::<Vec<Value>>(json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
        assert_eq!(
            serde_json::from_str::<Value>("true").unwrap(),
            Value::Integer(1)
        );
    }

    #[test]
    fn params_are_positional_or_named() {
        assert_eq!(
            serde_json::from_str::<Params>("[1,\"a\"]").unwrap(),
            Params::Positional(vec![Value::Integer(1), Value::Text("a".into())])
        );
        assert_eq!(
            serde_json::from_str::<Params>(r#"{":n":2}"#).unwrap(),
            Params::Named(vec![(":n".into(), Value::Integer(2))])
        );
        assert_eq!(
            serde_json::from_str::<Params>("null").unwrap(),
            Params::None
        );
        assert!(serde_json::from_str::<Params>("3").is_err());
    }
}
