//! `COPY ... FROM STDIN`: the statement ([`CopyIn`]), the data decoder ([`CopyDecoder`],
//! [`parse_copy_rows`]) for PostgreSQL's text and CSV formats, and the INSERT that loads each
//! row ([`copy_insert_sql`]).
//!
//! Text format: one row per line, fields separated by the delimiter (tab), `\N` for NULL,
//! backslash escapes (`\t`, `\n`, `\\`, `\b`, `\f`, `\r`, `\v`, octal `\123`, hex `\x41`), and an
//! optional `\.` line ending the data. CSV: RFC 4180 quoting with the QUOTE and ESCAPE
//! characters; an unquoted empty field (or the NULL string) is NULL, a quoted one is `''`.

use crate::cursor::Cursor;
use crate::error::{CompatError, CHARACTER_NOT_IN_REPERTOIRE};
use crate::lexer::{quote_ident, Tok, Token};

/// The format of COPY data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format (tab-separated, backslash escapes).
    Text,
    /// CSV.
    Csv,
}

/// A `COPY table [(columns)] FROM STDIN [options]`.
///
/// Invariants: `delimiter`, `quote` and `escape` are single ASCII bytes; `delimiter` is not a
/// newline, backslash (text) or the quote (CSV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyIn {
    /// The table name, unquoted (`public.` removed).
    pub table: String,
    /// The column names, unquoted; `None` when the statement lists none (all columns).
    pub columns: Option<Vec<String>>,
    /// Text or CSV.
    pub format: CopyFormat,
    /// The field separator (tab for text, `,` for CSV unless given).
    pub delimiter: u8,
    /// The string that stands for NULL (`\N` for text, empty for CSV unless given).
    pub null: String,
    /// Whether the first line is a header to skip.
    pub header: bool,
    /// CSV quote character (`"` unless given).
    pub quote: u8,
    /// CSV escape character inside quotes (the quote unless given).
    pub escape: u8,
}

