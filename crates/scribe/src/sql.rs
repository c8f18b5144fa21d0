//! `scribe sql`: an interactive SQL shell (history, multi-line statements, dot commands, aligned
//! tables) and a one-shot mode (`-c`, or a script on standard input) that stops at the first
//! error with exit code 1.
//!
//! SQL text is cut into statements by [`split`]; each statement is its own request. Reads (by
//! their first keyword) go to `/v1/query`, and are sent again to `/v1/execute` if the node says
//! they are not read-only; everything else goes to `/v1/execute`. The session keeps the position
//! token of its last write, to be handed back on reads for read-your-writes.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use scribe_core::Position;
use serde_json::{json, Value};

use crate::client::{Client, ClientError, ExecuteResponse, Statement};
use crate::table;

/// Flags of `scribe sql`.
#[derive(Args, Debug)]
pub struct SqlArgs {
    /// URL of the node's HTTP API: the primary or a replica (a replica forwards writes to the primary, and the shell's reads carry its own writes' position token, so it reads them back on the replica)
    #[arg(long, env = "SCRIBE_URL", default_value = "http://127.0.0.1:5480")]
    pub url: String,
    #[command(flatten)]
    pub access: crate::access::Access,
    /// Run this SQL (one or more statements separated by ';') and exit; exit code 1 on the first error
    #[arg(short = 'c', long = "command", env = "SCRIBE_SQL_COMMAND")]
    pub command: Option<String>,
    /// File keeping the interactive shell's history [default: $HOME/.scribe_history]
    #[arg(long, env = "SCRIBE_HISTORY")]
    pub history: Option<PathBuf>,
}

/// Splits SQL text into statements at top-level semicolons. A `;` inside a quoted string or
/// identifier (`'…'`, `"…"`, `` `…` ``, `[…]`), a comment (`--`, `/* */`) or the body of a
/// `CREATE TRIGGER … BEGIN … END` does not end a statement. Returns the complete statements,
/// trimmed and without their `;` (statements holding only comments are dropped), and the
/// unfinished remainder (empty when there is none).
pub fn split(sql: &str) -> (Vec<String>, String) {
    let b = sql.as_bytes();
    let mut done = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut kw = Keywords::default();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' {
            let w = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            kw.word(&sql[w..i]);
            continue;
        }
        match c {
            b'\'' | b'"' | b'`' => i = skip_quoted(b, i, c),
            b'[' => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b']')
                    .map_or(b.len(), |p| i + p + 1)
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
            }
            b';' if !kw.in_body() => {
                let stmt = sql[start..i].trim();
                if !is_blank(stmt) {
                    done.push(stmt.to_string());
                }
                kw = Keywords::default();
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    let rest = sql[start..].trim();
    (
        done,
        if is_blank(rest) {
            String::new()
        } else {
            rest.to_string()
        },
    )
}

/// Where a quoted run that opens at `open` ends (just past its closing quote, or the end of the
/// text). A doubled quote inside is an escaped quote.
fn skip_quoted(b: &[u8], open: usize, q: u8) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// The keywords of the statement being split that decide whether a `;` ends it: inside a
/// `CREATE [TEMP] TRIGGER`, `BEGIN` (and `CASE`) open a block that `END` closes.
#[derive(Default)]
struct Keywords {
    /// Words seen so far in the statement, counted up to 4.
    seen: usize,
    /// Whether the first word was CREATE.
    create: bool,
    /// Whether the statement is CREATE … TRIGGER.
    trigger: bool,
    /// Open BEGIN/CASE blocks inside the trigger.
    depth: u32,
}

impl Keywords {
    fn word(&mut self, w: &str) {
        if self.seen < 4 {
            self.seen += 1;
            if self.seen == 1 {
                self.create = w.eq_ignore_ascii_case("CREATE");
            } else if self.create && w.eq_ignore_ascii_case("TRIGGER") {
                self.trigger = true;
                return;
            }
        }
        if self.trigger {
            if w.eq_ignore_ascii_case("BEGIN") || w.eq_ignore_ascii_case("CASE") {
                self.depth += 1;
            } else if w.eq_ignore_ascii_case("END") {
                self.depth = self.depth.saturating_sub(1);
            }
        }
    }

    fn in_body(&self) -> bool {
        self.trigger && self.depth > 0
    }
}

/// The text after any leading white space and comments.
fn skip_comments(s: &str) -> &str {
    let mut s = s.trim_start();
    loop {
        if let Some(r) = s.strip_prefix("--") {
            s = r.split_once('\n').map_or("", |x| x.1).trim_start();
        } else if let Some(r) = s.strip_prefix("/*") {
            s = r.split_once("*/").map_or("", |x| x.1).trim_start();
        } else {
            return s;
        }
    }
}

