//! Every statement psql 15, pgbench 15 and psycopg 3 sent to a real PostgreSQL 15 (captured
//! with `log_statement=all`, kept in `tests/fixtures/*.sql`) is translated and run on SQLite;
//! catalog queries must answer with the column count PostgreSQL answered
//! (`tests/fixtures/*.expected`) and, where Scribe can know them, the same values.

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use scribe_pgsql::{
    copy_insert_sql, param_count, parse_copy_rows, split, translate, Command, Kind,
};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// PostgreSQL's answers: statement index → (column count, header + rows as `a|b|c` lines).
fn expected(name: &str) -> Vec<(usize, usize, Vec<String>)> {
    let mut out: Vec<(usize, usize, Vec<String>)> = Vec::new();
    for line in fixture(name).lines() {
        if let Some(rest) = line.strip_prefix("## ") {
            let (idx, cols) = rest.split_once(" columns=").expect("block header");
            out.push((idx.parse().unwrap(), cols.parse().unwrap(), Vec::new()));
        } else if !line.starts_with("-- ") {
            out.last_mut().expect("a block").2.push(line.to_string());
        }
    }
    out
}

/// A query's answer as psql shows it unaligned: header, then rows, fields joined by `|`.
struct Answer {
    columns: Vec<String>,
    rows: Vec<String>,
}

fn text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    }
}

fn query(db: &Connection, sql: &str, nparams: usize) -> Answer {
    let mut stmt = db
        .prepare(sql)
        .unwrap_or_else(|e| panic!("prepare {sql}: {e}"));
    let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let n = columns.len();
    let params: Vec<i64> = vec![1; nparams];
    let mut rows = Vec::new();
    let mut q = stmt
        .query(rusqlite::params_from_iter(params))
        .unwrap_or_else(|e| panic!("run {sql}: {e}"));
    while let Some(r) = q.next().unwrap_or_else(|e| panic!("step {sql}: {e}")) {
        let fields: Vec<String> = (0..n).map(|i| text(r.get_ref(i).unwrap())).collect();
        rows.push(fields.join("|"));
    }
    Answer { columns, rows }
}

/// What pgbench sends as COPY data for `pgbench_accounts` (`aid\tbid\tabalance\tfiller`).
fn pgbench_accounts_data(rows: u32) -> Vec<u8> {
    let mut data = String::new();
    for aid in 1..=rows {
        data.push_str(&format!("{aid}\t1\t0\t\n"));
    }
    data.push_str("\\.\n");
    data.into_bytes()
}

