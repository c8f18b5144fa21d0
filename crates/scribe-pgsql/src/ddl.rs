//! Schema statements: `CREATE TABLE`, `CREATE INDEX`, `CREATE VIEW`, `DROP`, `ALTER TABLE`,
//! `TRUNCATE`, turned into the SQLite statements that do the same.
//!
//! Choices made here:
//! - `serial`, `bigserial`, `smallserial` and `GENERATED ... AS IDENTITY` columns become
//!   `INTEGER PRIMARY KEY`, SQLite's rowid alias, which numbers new rows max+1 (no
//!   `AUTOINCREMENT`: ids of deleted rows at the end may be reused, as after a PostgreSQL
//!   sequence reset). Such a column without `PRIMARY KEY` becomes the primary key when the table
//!   declares none; otherwise the table is refused (SQLite has no sequences).
//! - Storage clauses (`WITH (fillfactor=..)`, `TABLESPACE`, `USING heap`, `UNLOGGED`,
//!   `WITHOUT OIDS`, `COLLATE`, index `INCLUDE`, opclasses, `USING btree|hash`,
//!   `CONCURRENTLY`) are dropped. Partitioned and inherited tables are refused.
//! - `ALTER TABLE t ADD [CONSTRAINT n] PRIMARY KEY (cols)` becomes
//!   `CREATE UNIQUE INDEX "n"` (default `t_pkey`) `ON t (cols)`: SQLite cannot add a primary key
//!   to a table. NOT NULL is not added (pgbench's key columns are declared NOT NULL). The
//!   catalog shows an index named `<table>_pkey` as the PRIMARY KEY. `ADD UNIQUE` likewise.
//! - `ALTER TABLE ... ADD [CONSTRAINT n] FOREIGN KEY ...` is accepted and ignored (the constraint
//!   is not enforced): SQLite cannot add a foreign key to a table (`pgbench -i -I f` sends it).
//! - `TRUNCATE a, b` becomes `DELETE FROM a; DELETE FROM b` (`RESTART IDENTITY` needs nothing:
//!   rowids restart from max+1).

use crate::command::Command;
use crate::cursor::Cursor;
use crate::error::CompatError;
use crate::lexer::{quote_ident, render_spaced, split_commas, Tok, Token};
use crate::types::{column_type, parse_type, ColumnType};

/// `CREATE ...` (significant tokens, `CREATE` first).
pub(crate) fn create(toks: &[Token]) -> Result<Command, CompatError> {
    let mut c = Cursor::new(toks);
    c.eat_kw("create");
    let or_replace = c.eat_kws(&["or", "replace"]);
    let _ = c.eat_one_of(&["global", "local"]);
    let temp = c.eat_one_of(&["temp", "temporary"]).is_some();
    let _ = c.eat_kw("unlogged");
    if c.is_kw("table") {
        return create_table(&mut c, temp);
    }
    if c.is_kw("unique") || c.is_kw("index") {
        return create_index(&mut c);
    }
    if c.is_kw("view") {
        return create_view(&mut c, temp, or_replace);
    }
    let what: Vec<String> = c
        .rest()
        .iter()
        .take(2)
        .map(|t| t.text.to_uppercase())
        .collect();
    for unsupported in [
        "SEQUENCE",
        "SCHEMA",
        "EXTENSION",
        "FUNCTION",
        "PROCEDURE",
        "TYPE",
        "DOMAIN",
        "DATABASE",
        "ROLE",
        "USER",
        "MATERIALIZED",
        "RULE",
        "POLICY",
        "PUBLICATION",
        "SUBSCRIPTION",
        "AGGREGATE",
        "OPERATOR",
        "TABLESPACE",
    ] {
        if what.first().is_some_and(|w| w == unsupported) {
            return Err(CompatError::unsupported(format!(
                "CREATE {}",
                what.join(" ")
            )));
        }
    }
    if c.is_kw("trigger")
        && toks
            .iter()
            .any(|t| t.is_kw("function") || t.is_kw("procedure"))
    {
        return Err(CompatError::unsupported(
            "PostgreSQL triggers (EXECUTE FUNCTION); use SQLite's CREATE TRIGGER ... BEGIN ... END",
        ));
    }
    let tag = format!("CREATE {}", what.first().map_or("", |s| s.as_str()));
    Ok(Command::ddl(render_spaced(toks), &tag))
}

