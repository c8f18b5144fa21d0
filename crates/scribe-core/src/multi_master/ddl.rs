//! Which schema changes a multi-master cluster takes ([`check_ddl`]). Every master applies DDL in
//! one order, but records written before a change keep arriving after it, from every node; a
//! change is safe when those records still apply the same way everywhere. Creating things and
//! adding a nullable column are; renaming, dropping a table or a column, or a constraint that
//! existing rows on some node may break are not, and are refused with the reason.

/// What a statement is, for multi-master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlVerdict {
    /// Not a schema change: it replicates as data.
    NotDdl,
    /// A safe schema change: run it, replicate it in the cluster's one order.
    Allowed,
    /// Refused: the reason, for the client.
    Refused(String),
}

/// Words and punctuation of `sql`, upper-cased, without comments and string literals (a literal
/// becomes `'`); a quoted identifier becomes `"` and its text, so it never reads as a keyword.
fn tokens(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && b.get(i + 1) == Some(&'-') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' {
            i += 1;
            while i < b.len() {
                if b[i] == '\'' && b.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else if b[i] == '\'' {
                    break;
                } else {
                    i += 1;
                }
            }
            i += 1;
            out.push("'".to_string());
        } else if c == '"' || c == '`' || c == '[' {
            let close = if c == '[' { ']' } else { c };
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i] != close {
                i += 1;
            }
            let text: String = b[start..i.min(b.len())].iter().collect();
            out.push(format!("\"{}", text.to_uppercase()));
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                i += 1;
            }
            out.push(b[start..i].iter().collect::<String>().to_uppercase());
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// The table `sql` creates (`CREATE TABLE [IF NOT EXISTS] [schema.]name ...`), upper-cased;
/// `None` for any other statement.
pub fn created_table(sql: &str) -> Option<String> {
    let t = tokens(sql);
    let w = |i: usize| t.get(i).map(String::as_str).unwrap_or("");
    if w(0) != "CREATE" || w(1) != "TABLE" {
        return None;
    }
    let mut i = 2;
    if w(i) == "IF" && w(i + 1) == "NOT" && w(i + 2) == "EXISTS" {
        i += 3;
    }
    if w(i + 1) == "." {
        i += 2;
    }
    let name = w(i);
    let name = name.strip_prefix('"').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_string())
}

fn has_seq(t: &[String], seq: &[&str]) -> bool {
    t.windows(seq.len())
        .any(|w| w.iter().zip(seq).all(|(a, b)| a == b))
}

fn refused(why: &str) -> DdlVerdict {
    DdlVerdict::Refused(format!("not allowed in multi-master mode: {why}"))
}

/// Whether `sql` — one statement or several separated by `;` — may run on a multi-master
/// cluster: refused if any of them is, a schema change if any of them is one.
pub fn check_ddl(sql: &str) -> DdlVerdict {
    let t = tokens(sql);
    let mut verdict = DdlVerdict::NotDdl;
    for statement in t.split(|x| x == ";") {
        match check_statement(statement) {
            DdlVerdict::Refused(why) => return DdlVerdict::Refused(why),
            DdlVerdict::Allowed => verdict = DdlVerdict::Allowed,
            DdlVerdict::NotDdl => {}
        }
    }
    verdict
}

/// Column constraints a multi-master table may not have yet: each node checks them against its
/// own rows only, so a remote change that breaks one would stop replication.
fn cross_node_constraint(t: &[String]) -> Option<&'static str> {
    if t.iter().any(|x| x == "UNIQUE") {
        Some("UNIQUE is checked by each node against its own rows: two nodes can each accept a value, and the change from the other node could then not apply; let the primary key carry what must be unique")
    } else if t.iter().any(|x| x == "REFERENCES") {
        Some("a foreign key may name a row another node deleted meanwhile, and the change could then not apply")
    } else if t.iter().any(|x| x == "CHECK") {
        Some("a CHECK constraint may be broken by a merged row (a counter's sum, columns from different writes)")
    } else {
        None
    }
}

