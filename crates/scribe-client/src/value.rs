//! SQL values and statement parameters as the client sends and receives them: a [`Value`] maps to
//! the API's JSON (`null`, numbers, strings, and blobs as `{"base64": "..."}`), and [`Params`] are
//! positional (bound to `?`, `?1`...) or named (bound to `:name`).

use base64::Engine as _;
use serde_json::json;

use crate::error::Error;

/// One SQL value.
///
/// A REAL that JSON cannot hold (infinities, NaN) travels as the strings `"Infinity"`,
/// `"-Infinity"` and `"NaN"`; read back, it is [`Value::Text`], as the JSON does not say which it
/// was.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A double.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as a double, if this is a REAL or an INTEGER.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Real(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The text, if this is TEXT.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The bytes, if this is a BLOB.
    pub fn as_blob(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }

    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as the API's JSON.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => json!(i),
            Value::Real(f) if f.is_finite() => json!(f),
            Value::Real(f) if f.is_nan() => json!("NaN"),
            Value::Real(f) if *f > 0.0 => json!("Infinity"),
            Value::Real(_) => json!("-Infinity"),
            Value::Text(t) => json!(t),
            Value::Blob(b) => {
                json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
            }
        }
    }

    /// Reads a value of the API's JSON; an error says what was wrong with it.
    pub(crate) fn from_json(v: &serde_json::Value) -> Result<Value, String> {
        match v {
            serde_json::Value::Null => Ok(Value::Null),
            serde_json::Value::Bool(b) => Ok(Value::Integer(i64::from(*b))),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Value::Integer(i)),
                None => n
                    .as_f64()
                    .map(Value::Real)
                    .ok_or_else(|| format!("number {n} is neither an integer nor a double")),
            },
            serde_json::Value::String(s) => Ok(Value::Text(s.clone())),
            serde_json::Value::Object(o) => match (o.len(), o.get("base64")) {
                (1, Some(serde_json::Value::String(b))) => {
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map(Value::Blob)
                        .map_err(|e| format!("blob is not valid base64: {e}"))
                }
                _ => Err(format!(
                    "object {v} is not a blob ({{\"base64\": \"...\"}})"
                )),
            },
            serde_json::Value::Array(_) => Err(format!("array {v} is not an SQL value")),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Integer(v.into())
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Integer(v.into())
    }
}

impl From<bool> for Value {
    /// Stored as `1` or `0`, as SQLite does.
    fn from(v: bool) -> Self {
        Value::Integer(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Blob(v.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    /// `None` is NULL.
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The parameters of one statement: positional ones, bound in order to `?` (or `?N` to the N-th),
/// or named ones, bound to `:name` (a name without its `:`, `@` or `$` prefix is taken as
/// `:name`). A statement takes one kind or the other; sending both is refused before anything is
/// sent.
///
/// `()` means no parameters; arrays, slices and vectors of anything that converts into a
/// [`Value`] are positional parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    positional: Vec<Value>,
    named: Vec<(String, Value)>,
}

impl Params {
    /// No parameters.
    pub fn new() -> Params {
        Params::default()
    }

    /// Appends a positional parameter.
    pub fn push(mut self, v: impl Into<Value>) -> Params {
        self.positional.push(v.into());
        self
    }

    /// Adds a named parameter.
    pub fn named(mut self, name: impl Into<String>, v: impl Into<Value>) -> Params {
        self.named.push((name.into(), v.into()));
        self
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.positional.is_empty() && self.named.is_empty()
    }

    /// The `params` field of a request: `None` when there are none.
    pub(crate) fn to_json(&self) -> Result<Option<serde_json::Value>, Error> {
        match (self.positional.is_empty(), self.named.is_empty()) {
            (true, true) => Ok(None),
            (false, true) => Ok(Some(serde_json::Value::Array(
                self.positional.iter().map(Value::to_json).collect(),
            ))),
            (true, false) => Ok(Some(serde_json::Value::Object(
                self.named
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ))),
            (false, false) => Err(Error::Usage(
                "a statement takes positional or named parameters, not both".to_string(),
            )),
        }
    }
}

impl From<()> for Params {
    fn from(_: ()) -> Self {
        Params::new()
    }
}

impl<T: Into<Value>> From<Vec<T>> for Params {
    fn from(v: Vec<T>) -> Self {
        Params {
            positional: v.into_iter().map(Into::into).collect(),
            named: Vec::new(),
        }
    }
}

impl<T: Into<Value>, const N: usize> From<[T; N]> for Params {
    fn from(v: [T; N]) -> Self {
        Params {
            positional: v.into_iter().map(Into::into).collect(),
            named: Vec::new(),
        }
    }
}

impl<T: Into<Value> + Clone> From<&[T]> for Params {
    fn from(v: &[T]) -> Self {
        Params {
            positional: v.iter().cloned().map(Into::into).collect(),
            named: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json() {
        for v in [
            Value::Null,
            Value::Integer(-7),
            Value::Integer(i64::MAX),
            Value::Real(1.5),
            Value::Text("héllo".into()),
            Value::Blob(vec![0, 1, 255]),
        ] {
            assert_eq!(Value::from_json(&v.to_json()).unwrap(), v);
        }
    }

    #[test]
    fn wire_forms_are_the_api_ones() {
        assert_eq!(
            Value::Blob(vec![0, 1, 255]).to_json(),
            json!({"base64": "AAH/"})
        );
        assert_eq!(Value::Real(f64::INFINITY).to_json(), json!("Infinity"));
        assert_eq!(Value::Real(f64::NEG_INFINITY).to_json(), json!("-Infinity"));
        assert_eq!(Value::from(true), Value::Integer(1));
        assert_eq!(Value::from(None::<i64>), Value::Null);
    }

    #[test]
    fn odd_json_is_refused() {
        assert!(Value::from_json(&json!([1])).is_err());
        assert!(Value::from_json(&json!({"base64": "!!"})).is_err());
        assert!(Value::from_json(&json!({"b": "AA=="})).is_err());
    }

    #[test]
    fn params_are_positional_or_named() {
        assert_eq!(Params::from(()).to_json().unwrap(), None);
        assert_eq!(Params::from([1, 2]).to_json().unwrap(), Some(json!([1, 2])));
        assert_eq!(
            Params::new().named(":name", "Ada").to_json().unwrap(),
            Some(json!({":name": "Ada"}))
        );
        assert!(matches!(
            Params::new().push(1).named("a", 2).to_json(),
            Err(Error::Usage(_))
        ));
    }
}