/// One column of a `CREATE TABLE` while it is being translated.
struct Column {
    name: Token,
    declared: Option<String>,
    auto: bool,
    inline_pk: bool,
    rest: Vec<Token>,
}

fn create_table(c: &mut Cursor<'_>, temp: bool) -> Result<Command, CompatError> {
    c.eat_kw("table");
    let if_not_exists = c.eat_kws(&["if", "not", "exists"]);
    let name = c
        .name()
        .ok_or_else(|| CompatError::syntax("CREATE TABLE needs a table name"))?;
    let table = render_spaced(name);
    if c.is_kws(&["partition", "of"]) {
        return Err(CompatError::unsupported(
            "partitioned tables (PARTITION OF)",
        ));
    }
    let Some(body) = c.group() else {
        // CREATE TABLE t AS SELECT ...: SQLite has it.
        let mut out = head("TABLE", temp, if_not_exists, &table);
        out.push(' ');
        out.push_str(&render_spaced(c.rest()));
        return Ok(Command::ddl(out, "CREATE TABLE AS"));
    };
    let mut elements = Vec::new();
    let mut columns: Vec<Column> = Vec::new();
    let mut table_pk: Option<Vec<String>> = None;
    for el in split_commas(body) {
        if is_table_constraint(&el) {
            let mut ec = Cursor::new(&el);
            if ec.eat_kw("constraint") {
                ec.next();
            }
            if ec.is_kw("exclude") {
                return Err(CompatError::unsupported("exclusion constraints"));
            }
            if ec.is_kw("like") {
                return Err(CompatError::unsupported("CREATE TABLE (LIKE ...)"));
            }
            if ec.eat_kws(&["primary", "key"]) {
                let cols = ec.group().map(column_names).unwrap_or_default();
                table_pk = Some(cols);
            }
            elements.push(strip_index_options(&el));
            continue;
        }
        columns.push(parse_column(&el)?);
        elements.push(Vec::new()); // placeholder, filled below
    }
    let inline_pks = columns.iter().filter(|col| col.inline_pk).count();
    let mut pk_taken = table_pk.is_some() || inline_pks > 0;
    let mut col_iter = columns.into_iter();
    let mut rendered = Vec::new();
    for el in elements {
        if !el.is_empty() {
            rendered.push(render_spaced(&el));
            continue;
        }
        let Some(mut col) = col_iter.next() else {
            break;
        };
        let col_name = col.name.value();
        if col.auto {
            let pk_is_this = table_pk
                .as_ref()
                .is_some_and(|pk| pk.len() == 1 && pk[0] == col_name);
            if col.inline_pk || pk_is_this {
                // Already the primary key: INTEGER makes it the rowid alias.
            } else if !pk_taken {
                col.rest.insert(0, Token::word("PRIMARY"));
                col.rest.insert(1, Token::word("KEY"));
                pk_taken = true;
            } else {
                return Err(CompatError::unsupported(format!(
                    "serial or identity column \"{col_name}\" in table {table} unless it is the table's only primary key column (SQLite numbers rows only through an INTEGER PRIMARY KEY)"
                )));
            }
            col.declared = Some("INTEGER".into());
        }
        let mut s = col.name.text.clone();
        if let Some(d) = &col.declared {
            s.push(' ');
            s.push_str(d);
        }
        if !col.rest.is_empty() {
            s.push(' ');
            s.push_str(&render_spaced(&col.rest));
        }
        rendered.push(s);
    }
    // Table options after the column list.
    while !c.at_end() {
        if c.eat_kw("inherits") {
            return Err(CompatError::unsupported("table inheritance (INHERITS)"));
        } else if c.is_kws(&["partition", "by"]) {
            return Err(CompatError::unsupported(
                "partitioned tables (PARTITION BY)",
            ));
        } else if c.eat_kw("using") || c.eat_kw("tablespace") {
            c.next();
        } else if c.eat_kw("with") {
            if c.group().is_none() {
                c.next();
            }
        } else if c.eat_kws(&["without", "oids"]) {
        } else if c.eat_kws(&["on", "commit"]) {
            if !c.eat_kws(&["preserve", "rows"]) {
                return Err(CompatError::unsupported("ON COMMIT DELETE ROWS / DROP"));
            }
        } else {
            let rest = render_spaced(c.rest());
            return Err(CompatError::unsupported(format!("the table option {rest}")));
        }
    }
    let mut out = head("TABLE", temp, if_not_exists, &table);
    out.push_str(" (");
    out.push_str(&rendered.join(", "));
    out.push(')');
    Ok(Command::ddl(out, "CREATE TABLE"))
}

