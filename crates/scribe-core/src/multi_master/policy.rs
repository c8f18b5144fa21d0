//! [`TablePolicy`]: how a table's concurrent writes are resolved under multi-master — `lww`
//! (the default), `versioned`, or `merge(col = rule, ...)` — as it is written in SQL and in the
//! configuration, parsed and checked once.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::row::ColumnRule;

/// A table's conflict policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TablePolicy {
    /// Column-level last-writer-wins on the HLC ([`super::row`]).
    #[default]
    Lww,
    /// Concurrent writes kept as siblings until resolved ([`super::versioned`]).
    Versioned,
    /// Per-column rules; a column not named is `lww`.
    Merge(BTreeMap<String, ColumnRule>),
}

/// Why a policy's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conflict policy {text:?}: {why} (expected lww, versioned, or merge(column = sum|max|min|lww, ...))")]
pub struct ParsePolicyError {
    text: String,
    why: String,
}

impl TablePolicy {
    /// The rule column `col` merges by (`lww` for a `versioned` table's columns too: a sibling
    /// is a whole row).
    pub fn rule(&self, col: &str) -> ColumnRule {
        match self {
            TablePolicy::Merge(rules) => rules.get(col).copied().unwrap_or(ColumnRule::Lww),
            TablePolicy::Lww | TablePolicy::Versioned => ColumnRule::Lww,
        }
    }

    /// Checks the policy against the table's columns: every column a rule names exists.
    pub fn check_columns<'a>(
        &self,
        columns: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<(), String> {
        if let TablePolicy::Merge(rules) = self {
            for col in rules.keys() {
                if !columns
                    .clone()
                    .into_iter()
                    .any(|c| c.eq_ignore_ascii_case(col))
                {
                    return Err(format!(
                        "the merge rule names column {col:?}, which the table does not have"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn rule_name(r: ColumnRule) -> &'static str {
    match r {
        ColumnRule::Lww => "lww",
        ColumnRule::Sum => "sum",
        ColumnRule::Max => "max",
        ColumnRule::Min => "min",
    }
}

impl fmt::Display for TablePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TablePolicy::Lww => f.write_str("lww"),
            TablePolicy::Versioned => f.write_str("versioned"),
            TablePolicy::Merge(rules) => {
                let list: Vec<String> = rules
                    .iter()
                    .map(|(c, r)| format!("{c} = {}", rule_name(*r)))
                    .collect();
                write!(f, "merge({})", list.join(", "))
            }
        }
    }
}

impl FromStr for TablePolicy {
    type Err = ParsePolicyError;

    fn from_str(text: &str) -> Result<TablePolicy, ParsePolicyError> {
        let err = |why: &str| ParsePolicyError {
            text: text.to_string(),
            why: why.to_string(),
        };
        let t = text.trim();
        if t.eq_ignore_ascii_case("lww") {
            return Ok(TablePolicy::Lww);
        }
        if t.eq_ignore_ascii_case("versioned") {
            return Ok(TablePolicy::Versioned);
        }
        let inner = t
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("merge"))
            .and_then(|_| t[5..].trim().strip_prefix('('))
            .and_then(|rest| rest.strip_suffix(')'))
            .ok_or_else(|| err("unknown policy"))?;
        let mut rules = BTreeMap::new();
        for item in inner.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (col, rule) = item
                .split_once('=')
                .ok_or_else(|| err("each rule is column = rule"))?;
            let col = col.trim().to_ascii_lowercase();
            if col.is_empty() || !col.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(err("a column name is letters, digits and _"));
            }
            let rule = match rule.trim().to_ascii_lowercase().as_str() {
                "sum" => ColumnRule::Sum,
                "max" => ColumnRule::Max,
                "min" => ColumnRule::Min,
                "lww" => ColumnRule::Lww,
                _ => return Err(err("a rule is sum, max, min or lww")),
            };
            if rules.insert(col, rule).is_some() {
                return Err(err("a column is named twice"));
            }
        }
        if rules.is_empty() {
            return Err(err("merge names no column"));
        }
        Ok(TablePolicy::Merge(rules))
    }
}

/// A statement that sets a table's policy through SQL:
/// `ALTER TABLE name SET POLICY policy` (the policy as in [`TablePolicy`]'s text, bare or in
/// single quotes; the name bare or double-quoted). Answers `None` for any other statement, and
/// the table's name and policy, or why the statement is malformed, for this one.
pub fn parse_set_policy(sql: &str) -> Option<Result<(String, TablePolicy), String>> {
    let rest = sql.trim().trim_end_matches(';').trim_end();
    let rest = keyword(rest, "ALTER")?;
    let rest = keyword(rest, "TABLE")?;
    let (mut name, mut rest) = identifier(rest)?;
    // A schema before the name: `main.t` is `t`; no other schema is replicated.
    if let Some(after) = rest.strip_prefix('.') {
        let schema = std::mem::take(&mut name);
        (name, rest) = identifier(after.trim_start())?;
        if !schema.eq_ignore_ascii_case("main") {
            return Some(Err(format!(
                "only tables of the main schema have a policy, not {schema}.{name}"
            )));
        }
    }
    let rest = keyword(rest, "SET")?;
    let rest = keyword(rest, "POLICY")?;
    Some(policy_text(rest).and_then(|text| {
        text.parse::<TablePolicy>()
            .map(|p| (name, p))
            .map_err(|e| e.to_string())
    }))
}

