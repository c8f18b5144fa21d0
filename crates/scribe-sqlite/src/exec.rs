//! Running one client statement: binding its parameters and collecting its rows. Shared by the
//! writer and the read pool.

use rusqlite::Statement as Prepared;
use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::value::{Params, Value};
use crate::EngineError;

/// One SQL statement with its parameters.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// The SQL text: exactly one statement.
    pub sql: String,
    /// Its parameters.
    #[serde(default)]
    pub params: Params,
}

impl Statement {
    /// A statement without parameters.
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            params: Params::None,
        }
    }

    /// A statement with positional parameters.
    pub fn with_params(sql: impl Into<String>, params: Vec<Value>) -> Statement {
        Statement {
            sql: sql.into(),
            params: Params::Positional(params),
        }
    }
}

/// Rows a statement returned.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// The rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
    /// Each column's declared type, when it is a table column (SQLite's `decltype`); for wire
    /// protocols that announce column types. Not part of the JSON answer.
    #[serde(skip)]
    pub decltypes: Vec<Option<String>>,
}

/// What a statement would return, without running it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Described {
    /// Column names and declared types (empty when it returns no rows).
    pub columns: Vec<(String, Option<String>)>,
    /// Number of parameters it takes.
    pub params: usize,
    /// Whether it only reads.
    pub readonly: bool,
}

/// Describes a prepared statement.
pub(crate) fn describe(stmt: &Prepared<'_>) -> Described {
    Described {
        columns: stmt
            .columns()
            .map(|c| (c.name().to_string(), c.decl_type().map(str::to_string)))
            .collect(),
        params: stmt.parameter_count(),
        readonly: stmt.readonly(),
    }
}

/// The start of the text of Scribe's own cached statements; clients' statements may not start
/// with it (see `Writer::internal`).
pub(crate) const INTERNAL_MARK: &str = "/*scribe-internal*/ ";
// meta.rs spells the mark out in string literals; keep them in step.
const _: () = assert!(INTERNAL_MARK.len() == 20);

/// Checks that `sql` holds a statement, for a clear error instead of SQLite's silence.
pub(crate) fn check_not_empty(sql: &str) -> Result<(), EngineError> {
    if sql.trim().trim_matches(';').trim().is_empty() {
        return Err(EngineError::BadRequest("empty statement".into()));
    }
    if sql.starts_with(INTERNAL_MARK.trim_end()) {
        return Err(EngineError::BadRequest(
            "statements may not start with Scribe's internal marker".into(),
        ));
    }
    Ok(())
}

/// Prepares a client's statement on a connection guarded by `policy`.
pub(crate) fn prepare<'c>(
    conn: &'c rusqlite::Connection,
    policy: &Policy,
    sql: &str,
) -> Result<rusqlite::CachedStatement<'c>, EngineError> {
    check_not_empty(sql)?;
    policy.clear();
    conn.prepare_cached(sql)
        .map_err(|e| EngineError::from_sqlite(e, policy.take_denied()))
}

/// Binds `params` to `stmt`, checking that they match its placeholders.
pub(crate) fn bind(stmt: &mut Prepared<'_>, params: &Params) -> Result<(), EngineError> {
    let expected = stmt.parameter_count();
    match params {
        Params::None if expected == 0 => Ok(()),
        Params::None => Err(EngineError::BadRequest(format!(
            "the statement takes {expected} parameters but none were given"
        ))),
        Params::Positional(values) => {
            if values.len() != expected {
                return Err(EngineError::BadRequest(format!(
                    "the statement takes {expected} parameters but {} were given",
                    values.len()
                )));
            }
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, v)
                    .map_err(|e| EngineError::from_sqlite(e, None))?;
            }
            Ok(())
        }
        Params::Named(values) => {
            let full = |name: &str| {
                if name.starts_with([':', '@', '$']) {
                    name.to_string()
                } else {
                    format!(":{name}")
                }
            };
            for (name, _) in values {
                let name = full(name);
                if stmt
                    .parameter_index(&name)
                    .map_err(|e| EngineError::from_sqlite(e, None))?
                    .is_none()
                {
                    return Err(EngineError::BadRequest(format!(
                        "the statement has no parameter named {name}"
                    )));
                }
            }
            for i in 1..=expected {
                let name = stmt.parameter_name(i).map(str::to_string).ok_or_else(|| {
                    EngineError::BadRequest(format!(
                        "parameter ?{i} has no name: give positional parameters as an array"
                    ))
                })?;
                let value = values
                    .iter()
                    .find(|(k, _)| full(k) == name)
                    .ok_or_else(|| {
                        EngineError::BadRequest(format!("no value given for parameter {name}"))
                    })?;
                stmt.raw_bind_parameter(i, &value.1)
                    .map_err(|e| EngineError::from_sqlite(e, None))?;
            }
            Ok(())
        }
    }
}

/// Runs a bound statement to completion, collecting its rows when it returns any.
pub(crate) fn run(stmt: &mut Prepared<'_>, policy: &Policy) -> Result<Option<Rows>, EngineError> {
    run_limited(stmt, policy, None, &mut 0)
}

/// [`run`], failing with [`EngineError::TooLarge`] once the rows collected — these and the
/// `used` bytes of the statements before them in the same request — take more than `max_bytes`
/// of memory (counted as held: each value, a string's or blob's bytes, and each row's own
/// vector). Adds what these rows take to `used`.
pub(crate) fn run_limited(
    stmt: &mut Prepared<'_>,
    policy: &Policy,
    max_bytes: Option<u64>,
    used: &mut u64,
) -> Result<Option<Rows>, EngineError> {
    let ncols = stmt.column_count();
    if ncols == 0 {
        stmt.raw_execute()
            .map_err(|e| EngineError::from_sqlite(e, policy.take_denied()))?;
        return Ok(None);
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let decltypes = stmt
        .columns()
        .map(|c| c.decl_type().map(str::to_string))
        .collect();
    let mut out = Vec::new();
    let mut bytes = *used;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows
        .next()
        .map_err(|e| EngineError::from_sqlite(e, policy.take_denied()))?
    {
        let mut r = Vec::with_capacity(ncols);
        for i in 0..ncols {
            r.push(Value::from_ref(
                row.get_ref(i)
                    .map_err(|e| EngineError::Internal(e.to_string()))?,
            ));
        }
        if let Some(max) = max_bytes {
            bytes += ROW_BYTES + r.iter().map(value_bytes).sum::<u64>();
            if bytes > max {
                return Err(crate::budget::result_too_large(max));
            }
        }
        out.push(r);
    }
    *used = bytes;
    Ok(Some(Rows {
        columns,
        rows: out,
        decltypes,
    }))
}

/// A row's vector in the result, with its allocation.
const ROW_BYTES: u64 = (std::mem::size_of::<Vec<Value>>() + 16) as u64;

fn value_bytes(v: &Value) -> u64 {
    std::mem::size_of::<Value>() as u64
        + match v {
            Value::Text(t) => t.len() as u64 + 16,
            Value::Blob(b) => b.len() as u64 + 16,
            _ => 0,
        }
}
