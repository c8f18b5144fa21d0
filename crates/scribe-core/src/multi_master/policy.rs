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
}
