//! The entry point: one PostgreSQL statement in, one [`Command`] out. Catalog queries and
//! session statements are recognised first (on the statement as written), then the generic
//! rewrites run and the statement is dispatched on its first keyword.

use crate::command::{Command, Kind};
use crate::error::CompatError;
use crate::lexer::{render, significant, tokenize, Tok, Token};
use crate::{catalog, copy, ddl, rewrite, session, SessionInfo};

/// Translates one PostgreSQL statement for a session with default [`SessionInfo`].
pub fn translate(stmt: &str) -> Result<Command, CompatError> {
    translate_for(stmt, &SessionInfo::default())
}

/// Translates one PostgreSQL statement; `session` supplies what `current_database()`,
/// `current_user` and `pg_backend_pid()` return and the owner the catalog shows.
///
/// A trailing `;` is allowed (pgbench's extended mode sends `BEGIN;`); several statements are
/// not: [`crate::split`] them first.
pub fn translate_for(stmt: &str, session: &SessionInfo) -> Result<Command, CompatError> {
    let mut tokens = tokenize(stmt)?;
    // Drop trailing semicolons (and the spaces and comments around them).
    while let Some(last) = tokens.iter().rposition(|t| !t.is_trivia()) {
        if tokens[last].kind == Tok::Semi {
            tokens.truncate(last);
        } else {
            tokens.truncate(last + 1);
            break;
        }
    }
    let sig = significant(&tokens);
    if sig.is_empty() {
        return Ok(Command::Empty);
    }
    if sig.iter().any(|t| t.kind == Tok::Semi) && top_level_semicolon(&sig) {
        return Err(CompatError::syntax(
            "cannot translate several statements at once; split them first",
        ));
    }
    if let Some(cmd) = catalog::translate(&tokens, session) {
        return Ok(cmd);
    }
    if let Some(cmd) = session::translate(&sig) {
        return cmd;
    }
    let rewritten = rewrite::rewrite(tokens, session);
    let sig = significant(&rewritten);
    let first = sig.first().map(Token::value).unwrap_or_default();
    match first.as_str() {
        "create" => return ddl::create(&sig),
        "drop" => return ddl::drop(&sig),
        "alter" => return ddl::alter(&sig),
        "truncate" => return ddl::truncate(&sig),
        "copy" => return copy::parse(&sig).map(Command::CopyIn),
        _ => {}
    }
    refuse_known_unsupported(&sig)?;
    let sql = render(&rewritten).trim().to_string();
    let (sql, kind) = match first.as_str() {
        "select" | "values" => (sql, Kind::Read),
        "table" => (
            format!("SELECT * FROM {}", render(&rewritten).trim()[5..].trim()),
            Kind::Read,
        ),
        "explain" => (explain(&sig), Kind::Read),
        "with" => (sql, with_kind(&sig)),
        "insert" => (sql, Kind::Insert),
        "update" => (sql, Kind::Update),
        "delete" => (sql, Kind::Delete),
        other => {
            let tag = other.to_uppercase();
            (sql, Kind::Other { tag })
        }
    };
    Ok(Command::Sql { sql, kind })
}

fn top_level_semicolon(sig: &[Token]) -> bool {
    let mut depth = 0i32;
    for t in sig {
        match t.kind {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            Tok::Semi if depth == 0 => return true,
            _ => {}
        }
    }
    false
}

/// The kind of `WITH ... <main statement>`: the first top-level DML keyword after the CTEs.
fn with_kind(sig: &[Token]) -> Kind {
    let mut depth = 0i32;
    for t in sig.iter().skip(1) {
        match t.kind {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            Tok::Word if depth == 0 => {
                if t.is_kw("insert") {
                    return Kind::Insert;
                } else if t.is_kw("update") {
                    return Kind::Update;
                } else if t.is_kw("delete") {
                    return Kind::Delete;
                } else if t.is_kw("select") || t.is_kw("values") {
                    return Kind::Read;
                }
            }
            _ => {}
        }
    }
    Kind::Read
}

