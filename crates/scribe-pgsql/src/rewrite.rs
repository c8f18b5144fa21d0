//! Rewrites that apply to every statement: they turn PostgreSQL expressions into SQLite ones
//! token by token, leaving strings, identifiers and comments alone.
//!
//! - `$n` → `?n` (SQLite binds `?n` by number, like PostgreSQL).
//! - `E'..'` and `$tag$..$tag$` → plain `'..'` literals, escapes decoded.
//! - `x::type` → `CAST(x AS <sqlite type>)` when `x` is a literal, a (qualified) identifier, a
//!   parameter, a parenthesised group or a function call; casts to boolean turn `'t'`/`'false'`
//!   literals into 1/0 and are otherwise dropped; casts to `regclass`, arrays and unknown types
//!   are dropped (the value is used as it is, which is what SQLite's dynamic typing does anyway).
//!   `CAST(x AS timestamp)` gets `TEXT` so SQLite does not give it NUMERIC affinity.
//! - `now()` and friends → `CURRENT_TIMESTAMP`; `version()`, `current_database()`,
//!   `current_schema()`, `current_user`, `pg_backend_pid()`, `set_config(n, v, l)` → literals
//!   (named like PostgreSQL's result column when they are a whole select item);
//!   `gen_random_uuid()` → an expression making a version-4 UUID.
//! - `ILIKE` → `LIKE` (case-insensitive for ASCII in SQLite), `IS [NOT] DISTINCT FROM` →
//!   `IS [NOT]`, `pg_catalog.f(` → `f(`, `public.t` → `t`, `LIMIT ALL` → `LIMIT -1`.
//! - `FOR UPDATE` / `FOR SHARE` [`OF ..`] [`NOWAIT` | `SKIP LOCKED`] are removed: SQLite has one
//!   writer, so rows read in a write transaction cannot change underneath it.

use crate::lexer::{matching_close, matching_open, next_sig, prev_sig, quote_literal, Tok, Token};
use crate::types::{bool_literal, cast_target, parse_type, CastTarget};
use crate::{SessionInfo, SERVER_VERSION};

/// A SQLite expression that yields a random version-4 UUID as text.
const UUID_SQL: &str = "(lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || \
substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || \
substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))))";

/// The `version()` string.
pub(crate) fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (Scribe {})",
        env!("CARGO_PKG_VERSION")
    )
}

/// Applies every rewrite of this module.
pub(crate) fn rewrite(tokens: Vec<Token>, session: &SessionInfo) -> Vec<Token> {
    let tokens = simple_tokens(tokens);
    let tokens = functions(tokens, session);
    let tokens = casts(tokens);
    strip_locking(tokens)
}