fn table_columns(db: &Connection, table: &str) -> Vec<String> {
    let mut stmt = db
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .unwrap();
    stmt.query_map([table], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Runs every statement of a fixture; returns each statement's answer (None if it had none).
fn run_fixture(
    db: &Connection,
    name: &str,
    copy_data: &dyn Fn(&str) -> Vec<u8>,
) -> Vec<Option<Answer>> {
    let mut answers = Vec::new();
    for stmt in split(&fixture(name)) {
        let cmd = translate(&stmt).unwrap_or_else(|e| panic!("{name}: translate {stmt}: {e}"));
        let answer = match cmd {
            Command::Sql { sql, kind } => {
                let a = query(db, &sql, param_count(&stmt));
                (kind == Kind::Read).then_some(a)
            }
            Command::Multi { sqls, .. } => {
                for sql in sqls {
                    db.execute_batch(&sql)
                        .unwrap_or_else(|e| panic!("{name}: run {sql}: {e}"));
                }
                None
            }
            Command::Begin => {
                db.execute_batch("BEGIN").unwrap();
                None
            }
            Command::Commit => {
                db.execute_batch("COMMIT").unwrap();
                None
            }
            Command::Rollback => {
                db.execute_batch("ROLLBACK").unwrap();
                None
            }
            Command::CopyIn(copy) => {
                let cols = copy
                    .columns
                    .clone()
                    .unwrap_or_else(|| table_columns(db, &copy.table));
                let sql = copy_insert_sql(&copy.table, &cols);
                for row in parse_copy_rows(&copy, &copy_data(&copy.table)).unwrap() {
                    db.execute(&sql, rusqlite::params_from_iter(row))
                        .unwrap_or_else(|e| panic!("{name}: {sql}: {e}"));
                }
                None
            }
            Command::Set { .. }
            | Command::Reset { .. }
            | Command::Show { .. }
            | Command::Noop { .. }
            | Command::Empty => None,
        };
        answers.push(answer);
    }
    answers
}

fn no_copy(table: &str) -> Vec<u8> {
    panic!("unexpected COPY into {table}")
}

/// pgbench -i, then the walkthrough's users table: the database the catalog tests describe.
fn pgbench_database() -> Connection {
    let db = Connection::open_in_memory().unwrap();
    run_fixture(&db, "pgbench_init.sql", &|_| pgbench_accounts_data(1000));
    run_fixture(&db, "psql_walkthrough.sql", &no_copy);
    db
}

#[test]
fn pgbench_init_builds_the_pgbench_tables() {
    let db = pgbench_database();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM pgbench_accounts"), 1000);
    assert_eq!(count("SELECT count(*) FROM pgbench_tellers"), 10);
    assert_eq!(count("SELECT count(*) FROM pgbench_branches"), 1);
    assert_eq!(
        count("SELECT count(*) FROM pgbench_accounts WHERE filler = ''"),
        1000
    );
    // The primary keys pgbench adds with ALTER TABLE are unique indexes named <table>_pkey.
    assert_eq!(
        count(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name LIKE 'pgbench%pkey'"
        ),
        3
    );
    let dup = db.execute(
        "INSERT INTO pgbench_branches (bid, bbalance) VALUES (1, 0)",
        [],
    );
    assert!(
        dup.is_err(),
        "pgbench_branches_pkey must reject a second bid 1"
    );
    // The walkthrough: SERIAL PRIMARY KEY numbers rows.
    assert_eq!(count("SELECT id FROM users WHERE name = 'Alice'"), 1);
}

#[test]
fn pgbench_runs_its_scripts_in_every_protocol_mode() {
    let db = pgbench_database();
    for name in [
        "pgbench_tpcb.sql",
        "pgbench_select_only.sql",
        "pgbench_extended.sql",
        "pgbench_prepared.sql",
    ] {
        let answers = run_fixture(&db, name, &no_copy);
        let expected = expected("pgbench_tpcb.expected");
        // select count(*) from pgbench_branches
        assert_eq!(answers[0].as_ref().unwrap().rows, vec!["1"], "{name}");
        // the partition check: one row, no partitioning method, no partitions
        let parts = answers[1].as_ref().unwrap();
        assert_eq!(parts.columns.len(), expected[1].1, "{name}");
        assert_eq!(parts.rows, vec!["1||0"], "{name}");
    }
    let history: i64 = db
        .query_row("SELECT count(*) FROM pgbench_history", [], |r| r.get(0))
        .unwrap();
    assert!(history > 0, "the TPC-B script inserts history rows");
}

#[test]
fn psycopg_session_runs() {
    let db = Connection::open_in_memory().unwrap();
    let answers = run_fixture(&db, "psycopg3_session.sql", &|table| {
        assert_eq!(table, "items");
        b"kiwi\t4\nlime\\ttab\t\\N\n".to_vec()
    });
    // INSERT ... RETURNING id gave the new id (the statement is a write; run it again here).
    assert!(answers
        .iter()
        .flatten()
        .any(|a| a.columns == ["version"] && a.rows[0].starts_with("PostgreSQL 15.0 (Scribe ")));
    assert!(answers.iter().flatten().any(|a| a.columns
        == [
            "current_database",
            "current_schema",
            "current_user",
            "pg_backend_pid"
        ]));
}

/// Runs a psql meta-command's queries against the pgbench database, replacing PostgreSQL's
/// oid (16411) by the one our oid lookup returned, and checks each answer's column count.
fn describe(name: &str) -> Vec<Answer> {
    let db = pgbench_database();
    let expected = expected(&name.replace(".sql", ".expected"));
    let mut our_oid = None;
    let mut answers = Vec::new();
    for (i, stmt) in split(&fixture(name)).iter().enumerate() {
        let stmt = match &our_oid {
            Some(oid) => stmt.replace("'16411'", &format!("'{oid}'")),
            None => stmt.clone(),
        };
        let Command::Sql { sql, kind } = translate(&stmt).unwrap() else {
            panic!("{name} #{i}: not SQL");
        };
        assert_eq!(kind, Kind::Read, "{name} #{i}");
        let answer = query(&db, &sql, 0);
        let (_, cols, pg) = expected
            .iter()
            .find(|(k, _, _)| *k == i)
            .expect("an expected answer");
        assert_eq!(
            answer.columns.len(),
            *cols,
            "{name} #{i}: {sql}\nPostgreSQL answered:\n{}",
            pg.join("\n")
        );
        if i == 0 && answer.columns == ["oid", "nspname", "relname"] {
            our_oid = answer
                .rows
                .first()
                .and_then(|r| r.split('|').next())
                .map(str::to_string);
        }
        answers.push(answer);
    }
    answers
}

#[test]
fn psql_dt_lists_tables_like_postgresql() {
    let a = describe("psql_dt.sql");
    let pg = &expected("psql_dt.expected")[0].2;
    assert_eq!(a[0].columns.join("|"), pg[0]);
    let ours: Vec<String> = a[0]
        .rows
        .iter()
        .map(|r| r.replace("|scribe", "|postgres"))
        .collect();
    assert_eq!(ours, pg[1..].to_vec());
}

#[test]
fn psql_d_lists_relations() {
    let a = describe("psql_d.sql");
    let pg = &expected("psql_d.expected")[0].2;
    assert_eq!(a[0].columns.join("|"), pg[0]);
    // PostgreSQL also lists users_id_seq; Scribe has no sequences.
    let pg_tables: Vec<String> = pg[1..]
        .iter()
        .filter(|r| !r.contains("sequence"))
        .cloned()
        .collect();
    let ours: Vec<String> = a[0]
        .rows
        .iter()
        .map(|r| r.replace("|scribe", "|postgres"))
        .collect();
    assert_eq!(ours, pg_tables);
}

#[test]
fn psql_d_users_describes_columns_and_primary_key() {
    for name in ["psql_d_users.sql", "psql_dplus_users.sql"] {
        let a = describe(name);
        let pg = expected(&name.replace(".sql", ".expected"));
        assert_eq!(a[0].rows.len(), 1, "{name}: one table named users");
        assert!(a[0].rows[0].ends_with("|public|users"));
        // table info: identical to PostgreSQL's answer
        assert_eq!(a[1].rows, pg[1].2[1..].to_vec(), "{name}");
        // columns: name, type, (default), not null — PostgreSQL's default is nextval(...)
        let cols: Vec<Vec<String>> = a[2]
            .rows
            .iter()
            .map(|r| r.split('|').map(str::to_string).collect())
            .collect();
        assert_eq!(
            (
                cols[0][0].as_str(),
                cols[0][1].as_str(),
                cols[0][3].as_str()
            ),
            ("id", "integer", "t")
        );
        assert_eq!(
            (
                cols[1][0].as_str(),
                cols[1][1].as_str(),
                cols[1][3].as_str()
            ),
            ("name", "text", "f")
        );
        // indexes: identical, so psql prints "users_pkey" PRIMARY KEY, btree (id)
        assert_eq!(a[3].rows, pg[3].2[1..].to_vec(), "{name}");
        // policies, statistics, publications, inheritance, partitions: none
        for (i, answer) in a.iter().enumerate().skip(4) {
            assert!(answer.rows.is_empty(), "{name} #{i}");
        }
    }
}

#[test]
fn psql_d_on_a_pgbench_table_shows_the_added_primary_key() {
    let db = pgbench_database();
    let oid: i64 = db
        .query_row(
            "SELECT 16384 + rowid FROM sqlite_schema WHERE name = 'pgbench_accounts'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let stmts = split(&fixture("psql_d_users.sql"));
    let Command::Sql { sql, .. } =
        translate(&stmts[3].replace("'16411'", &format!("'{oid}'"))).unwrap()
    else {
        panic!("index query is SQL");
    };
    let a = query(&db, &sql, 0);
    assert_eq!(
        a.rows,
        vec!["pgbench_accounts_pkey|t|t|f|t|CREATE UNIQUE INDEX pgbench_accounts_pkey ON pgbench_accounts USING btree (aid)|PRIMARY KEY (aid)|p|f|f|f|0"]
    );
    let Command::Sql { sql, .. } =
        translate(&stmts[2].replace("'16411'", &format!("'{oid}'"))).unwrap()
    else {
        panic!("column query is SQL");
    };
    let a = query(&db, &sql, 0);
    assert_eq!(
        a.rows,
        vec![
            "aid|integer||t|||",
            "bid|integer||f|||",
            "abalance|integer||f|||",
            "filler|character(84)||f|||"
        ]
    );
}

#[test]
fn psql_l_lists_the_database() {
    let a = describe("psql_l.sql");
    let pg = &expected("psql_l.expected")[0].2;
    assert_eq!(a[0].columns.join("|"), pg[0]);
    assert_eq!(a[0].rows, vec!["scribe|scribe|UTF8|C|C||libc|"]);
}

#[test]
fn psql_d_shows_unique_and_plain_indexes() {
    let db = Connection::open_in_memory().unwrap();
    for stmt in [
        "CREATE TABLE accounts (id bigserial PRIMARY KEY, email varchar(200) UNIQUE NOT NULL, name text, created timestamptz DEFAULT now())",
        "CREATE INDEX accounts_name_idx ON accounts USING btree (name)",
    ] {
        let Command::Sql { sql, .. } = translate(stmt).unwrap() else {
            panic!("{stmt}")
        };
        db.execute_batch(&sql).unwrap();
    }
    let stmts = split(&fixture("psql_d_users.sql"));
    let run = |i: usize, oid: &str| {
        let stmt = stmts[i]
            .replace("users", "accounts")
            .replace("'16411'", &format!("'{oid}'"));
        let Command::Sql { sql, .. } = translate(&stmt).unwrap() else {
            panic!("#{i}")
        };
        query(&db, &sql, 0)
    };
    let lookup = run(0, "");
    assert_eq!(lookup.rows.len(), 1);
    let oid = lookup.rows[0].split('|').next().unwrap().to_string();
    assert_eq!(
        run(2, &oid).rows,
        vec![
            "id|integer||t|||",
            "email|character varying(200)||t|||",
            "name|text||f|||",
            "created|timestamp with time zone|CURRENT_TIMESTAMP|f|||",
        ]
    );
    assert_eq!(
        run(3, &oid).rows,
        vec![
            "accounts_pkey|t|t|f|t|CREATE UNIQUE INDEX accounts_pkey ON accounts USING btree (id)|PRIMARY KEY (id)|p|f|f|f|0",
            "accounts_email_key|f|t|f|t|CREATE UNIQUE INDEX accounts_email_key ON accounts USING btree (email)|UNIQUE (email)|u|f|f|f|0",
            "accounts_name_idx|f|f|f|t|CREATE INDEX accounts_name_idx ON accounts USING btree (name)|||f|f|f|0",
        ]
    );
    // \dt with a pattern
    let dt = fixture("psql_dt.sql").replace(
        "AND pg_catalog.pg_table_is_visible(c.oid)",
        "AND c.relname OPERATOR(pg_catalog.~) '^(acc.*)$' COLLATE pg_catalog.default\n  AND pg_catalog.pg_table_is_visible(c.oid)",
    );
    let Command::Sql { sql, .. } = translate(&split(&dt)[0]).unwrap() else {
        panic!("dt")
    };
    assert_eq!(
        query(&db, &sql, 0).rows,
        vec!["public|accounts|table|scribe"]
    );
}