/// Parses a `COPY` statement (significant tokens, `COPY` first).
pub(crate) fn parse(toks: &[Token]) -> Result<CopyIn, CompatError> {
    let mut c = Cursor::new(toks);
    c.eat_kw("copy");
    if c.is(Tok::Open) {
        return Err(CompatError::unsupported(
            "COPY (query) TO; only COPY table FROM STDIN",
        ));
    }
    let name = c
        .name()
        .ok_or_else(|| CompatError::syntax("COPY: expected a table name"))?;
    let mut parts: Vec<String> = name
        .iter()
        .filter(|t| t.kind != Tok::Dot)
        .map(Token::value)
        .collect();
    if parts.len() == 2 && parts[0] == "public" {
        parts.remove(0);
    }
    let table = parts.join(".");
    let columns = c.group().map(|inner| {
        inner
            .iter()
            .filter(|t| t.kind != Tok::Comma)
            .map(Token::value)
            .collect()
    });
    if c.eat_kw("to") {
        return Err(CompatError::unsupported(
            "COPY ... TO; only COPY ... FROM STDIN",
        ));
    }
    if !c.eat_kw("from") {
        return Err(CompatError::syntax("COPY: expected FROM STDIN"));
    }
    if !c.eat_kw("stdin") {
        return Err(CompatError::unsupported(
            "COPY FROM a file or program; only COPY ... FROM STDIN",
        ));
    }
    let mut copy = CopyIn {
        table,
        columns,
        format: CopyFormat::Text,
        delimiter: b'\t',
        null: "\\N".into(),
        header: false,
        quote: b'"',
        escape: b'"',
    };
    let (mut delimiter, mut null, mut quote, mut escape) = (None, None, None, None);
    c.eat_kw("with");
    if let Some(opts) = c.group() {
        // New syntax: (option [value], ...)
        for opt in crate::lexer::split_commas(opts) {
            let key = opt.first().map(Token::value).unwrap_or_default();
            let arg = opt.get(1).map(Token::value);
            match key.as_str() {
                "format" => copy.format = format_named(arg.as_deref())?,
                "delimiter" => delimiter = arg,
                "null" => null = arg,
                "header" => {
                    copy.header = arg
                        .as_deref()
                        .is_none_or(|a| a != "false" && a != "off" && a != "0")
                }
                "quote" => quote = arg,
                "escape" => escape = arg,
                "freeze" | "encoding" | "force_not_null" | "force_null" | "default" => {}
                other => return Err(CompatError::syntax(format!("COPY: unknown option {other}"))),
            }
        }
    } else {
        // Old syntax: [BINARY] [DELIMITER [AS] 'x'] [NULL [AS] 'x'] [CSV [HEADER] [QUOTE ..] ..]
        while let Some(t) = c.next() {
            let key = t.value();
            c.eat_kw("as");
            match key.as_str() {
                "binary" => copy.format = format_named(Some("binary"))?,
                "csv" => copy.format = CopyFormat::Csv,
                "header" => copy.header = true,
                "delimiter" => delimiter = c.next().map(Token::value),
                "null" => null = c.next().map(Token::value),
                "quote" => quote = c.next().map(Token::value),
                "escape" => escape = c.next().map(Token::value),
                "force" => {
                    c.eat_kw("not");
                    c.eat_kw("null");
                    while c.peek().is_some_and(|t| {
                        matches!(t.kind, Tok::Word | Tok::QuotedIdent | Tok::Comma)
                    }) {
                        c.next();
                    }
                }
                "freeze" | "oids" => {}
                other => return Err(CompatError::syntax(format!("COPY: unknown option {other}"))),
            }
        }
    }
    if copy.format == CopyFormat::Csv {
        copy.delimiter = b',';
        copy.null = String::new();
    }
    if let Some(d) = delimiter {
        copy.delimiter = single_byte("DELIMITER", &d)?;
    }
    if let Some(n) = null {
        copy.null = n;
    }
    if let Some(q) = quote {
        copy.quote = single_byte("QUOTE", &q)?;
    }
    copy.escape = match escape {
        Some(e) => single_byte("ESCAPE", &e)?,
        None => copy.quote,
    };
    if matches!(copy.delimiter, b'\n' | b'\r')
        || (copy.format == CopyFormat::Text && copy.delimiter == b'\\')
        || (copy.format == CopyFormat::Csv && copy.delimiter == copy.quote)
    {
        return Err(CompatError::syntax("COPY: this DELIMITER cannot be used"));
    }
    Ok(copy)
}

fn format_named(name: Option<&str>) -> Result<CopyFormat, CompatError> {
    match name.unwrap_or("") {
        "text" => Ok(CopyFormat::Text),
        "csv" => Ok(CopyFormat::Csv),
        "binary" => Err(CompatError::unsupported("COPY in binary format")),
        other => Err(CompatError::syntax(format!(
            "COPY format \"{other}\" not recognized"
        ))),
    }
}

fn single_byte(what: &str, s: &str) -> Result<u8, CompatError> {
    match s.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(CompatError::syntax(format!(
            "COPY {what} must be a single one-byte character"
        ))),
    }
}