fn head(what: &str, temp: bool, if_not_exists: bool, name: &str) -> String {
    format!(
        "CREATE {}{what} {}{name}",
        if temp { "TEMP " } else { "" },
        if if_not_exists { "IF NOT EXISTS " } else { "" }
    )
}

fn is_table_constraint(el: &[Token]) -> bool {
    el.first().is_some_and(|t| {
        [
            "constraint",
            "primary",
            "unique",
            "check",
            "foreign",
            "exclude",
            "like",
        ]
        .iter()
        .any(|k| t.is_kw(k))
    })
}

/// The column names in a `(a, b DESC, c)` list.
fn column_names(inner: &[Token]) -> Vec<String> {
    split_commas(inner)
        .iter()
        .filter_map(|el| el.first().map(Token::value))
        .collect()
}

/// Drops `USING INDEX TABLESPACE x`, `WITH (..)`, `INCLUDE (..)` and deferrability from a
/// PRIMARY KEY / UNIQUE constraint (SQLite allows deferrability on foreign keys only).
fn strip_index_options(el: &[Token]) -> Vec<Token> {
    let is_fk = el.iter().any(|t| t.is_kw("references"));
    let mut out = Vec::new();
    let mut c = Cursor::new(el);
    while !c.at_end() {
        if c.eat_kws(&["using", "index", "tablespace"]) {
            c.next();
        } else if (c.is_kw("with") || c.is_kw("include"))
            && c.peek_at(1).is_some_and(|t| t.kind == Tok::Open)
        {
            c.next();
            c.group();
        } else if !is_fk && (c.eat_kws(&["not", "deferrable"]) || c.eat_kw("deferrable")) {
        } else if !is_fk && c.eat_kw("initially") {
            c.next();
        } else if let Some(t) = c.next() {
            out.push(t.clone());
        }
    }
    out
}

const COLUMN_CONSTRAINT_STARTS: &[&str] = &[
    "constraint",
    "not",
    "null",
    "primary",
    "unique",
    "check",
    "references",
    "collate",
    "generated",
    "deferrable",
    "initially",
    "default",
];

fn parse_column(el: &[Token]) -> Result<Column, CompatError> {
    let mut c = Cursor::new(el);
    let name = c
        .next()
        .filter(|t| matches!(t.kind, Tok::Word | Tok::QuotedIdent))
        .ok_or_else(|| CompatError::syntax("a column definition needs a name"))?
        .clone();
    let mut declared = None;
    let mut auto = false;
    let starts_constraint = |t: &Token| COLUMN_CONSTRAINT_STARTS.iter().any(|k| t.is_kw(k));
    if c.peek().is_some_and(|t| !starts_constraint(t)) {
        if let Some((ty, next)) = parse_type(el, c.i) {
            c.i = next;
            match column_type(&ty) {
                ColumnType::Serial => auto = true,
                ColumnType::Declared(d) => declared = Some(d),
            }
        }
    }
    let mut rest = Vec::new();
    let mut inline_pk = false;
    while !c.at_end() {
        if c.eat_kw("collate") {
            c.name();
        } else if c.is_kws(&["generated", "always", "as", "identity"])
            || c.is_kws(&["generated", "by", "default", "as", "identity"])
        {
            while !c.eat_kw("identity") {
                c.next();
            }
            c.group();
            auto = true;
        } else if c.eat_kw("default") {
            let start = c.i;
            // At least one token (DEFAULT NULL), then up to the next constraint keyword.
            if c.group().is_none() {
                c.next();
            }
            while c.peek().is_some_and(|t| !starts_constraint(t)) {
                if c.group().is_none() {
                    c.next();
                }
            }
            let expr = &el[start..c.i];
            rest.push(Token::word("DEFAULT"));
            let simple = expr.len() == 1
                || (expr.len() == 2
                    && (expr[0].is_char('-') || expr[0].is_char('+'))
                    && expr[1].kind == Tok::Number);
            let grouped = expr.first().is_some_and(|t| t.kind == Tok::Open)
                && crate::lexer::matching_close(expr, 0) == Some(expr.len() - 1);
            if simple || grouped {
                rest.extend(expr.iter().cloned());
            } else {
                rest.push(Token::new(Tok::Open, "("));
                rest.extend(expr.iter().cloned());
                rest.push(Token::new(Tok::Close, ")"));
            }
        } else if c.is_kws(&["primary", "key"]) {
            inline_pk = true;
            rest.extend(c.toks[c.i..c.i + 2].iter().cloned());
            c.i += 2;
        } else if let Some(t) = c.next() {
            rest.push(t.clone());
        }
    }
    Ok(Column {
        name,
        declared,
        auto,
        inline_pk,
        rest,
    })
}

