//! Statements the session layer answers itself: transaction control (`BEGIN`, `COMMIT`,
//! `ROLLBACK` and their spellings), run-time parameters (`SET`, `RESET`, `SHOW`) and the
//! statements PostgreSQL tools send that mean nothing to SQLite (`VACUUM`, `DISCARD ALL`, ...).

use crate::command::{Command, Kind};
use crate::cursor::Cursor;
use crate::error::CompatError;
use crate::lexer::{render_spaced, Tok, Token};

/// Translates a session statement, or returns `None` when `toks` is not one.
pub(crate) fn translate(toks: &[Token]) -> Option<Result<Command, CompatError>> {
    let first = toks.first()?.value();
    let mut c = Cursor::new(toks);
    c.next();
    let cmd = match first.as_str() {
        "begin" => Ok(Command::Begin),
        "start" if c.is_kw("transaction") => Ok(Command::Begin),
        "commit" | "end" => {
            if c.is_kw("prepared") {
                Err(CompatError::unsupported(
                    "two-phase commit (COMMIT PREPARED)",
                ))
            } else {
                Ok(Command::Commit)
            }
        }
        "rollback" | "abort" => rollback(&mut c, toks),
        "savepoint" => Ok(sql_other(toks, "SAVEPOINT")),
        "release" => Ok(sql_other(toks, "RELEASE")),
        "set" => set(&mut c),
        "reset" => Ok(Command::Reset {
            name: if c.is_kw("all") {
                None
            } else {
                Some(setting_name(&mut c))
            },
        }),
        "show" => Ok(Command::Show {
            name: show_name(&mut c),
        }),
        "vacuum" => Ok(Command::noop("VACUUM")),
        "analyze" | "analyse" => Ok(Command::noop("ANALYZE")),
        "checkpoint" => Ok(Command::noop("CHECKPOINT")),
        "discard" => Ok(Command::Noop {
            tag: format!(
                "DISCARD {}",
                c.next()
                    .map_or("ALL".to_string(), |t| t.text.to_uppercase())
            ),
        }),
        "deallocate" => {
            c.eat_kw("prepare");
            Ok(Command::noop(if c.is_kw("all") {
                "DEALLOCATE ALL"
            } else {
                "DEALLOCATE"
            }))
        }
        "listen" => Ok(Command::noop("LISTEN")),
        "unlisten" => Ok(Command::noop("UNLISTEN")),
        "lock" => Ok(Command::noop("LOCK TABLE")),
        "comment" => Ok(Command::noop("COMMENT")),
        "grant" => Ok(Command::noop("GRANT")),
        "revoke" => Ok(Command::noop("REVOKE")),
        "notify" => Err(CompatError::unsupported("NOTIFY")),
        "prepare" => {
            if c.is_kw("transaction") {
                Err(CompatError::unsupported(
                    "two-phase commit (PREPARE TRANSACTION)",
                ))
            } else {
                Err(CompatError::unsupported(
                    "SQL-level PREPARE; use the extended query protocol",
                ))
            }
        }
        "execute" => Err(CompatError::unsupported(
            "SQL-level EXECUTE; use the extended query protocol",
        )),
        "do" | "call" => Err(CompatError::unsupported(format!(
            "{} (server-side procedural code)",
            first.to_uppercase()
        ))),
        "cluster" | "refresh" | "security" | "import" | "reassign" | "load" => {
            Err(CompatError::unsupported(first.to_uppercase()))
        }
        _ => return None,
    };
    Some(cmd)
}

fn sql_other(toks: &[Token], tag: &str) -> Command {
    Command::Sql {
        sql: render_spaced(toks),
        kind: Kind::Other { tag: tag.into() },
    }
}