/// The statement that inserts one COPY row: `INSERT INTO "t" ("a", "b") VALUES (?1, ?2)`.
/// When the COPY names no columns, pass the table's columns in order.
pub fn copy_insert_sql(table: &str, columns: &[String]) -> String {
    if columns.is_empty() {
        return format!("INSERT INTO {} DEFAULT VALUES", quote_ident(table));
    }
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let params: Vec<String> = (1..=columns.len()).map(|n| format!("?{n}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote_ident(table),
        cols.join(", "),
        params.join(", ")
    )
}

/// One decoded row: a value per field, `None` for NULL.
pub type CopyRow = Vec<Option<String>>;

/// Decodes COPY data fed in chunks of any size: rows split across chunks are kept until
/// complete. Feed every `CopyData` payload to [`CopyDecoder::feed`], then call
/// [`CopyDecoder::finish`] at `CopyDone`.
///
/// Invariant: `pending` holds only bytes of an incomplete last record; `done` once `\.` is seen
/// (later data is ignored, as PostgreSQL does).
#[derive(Debug)]
pub struct CopyDecoder {
    copy: CopyIn,
    pending: Vec<u8>,
    header_left: bool,
    done: bool,
    line: u64,
}

impl CopyDecoder {
    /// A decoder for `copy`'s format and options.
    pub fn new(copy: &CopyIn) -> Self {
        CopyDecoder {
            header_left: copy.header,
            copy: copy.clone(),
            pending: Vec::new(),
            done: false,
            line: 0,
        }
    }

    /// Decodes the complete rows in `pending + chunk`; keeps the incomplete rest.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<CopyRow>, CompatError> {
        if self.done {
            return Ok(Vec::new());
        }
        self.pending.extend_from_slice(chunk);
        let mut rows = Vec::new();
        let mut start = 0;
        while let Some(end) = self.record_end(start) {
            let record = self.pending[start..end].to_vec();
            start = end + 1;
            if self.take_record(&record, &mut rows)? {
                self.done = true;
                break;
            }
        }
        self.pending.drain(..start.min(self.pending.len()));
        if self.done {
            self.pending.clear();
        }
        Ok(rows)
    }

    /// Decodes what is left after the last chunk (a last row without a newline).
    pub fn finish(mut self) -> Result<Vec<CopyRow>, CompatError> {
        let mut rows = Vec::new();
        if !self.done && !self.pending.is_empty() {
            if self.copy.format == CopyFormat::Csv
                && self.record_end(0).is_none()
                && in_quotes(&self.copy, &self.pending)
            {
                return Err(CompatError::copy_format("unterminated CSV quoted field"));
            }
            let record = std::mem::take(&mut self.pending);
            self.take_record(&record, &mut rows)?;
        }
        Ok(rows)
    }

    /// The index of the `\n` ending the record that starts at `start`, if it is complete.
    fn record_end(&self, start: usize) -> Option<usize> {
        let data = &self.pending[start..];
        match self.copy.format {
            CopyFormat::Text => data.iter().position(|&b| b == b'\n').map(|p| start + p),
            CopyFormat::Csv => {
                let mut quoted = false;
                let mut i = 0;
                while i < data.len() {
                    let b = data[i];
                    if quoted {
                        if b == self.copy.escape
                            && data.get(i + 1) == Some(&self.copy.quote)
                            && self.copy.escape != self.copy.quote
                        {
                            i += 2;
                            continue;
                        }
                        if b == self.copy.quote {
                            quoted = false;
                        }
                    } else if b == self.copy.quote {
                        quoted = true;
                    } else if b == b'\n' {
                        return Some(start + i);
                    }
                    i += 1;
                }
                None
            }
        }
    }

    /// Decodes one record (without its `\n`); returns true at the `\.` end marker.
    fn take_record(&mut self, record: &[u8], rows: &mut Vec<CopyRow>) -> Result<bool, CompatError> {
        self.line += 1;
        let record = record.strip_suffix(b"\r").unwrap_or(record);
        if record == b"\\." {
            return Ok(true);
        }
        if self.header_left {
            self.header_left = false;
            return Ok(false);
        }
        let text = std::str::from_utf8(record).map_err(|_| CompatError {
            sqlstate: CHARACTER_NOT_IN_REPERTOIRE,
            message: format!("COPY data line {} is not valid UTF-8", self.line),
        })?;
        let row = match self.copy.format {
            CopyFormat::Text => text_fields(&self.copy, text),
            CopyFormat::Csv => csv_fields(&self.copy, text),
        };
        rows.push(
            row.map_err(|m| {
                CompatError::copy_format(format!("COPY data line {}: {m}", self.line))
            })?,
        );
        Ok(false)
    }
}

fn in_quotes(copy: &CopyIn, data: &[u8]) -> bool {
    data.iter().filter(|&&b| b == copy.quote).count() % 2 == 1
}

/// Parses COPY data given whole (or the whole of what remains) into rows.
pub fn parse_copy_rows(copy: &CopyIn, data: &[u8]) -> Result<Vec<CopyRow>, CompatError> {
    let mut d = CopyDecoder::new(copy);
    let mut rows = d.feed(data)?;
    rows.extend(d.finish()?);
    Ok(rows)
}

