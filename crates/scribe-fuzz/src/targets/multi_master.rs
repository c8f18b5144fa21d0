//! `mm_schema`: what a multi-master cluster's users write about their schema — SQL run through
//! the schema-change rules ([`check_ddl`]) and conflict policies as written (`lww`, `versioned`,
//! `merge(col = rule, ...)`). Neither may panic; a policy that parses must print as text that
//! parses back to it, and a refusal must say why.

use std::str::FromStr;

use scribe_core::multi_master::{check_ddl, DdlVerdict, TablePolicy};

/// `mm_schema`: the input as SQL and as a policy.
pub fn schema(input: &[u8]) -> bool {
    let text = String::from_utf8_lossy(input);
    let mut accepted = false;
    match check_ddl(&text) {
        DdlVerdict::Refused(why) => assert!(!why.is_empty(), "a refusal without a reason"),
        DdlVerdict::Allowed => accepted = true,
        DdlVerdict::NotDdl => {}
    }
    if let Ok(p) = TablePolicy::from_str(&text) {
        let shown = p.to_string();
        match TablePolicy::from_str(&shown) {
            Ok(again) => assert_eq!(again, p, "policy {text:?} shows as {shown:?}"),
            Err(e) => panic!("policy {text:?} shows as {shown:?}, which does not parse: {e}"),
        }
        let _ = p.check_columns(["id", "views"]);
        accepted = true;
    }
    accepted
}

/// Seeds: the statements and policies the docs and tests use.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        "CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY, v INTEGER)",
        "create table if not exists \"T\" (a, b, PRIMARY KEY (a, b)) WITHOUT ROWID",
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)",
        "CREATE INDEX t_v ON t (v) WHERE v > 0",
        "CREATE UNIQUE INDEX u ON t (v)",
        "ALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE t RENAME COLUMN v TO w",
        "DROP TABLE IF EXISTS t",
        "SELECT 1; DROP TABLE t",
        "PRAGMA writable_schema = ON",
        "INSERT INTO t VALUES ('CREATE TABLE x', 1) -- comment /* x */",
        "lww",
        "versioned",
        "merge(views = sum, best = max, low = min, name = lww)",
        "MERGE ( a=SUM )",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// SQL and policy words.
pub const DICT: &[&[u8]] = &[
    b"CREATE ",
    b"TABLE ",
    b"INDEX ",
    b"UNIQUE ",
    b"PRIMARY KEY",
    b"INTEGER ",
    b"NOT NULL",
    b"DEFAULT ",
    b"ALTER ",
    b"ADD COLUMN ",
    b"RENAME ",
    b"DROP ",
    b"REFERENCES ",
    b"CHECK ",
    b"TRIGGER ",
    b"PRAGMA ",
    b"ATTACH ",
    b"WITHOUT ROWID",
    b"AS SELECT",
    b";",
    b"'",
    b"\"",
    b"`",
    b"[",
    b"]",
    b"--",
    b"/*",
    b"*/",
    b"merge(",
    b" = sum",
    b" = max",
    b",",
    b")",
];