fn rollback(c: &mut Cursor<'_>, toks: &[Token]) -> Result<Command, CompatError> {
    if c.is_kw("prepared") {
        return Err(CompatError::unsupported(
            "two-phase commit (ROLLBACK PREPARED)",
        ));
    }
    let _ = c.eat_one_of(&["work", "transaction"]);
    if c.is_kw("to") {
        // ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] x: SQLite spells it the same.
        let rest = render_spaced(c.rest());
        return Ok(Command::Sql {
            sql: format!("ROLLBACK {rest}"),
            kind: Kind::Other {
                tag: "ROLLBACK".into(),
            },
        });
    }
    let _ = toks;
    Ok(Command::Rollback)
}

/// A parameter name: a word or quoted identifier, possibly dotted (`myapp.setting`).
fn setting_name(c: &mut Cursor<'_>) -> String {
    match c.name() {
        Some(n) => n
            .iter()
            .map(|t| {
                if t.kind == Tok::Dot {
                    ".".into()
                } else {
                    t.value()
                }
            })
            .collect(),
        None => String::new(),
    }
}

fn show_name(c: &mut Cursor<'_>) -> String {
    if c.is_kws(&["time", "zone"]) {
        return "timezone".into();
    }
    if c.is_kws(&["transaction", "isolation", "level"]) {
        return "transaction_isolation".into();
    }
    if c.is_kws(&["session", "authorization"]) {
        return "session_authorization".into();
    }
    setting_name(c)
}

fn set(c: &mut Cursor<'_>) -> Result<Command, CompatError> {
    let local = match c.eat_one_of(&["session", "local"]) {
        Some(s) => s == "local",
        None => false,
    };
    if c.is_kw("transaction") || c.is_kws(&["characteristics", "as", "transaction"]) {
        return Ok(Command::noop("SET"));
    }
    if c.is_kw("constraints") {
        return Ok(Command::noop("SET CONSTRAINTS"));
    }
    if c.is_kws(&["session", "authorization"]) || c.is_kw("role") {
        return Ok(Command::noop("SET"));
    }
    let name = if c.eat_kws(&["time", "zone"]) {
        "timezone".to_string()
    } else if c.eat_kw("names") {
        "client_encoding".to_string()
    } else if c.eat_kw("schema") {
        "search_path".to_string()
    } else {
        let n = setting_name(c);
        if !(c.eat_kw("to") || c.peek().is_some_and(|t| t.is_char('=')) && c.next().is_some()) {
            return Err(CompatError::syntax(format!(
                "SET {n}: expected TO or = and a value"
            )));
        }
        n
    };
    if name.is_empty() {
        return Err(CompatError::syntax("SET: expected a parameter name"));
    }
    if c.is_kw("default") || (name == "timezone" && c.is_kw("local")) {
        return Ok(Command::Set {
            name,
            value: None,
            local,
        });
    }
    let mut values = Vec::new();
    let mut current = String::new();
    while let Some(t) = c.next() {
        if t.kind == Tok::Comma {
            values.push(std::mem::take(&mut current));
            continue;
        }
        // `INTERVAL '+02:00' HOUR TO MINUTE` and similar: keep the literal only.
        if t.is_kw("interval") {
            continue;
        }
        match t.kind {
            Tok::Str | Tok::EStr | Tok::DollarStr | Tok::QuotedIdent => {
                current.push_str(&t.value())
            }
            Tok::Word => current.push_str(&t.text),
            _ => current.push_str(&t.text),
        }
    }
    values.push(current);
    if values.iter().all(String::is_empty) {
        return Err(CompatError::syntax(format!("SET {name}: expected a value")));
    }
    Ok(Command::Set {
        name,
        value: Some(values.join(", ")),
        local,
    })
}

#[cfg(test)]
mod tests {
    use crate::{translate, Command};

    fn set(name: &str, value: Option<&str>, local: bool) -> Command {
        Command::Set {
            name: name.into(),
            value: value.map(str::to_string),
            local,
        }
    }