/// Whether SQL text holds nothing but white space and comments.
fn is_blank(s: &str) -> bool {
    skip_comments(s).is_empty()
}

/// A statement's first keyword, upper-cased.
fn first_keyword(stmt: &str) -> String {
    skip_comments(stmt)
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Whether a statement is a read, by its first keyword: SELECT, VALUES, EXPLAIN, WITH, or a
/// PRAGMA that sets nothing. (A WITH that writes is caught by the node and sent again.)
fn is_read(stmt: &str) -> bool {
    match first_keyword(stmt).as_str() {
        "SELECT" | "VALUES" | "EXPLAIN" | "WITH" => true,
        "PRAGMA" => !stmt.contains('='),
        _ => false,
    }
}

/// The one-line summary of a write: rows affected and the position for DML, `OK` otherwise.
fn write_summary(stmt: &str, r: &ExecuteResponse) -> String {
    let Some(res) = r.results.first() else {
        return "OK".into();
    };
    let verb = first_keyword(stmt);
    let rows = format!(
        "{} row{} affected",
        res.rows_affected,
        if res.rows_affected == 1 { "" } else { "s" }
    );
    match verb.as_str() {
        "INSERT" | "REPLACE" if res.rows_affected > 0 => {
            format!(
                "{verb}: {rows} (last id {}) at position {}",
                res.last_insert_id, r.position
            )
        }
        "INSERT" | "REPLACE" | "UPDATE" | "DELETE" => {
            format!("{verb}: {rows} at position {}", r.position)
        }
        _ if res.rows_affected > 0 => format!("{rows} at position {}", r.position),
        _ => "OK".into(),
    }
}

/// One session against a node: its client, its settings and the positions it has seen.
pub struct Shell {
    client: Client,
    rt: tokio::runtime::Runtime,
    /// Position token of this session's last write, for read-your-writes.
    pub last_write: Option<Position>,
    /// The applied position this session's last read saw.
    pub last_read: Option<Position>,
    /// Whether to print each statement's elapsed time.
    pub timer: bool,
}

impl Shell {
    /// A session with the node at `url`, reached as `access` says.
    pub fn new(url: &str, access: &crate::access::Access) -> anyhow::Result<Shell> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?;
        Ok(Shell {
            client: access.client(url, 8)?,
            rt,
            last_write: None,
            last_read: None,
            timer: false,
        })
    }

    /// Runs one statement and prints its outcome.
    pub fn run_statement(&mut self, stmt: &str) -> Result<(), ClientError> {
        self.run_with_params(stmt, &Value::Null)
    }

    fn run_with_params(&mut self, stmt: &str, params: &Value) -> Result<(), ClientError> {
        let started = Instant::now();
        if is_read(stmt) {
            match self.rt.block_on(self.client.query(stmt, params)) {
                Ok(q) => {
                    self.last_read = Some(q.position);
                    print!("{}", table::render(&q.columns, &q.rows));
                    self.print_time(started);
                    return Ok(());
                }
                Err(e) if e.code() == Some("not_read_only") => {}
                Err(e) => return Err(e),
            }
        }
        let r = self.rt.block_on(
            self.client
                .execute(&[Statement::with_params(stmt, params.clone())]),
        )?;
        self.last_write = Some(r.position);
        if let Some(res) = r.results.first() {
            if let (Some(cols), Some(rows)) = (&res.columns, &res.rows) {
                print!("{}", table::render(cols, rows));
            }
        }
        println!("{}", write_summary(stmt, &r));
        self.print_time(started);
        Ok(())
    }

    fn print_time(&self, started: Instant) {
        if self.timer {
            println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1e3);
        }
    }

    /// Runs a dot command and prints its errors; returns false when the shell should exit.
    pub fn dot(&mut self, line: &str) -> bool {
        let mut parts = line.split_whitespace();
        let cmd = parts.next().unwrap_or("");
        let arg = parts.next();
        let result = match cmd {
            ".quit" | ".exit" => return false,
            ".help" => {
                println!("{HELP}");
                Ok(())
            }
            ".tables" => self.run_statement(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_scribe%' ESCAPE '\\' ORDER BY name",
            ),
            ".schema" => self.schema(arg),
            ".status" => self.status(),
            ".timer" => {
                match arg {
                    Some("on") => self.timer = true,
                    Some("off") => self.timer = false,
                    _ => eprintln!("usage: .timer on|off"),
                }
                Ok(())
            }
            other => {
                eprintln!("unknown command {other}; try .help");
                Ok(())
            }
        };
        if let Err(e) = result {
            eprintln!("error: {e}");
        }
        true
    }

    /// `.schema [TABLE]`: the CREATE statements, of one table (with its indexes and triggers)
    /// or of everything but internal tables.
    fn schema(&mut self, table: Option<&str>) -> Result<(), ClientError> {
        let mut sql = "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL \
                       AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_scribe%' ESCAPE '\\'"
            .to_string();
        let params = match table {
            Some(t) => {
                sql.push_str(" AND (name = ?1 OR tbl_name = ?1)");
                json!([t])
            }
            None => Value::Null,
        };
        sql.push_str(" ORDER BY rowid");
        let q = self.rt.block_on(self.client.query(&sql, &params))?;
        for row in &q.rows {
            if let Some(v) = row.first() {
                println!("{};", table::cell(v));
            }
        }
        Ok(())
    }

    /// `.status`: the node's status and this session's positions.
    fn status(&mut self) -> Result<(), ClientError> {
        self.rt
            .block_on(crate::status::fetch_and_print(&self.client))?;
        let show = |p: &Option<Position>| p.map_or_else(|| "none".to_string(), |p| p.to_string());
        println!("\nsession last write: {}", show(&self.last_write));
        println!("session last read:  {}", show(&self.last_read));
        Ok(())
    }
}

