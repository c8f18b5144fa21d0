//! SQLite values as PostgreSQL types: the type announced for a column (from its declared type,
//! else from its values), encoding values in text or binary format, and decoding parameters by
//! the types the client gave.

use bytes::Bytes;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use scribe_sqlite::Value;

use super::sqlstate::{PgError, INVALID_TEXT};

/// The PostgreSQL type of a column declared as `decl` in SQLite (by SQLite's affinity rules, with
/// BOOLEAN and BYTEA recognised), or `None` when the declaration says nothing useful.
pub fn from_decltype(decl: &str) -> Option<Type> {
    let d = decl.to_ascii_uppercase();
    if d.contains("BOOL") {
        Some(Type::BOOL)
    } else if d.contains("INT") {
        Some(Type::INT8)
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Some(Type::TEXT)
    } else if d.contains("BLOB") || d.contains("BYTEA") {
        Some(Type::BYTEA)
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        Some(Type::FLOAT8)
    } else {
        None
    }
}

/// The type of a column: its declared type when it has one that says something, else the storage
/// class of its first non-NULL value, else text.
pub fn column_type<'a>(decl: Option<&str>, mut values: impl Iterator<Item = &'a Value>) -> Type {
    if let Some(t) = decl.and_then(from_decltype) {
        return t;
    }
    match values.find(|v| !matches!(v, Value::Null)) {
        Some(Value::Integer(_)) => Type::INT8,
        Some(Value::Real(_)) => Type::FLOAT8,
        Some(Value::Blob(_)) => Type::BYTEA,
        _ => Type::TEXT,
    }
}

/// Field descriptions for columns with these names and types, in the formats asked.
pub fn fields(columns: &[(String, Type)], format: &Format) -> Vec<FieldInfo> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (name, t))| {
            FieldInfo::new(name.clone(), None, None, t.clone(), format.format_for(i))
        })
        .collect()
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Integer(i) => Some(i.to_string()),
        Value::Real(f) => Some(f.to_string()),
        Value::Text(s) => Some(s.clone()),
        Value::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

/// Encodes one row by the announced types.
pub fn encode_row(
    encoder: &mut DataRowEncoder,
    types: &[Type],
    row: &[Value],
) -> PgWireResult<DataRow> {
    for (t, v) in types.iter().zip(row) {
        match (t, v) {
            (_, Value::Null) => encoder.encode_field(&None::<i64>)?,
            (t, Value::Integer(i)) if *t == Type::BOOL => encoder.encode_field(&(*i != 0))?,
            (t, Value::Integer(i)) if *t == Type::INT8 => encoder.encode_field(i)?,
            (t, Value::Integer(i)) if *t == Type::FLOAT8 => encoder.encode_field(&(*i as f64))?,
            (t, Value::Real(f)) if *t == Type::FLOAT8 => encoder.encode_field(f)?,
            (t, Value::Blob(b)) if *t == Type::BYTEA => encoder.encode_field(&b.as_slice())?,
            (t, Value::Text(s)) if *t == Type::BOOL => {
                let b = matches!(
                    s.to_ascii_lowercase().as_str(),
                    "t" | "true" | "1" | "on" | "yes" | "y"
                );
                encoder.encode_field(&b)?
            }
            (t, Value::Text(s)) if *t == Type::INT8 => match s.trim().parse::<i64>() {
                Ok(i) => encoder.encode_field(&i)?,
                Err(_) => encoder.encode_field(&None::<i64>)?,
            },
            (t, Value::Text(s)) if *t == Type::FLOAT8 => match s.trim().parse::<f64>() {
                Ok(f) => encoder.encode_field(&f)?,
                Err(_) => encoder.encode_field(&None::<f64>)?,
            },
            (t, Value::Text(s)) if *t == Type::BYTEA => encoder.encode_field(&s.as_bytes())?,
            (t, Value::Real(f)) if *t == Type::INT8 => encoder.encode_field(&(*f as i64))?,
            (_, v) => encoder.encode_field(&text_of(v))?,
        }
    }
    Ok(encoder.take_row())
}

fn bad(i: usize, t: &Type, why: impl std::fmt::Display) -> PgError {
    PgError::new(
        INVALID_TEXT,
        format!("parameter ${} of type {}: {why}", i + 1, t.name()),
    )
}