fn check_statement(t: &[String]) -> DdlVerdict {
    let w = |i: usize| t.get(i).map(String::as_str).unwrap_or("");
    match w(0) {
        "PRAGMA" => {
            // Reading a pragma is a query; setting one changes this node only, or the schema.
            if t.iter().any(|x| x == "=") {
                refused("a PRAGMA that sets something changes one node only (or the schema behind the cluster's back)")
            } else {
                DdlVerdict::NotDdl
            }
        }
        "ATTACH" | "DETACH" => refused("an attached database is not replicated"),
        "VACUUM" if t.iter().any(|x| x == "INTO") => {
            refused("VACUUM INTO writes a copy outside the replicated database")
        }
        "CREATE" => {
            // CREATE [TEMP|TEMPORARY] [UNIQUE|VIRTUAL] <kind>
            let mut i = 1;
            if matches!(w(i), "TEMP" | "TEMPORARY") {
                // A temporary object lives in one connection: nothing to replicate.
                return DdlVerdict::NotDdl;
            }
            let modifier = w(i);
            if matches!(modifier, "UNIQUE" | "VIRTUAL") {
                i += 1;
            }
            match (modifier, w(i)) {
                ("UNIQUE", "INDEX") => refused(
                    "a UNIQUE index added later may be broken by rows already written on another node; declare UNIQUE when the table is created",
                ),
                ("VIRTUAL", _) => refused("virtual tables hold data outside the replicated tables"),
                (_, "TABLE") => {
                    if has_seq(t, &["AS", "SELECT"]) || has_seq(t, &["AS", "WITH"]) {
                        refused("CREATE TABLE ... AS SELECT copies this node's rows, which other nodes may not have yet; create the table, then INSERT ... SELECT")
                    } else if !has_seq(t, &["PRIMARY", "KEY"]) {
                        refused("a multi-master table needs a PRIMARY KEY chosen by the application (a UUID, or a key that includes the node): rowids handed out by each node would collide")
                    } else if t.iter().any(|x| x == "AUTOINCREMENT")
                        || has_seq(t, &["INTEGER", "PRIMARY", "KEY"])
                    {
                        refused("an INTEGER PRIMARY KEY is SQLite's rowid, which each node hands out on its own when an insert leaves it out, so two nodes would give two rows one key; use a TEXT key (a UUID) or a composite key that includes the node")
                    } else if let Some(why) = cross_node_constraint(t) {
                        refused(why)
                    } else {
                        DdlVerdict::Allowed
                    }
                }
                (_, "TRIGGER") => refused(
                    "a trigger would run again on every node for the changes it causes there, counting them once per node",
                ),
                (_, "INDEX" | "VIEW") => DdlVerdict::Allowed,
                _ => refused("an unknown kind of CREATE"),
            }
        }
        "DROP" => match w(1) {
            "INDEX" | "VIEW" | "TRIGGER" => DdlVerdict::Allowed,
            "TABLE" => refused(
                "other nodes may still be writing to the table, and their records could no longer apply; stop writing to it everywhere, or switch the cluster to primary/replica",
            ),
            _ => refused("an unknown kind of DROP"),
        },
        "ALTER" => {
            if w(1) != "TABLE" {
                return refused("an unknown kind of ALTER");
            }
            if t.iter().any(|x| x == "RENAME") {
                return refused("records written before the rename, still on their way from other nodes, name the old table or column");
            }
            if has_seq(t, &["DROP"]) {
                return refused("records written before the drop, still on their way from other nodes, carry the column");
            }
            if t.iter().any(|x| x == "ADD") {
                let not_null = has_seq(t, &["NOT", "NULL"]);
                let default = t.iter().any(|x| x == "DEFAULT");
                if not_null && !default {
                    return refused("a NOT NULL column needs a DEFAULT: records from nodes that do not have the column yet arrive without it");
                }
                if t.iter().any(|x| x == "PRIMARY") {
                    return refused("a PRIMARY KEY column cannot be added");
                }
                if let Some(why) = cross_node_constraint(t) {
                    return refused(why);
                }
                return DdlVerdict::Allowed;
            }
            refused("an unknown kind of ALTER TABLE")
        }
        _ => DdlVerdict::NotDdl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(sql: &str) -> String {
        match check_ddl(sql) {
            DdlVerdict::Refused(w) => w,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn the_table_a_statement_creates_is_named() {
        assert_eq!(
            created_table("create table if not exists main.\"Item\" (id TEXT PRIMARY KEY)"),
            Some("ITEM".into())
        );
        assert_eq!(created_table("CREATE TABLE t(x)"), Some("T".into()));
        assert_eq!(created_table("CREATE INDEX t ON u(x)"), None);
        assert_eq!(created_table("INSERT INTO t VALUES (1)"), None);
    }

    #[test]
    fn creating_things_and_adding_nullable_columns_is_allowed() {
        for sql in [
            "CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER)",
            "CREATE TABLE \"primary key\" (id TEXT NOT NULL PRIMARY KEY, primary_key INT)",
            "create table if not exists \"T\" (a, b, PRIMARY KEY (a, b)) WITHOUT ROWID",
            "CREATE INDEX t_v ON t (v)",
            "CREATE VIEW big AS SELECT * FROM t WHERE v > 10",
            "DROP INDEX t_v",
            "DROP TRIGGER old_one",
            "DROP VIEW big",
            "ALTER TABLE t ADD COLUMN note TEXT",
            "ALTER TABLE t ADD n INTEGER NOT NULL DEFAULT 0",
        ] {
            assert_eq!(check_ddl(sql), DdlVerdict::Allowed, "{sql}");
        }
    }

    #[test]
    fn data_and_temporary_objects_are_not_schema_changes() {
        for sql in [
            "INSERT INTO t VALUES ('CREATE TABLE x', 1)",
            "SELECT 'DROP TABLE t'",
            "CREATE TEMP TABLE scratch (a)",
            "UPDATE t SET v = 1 -- DROP TABLE t",
            "PRAGMA table_info(t)",
            "INSERT INTO t VALUES ('a', 1); UPDATE t SET v = 2",
        ] {
            assert_eq!(check_ddl(sql), DdlVerdict::NotDdl, "{sql}");
        }
    }

    #[test]
    fn unsafe_changes_are_refused_with_the_reason() {
        assert!(why("CREATE TABLE t (a INTEGER, b TEXT)").contains("PRIMARY KEY"));
        assert!(why("CREATE TABLE c AS SELECT * FROM t").contains("INSERT ... SELECT"));
        assert!(why("CREATE UNIQUE INDEX u ON t (v)").contains("UNIQUE"));
        assert!(why("CREATE TABLE t (id INTEGER PRIMARY KEY, v)").contains("rowid"));
        assert!(why("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)").contains("rowid"));
        assert!(why("CREATE TABLE t (id TEXT PRIMARY KEY, e TEXT UNIQUE)").contains("UNIQUE"));
        assert!(
            why("CREATE TABLE c (id TEXT PRIMARY KEY, p TEXT REFERENCES t)")
                .contains("foreign key")
        );
        assert!(why("CREATE TABLE c (id TEXT PRIMARY KEY, n INT CHECK (n > 0))").contains("CHECK"));
        assert!(why("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END").contains("trigger"));
        assert!(why("PRAGMA writable_schema = ON").contains("PRAGMA"));
        assert!(why("ATTACH 'x.db' AS x").contains("attached"));
        assert!(why("VACUUM INTO 'copy.db'").contains("VACUUM INTO"));
        // Every statement of a batch is checked.
        assert!(why("SELECT 1; DROP TABLE t").contains("still be writing"));
        // A quoted identifier is never a keyword.
        assert!(why("CREATE TABLE t (\"PRIMARY\" KEY, v)").contains("PRIMARY KEY chosen"));
        assert!(why("DROP TABLE t").contains("still be writing"));
        assert!(why("ALTER TABLE t RENAME TO u").contains("rename"));
        assert!(why("ALTER TABLE t RENAME COLUMN v TO w").contains("rename"));
        assert!(why("ALTER TABLE t DROP COLUMN v").contains("drop"));
        assert!(why("ALTER TABLE t ADD COLUMN n INTEGER NOT NULL").contains("DEFAULT"));
        assert!(why("ALTER TABLE t ADD COLUMN e TEXT UNIQUE").contains("UNIQUE"));
        assert!(why("ALTER TABLE t ADD COLUMN p TEXT REFERENCES u").contains("foreign key"));
        assert!(why("CREATE VIRTUAL TABLE f USING fts5(body)").contains("virtual"));
        // A comment or a literal that looks like a key does not count.
        assert!(
            why("CREATE TABLE t (a TEXT /* PRIMARY KEY */, b TEXT DEFAULT 'PRIMARY KEY')")
                .contains("PRIMARY KEY chosen")
        );
    }
}