fn create_index(c: &mut Cursor<'_>) -> Result<Command, CompatError> {
    let unique = c.eat_kw("unique");
    c.eat_kw("index");
    c.eat_kw("concurrently");
    let if_not_exists = c.eat_kws(&["if", "not", "exists"]);
    let name = if c.is_kw("on") {
        None
    } else {
        Some(render_spaced(c.name().ok_or_else(|| {
            CompatError::syntax("CREATE INDEX: expected a name")
        })?))
    };
    if !c.eat_kw("on") {
        return Err(CompatError::syntax("CREATE INDEX: expected ON"));
    }
    c.eat_kw("only");
    let table_toks = c
        .name()
        .ok_or_else(|| CompatError::syntax("CREATE INDEX: expected a table name"))?;
    let table = render_spaced(table_toks);
    if c.eat_kw("using") {
        let method = c.next().map(Token::value).unwrap_or_default();
        if method != "btree" && method != "hash" {
            return Err(CompatError::unsupported(format!(
                "{method} indexes (only btree)"
            )));
        }
    }
    let cols = c
        .group()
        .ok_or_else(|| CompatError::syntax("CREATE INDEX: expected a column list"))?;
    let mut col_sql = Vec::new();
    let mut col_names = Vec::new();
    for el in split_commas(cols) {
        // Drop operator classes (`text_pattern_ops`); SQLite has none.
        let kept: Vec<Token> = el
            .iter()
            .filter(|t| !(t.kind == Tok::Word && t.value().ends_with("_ops")))
            .cloned()
            .collect();
        if let Some(first) = kept.first() {
            col_names.push(first.value());
        }
        col_sql.push(render_spaced(&kept));
    }
    let mut where_clause = String::new();
    while !c.at_end() {
        if (c.is_kw("include") || c.is_kw("with"))
            && c.peek_at(1).is_some_and(|t| t.kind == Tok::Open)
        {
            c.next();
            c.group();
        } else if c.eat_kw("tablespace") {
            c.next();
        } else if c.eat_kws(&["nulls", "not", "distinct"]) || c.eat_kws(&["nulls", "distinct"]) {
        } else if c.is_kw("where") {
            where_clause = format!(" {}", render_spaced(c.rest()));
            break;
        } else {
            return Err(CompatError::unsupported(format!(
                "the index option {}",
                render_spaced(c.rest())
            )));
        }
    }
    let name = name.unwrap_or_else(|| {
        let base = table_toks.last().map(Token::value).unwrap_or_default();
        quote_ident(&format!("{base}_{}_idx", col_names.join("_")))
    });
    let sql = format!(
        "CREATE {}INDEX {}{name} ON {table} ({}){where_clause}",
        if unique { "UNIQUE " } else { "" },
        if if_not_exists { "IF NOT EXISTS " } else { "" },
        col_sql.join(", ")
    );
    Ok(Command::ddl(sql, "CREATE INDEX"))
}