/// PostgreSQL's hex bytea text, `\x` and two hex digits per byte. Read by bytes, not by string
/// slices: a slice in the middle of a multi-byte character would panic.
fn decode_bytea_text(s: &str) -> Option<Vec<u8>> {
    let hex = s.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let digit = |b: u8| char::from(b).to_digit(16);
    hex.chunks_exact(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

/// Decodes parameters sent in `format` with the types the client declared (unknown ones are text).
pub fn decode_params(
    params: &[Option<Bytes>],
    types: &[Option<Type>],
    format: &Format,
) -> Result<Vec<Value>, PgError> {
    let mut out = Vec::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        let t = types.get(i).cloned().flatten().unwrap_or(Type::UNKNOWN);
        let Some(raw) = p else {
            out.push(Value::Null);
            continue;
        };
        let v = if format.is_binary(i) {
            let fixed = |n: usize| -> Result<&[u8], PgError> {
                if raw.len() == n {
                    Ok(&raw[..])
                } else {
                    Err(bad(
                        i,
                        &t,
                        format!("{} bytes where {n} were expected", raw.len()),
                    ))
                }
            };
            match t {
                Type::INT2 => Value::Integer(i16::from_be_bytes(fixed(2)?.try_into().expect("2")) as i64),
                Type::INT4 => Value::Integer(i32::from_be_bytes(fixed(4)?.try_into().expect("4")) as i64),
                Type::INT8 => Value::Integer(i64::from_be_bytes(fixed(8)?.try_into().expect("8"))),
                Type::FLOAT4 => Value::Real(f32::from_be_bytes(fixed(4)?.try_into().expect("4")) as f64),
                Type::FLOAT8 => Value::Real(f64::from_be_bytes(fixed(8)?.try_into().expect("8"))),
                Type::BOOL => Value::Integer((fixed(1)?[0] != 0) as i64),
                Type::BYTEA | Type::UNKNOWN => Value::Blob(raw.to_vec()),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON => Value::Text(
                    String::from_utf8(raw.to_vec()).map_err(|_| bad(i, &t, "not UTF-8"))?,
                ),
                other => {
                    return Err(PgError::new(
                        super::sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("parameter ${} of type {} in binary format is not supported; send it as text", i + 1, other.name()),
                    ))
                }
            }
        } else {
            let s = std::str::from_utf8(raw).map_err(|_| bad(i, &t, "not UTF-8"))?;
            match t {
                Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => {
                    Value::Integer(s.trim().parse().map_err(|e| bad(i, &t, e))?)
                }
                Type::FLOAT4 | Type::FLOAT8 => {
                    Value::Real(s.trim().parse().map_err(|e| bad(i, &t, e))?)
                }
                Type::NUMERIC => match s.trim().parse::<i64>() {
                    Ok(n) => Value::Integer(n),
                    Err(_) => Value::Real(s.trim().parse().map_err(|e| bad(i, &t, e))?),
                },
                Type::BOOL => match s.trim().to_ascii_lowercase().as_str() {
                    "t" | "true" | "1" | "on" | "yes" | "y" => Value::Integer(1),
                    "f" | "false" | "0" | "off" | "no" | "n" => Value::Integer(0),
                    other => return Err(bad(i, &t, format!("{other:?} is not a boolean"))),
                },
                Type::BYTEA => Value::Blob(
                    decode_bytea_text(s)
                        .ok_or_else(|| bad(i, &t, "expected \\x and hex digits"))?,
                ),
                _ => Value::Text(s.to_string()),
            }
        };
        out.push(v);
    }
    Ok(out)
}

/// The format of every result column, when `format` says nothing per column.
pub fn field_format(format: &Format, i: usize) -> FieldFormat {
    format.format_for(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_win_and_values_decide_otherwise() {
        assert_eq!(column_type(Some("INTEGER"), [].iter()), Type::INT8);
        assert_eq!(column_type(Some("varchar(20)"), [].iter()), Type::TEXT);
        assert_eq!(column_type(Some("BOOLEAN"), [].iter()), Type::BOOL);
        assert_eq!(column_type(Some("bytea"), [].iter()), Type::BYTEA);
        assert_eq!(
            column_type(Some("DOUBLE PRECISION"), [].iter()),
            Type::FLOAT8
        );
        let vals = [Value::Null, Value::Integer(3)];
        assert_eq!(column_type(None, vals.iter()), Type::INT8);
        assert_eq!(column_type(Some("NUMERIC"), vals.iter()), Type::INT8);
        assert_eq!(column_type(None, [Value::Null].iter()), Type::TEXT);
    }

    #[test]
    fn parameters_decode_by_type_and_format() {
        let text = Format::UnifiedText;
        let p = |s: &str| Some(Bytes::from(s.to_string()));
        let got = decode_params(
            &[p("42"), p("1.5"), p("t"), p("\\x00ff"), p("hi"), None],
            &[
                Some(Type::INT4),
                Some(Type::FLOAT8),
                Some(Type::BOOL),
                Some(Type::BYTEA),
                None,
                Some(Type::TEXT),
            ],
            &text,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Value::Integer(42),
                Value::Real(1.5),
                Value::Integer(1),
                Value::Blob(vec![0, 255]),
                Value::Text("hi".into()),
                Value::Null
            ]
        );
        let bin = Format::UnifiedBinary;
        let got = decode_params(
            &[Some(Bytes::from(7i64.to_be_bytes().to_vec()))],
            &[Some(Type::INT8)],
            &bin,
        )
        .unwrap();
        assert_eq!(got, vec![Value::Integer(7)]);
        assert!(decode_params(&[p("x")], &[Some(Type::INT8)], &text).is_err());
        assert!(decode_params(
            &[Some(Bytes::from_static(b"\x00"))],
            &[Some(Type::INT8)],
            &bin
        )
        .is_err());
    }
}