const HELP: &str = "\
Statements end with ';' and may span lines. Reads go to /v1/query, everything else to /v1/execute;
each statement is its own transaction.
.tables            list tables
.schema [TABLE]    show CREATE statements
.status            the node's status and this session's last positions
.timer on|off      show each statement's time
.quit, .exit       leave (or Ctrl-D); Ctrl-C clears the current statement";

/// Runs every statement of `sql` in order; at the first error prints it and returns exit code 1.
fn run_script(shell: &mut Shell, sql: &str) -> i32 {
    let (mut stmts, rest) = split(sql);
    if !rest.is_empty() {
        stmts.push(rest);
    }
    for stmt in stmts {
        if let Err(e) = shell.run_statement(&stmt) {
            eprintln!("error: {e}");
            return 1;
        }
    }
    0
}

fn interactive(shell: &mut Shell, history: PathBuf) -> anyhow::Result<i32> {
    use rustyline::error::ReadlineError;
    let config = rustyline::Config::builder()
        .auto_add_history(false)
        .max_history_size(10_000)?
        .build();
    let mut rl = rustyline::DefaultEditor::with_config(config).context("start the line editor")?;
    // A missing history file is the normal first run.
    let _ = rl.load_history(&history);
    println!(
        "scribe sql connected to {}; statements end with ';', .help for help",
        shell.client.url()
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "scribe> "
        } else {
            "   ...> "
        };
        match rl.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() && line.trim_start().starts_with('.') {
                    let _ = rl.add_history_entry(line.trim());
                    if !shell.dot(line.trim()) {
                        break;
                    }
                    continue;
                }
                if buffer.is_empty() && line.trim().is_empty() {
                    continue;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                let (stmts, rest) = split(&buffer);
                if stmts.is_empty() {
                    if rest.is_empty() {
                        buffer.clear(); // only comments or stray semicolons
                    }
                    continue;
                }
                let entered = buffer
                    .trim_end()
                    .strip_suffix(rest.as_str())
                    .unwrap_or(&buffer)
                    .trim_end()
                    .to_string();
                let _ = rl.add_history_entry(entered);
                for s in stmts {
                    if let Err(e) = shell.run_statement(&s) {
                        eprintln!("error: {e}");
                    }
                }
                buffer = if rest.is_empty() { rest } else { rest + "\n" };
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("read input"),
        }
    }
    if let Err(e) = rl.save_history(&history) {
        eprintln!(
            "warning: could not save history to {}: {e}",
            history.display()
        );
    }
    Ok(0)
}