fn create_view(c: &mut Cursor<'_>, temp: bool, or_replace: bool) -> Result<Command, CompatError> {
    c.eat_kw("view");
    let if_not_exists = c.eat_kws(&["if", "not", "exists"]);
    let name = render_spaced(
        c.name()
            .ok_or_else(|| CompatError::syntax("CREATE VIEW: expected a name"))?,
    );
    let rest = render_spaced(c.rest());
    let create = format!("{} {rest}", head("VIEW", temp, if_not_exists, &name));
    if or_replace {
        let drop = format!("DROP VIEW IF EXISTS {name}");
        return Ok(Command::Multi {
            sqls: vec![drop, create],
            tag: "CREATE VIEW".into(),
        });
    }
    Ok(Command::ddl(create, "CREATE VIEW"))
}

/// `DROP TABLE|INDEX|VIEW [CONCURRENTLY] [IF EXISTS] a, b [CASCADE|RESTRICT]`.
pub(crate) fn drop(toks: &[Token]) -> Result<Command, CompatError> {
    let mut c = Cursor::new(toks);
    c.eat_kw("drop");
    let Some(what) = c.eat_one_of(&["table", "index", "view", "trigger"]) else {
        let what: Vec<String> = c
            .rest()
            .iter()
            .take(2)
            .map(|t| t.text.to_uppercase())
            .collect();
        return Err(CompatError::unsupported(format!("DROP {}", what.join(" "))));
    };
    c.eat_kw("concurrently");
    let if_exists = c.eat_kws(&["if", "exists"]);
    let mut names = Vec::new();
    while let Some(n) = c.name() {
        names.push(render_spaced(n));
        if c.is(Tok::Comma) {
            c.next();
        } else {
            break;
        }
    }
    if what == "trigger" && c.eat_kw("on") {
        c.name();
    }
    let _ = c.eat_one_of(&["cascade", "restrict"]);
    if names.is_empty() || !c.at_end() {
        return Ok(Command::ddl(
            render_spaced(toks),
            &format!("DROP {}", what.to_uppercase()),
        ));
    }
    let upper = what.to_uppercase();
    let sqls = names
        .iter()
        .map(|n| {
            format!(
                "DROP {upper} {}{n}",
                if if_exists { "IF EXISTS " } else { "" }
            )
        })
        .collect();
    Ok(Command::ddl_many(sqls, &format!("DROP {upper}")))
}

/// `TRUNCATE [TABLE] [ONLY] a [*], b [RESTART IDENTITY|CONTINUE IDENTITY] [CASCADE|RESTRICT]`.
pub(crate) fn truncate(toks: &[Token]) -> Result<Command, CompatError> {
    let mut c = Cursor::new(toks);
    c.eat_kw("truncate");
    c.eat_kw("table");
    let mut sqls = Vec::new();
    loop {
        c.eat_kw("only");
        let Some(n) = c.name() else { break };
        sqls.push(format!("DELETE FROM {}", render_spaced(n)));
        if c.peek().is_some_and(|t| t.is_char('*')) {
            c.next();
        }
        if c.is(Tok::Comma) {
            c.next();
        } else {
            break;
        }
    }
    let _ = c.eat_kws(&["restart", "identity"]) || c.eat_kws(&["continue", "identity"]);
    let _ = c.eat_one_of(&["cascade", "restrict"]);
    if sqls.is_empty() || !c.at_end() {
        return Err(CompatError::syntax(format!(
            "TRUNCATE: cannot read {}",
            render_spaced(toks)
        )));
    }
    Ok(Command::Multi {
        sqls,
        tag: "TRUNCATE TABLE".into(),
    })
}