/// `s` after the keyword `word` and the whitespace after it.
fn keyword<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let head = s.get(..word.len())?;
    let after = &s[word.len()..];
    let ends = after.is_empty() || after.starts_with(|c: char| c.is_whitespace() || c == '"');
    (head.eq_ignore_ascii_case(word) && ends).then(|| after.trim_start())
}

/// A table name, bare or double-quoted, and what follows it.
fn identifier(s: &str) -> Option<(String, &str)> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if quoted[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, quoted[i + 1..].trim_start()));
                }
            } else {
                name.push(c);
            }
        }
        return None;
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    (end > 0).then(|| (s[..end].to_string(), s[end..].trim_start()))
}

/// The policy's text: a single-quoted literal, or the rest of the statement.
fn policy_text(s: &str) -> Result<String, String> {
    let Some(quoted) = s.strip_prefix('\'') else {
        return if s.is_empty() {
            Err("SET POLICY needs a policy: lww, versioned or merge(column = rule, ...)".into())
        } else {
            Ok(s.to_string())
        };
    };
    let mut text = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if quoted[i + 1..].starts_with('\'') {
                text.push('\'');
                chars.next();
            } else if quoted[i + 1..].trim().is_empty() {
                return Ok(text);
            } else {
                return Err(format!(
                    "unexpected text after the policy: {:?}",
                    quoted[i + 1..].trim()
                ));
            }
        } else {
            text.push(c);
        }
    }
    Err("the policy's quote is not closed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_each_policy() {
        assert_eq!("LWW".parse(), Ok(TablePolicy::Lww));
        assert_eq!(" versioned ".parse(), Ok(TablePolicy::Versioned));
        let p: TablePolicy = "merge(Hits = SUM, best=max)".parse().expect("merge");
        assert_eq!(p.rule("hits"), ColumnRule::Sum);
        assert_eq!(p.rule("best"), ColumnRule::Max);
        assert_eq!(p.rule("name"), ColumnRule::Lww, "a column not named is lww");
        assert_eq!(p.to_string(), "merge(best = max, hits = sum)");
        assert_eq!(p.to_string().parse(), Ok(p));
    }

    #[test]
    fn refuses_what_is_not_a_policy_with_the_reason() {
        for (text, why) in [
            ("first-wins", "unknown policy"),
            ("merge()", "names no column"),
            ("merge(a)", "column = rule"),
            ("merge(a = avg)", "sum, max, min or lww"),
            ("merge(a = sum, A = max)", "named twice"),
            ("merge(a b = sum)", "letters, digits"),
        ] {
            let e = text.parse::<TablePolicy>().expect_err(text).to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn a_rule_must_name_a_column_of_the_table() {
        let p: TablePolicy = "merge(hits = sum)".parse().unwrap();
        assert!(p.check_columns(["id", "HITS"]).is_ok());
        assert!(p.check_columns(["id"]).unwrap_err().contains("hits"));
        assert!(TablePolicy::Lww.check_columns(["id"]).is_ok());
    }

    #[test]
    fn a_policy_is_set_through_sql_with_a_bare_or_quoted_name_and_policy() {
        let set = |sql: &str| parse_set_policy(sql);
        assert_eq!(
            set("ALTER TABLE counters SET POLICY merge(hits = sum, best = max);"),
            Some(Ok((
                "counters".into(),
                "merge(hits=sum, best=max)".parse().unwrap()
            )))
        );
        assert_eq!(
            set("alter table \"My \"\"T\"\"\" set policy 'versioned'"),
            Some(Ok(("My \"T\"".into(), TablePolicy::Versioned)))
        );
        assert_eq!(
            set("  ALTER  TABLE t  SET  POLICY  lww  "),
            Some(Ok(("t".into(), TablePolicy::Lww)))
        );
        assert_eq!(
            set("ALTER TABLE main.\"t\" SET POLICY lww"),
            Some(Ok(("t".into(), TablePolicy::Lww)))
        );
        assert!(matches!(
            set("ALTER TABLE temp.t SET POLICY lww"),
            Some(Err(_))
        ));
        assert_eq!(set("ALTER TABLE t ADD COLUMN policy TEXT"), None);
        assert_eq!(set("ALTER TABLE t SET"), None);
        assert_eq!(set("ALTER TABLESET POLICY lww"), None);
        assert_eq!(set("SELECT 1"), None);
        assert!(matches!(set("ALTER TABLE t SET POLICY"), Some(Err(_))));
        assert!(matches!(set("ALTER TABLE t SET POLICY 'lww"), Some(Err(_))));
        assert!(matches!(
            set("ALTER TABLE t SET POLICY 'lww' x"),
            Some(Err(_))
        ));
        let bad = set("ALTER TABLE t SET POLICY merge(hits = avg)").unwrap();
        assert!(bad.unwrap_err().contains("sum, max, min or lww"));
    }
}