/// `EXPLAIN [ANALYZE] [VERBOSE] [(options)] stmt` → `EXPLAIN QUERY PLAN stmt` (SQLite's plain
/// EXPLAIN lists bytecode; its rows are `id, parent, notused, detail`, not PostgreSQL's one
/// `QUERY PLAN` column).
fn explain(sig: &[Token]) -> String {
    let mut i = 1;
    loop {
        match sig.get(i) {
            Some(t) if t.is_kw("analyze") || t.is_kw("analyse") || t.is_kw("verbose") => i += 1,
            Some(t) if t.kind == Tok::Open => {
                i = crate::lexer::matching_close(sig, i).map_or(sig.len(), |c| c + 1);
            }
            _ => break,
        }
    }
    if sig.get(i).is_some_and(|t| t.is_kw("query")) {
        i += 2; // already SQLite's EXPLAIN QUERY PLAN
    }
    format!(
        "EXPLAIN QUERY PLAN {}",
        crate::lexer::render_spaced(sig.get(i..).unwrap_or(&[]))
    )
}

/// PostgreSQL constructs that SQLite would misread or reject with a confusing message.
fn refuse_known_unsupported(sig: &[Token]) -> Result<(), CompatError> {
    for w in sig.windows(2) {
        if w[0].is_kw("distinct") && w[1].is_kw("on") {
            return Err(CompatError::unsupported("SELECT DISTINCT ON"));
        }
        if w[0].is_kw("array") && w[1].is_char('[') {
            return Err(CompatError::unsupported("ARRAY[...] constructors"));
        }
        if w[0].is_kw("lateral") {
            return Err(CompatError::unsupported("LATERAL joins"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(stmt: &str) -> (String, Kind) {
        match translate(stmt).unwrap() {
            Command::Sql { sql, kind } => (sql, kind),
            other => panic!("{stmt}: {other:?}"),
        }
    }

    #[test]
    fn kinds_route_reads_and_writes() {
        assert_eq!(sql("SELECT 1").1, Kind::Read);
        assert_eq!(sql("VALUES (1), (2)").1, Kind::Read);
        assert_eq!(sql("WITH a AS (SELECT 1) SELECT * FROM a").1, Kind::Read);
        assert_eq!(
            sql("WITH a AS (SELECT 1 AS x) INSERT INTO t SELECT x FROM a").1,
            Kind::Insert
        );
        assert_eq!(
            sql("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").1,
            Kind::Read
        );
        assert_eq!(
            sql("insert into t values ($1) returning id").1,
            Kind::Insert
        );
        assert_eq!(sql("UPDATE t SET a = 1").1, Kind::Update);
        assert_eq!(sql("DELETE FROM t").1, Kind::Delete);
        assert_eq!(
            sql("TABLE users"),
            ("SELECT * FROM users".into(), Kind::Read)
        );
        assert_eq!(
            sql("EXPLAIN ANALYZE SELECT 1").0,
            "EXPLAIN QUERY PLAN SELECT 1"
        );
        assert_eq!(
            sql("SAVEPOINT a").1,
            Kind::Other {
                tag: "SAVEPOINT".into()
            }
        );
        assert_eq!(
            sql("REINDEX t").1,
            Kind::Other {
                tag: "REINDEX".into()
            }
        );
    }

    #[test]
    fn trailing_semicolons_and_empty_statements() {
        assert_eq!(translate("BEGIN;").unwrap(), Command::Begin);
        assert_eq!(
            translate("  -- nothing\n /* here */ ").unwrap(),
            Command::Empty
        );
        assert_eq!(translate(";").unwrap(), Command::Empty);
        assert_eq!(
            translate("select 1; select 2").unwrap_err().sqlstate,
            "42601"
        );
        assert_eq!(
            translate("select 'unterminated").unwrap_err().sqlstate,
            "42601"
        );
    }

    #[test]
    fn upserts_and_returning_pass_through() {
        let (s, k) = sql("INSERT INTO t (id, n) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n RETURNING id");
        assert_eq!(s, "INSERT INTO t (id, n) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n RETURNING id");
        assert_eq!(k, Kind::Insert);
    }

    #[test]
    fn known_unsupported_constructs_are_refused() {
        for s in [
            "SELECT DISTINCT ON (a) a FROM t",
            "SELECT ARRAY[1,2]",
            "SELECT * FROM t, LATERAL (SELECT 1) x",
        ] {
            assert_eq!(translate(s).unwrap_err().sqlstate, "0A000", "{s}");
        }
    }
}