/// Runs `scribe sql`.
pub fn run(args: SqlArgs) -> anyhow::Result<i32> {
    let mut shell = Shell::new(&args.url, &args.access)?;
    if let Some(sql) = args.command {
        return Ok(run_script(&mut shell, &sql));
    }
    if !std::io::stdin().is_terminal() {
        let mut sql = String::new();
        std::io::stdin()
            .read_to_string(&mut sql)
            .context("read SQL from standard input")?;
        return Ok(run_script(&mut shell, &sql));
    }
    let history = args.history.unwrap_or_else(|| {
        std::env::var_os("HOME").map_or_else(
            || PathBuf::from(".scribe_history"),
            |h| PathBuf::from(h).join(".scribe_history"),
        )
    });
    interactive(&mut shell, history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmts(sql: &str) -> Vec<String> {
        let (done, rest) = split(sql);
        assert_eq!(rest, "", "unexpected remainder of {sql:?}");
        done
    }

    #[test]
    fn splits_at_top_level_semicolons() {
        assert_eq!(stmts("SELECT 1; SELECT 2;"), vec!["SELECT 1", "SELECT 2"]);
        assert_eq!(
            split("SELECT 1; SELECT 2"),
            (vec!["SELECT 1".to_string()], "SELECT 2".to_string())
        );
        assert_eq!(stmts(" ; ;\n -- only a comment\n"), Vec::<String>::new());
    }

    #[test]
    fn semicolons_in_strings_identifiers_and_comments_do_not_split() {
        assert_eq!(
            stmts("INSERT INTO t VALUES ('a;b', \"c;d\", `e;f`, [g;h]);"),
            vec!["INSERT INTO t VALUES ('a;b', \"c;d\", `e;f`, [g;h])"]
        );
        assert_eq!(stmts("SELECT 'it''s; fine';"), vec!["SELECT 'it''s; fine'"]);
        assert_eq!(
            stmts("SELECT 'héllo; wörld' AS \"naïve;\";"),
            vec!["SELECT 'héllo; wörld' AS \"naïve;\""]
        );
        assert_eq!(
            stmts("SELECT 1 -- no; split\n; /* nor; here */ SELECT 2;"),
            vec!["SELECT 1 -- no; split", "/* nor; here */ SELECT 2"]
        );
    }

    #[test]
    fn unfinished_text_is_the_remainder() {
        assert_eq!(split("SELECT 'a;"), (vec![], "SELECT 'a;".to_string()));
        assert_eq!(
            split("SELECT 1 /* ; "),
            (vec![], "SELECT 1 /* ;".to_string())
        );
        assert_eq!(
            split("SELECT 1; SELECT 2 -- ;"),
            (vec!["SELECT 1".to_string()], "SELECT 2 -- ;".to_string())
        );
    }

    #[test]
    fn trigger_bodies_stay_whole() {
        let sql = "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO log VALUES (1); UPDATE c SET n = n + 1; END; SELECT 1;";
        assert_eq!(
            stmts(sql),
            vec!["CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO log VALUES (1); UPDATE c SET n = n + 1; END", "SELECT 1"]
        );
        let sql = "create temp trigger if not exists tr after update on t when new.x > 0 begin\n  \
                   select case when new.x > 9 then raise(abort, 'big; no') end;\n  delete from t where x = 0;\nend;";
        assert_eq!(stmts(sql), vec![sql.trim_end_matches(';')]);
        let (done, rest) =
            split("CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO log VALUES (1);");
        assert!(done.is_empty());
        assert!(rest.starts_with("CREATE TRIGGER"));
        // `begin`, `case` and `end` outside a trigger do not hold a statement open.
        assert_eq!(
            stmts("SELECT begin FROM t; BEGIN; SELECT CASE x WHEN 1 THEN 2 END FROM t; END;"),
            vec![
                "SELECT begin FROM t",
                "BEGIN",
                "SELECT CASE x WHEN 1 THEN 2 END FROM t",
                "END"
            ]
        );
        // A table named `trigger_log` is not a trigger.
        assert_eq!(
            stmts("CREATE TABLE trigger_log (begin_at); SELECT 1;"),
            vec!["CREATE TABLE trigger_log (begin_at)", "SELECT 1"]
        );
    }

    #[test]
    fn reads_are_told_by_their_first_keyword() {
        assert!(is_read("select * from t"));
        assert!(is_read(
            "  -- comment\n WITH x AS (SELECT 1) SELECT * FROM x"
        ));
        assert!(is_read("/* c */ VALUES (1)"));
        assert!(is_read("EXPLAIN QUERY PLAN SELECT 1"));
        assert!(is_read("PRAGMA table_info(t)"));
        assert!(!is_read("PRAGMA foreign_keys = ON"));
        assert!(!is_read("INSERT INTO t VALUES (1)"));
        assert!(!is_read("CREATE TABLE t (x)"));
        assert!(!is_read("SELECTED"));
    }

    #[test]
    fn writes_are_summed_up_in_one_line() {
        let answer = |rows_affected: u64, last_insert_id: i64| ExecuteResponse {
            results: vec![crate::client::StatementResult {
                rows_affected,
                last_insert_id,
                columns: None,
                rows: None,
            }],
            position: "1/3".parse().unwrap(),
        };
        assert_eq!(
            write_summary("insert into users (name) values ('Alice')", &answer(1, 1)),
            "INSERT: 1 row affected (last id 1) at position 1/3"
        );
        assert_eq!(
            write_summary("UPDATE t SET x = 1", &answer(2, 1)),
            "UPDATE: 2 rows affected at position 1/3"
        );
        assert_eq!(
            write_summary("DELETE FROM t", &answer(0, 0)),
            "DELETE: 0 rows affected at position 1/3"
        );
        assert_eq!(write_summary("CREATE TABLE t (x)", &answer(0, 0)), "OK");
        assert_eq!(
            write_summary(
                "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a",
                &answer(1, 4)
            ),
            "1 row affected at position 1/3"
        );
    }
}
