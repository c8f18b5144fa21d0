//! PostgreSQL type names and what they become in SQLite: a column's declared type (which must
//! give the right SQLite affinity) and a cast's target type.
//!
//! Declared types keep PostgreSQL's name where SQLite's affinity rules already do the right
//! thing (`int`, `bigint`, `varchar(20)`, `char(84)`, `numeric(10,2)`, `boolean`,
//! `double precision`). Types whose name would give NUMERIC affinity although their values are
//! text (`timestamp`, `date`, `json`, `uuid`, ...) get a ` TEXT` suffix: `timestamp TEXT` has
//! TEXT affinity and still says what it was. [`pg_type_name`] reads any declared type back as
//! PostgreSQL's canonical name (`timestamp without time zone`), for the catalog and for choosing
//! a wire type.

use crate::lexer::{Tok, Token};

/// A PostgreSQL type as written in a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgType {
    /// The name, lower-cased, words joined by one space, without a `pg_catalog.` qualifier.
    pub name: String,
    /// The modifier in parentheses, e.g. `(10,2)`, verbatim.
    pub modifier: Option<String>,
    /// Whether it is an array type (`text[]`, `int ARRAY`).
    pub array: bool,
}

/// What a column's declared type becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColumnType {
    /// `serial` and friends: an auto-numbered integer (only as SQLite's rowid alias).
    Serial,
    /// The declared type for SQLite.
    Declared(String),
}

/// What `x::type` / `CAST(x AS type)` becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastTarget {
    /// `CAST(x AS <this>)`.
    Sqlite(&'static str),
    /// A boolean: literals become 1/0, anything else is left as it is.
    Bool,
    /// Dropped: the value is used as it is (regclass, arrays, unknown types).
    Drop,
}