fn text_fields(copy: &CopyIn, line: &str) -> Result<CopyRow, String> {
    let delim = copy.delimiter as char;
    let mut fields = Vec::new();
    let mut raw = String::new();
    let mut value = String::new();
    let mut chars = line.chars().peekable();
    let finish = |raw: &mut String, value: &mut String, fields: &mut CopyRow| {
        if *raw == copy.null {
            fields.push(None);
        } else {
            fields.push(Some(std::mem::take(value)));
        }
        raw.clear();
        value.clear();
    };
    while let Some(ch) = chars.next() {
        if ch == delim {
            finish(&mut raw, &mut value, &mut fields);
            continue;
        }
        raw.push(ch);
        if ch != '\\' {
            value.push(ch);
            continue;
        }
        let Some(e) = chars.next() else {
            return Err("a backslash ends the line".into());
        };
        raw.push(e);
        match e {
            'b' => value.push('\u{8}'),
            'f' => value.push('\u{c}'),
            'n' => value.push('\n'),
            'r' => value.push('\r'),
            't' => value.push('\t'),
            'v' => value.push('\u{b}'),
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            raw.push(chars.next().unwrap_or('0'));
                            v = v * 8 + d;
                        }
                        None => break,
                    }
                }
                value.push(char::from_u32(v & 0xff).unwrap_or('\u{fffd}'));
            }
            'x' if chars.peek().is_some_and(|d| d.is_ascii_hexdigit()) => {
                let mut v = 0;
                for _ in 0..2 {
                    match chars.peek().and_then(|d| d.to_digit(16)) {
                        Some(d) => {
                            raw.push(chars.next().unwrap_or('0'));
                            v = v * 16 + d;
                        }
                        None => break,
                    }
                }
                value.push(char::from_u32(v).unwrap_or('\u{fffd}'));
            }
            other => value.push(other),
        }
    }
    finish(&mut raw, &mut value, &mut fields);
    Ok(fields)
}

