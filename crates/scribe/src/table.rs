//! Aligned table output for query results, psql style: a header, a rule, columns padded to their
//! widest cell (numbers right-aligned), `NULL` for nulls, blobs as `x'…'` (long ones cut), and a
//! `(N rows)` footer. Widths count characters, so accented text lines up; control characters in
//! a cell are shown escaped so one row stays one line.

use base64::Engine as _;
use serde_json::Value;

/// Blob bytes shown in hex before the rest is cut.
const MAX_BLOB_BYTES: usize = 32;

/// How one value is shown, as plain text (for a table cell, see [`render`]).
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Object(o) => {
            let bytes = match (o.len(), o.get("base64").and_then(Value::as_str)) {
                (1, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
                _ => None,
            };
            match bytes {
                Some(bytes) => blob(&bytes),
                None => v.to_string(),
            }
        }
        Value::Array(_) => v.to_string(),
    }
}

fn blob(bytes: &[u8]) -> String {
    let hex: String = bytes
        .iter()
        .take(MAX_BLOB_BYTES)
        .map(|b| format!("{b:02x}"))
        .collect();
    if bytes.len() > MAX_BLOB_BYTES {
        format!("x'{hex}…' ({} bytes)", bytes.len())
    } else {
        format!("x'{hex}'")
    }
}

/// A cell's text with line breaks and other control characters escaped.
fn one_line(s: String) -> String {
    if !s.chars().any(char::is_control) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad(out: &mut String, s: &str, w: usize, right: bool) {
    let fill = w.saturating_sub(width(s));
    if right {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(s);
    } else {
        out.push_str(s);
        out.extend(std::iter::repeat_n(' ', fill));
    }
}

/// Renders columns and rows as an aligned table ending with a `(N rows)` line. A column whose
/// values are all numbers (or NULL) is right-aligned.
pub fn render(columns: &[String], rows: &[Vec<Value>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            (0..columns.len())
                .map(|i| r.get(i).map_or_else(String::new, |v| one_line(cell(v))))
                .collect()
        })
        .collect();
    let numeric: Vec<bool> = (0..columns.len())
        .map(|i| {
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| matches!(r.get(i), Some(Value::Number(_) | Value::Null) | None))
        })
        .collect();
    let header: Vec<String> = columns.iter().map(|c| one_line(c.clone())).collect();
    let mut widths: Vec<usize> = header.iter().map(|c| width(c)).collect();
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(width(c));
        }
    }

    let mut out = String::new();
    let mut line = |cells: &[String], aligned: bool| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(if i == 0 { " " } else { " | " });
            pad(&mut l, c, widths[i], aligned && numeric[i]);
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header, false);
    for r in &cells {
        line(r, true);
    }
    // The rule goes under the header.
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    let header_end = out.find('\n').map_or(0, |i| i + 1);
    out.insert_str(header_end, &format!("{}\n", rule.join("+")));
    out.push_str(&format!(
        "({} row{})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn columns_align_and_numbers_go_right() {
        let rows = vec![
            vec![json!(1), json!("Alice")],
            vec![json!(100), json!(null)],
        ];
        assert_eq!(
            render(&cols(&["id", "name"]), &rows),
            " id  | name\n-----+-------\n   1 | Alice\n 100 | NULL\n(2 rows)\n"
        );
    }

    #[test]
    fn one_row_and_no_rows() {
        assert_eq!(
            render(&cols(&["n"]), &[vec![json!(1.5)]]),
            " n\n-----\n 1.5\n(1 row)\n"
        );
        assert_eq!(render(&cols(&["v"]), &[]), " v\n---\n(0 rows)\n");
    }

    #[test]
    fn mixed_columns_stay_left_aligned() {
        let rows = vec![vec![json!(7)], vec![json!("seven")]];
        assert_eq!(
            render(&cols(&["x"]), &rows),
            " x\n-------\n 7\n seven\n(2 rows)\n"
        );
    }

    #[test]
    fn unicode_counts_characters() {
        let rows = vec![vec![json!("héé"), json!(1)], vec![json!("ab"), json!(22)]];
        assert_eq!(
            render(&cols(&["v", "n"]), &rows),
            " v   | n\n-----+----\n héé |  1\n ab  | 22\n(2 rows)\n"
        );
    }

    #[test]
    fn blobs_show_as_hex_and_long_ones_are_cut() {
        assert_eq!(cell(&json!({"base64": "AAH/"})), "x'0001ff'");
        let long = base64::engine::general_purpose::STANDARD.encode([0xabu8; 40]);
        assert_eq!(
            cell(&json!({ "base64": long })),
            format!("x'{}…' (40 bytes)", "ab".repeat(32))
        );
        // Not a blob: shown as the JSON it is.
        assert_eq!(
            cell(&json!({"base64": "!!", "x": 1})),
            r#"{"base64":"!!","x":1}"#
        );
        assert_eq!(cell(&json!(true)), "true");
    }

    #[test]
    fn line_breaks_in_cells_are_escaped() {
        let rows = vec![vec![json!("a\nb\tc")]];
        assert_eq!(
            render(&cols(&["s"]), &rows),
            " s\n---------\n a\\nb\\tc\n(1 row)\n"
        );
        // `cell` itself keeps the text as it is (for `.schema`).
        assert_eq!(cell(&json!("a\nb")), "a\nb");
    }
}