/// Parses a type from significant tokens starting at `i`; returns it and the index after it.
/// Accepts multi-word names (`double precision`, `character varying`,
/// `timestamp with time zone`), a `pg_catalog.` qualifier, a modifier and `[]` suffixes.
pub(crate) fn parse_type(toks: &[Token], mut i: usize) -> Option<(PgType, usize)> {
    if toks.get(i)?.is_kw("pg_catalog") && toks.get(i + 1).is_some_and(|t| t.kind == Tok::Dot) {
        i += 2;
    }
    let first = toks.get(i)?;
    if !matches!(first.kind, Tok::Word | Tok::QuotedIdent) {
        return None;
    }
    let mut name = first.value();
    i += 1;
    const CONTINUATIONS: &[(&str, &[&str])] = &[
        ("double", &["precision"]),
        ("character", &["varying"]),
        ("char", &["varying"]),
        ("bit", &["varying"]),
        ("national", &["character", "char", "varying"]),
    ];
    while let Some(next) = toks.get(i) {
        let cont = CONTINUATIONS
            .iter()
            .any(|(head, tails)| name.ends_with(head) && tails.iter().any(|t| next.is_kw(t)));
        if cont {
            name.push(' ');
            name.push_str(&next.value());
            i += 1;
        } else {
            break;
        }
    }
    let mut modifier = None;
    if toks.get(i).is_some_and(|t| t.kind == Tok::Open) {
        let mut depth = 0;
        let mut text = String::new();
        while let Some(t) = toks.get(i) {
            text.push_str(&t.text);
            i += 1;
            match t.kind {
                Tok::Open => depth += 1,
                Tok::Close => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        modifier = Some(text);
    }
    // `timestamp(3) with time zone`, `time without time zone`.
    if matches!(name.as_str(), "timestamp" | "time") {
        let with = toks.get(i).is_some_and(|t| t.is_kw("with"));
        let without = toks.get(i).is_some_and(|t| t.is_kw("without"));
        if (with || without)
            && toks.get(i + 1).is_some_and(|t| t.is_kw("time"))
            && toks.get(i + 2).is_some_and(|t| t.is_kw("zone"))
        {
            if with {
                name.push_str("tz");
            }
            i += 3;
        }
    }
    let mut array = false;
    loop {
        if toks.get(i).is_some_and(|t| t.is_char('[')) {
            let mut k = i + 1;
            while toks.get(k).is_some_and(|t| t.kind == Tok::Number) {
                k += 1;
            }
            if toks.get(k).is_some_and(|t| t.is_char(']')) {
                array = true;
                i = k + 1;
                continue;
            }
        }
        if toks.get(i).is_some_and(|t| t.is_kw("array")) {
            array = true;
            i += 1;
            continue;
        }
        break;
    }
    Some((
        PgType {
            name,
            modifier,
            array,
        },
        i,
    ))
}

/// The SQLite declared type for a column of PostgreSQL type `t`.
pub(crate) fn column_type(t: &PgType) -> ColumnType {
    if t.array {
        return ColumnType::Declared("TEXT".into());
    }
    let m = t.modifier.as_deref().unwrap_or("");
    let declared = match t.name.as_str() {
        "serial" | "serial4" | "bigserial" | "serial8" | "smallserial" | "serial2" => {
            return ColumnType::Serial
        }
        "bytea" => "BLOB".to_string(),
        // `interval TEXT` would contain INT, which SQLite reads as INTEGER affinity.
        "interval" => "TEXT".to_string(),
        "timestamp" | "timestamptz" | "date" | "time" | "timetz" | "json" | "jsonb" | "uuid"
        | "inet" | "cidr" | "macaddr" | "xml" | "name" | "citext" | "tsvector" => {
            format!("{} TEXT", t.name)
        }
        "decimal" => format!("numeric{m}"),
        "float" => "float8".to_string(),
        _ => format!("{}{m}", t.name),
    };
    ColumnType::Declared(declared)
}

/// The target of a cast to `t`; see [`CastTarget`].
pub(crate) fn cast_target(t: &PgType) -> CastTarget {
    if t.array {
        return CastTarget::Drop;
    }
    match t.name.as_str() {
        "int" | "int2" | "int4" | "int8" | "integer" | "smallint" | "bigint" | "serial"
        | "bigserial" | "oid" => CastTarget::Sqlite("INTEGER"),
        "real" | "float" | "float4" | "float8" | "double precision" => CastTarget::Sqlite("REAL"),
        "numeric" | "decimal" => CastTarget::Sqlite("NUMERIC"),
        "text" | "varchar" | "character varying" | "char" | "character" | "bpchar" | "name"
        | "uuid" | "json" | "jsonb" | "date" | "time" | "timetz" | "timestamp" | "timestamptz"
        | "interval" | "inet" | "cidr" | "citext" | "xml" | "unknown" => CastTarget::Sqlite("TEXT"),
        "bytea" => CastTarget::Sqlite("BLOB"),
        "bool" | "boolean" => CastTarget::Bool,
        _ => CastTarget::Drop,
    }
}

/// The boolean a PostgreSQL boolean literal spells (`'t'`, `'yes'`, `'off'`, ...).
pub(crate) fn bool_literal(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Exact names (after lower-casing and removing the affinity suffix) and their PostgreSQL
/// spelling. Shared by [`pg_type_name`] and the catalog's SQL ([`format_type_sql`]).
const EXACT: &[(&str, &str)] = &[
    ("", "text"),
    ("integer", "integer"),
    ("int", "integer"),
    ("int4", "integer"),
    ("bigint", "bigint"),
    ("int8", "bigint"),
    ("smallint", "smallint"),
    ("int2", "smallint"),
    ("bool", "boolean"),
    ("boolean", "boolean"),
    ("real", "real"),
    ("float4", "real"),
    ("float8", "double precision"),
    ("double", "double precision"),
    ("blob", "bytea"),
    ("timestamp", "timestamp without time zone"),
    ("timestamptz", "timestamp with time zone"),
    ("time", "time without time zone"),
    ("timetz", "time with time zone"),
    ("decimal", "numeric"),
    ("varchar", "character varying"),
    ("char", "character(1)"),
];

/// Prefixes of parameterised names and their PostgreSQL spelling (the modifier is kept).
const PREFIX: &[(&str, &str)] = &[
    ("varchar(", "character varying("),
    ("char(", "character("),
    ("decimal(", "numeric("),
];

/// PostgreSQL's canonical name for a SQLite declared type written by this crate (or by hand):
/// `INTEGER` → `integer`, `timestamp TEXT` → `timestamp without time zone`, `varchar(20)` →
/// `character varying(20)`, `BLOB` → `bytea`. Unknown names are returned lower-cased.
pub fn pg_type_name(decltype: &str) -> String {
    let lower = decltype.trim().to_ascii_lowercase();
    let base = strip_affinity_suffix(&lower);
    if let Some((_, pg)) = EXACT.iter().find(|(k, _)| *k == base) {
        return (*pg).to_string();
    }
    for (prefix, pg) in PREFIX {
        if let Some(rest) = base.strip_prefix(prefix) {
            return format!("{pg}{rest}");
        }
    }
    base.to_string()
}

fn strip_affinity_suffix(s: &str) -> &str {
    for suffix in [" text", " blob"] {
        if let Some(base) = s.strip_suffix(suffix) {
            if !base.is_empty() {
                return base;
            }
        }
    }
    s
}

/// An SQLite expression computing [`pg_type_name`] of the declared-type expression `col`.
pub(crate) fn format_type_sql(col: &str) -> String {
    let l = format!("lower(trim({col}))");
    let base = format!(
        "(CASE WHEN {l} LIKE '_% text' OR {l} LIKE '_% blob' THEN substr({l}, 1, length({l}) - 5) ELSE {l} END)"
    );
    let mut sql = "(SELECT CASE b".to_string();
    for (k, pg) in EXACT {
        sql.push_str(&format!(" WHEN '{k}' THEN '{pg}'"));
    }
    sql.push_str(" ELSE CASE");
    for (prefix, pg) in PREFIX {
        let n = prefix.len();
        sql.push_str(&format!(
            " WHEN substr(b, 1, {n}) = '{prefix}' THEN '{pg}' || substr(b, {})",
            n + 1
        ));
    }
    sql.push_str(&format!(" ELSE b END END FROM (SELECT {base} AS b))"));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::{significant, tokenize};

    fn ty(s: &str) -> PgType {
        let toks = significant(&tokenize(s).unwrap());
        let (t, end) = parse_type(&toks, 0).unwrap();
        assert_eq!(end, toks.len(), "{s} fully parsed");
        t
    }

    #[test]
    fn parses_multiword_qualified_and_array_types() {
        assert_eq!(ty("double precision").name, "double precision");
        assert_eq!(
            ty("character varying(20)").modifier.as_deref(),
            Some("(20)")
        );
        assert_eq!(ty("timestamp(3) with time zone").name, "timestamptz");
        assert_eq!(ty("timestamp without time zone").name, "timestamp");
        assert_eq!(ty("pg_catalog.text").name, "text");
        assert!(ty("text[]").array);
        assert!(ty("int[3][]").array);
    }

    #[test]
    fn column_types_get_the_right_affinity() {
        let decl = |s: &str| match column_type(&ty(s)) {
            ColumnType::Declared(d) => d,
            ColumnType::Serial => "SERIAL".into(),
        };
        assert_eq!(decl("bytea"), "BLOB");
        assert_eq!(decl("timestamptz"), "timestamptz TEXT");
        assert_eq!(decl("timestamp(6) with time zone"), "timestamptz TEXT");
        assert_eq!(decl("jsonb"), "jsonb TEXT");
        assert_eq!(decl("numeric(10,2)"), "numeric(10,2)");
        assert_eq!(decl("char(84)"), "char(84)");
        assert_eq!(decl("double precision"), "double precision");
        assert_eq!(decl("bigserial"), "SERIAL");
        assert_eq!(decl("text[]"), "TEXT");
        assert_eq!(decl("interval"), "TEXT");
    }

    #[test]
    fn pg_type_name_reads_declared_types_back() {
        for (decl, pg) in [
            ("INTEGER", "integer"),
            ("int", "integer"),
            ("timestamp TEXT", "timestamp without time zone"),
            ("jsonb TEXT", "jsonb"),
            ("varchar(20)", "character varying(20)"),
            ("char(84)", "character(84)"),
            ("BLOB", "bytea"),
            ("TEXT", "text"),
            ("numeric(10,2)", "numeric(10,2)"),
            ("double precision", "double precision"),
            ("", "text"),
        ] {
            assert_eq!(pg_type_name(decl), pg, "{decl}");
        }
    }

    #[test]
    fn format_type_sql_agrees_with_pg_type_name() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        for decl in [
            "INTEGER",
            "int",
            "timestamp TEXT",
            "jsonb TEXT",
            "varchar(20)",
            "char(84)",
            "BLOB",
            "TEXT",
            "numeric(10,2)",
            "decimal(3)",
            "double precision",
            "",
            "weird",
        ] {
            let sql = format!("SELECT {}", format_type_sql("?1"));
            let got: String = db.query_row(&sql, [decl], |r| r.get(0)).unwrap();
            assert_eq!(got, pg_type_name(decl), "{decl}");
        }
    }
}