fn csv_fields(copy: &CopyIn, line: &str) -> Result<CopyRow, String> {
    let (delim, quote, escape) = (
        copy.delimiter as char,
        copy.quote as char,
        copy.escape as char,
    );
    let mut fields = Vec::new();
    let mut value = String::new();
    let mut quoted_any = false;
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    let finish = |value: &mut String, quoted_any: &mut bool, fields: &mut CopyRow| {
        if !*quoted_any && *value == copy.null {
            fields.push(None);
        } else {
            fields.push(Some(std::mem::take(value)));
        }
        value.clear();
        *quoted_any = false;
    };
    while let Some(ch) = chars.next() {
        if in_quotes {
            if ch == escape && chars.peek() == Some(&quote) && (escape != quote || ch == quote) {
                chars.next();
                value.push(quote);
            } else if ch == quote {
                in_quotes = false;
            } else if ch == escape && chars.peek() == Some(&escape) && escape != quote {
                chars.next();
                value.push(escape);
            } else {
                value.push(ch);
            }
        } else if ch == quote {
            in_quotes = true;
            quoted_any = true;
        } else if ch == delim {
            finish(&mut value, &mut quoted_any, &mut fields);
        } else {
            value.push(ch);
        }
    }
    if in_quotes {
        return Err("unterminated CSV quoted field".into());
    }
    finish(&mut value, &mut quoted_any, &mut fields);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{translate, Command};

    fn copy_of(sql: &str) -> CopyIn {
        match translate(sql).unwrap() {
            Command::CopyIn(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn statements_in_new_and_old_syntax() {
        let c = copy_of("copy pgbench_accounts from stdin with (freeze on)");
        assert_eq!(
            (
                c.table.as_str(),
                c.columns.clone(),
                c.format,
                c.delimiter,
                c.null.as_str(),
                c.header
            ),
            (
                "pgbench_accounts",
                None,
                CopyFormat::Text,
                b'\t',
                "\\N",
                false
            )
        );
        let c = copy_of("COPY public.items (name, \"Price\") FROM STDIN (FORMAT csv, HEADER true, DELIMITER ';', NULL 'NA')");
        assert_eq!(c.table, "items");
        assert_eq!(c.columns, Some(vec!["name".into(), "Price".into()]));
        assert_eq!(
            (c.format, c.delimiter, c.null.as_str(), c.header),
            (CopyFormat::Csv, b';', "NA", true)
        );
        let c = copy_of("COPY t FROM STDIN WITH CSV HEADER");
        assert_eq!(
            (c.format, c.delimiter, c.null.as_str(), c.header),
            (CopyFormat::Csv, b',', "", true)
        );
        let c = copy_of("COPY t FROM STDIN DELIMITER ',' NULL AS ''");
        assert_eq!(
            (c.format, c.delimiter, c.null.as_str()),
            (CopyFormat::Text, b',', "")
        );
        for bad in [
            "COPY t TO STDOUT",
            "COPY t FROM '/etc/passwd'",
            "COPY (select 1) TO STDOUT",
            "COPY t FROM STDIN (FORMAT binary)",
        ] {
            assert_eq!(translate(bad).unwrap_err().sqlstate, "0A000", "{bad}");
        }
        assert_eq!(
            translate("COPY t FROM STDIN (DELIMITER 'ab')")
                .unwrap_err()
                .sqlstate,
            "42601"
        );
    }

    #[test]
    fn text_rows_with_escapes_nulls_and_end_marker() {
        let c = copy_of("COPY t FROM STDIN");
        let data = b"1\t1\t0\t\n2\t\\N\ta\\tb\\\\c\\nd\t\\101\\x42\r\n\\.\nignored\n";
        let rows = parse_copy_rows(&c, data).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![s("1"), s("1"), s("0"), s("")],
                vec![s("2"), None, s("a\tb\\c\nd"), s("AB")],
            ]
        );
    }

    #[test]
    fn csv_rows_with_quotes_and_newlines_in_fields() {
        let c = copy_of("COPY t FROM STDIN (FORMAT csv, HEADER)");
        let data = b"a,b,c\n1,\"x, \"\"y\"\"\",\n2,\"\",\"multi\nline\"\n";
        assert_eq!(
            parse_copy_rows(&c, data).unwrap(),
            vec![
                vec![s("1"), s("x, \"y\""), None],
                vec![s("2"), s(""), s("multi\nline")],
            ]
        );
        assert_eq!(
            parse_copy_rows(&c, b"h\n\"open\n").unwrap_err().sqlstate,
            "22P04"
        );
    }

    #[test]
    fn rows_split_across_chunks_decode_the_same() {
        let c = copy_of("COPY t FROM STDIN CSV");
        let data: &[u8] = b"1,\"a\nb\",x\n2,\"c,d\",y\n3,e,\n";
        let whole = parse_copy_rows(&c, data).unwrap();
        for cut in 0..data.len() {
            let mut d = CopyDecoder::new(&c);
            let mut rows = d.feed(&data[..cut]).unwrap();
            rows.extend(d.feed(&data[cut..]).unwrap());
            rows.extend(d.finish().unwrap());
            assert_eq!(rows, whole, "cut at {cut}");
        }
        let t = copy_of("COPY t FROM STDIN");
        let mut d = CopyDecoder::new(&t);
        assert!(d.feed(b"1\tab").unwrap().is_empty());
        assert_eq!(d.feed(b"c\n2").unwrap(), vec![vec![s("1"), s("abc")]]);
        assert_eq!(d.finish().unwrap(), vec![vec![s("2")]]);
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let c = copy_of("COPY t FROM STDIN");
        assert_eq!(
            parse_copy_rows(&c, b"\xff\n").unwrap_err().sqlstate,
            "22021"
        );
    }

    #[test]
    fn insert_sql_loads_a_row() {
        assert_eq!(
            copy_insert_sql("pgbench_accounts", &["aid".into(), "bid".into(), "abalance".into(), "filler".into()]),
            "INSERT INTO \"pgbench_accounts\" (\"aid\", \"bid\", \"abalance\", \"filler\") VALUES (?1, ?2, ?3, ?4)"
        );
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE TABLE t (a int, b text)").unwrap();
        let c = copy_of("COPY t FROM STDIN");
        let sql = copy_insert_sql(&c.table, &["a".into(), "b".into()]);
        for row in parse_copy_rows(&c, b"1\tx\n2\t\\N\n").unwrap() {
            db.execute(&sql, rusqlite::params_from_iter(row)).unwrap();
        }
        let n: i64 = db
            .query_row("SELECT count(*) FROM t WHERE b IS NULL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