/// `ALTER TABLE [IF EXISTS] [ONLY] t action[, action ...]`.
pub(crate) fn alter(toks: &[Token]) -> Result<Command, CompatError> {
    let mut c = Cursor::new(toks);
    c.eat_kw("alter");
    if !c.eat_kw("table") {
        let what: Vec<String> = c
            .rest()
            .iter()
            .take(1)
            .map(|t| t.text.to_uppercase())
            .collect();
        return Err(CompatError::unsupported(format!(
            "ALTER {}",
            what.join(" ")
        )));
    }
    let _ = c.eat_kws(&["if", "exists"]);
    c.eat_kw("only");
    let name_toks = c
        .name()
        .ok_or_else(|| CompatError::syntax("ALTER TABLE: expected a table name"))?;
    if c.peek().is_some_and(|t| t.is_char('*')) {
        c.next();
    }
    let table = render_spaced(name_toks);
    let base = name_toks.last().map(Token::value).unwrap_or_default();
    let mut sqls = Vec::new();
    for action in split_commas(c.rest()) {
        if let Some(sql) = alter_action(&table, &base, &action)? {
            sqls.push(sql);
        }
    }
    if sqls.is_empty() {
        return Ok(Command::noop("ALTER TABLE"));
    }
    Ok(Command::ddl_many(sqls, "ALTER TABLE"))
}

/// One ALTER TABLE action; `None` when it is accepted and ignored.
fn alter_action(table: &str, base: &str, action: &[Token]) -> Result<Option<String>, CompatError> {
    let mut c = Cursor::new(action);
    if c.eat_kw("add") {
        let constraint = if c.eat_kw("constraint") {
            c.next().map(Token::value)
        } else {
            None
        };
        if c.eat_kws(&["primary", "key"]) || c.is_kw("unique") {
            let primary = !c.eat_kw("unique");
            let cols = c
                .group()
                .ok_or_else(|| CompatError::syntax("ADD PRIMARY KEY: expected a column list"))?;
            let names = column_names(cols);
            let index = constraint.unwrap_or_else(|| {
                if primary {
                    format!("{base}_pkey")
                } else {
                    format!("{base}_{}_key", names.join("_"))
                }
            });
            return Ok(Some(format!(
                "CREATE UNIQUE INDEX {} ON {table} ({})",
                quote_ident(&index),
                render_spaced(cols)
            )));
        }
        if c.is_kws(&["foreign", "key"]) {
            return Ok(None);
        }
        if c.is_kw("check") || c.is_kw("exclude") || constraint.is_some() {
            return Err(CompatError::unsupported(
                "adding CHECK or EXCLUDE constraints to an existing table",
            ));
        }
        c.eat_kw("column");
        let _ = c.eat_kws(&["if", "not", "exists"]);
        let col = parse_column(c.rest())?;
        if col.auto {
            return Err(CompatError::unsupported(
                "adding a serial or identity column to an existing table",
            ));
        }
        let mut s = format!("ALTER TABLE {table} ADD COLUMN {}", col.name.text);
        if let Some(d) = col.declared {
            s.push(' ');
            s.push_str(&d);
        }
        if !col.rest.is_empty() {
            s.push(' ');
            s.push_str(&render_spaced(&col.rest));
        }
        return Ok(Some(s));
    }
    if c.eat_kw("drop") {
        if c.is_kw("constraint") {
            return Err(CompatError::unsupported("ALTER TABLE ... DROP CONSTRAINT"));
        }
        c.eat_kw("column");
        let _ = c.eat_kws(&["if", "exists"]);
        let col = c.next().map(|t| t.text.clone()).unwrap_or_default();
        return Ok(Some(format!("ALTER TABLE {table} DROP COLUMN {col}")));
    }
    if c.is_kw("rename") {
        if c.is_kws(&["rename", "constraint"]) {
            return Err(CompatError::unsupported(
                "ALTER TABLE ... RENAME CONSTRAINT",
            ));
        }
        return Ok(Some(format!(
            "ALTER TABLE {table} {}",
            render_spaced(action)
        )));
    }
    if c.is_kws(&["set", "policy"]) {
        // A multi-master table's conflict policy: Scribe's own statement, passed on.
        return Ok(Some(format!(
            "ALTER TABLE {table} {}",
            render_spaced(action)
        )));
    }
    if c.is_kws(&["owner", "to"])
        || c.is_kw("set") && c.peek_at(1).is_some_and(|t| t.kind == Tok::Open)
        || c.is_kw("reset")
    {
        return Ok(None);
    }
    Err(CompatError::unsupported(format!(
        "ALTER TABLE ... {} (SQLite can add, drop and rename columns only)",
        render_spaced(action)
    )))
}

#[cfg(test)]
#[path = "ddl_tests.rs"]
mod tests;