/// Per-token rewrites: parameters, strings, ILIKE, DISTINCT FROM, qualifiers, LIMIT ALL.
fn simple_tokens(mut t: Vec<Token>) -> Vec<Token> {
    let mut i = 0;
    while i < t.len() {
        match t[i].kind {
            Tok::Param => t[i] = Token::new(Tok::Param, format!("?{}", &t[i].text[1..])),
            Tok::EStr | Tok::DollarStr => t[i] = Token::new(Tok::Str, quote_literal(&t[i].value())),
            Tok::Word => {
                let next = next_sig(&t, i + 1);
                let next_is = |kw: &str| next.is_some_and(|n| t[n].is_kw(kw));
                let next_dot = next.is_some_and(|n| t[n].kind == Tok::Dot);
                let prev_dot = prev_sig(&t, i).is_some_and(|p| t[p].kind == Tok::Dot);
                if t[i].is_kw("ilike") {
                    t[i] = Token::word("LIKE");
                } else if t[i].is_kw("localtimestamp") {
                    t[i] = Token::word("CURRENT_TIMESTAMP");
                } else if t[i].is_kw("limit") && next_is("all") {
                    if let Some(n) = next {
                        t[n] = Token::new(Tok::Number, "-1");
                    }
                } else if t[i].is_kw("is") {
                    // IS [NOT] DISTINCT FROM → IS NOT / IS
                    let (not, d) = match next {
                        Some(n) if t[n].is_kw("not") => (Some(n), next_sig(&t, n + 1)),
                        other => (None, other),
                    };
                    let from = d.and_then(|d| next_sig(&t, d + 1));
                    if let (Some(d), Some(f)) = (d, from) {
                        if t[d].is_kw("distinct") && t[f].is_kw("from") {
                            t.drain(i + 1..=f);
                            if not.is_none() {
                                t.insert(i + 1, Token::space());
                                t.insert(i + 2, Token::word("NOT"));
                            }
                        }
                    }
                } else if (t[i].is_kw("pg_catalog") || t[i].is_kw("public"))
                    && next_dot
                    && !prev_dot
                {
                    // `pg_catalog.f(` → `f(`; `public.t` → `t`. pg_catalog tables stay (the
                    // catalog module answers the queries it knows; SQLite rejects the rest).
                    let dot = next.unwrap_or(i);
                    let after = next_sig(&t, dot + 1);
                    let is_call = after
                        .and_then(|a| next_sig(&t, a + 1))
                        .is_some_and(|p| t[p].kind == Tok::Open);
                    if t[i].is_kw("public") || is_call {
                        t.drain(i..=dot);
                        continue;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    t
}

/// Function calls with SQLite or literal replacements.
fn functions(mut t: Vec<Token>, session: &SessionInfo) -> Vec<Token> {
    let mut i = 0;
    while i < t.len() {
        if t[i].kind != Tok::Word || prev_sig(&t, i).is_some_and(|p| t[p].kind == Tok::Dot) {
            i += 1;
            continue;
        }
        let name = t[i].text.to_ascii_lowercase();
        let open = next_sig(&t, i + 1).filter(|&o| t[o].kind == Tok::Open);
        let close = open.and_then(|o| matching_close(&t, o));
        let empty_call = match (open, close) {
            (Some(o), Some(c)) => next_sig(&t, o + 1) == Some(c),
            _ => false,
        };
        let (replacement, end) = match (name.as_str(), close) {
            (
                "now" | "transaction_timestamp" | "statement_timestamp" | "clock_timestamp",
                Some(c),
            ) if empty_call => ("CURRENT_TIMESTAMP".to_string(), c),
            ("version", Some(c)) if empty_call => (quote_literal(&version_string()), c),
            ("current_database", Some(c)) if empty_call => (quote_literal(&session.database), c),
            ("current_schema", Some(c)) if empty_call => (quote_literal("public"), c),
            ("pg_backend_pid", Some(c)) if empty_call => (session.backend_pid.to_string(), c),
            ("gen_random_uuid", Some(c)) if empty_call => (UUID_SQL.to_string(), c),
            ("set_config", Some(c)) => {
                // set_config(name, value, is_local) returns value.
                let args = crate::lexer::split_commas(&crate::lexer::significant(
                    &t[open.unwrap_or(i) + 1..c],
                ));
                match args.get(1) {
                    Some(v) => (format!("({})", crate::lexer::render_spaced(v)), c),
                    None => {
                        i += 1;
                        continue;
                    }
                }
            }
            ("current_user" | "session_user" | "current_role", None) => {
                (quote_literal(&session.user), i)
            }
            ("current_schema", None) => (quote_literal("public"), i),
            ("current_catalog", None) => (quote_literal(&session.database), i),
            _ => {
                i += 1;
                continue;
            }
        };
        let alias = is_select_item(&t, i, end);
        let mut new = vec![Token::new(Tok::Word, replacement)];
        if alias {
            new.push(Token::space());
            new.push(Token::word("AS"));
            new.push(Token::space());
            new.push(Token::new(Tok::QuotedIdent, format!("\"{name}\"")));
        }
        let n = new.len();
        t.splice(i..=end, new);
        i += n;
    }
    t
}

/// Whether tokens `start..=end` are a whole item of a select list without an alias.
fn is_select_item(t: &[Token], start: usize, end: usize) -> bool {
    let Some(p) = prev_sig(t, start) else {
        return false;
    };
    let before_ok = t[p].is_kw("select") || t[p].kind == Tok::Comma;
    let after_ok = match next_sig(t, end + 1) {
        None => true,
        Some(n) => matches!(t[n].kind, Tok::Comma | Tok::Semi | Tok::Close) || t[n].is_kw("from"),
    };
    if !(before_ok && after_ok) {
        return false;
    }
    // Walk back at this nesting level to the SELECT that owns the list.
    let mut k = p;
    loop {
        let tok = &t[k];
        if tok.is_kw("select") {
            return true;
        }
        if tok.kind == Tok::Open
            || [
                "from",
                "where",
                "group",
                "order",
                "values",
                "by",
                "set",
                "on",
                "returning",
            ]
            .iter()
            .any(|kw| tok.is_kw(kw))
        {
            return tok.is_kw("returning");
        }
        if tok.kind == Tok::Close {
            match matching_open(t, k) {
                Some(o) => k = o,
                None => return false,
            }
        }
        match prev_sig(t, k) {
            Some(q) => k = q,
            None => return false,
        }
    }
}

/// `x::type` → `CAST(x AS type)` (or the value alone); `CAST(x AS pgtype)` → SQLite type.
fn casts(mut t: Vec<Token>) -> Vec<Token> {
    // CAST(x AS type): replace the type when it has a better SQLite spelling.
    let mut i = 0;
    while i < t.len() {
        if t[i].is_kw("cast") {
            if let Some(o) = next_sig(&t, i + 1).filter(|&o| t[o].kind == Tok::Open) {
                if let Some(c) = matching_close(&t, o) {
                    retarget_cast_as(&mut t, o, c);
                }
            }
        }
        i += 1;
    }
    while let Some(k) = t.iter().position(|x| x.kind == Tok::Cast) {
        let start = operand_start(&t, k);
        let sig: Vec<(usize, &Token)> = t
            .iter()
            .enumerate()
            .skip(k + 1)
            .filter(|(_, x)| !x.is_trivia())
            .collect();
        let sig_toks: Vec<Token> = sig.iter().map(|(_, x)| (*x).clone()).collect();
        let parsed = parse_type(&sig_toks, 0);
        let (target, type_end) = match parsed {
            Some((ty, used)) if used > 0 => (cast_target(&ty), sig[used - 1].0),
            _ => (CastTarget::Drop, k),
        };
        let Some(start) = start else {
            // No operand we understand: drop the cast, keep the expression.
            t.drain(k..=type_end);
            continue;
        };
        let operand: Vec<Token> = t[start..k].to_vec();
        let operand_sig = crate::lexer::significant(&operand);
        let replacement: Vec<Token> = match target {
            CastTarget::Sqlite(ty) => {
                let mut v = vec![Token::word("CAST"), Token::new(Tok::Open, "(")];
                v.extend(
                    operand
                        .into_iter()
                        .filter(|x| !x.is_trivia() || x.kind == Tok::Space),
                );
                v.extend([
                    Token::space(),
                    Token::word("AS"),
                    Token::space(),
                    Token::word(ty),
                ]);
                v.push(Token::new(Tok::Close, ")"));
                v
            }
            CastTarget::Bool => match operand_sig.as_slice() {
                [lit] if lit.kind == Tok::Str => match bool_literal(&lit.value()) {
                    Some(b) => vec![Token::new(Tok::Number, if b { "1" } else { "0" })],
                    None => operand,
                },
                _ => operand,
            },
            CastTarget::Drop => operand,
        };
        t.splice(start..=type_end, replacement);
    }
    t
}

/// In `CAST( ... AS type )` between `open` and `close`, replace the type by its SQLite target.
fn retarget_cast_as(t: &mut Vec<Token>, open: usize, close: usize) {
    let mut depth = 0;
    let mut as_at = None;
    for (k, tok) in t.iter().enumerate().take(close).skip(open) {
        match tok.kind {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            _ if depth == 1 && tok.is_kw("as") => as_at = Some(k),
            _ => {}
        }
    }
    let Some(a) = as_at else { return };
    let type_toks = crate::lexer::significant(&t[a + 1..close]);
    if let Some((ty, used)) = parse_type(&type_toks, 0) {
        if used == type_toks.len() {
            if let CastTarget::Sqlite(s) = cast_target(&ty) {
                t.splice(a + 1..close, [Token::space(), Token::word(s)]);
            }
        }
    }
}

/// Where the operand of the `::` at `k` starts, if it is one we can wrap.
fn operand_start(t: &[Token], k: usize) -> Option<usize> {
    let p = prev_sig(t, k)?;
    match t[p].kind {
        Tok::Close => {
            let o = matching_open(t, p)?;
            // A function call: include its (qualified) name.
            match prev_sig(t, o) {
                Some(n) if t[n].kind == Tok::Word && !is_operator_keyword(&t[n]) => {
                    Some(qualified_start(t, n))
                }
                _ => Some(o),
            }
        }
        Tok::Str | Tok::Number | Tok::Param => {
            // `interval '1 day'`, `date '2020-01-01'`: a typed literal keeps its type word.
            Some(p)
        }
        Tok::Word | Tok::QuotedIdent if !is_operator_keyword(&t[p]) => Some(qualified_start(t, p)),
        _ => None,
    }
}

fn qualified_start(t: &[Token], mut k: usize) -> usize {
    while let Some(d) = prev_sig(t, k).filter(|&d| t[d].kind == Tok::Dot) {
        match prev_sig(t, d).filter(|&n| matches!(t[n].kind, Tok::Word | Tok::QuotedIdent)) {
            Some(n) => k = n,
            None => break,
        }
    }
    k
}

fn is_operator_keyword(t: &Token) -> bool {
    [
        "and", "or", "not", "select", "where", "in", "is", "like", "then", "else", "when", "case",
        "as", "on", "by", "values", "set", "from", "exists", "any", "all", "between",
    ]
    .iter()
    .any(|k| t.is_kw(k))
}

/// Removes `FOR UPDATE|SHARE|NO KEY UPDATE|KEY SHARE [OF t, ..] [NOWAIT|SKIP LOCKED]`.
fn strip_locking(mut t: Vec<Token>) -> Vec<Token> {
    let mut i = 0;
    while i < t.len() {
        if !t[i].is_kw("for") {
            i += 1;
            continue;
        }
        let mut k = next_sig(&t, i + 1);
        let mut matched = false;
        for words in [
            &["update"][..],
            &["share"],
            &["no", "key", "update"],
            &["key", "share"],
        ] {
            let mut j = k;
            let ok = words.iter().all(|w| match j {
                Some(x) if t[x].is_kw(w) => {
                    j = next_sig(&t, x + 1);
                    true
                }
                _ => false,
            });
            if ok {
                k = j;
                matched = true;
                break;
            }
        }
        if !matched {
            i += 1;
            continue;
        }
        if k.is_some_and(|x| t[x].is_kw("of")) {
            k = k.and_then(|x| next_sig(&t, x + 1));
            while let Some(x) = k {
                if matches!(
                    t[x].kind,
                    Tok::Word | Tok::QuotedIdent | Tok::Comma | Tok::Dot
                ) && !t[x].is_kw("nowait")
                    && !t[x].is_kw("skip")
                    && !t[x].is_kw("for")
                {
                    k = next_sig(&t, x + 1);
                } else {
                    break;
                }
            }
        }
        if k.is_some_and(|x| t[x].is_kw("nowait")) {
            k = k.and_then(|x| next_sig(&t, x + 1));
        } else if k.is_some_and(|x| t[x].is_kw("skip")) {
            k = k
                .and_then(|x| next_sig(&t, x + 1))
                .and_then(|x| next_sig(&t, x + 1));
        }
        let end = k.unwrap_or(t.len());
        t.drain(i..end);
    }
    t
}

/// The highest `$n` in `stmt` (0 when there are none); parameters inside strings, quoted
/// identifiers and comments do not count.
pub fn param_count(stmt: &str) -> usize {
    crate::lexer::tokenize(stmt)
        .unwrap_or_default()
        .iter()
        .filter(|t| t.kind == Tok::Param)
        .filter_map(|t| t.text[1..].parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::{render, tokenize};

    fn rw(sql: &str) -> String {
        render(&rewrite(tokenize(sql).unwrap(), &SessionInfo::default()))
    }

    #[test]
    fn parameters_are_numbered_and_strings_untouched() {
        assert_eq!(
            rw("select $2, '$1', \"$1\" -- $3\n, $1"),
            "select ?2, '$1', \"$1\" -- $3\n, ?1"
        );
        assert_eq!(param_count("select $2, '$9', $10 /* $11 */"), 10);
        assert_eq!(param_count("select 1"), 0);
    }

    #[test]
    fn casts_become_sqlite_casts_or_disappear() {
        assert_eq!(rw("select $1::int"), "select CAST(?1 AS INTEGER)");
        assert_eq!(
            rw("select 'x'::character varying"),
            "select CAST('x' AS TEXT)"
        );
        assert_eq!(
            rw("select now()::timestamp"),
            "select CAST(CURRENT_TIMESTAMP AS TEXT)"
        );
        assert_eq!(
            rw("select (a + b)::bigint"),
            "select CAST((a + b) AS INTEGER)"
        );
        assert_eq!(
            rw("select t.c::text from t"),
            "select CAST(t.c AS TEXT) from t"
        );
        assert_eq!(
            rw("select count(*)::int8"),
            "select CAST(count(*) AS INTEGER)"
        );
        assert_eq!(rw("select 'users'::regclass"), "select 'users'");
        assert_eq!(rw("select '{a}'::text[]"), "select '{a}'");
        assert_eq!(rw("select 't'::boolean, 'off'::bool"), "select 1, 0");
        assert_eq!(
            rw("select 1::int::text"),
            "select CAST(CAST(1 AS INTEGER) AS TEXT)"
        );
        assert_eq!(
            rw("select cast(x as timestamptz)"),
            "select cast(x as TEXT)"
        );
        assert_eq!(rw("select cast(x as integer)"), "select cast(x as INTEGER)");
        assert_eq!(
            rw("select '1'::pg_catalog.int4"),
            "select CAST('1' AS INTEGER)"
        );
    }

    #[test]
    fn functions_become_literals_named_like_postgresql() {
        let v = rw("SELECT version()");
        assert!(v.starts_with("SELECT 'PostgreSQL 15.0 (Scribe "), "{v}");
        assert!(v.ends_with(" AS \"version\""), "{v}");
        assert_eq!(
            rw("SELECT current_database(), current_schema(), current_user, pg_backend_pid()"),
            "SELECT 'scribe' AS \"current_database\", 'public' AS \"current_schema\", 'scribe' AS \"current_user\", 0 AS \"pg_backend_pid\""
        );
        assert_eq!(
            rw("insert into t values (now())"),
            "insert into t values (CURRENT_TIMESTAMP)"
        );
        assert_eq!(
            rw("SELECT pg_catalog.set_config('search_path', '', false)"),
            "SELECT ('') AS \"set_config\""
        );
        assert_eq!(
            rw("select coalesce(version(), 'x')")
                .matches(" AS ")
                .count(),
            0
        );
    }

    #[test]
    fn operators_and_clauses() {
        assert_eq!(rw("a ILIKE $1"), "a LIKE ?1");
        assert_eq!(rw("a is distinct from b"), "a is NOT b");
        assert_eq!(rw("a IS NOT DISTINCT FROM b"), "a IS b");
        assert_eq!(
            rw("select * from public.t limit all"),
            "select * from t limit -1"
        );
        assert_eq!(
            rw("select * from t where id = 1 for update"),
            "select * from t where id = 1 "
        );
        assert_eq!(
            rw("select * from t for no key update of t skip locked"),
            "select * from t "
        );
        assert_eq!(rw("select E'a\\nb', $$it's$$"), "select 'a\nb', 'it''s'");
    }

    #[test]
    fn gen_random_uuid_makes_a_uuid() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let u: String = db
            .query_row(&rw("select gen_random_uuid()"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(u.matches('-').count(), 4);
    }
}
