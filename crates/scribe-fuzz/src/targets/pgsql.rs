//! The PostgreSQL SQL translation (`scribe-pgsql`): statement splitting, the lexer and
//! [`translate`] / [`translate_for`] on any text a client sends (`pg_translate`), and COPY data
//! decoding (`pg_copy`), whole and in chunks: data split anywhere must decode to the same rows,
//! as a client's `CopyData` messages may split it anywhere.

use scribe_pgsql::{
    copy_insert_sql, param_count, parse_copy_rows, split, translate, translate_for, Command,
    CopyDecoder, SessionInfo,
};

/// `pg_translate`: the input is a simple-query string.
pub fn sql(input: &[u8]) -> bool {
    let text = String::from_utf8_lossy(input);
    let session = SessionInfo {
        database: "db".into(),
        user: "u\"ser'".into(),
        backend_pid: 7,
        multi_master: false,
    };
    let mut accepted = false;
    for stmt in split(&text) {
        let _ = param_count(&stmt);
        let a = translate(&stmt);
        let b = translate_for(&stmt, &session);
        assert_eq!(
            a.is_ok(),
            b.is_ok(),
            "translate and translate_for disagree on {stmt:?}"
        );
        if let Ok(cmd) = a {
            accepted = true;
            check(&cmd);
        }
    }
    // The whole string as one statement (the extended protocol's Parse sends one).
    if let Ok(cmd) = translate(&text) {
        check(&cmd);
        accepted = true;
    }
    accepted
}

fn check(cmd: &Command) {
    match cmd {
        Command::Sql { kind, .. } => {
            let _ = kind.command_tag(1);
        }
        Command::CopyIn(c) => {
            let cols = c.columns.clone().unwrap_or_default();
            let _ = copy_insert_sql(&c.table, &cols);
            let _ = parse_copy_rows(c, b"1\t2\n\\N\t\\x41\n\\.\n");
        }
        _ => {}
    }
}

/// `pg_copy`: the first line is a `COPY ... FROM STDIN` statement, the rest its data.
pub fn copy(input: &[u8]) -> bool {
    let (head, data) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let Ok(Command::CopyIn(c)) = translate(&String::from_utf8_lossy(head)) else {
        return false;
    };
    let whole = parse_copy_rows(&c, data);
    // The same data in three chunks, cut where the data's own bytes say.
    let h = crate::fuzzer::hash(data) as usize;
    let mut cuts = [h % (data.len() + 1), (h >> 20) % (data.len() + 1)];
    cuts.sort();
    let mut d = CopyDecoder::new(&c);
    let mut chunked = Vec::new();
    let mut failed = false;
    for piece in [&data[..cuts[0]], &data[cuts[0]..cuts[1]], &data[cuts[1]..]] {
        match d.feed(piece) {
            Ok(rows) => chunked.extend(rows),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if !failed {
        match d.finish() {
            Ok(rows) => chunked.extend(rows),
            Err(_) => failed = true,
        }
    }
    match &whole {
        Ok(rows) => {
            assert!(!failed, "COPY data decodes whole but not cut at {cuts:?}");
            assert_eq!(
                rows, &chunked,
                "COPY data cut at {cuts:?} decodes to other rows"
            );
        }
        Err(_) => assert!(failed, "COPY data decodes cut at {cuts:?} but not whole"),
    }
    whole.is_ok()
}

/// Seeds for `pg_translate` (more are in the corpus directory, taken from the crate's tests and
/// the psql, pgbench and psycopg fixtures).
pub fn sql_seeds() -> Vec<Vec<u8>> {
    [
        "SELECT 1",
        "CREATE TABLE t (id serial PRIMARY KEY, v text NOT NULL DEFAULT 'x', n numeric(10,2))",
        "INSERT INTO t (v) VALUES ($1), ($2) RETURNING id",
        "UPDATE t SET v = $1::text WHERE id = $2",
        "DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 3)",
        "BEGIN; SELECT now(); COMMIT",
        "SET statement_timeout = '5min'",
        "SHOW server_version",
        "SELECT $$dollar 'quoted'$$, E'esc\\n', U&'\\0041', 'it''s' -- comment",
        "/* block /* nested */ */ SELECT 1::int4, '{1,2}'::int[]",
        "COPY t (id, v) FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ';')",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c LIMIT 5",
        "SELECT current_setting('search_path'), current_database(), pg_backend_pid()",
        "DROP TABLE IF EXISTS a, b CASCADE",
        "TRUNCATE pgbench_accounts, pgbench_branches",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Seeds for `pg_copy`.
pub fn copy_seeds() -> Vec<Vec<u8>> {
    [
        "COPY t FROM STDIN\n1\tone\n2\t\\N\n3\tthree\\ttab\\n\n\\.\n",
        "COPY t (a, b) FROM STDIN\n\\x41\\101\tb\\\\c\r\n",
        "COPY public.t FROM stdin WITH (FORMAT csv)\n1,\"a,b\"\n2,\n3,\"\"\n4,\"multi\nline\"\n",
        "COPY t FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ';', QUOTE '''', ESCAPE '\\')\nid;v\n1;'x\\'y'\n",
        "COPY t FROM STDIN (FORMAT text, NULL 'nil', DELIMITER '|')\n1|nil\n2|x\n",
        "COPY pgbench_accounts FROM STDIN\n1\t1\t0\t\n2\t1\t0\t\n",
        "COPY t FROM STDIN CSV HEADER\nh\n\"\"\"\"\n",
        "COPY t (v) FROM STDIN WITH (FORMAT csv, FORCE_NULL (v))\n\"\"\n",
        "COPY t FROM STDIN WITH (FORMAT csv, NULL 'NULL', QUOTE '\"')\nNULL,\"NULL\"\n",
        "COPY t FROM STDIN\n\\.\nignored after the end\n",
        "COPY t FROM STDIN\nno newline at the end",
        "COPY t FROM STDIN WITH (FORMAT csv)\n\"unterminated\n",
        "COPY t FROM STDIN\n\\xff\\377 bytes that are not utf-8\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// SQL words and punctuation for both targets.
pub const DICT: &[&[u8]] = &[
    b"SELECT ",
    b"INSERT INTO ",
    b"UPDATE ",
    b"DELETE ",
    b"CREATE TABLE ",
    b"COPY ",
    b" FROM STDIN",
    b" WITH (FORMAT csv",
    b"HEADER",
    b"DELIMITER",
    b"QUOTE",
    b"ESCAPE",
    b"NULL",
    b"$1",
    b"$$",
    b"$tag$",
    b"::",
    b"::int[]",
    b"E'",
    b"U&'",
    b"/*",
    b"*/",
    b"--",
    b"\\N",
    b"\\.",
    b"\\x",
    b"\\0",
    b"''",
    b"\"\"",
    b";",
    b"(",
    b")",
    b"BEGIN",
    b"COMMIT",
    b"SET ",
    b"SHOW ",
    b"RETURNING",
    b"ON CONFLICT",
    b"serial",
    b"numeric(",
    b"::regclass",
    b"pg_catalog.",
];