    #[test]
    fn transaction_control_in_all_its_spellings() {
        for s in [
            "BEGIN",
            "begin transaction",
            "BEGIN WORK",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
            "begin read only",
        ] {
            assert_eq!(translate(s).unwrap(), Command::Begin, "{s}");
        }
        for s in ["COMMIT", "END", "commit work", "END TRANSACTION"] {
            assert_eq!(translate(s).unwrap(), Command::Commit, "{s}");
        }
        for s in ["ROLLBACK", "ABORT", "rollback transaction"] {
            assert_eq!(translate(s).unwrap(), Command::Rollback, "{s}");
        }
        match translate("ROLLBACK TO SAVEPOINT a").unwrap() {
            Command::Sql { sql, .. } => assert_eq!(sql, "ROLLBACK TO SAVEPOINT a"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_reset_show() {
        assert_eq!(
            translate("SET search_path TO public").unwrap(),
            set("search_path", Some("public"), false)
        );
        assert_eq!(
            translate("SET LOCAL synchronous_commit = 'sync'").unwrap(),
            set("synchronous_commit", Some("sync"), true)
        );
        assert_eq!(
            translate("SET TIME ZONE 'UTC'").unwrap(),
            set("timezone", Some("UTC"), false)
        );
        assert_eq!(
            translate("set session statement_timeout = 5000").unwrap(),
            set("statement_timeout", Some("5000"), false)
        );
        assert_eq!(
            translate("SET search_path = a, \"B\", public").unwrap(),
            set("search_path", Some("a, B, public"), false)
        );
        assert_eq!(
            translate("SET datestyle TO DEFAULT").unwrap(),
            set("datestyle", None, false)
        );
        assert_eq!(
            translate("SET myapp.user_id = '7'").unwrap(),
            set("myapp.user_id", Some("7"), false)
        );
        assert_eq!(
            translate("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").unwrap(),
            Command::noop("SET")
        );
        assert_eq!(
            translate("SET CONSTRAINTS ALL DEFERRED").unwrap(),
            Command::noop("SET CONSTRAINTS")
        );
        assert_eq!(translate("SET search_path").unwrap_err().sqlstate, "42601");
        assert_eq!(
            translate("RESET ALL").unwrap(),
            Command::Reset { name: None }
        );
        assert_eq!(
            translate("RESET TimeZone").unwrap(),
            Command::Reset {
                name: Some("timezone".into())
            }
        );
        assert_eq!(
            translate("SHOW server_version").unwrap(),
            Command::Show {
                name: "server_version".into()
            }
        );
        assert_eq!(
            translate("SHOW ALL").unwrap(),
            Command::Show { name: "all".into() }
        );
        assert_eq!(
            translate("show time zone").unwrap(),
            Command::Show {
                name: "timezone".into()
            }
        );
        assert_eq!(
            translate("SELECT current_setting('work_mem')").unwrap(),
            Command::Show {
                name: "work_mem".into()
            }
        );
    }

    #[test]
    fn maintenance_statements_are_noops_with_postgresql_tags() {
        for (s, tag) in [
            ("vacuum analyze pgbench_branches", "VACUUM"),
            ("VACUUM", "VACUUM"),
            ("ANALYZE t", "ANALYZE"),
            ("CHECKPOINT", "CHECKPOINT"),
            ("DISCARD ALL", "DISCARD ALL"),
            ("DEALLOCATE ALL", "DEALLOCATE ALL"),
            ("DEALLOCATE PREPARE s1", "DEALLOCATE"),
            ("LISTEN chan", "LISTEN"),
            ("UNLISTEN *", "UNLISTEN"),
        ] {
            assert_eq!(translate(s).unwrap(), Command::noop(tag), "{s}");
        }
        for s in [
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "DO $$ BEGIN END $$",
            "NOTIFY c",
        ] {
            assert_eq!(translate(s).unwrap_err().sqlstate, "0A000", "{s}");
        }
    }
}
