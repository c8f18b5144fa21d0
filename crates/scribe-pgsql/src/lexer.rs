//! A PostgreSQL lexer just deep enough to rewrite SQL safely: it knows where strings, quoted
//! identifiers, dollar quotes, comments, parameters and parentheses begin and end, so that every
//! rewrite in this crate leaves their contents alone. Rendering the tokens back gives the input
//! byte for byte.

use crate::error::CompatError;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Spaces, tabs, newlines.
    Space,
    /// `-- ...` to the end of the line, or `/* ... */` (nested).
    Comment,
    /// A keyword or unquoted identifier.
    Word,
    /// `"..."`, with `""` for a quote inside.
    QuotedIdent,
    /// `'...'` (standard conforming: backslash is an ordinary character), also `X'..'`, `B'..'`.
    Str,
    /// `E'...'`, with backslash escapes.
    EStr,
    /// `$tag$...$tag$`.
    DollarStr,
    /// A numeric literal.
    Number,
    /// `$1`, `$2`, ...
    Param,
    /// `::`
    Cast,
    /// `(`
    Open,
    /// `)`
    Close,
    /// `,`
    Comma,
    /// `;`
    Semi,
    /// `.`
    Dot,
    /// Any other single character (operators, brackets).
    Punct,
}

/// One token and its exact source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Tok,
    pub text: String,
}

impl Token {
    pub fn new(kind: Tok, text: impl Into<String>) -> Self {
        Token {
            kind,
            text: text.into(),
        }
    }

    /// A word token (used when rewriting).
    pub fn word(text: &str) -> Self {
        Token::new(Tok::Word, text)
    }

    /// A single space.
    pub fn space() -> Self {
        Token::new(Tok::Space, " ")
    }

    /// Whether this is a space or a comment.
    pub fn is_trivia(&self) -> bool {
        matches!(self.kind, Tok::Space | Tok::Comment)
    }

    /// Whether this is the keyword `kw` (case-insensitive; `kw` in any case).
    pub fn is_kw(&self, kw: &str) -> bool {
        self.kind == Tok::Word && self.text.eq_ignore_ascii_case(kw)
    }

    /// Whether this is the single character `c` (`(`, `)`, `,`, `;`, `.` or punctuation).
    pub fn is_char(&self, c: char) -> bool {
        self.kind != Tok::Word && self.text.len() == c.len_utf8() && self.text.starts_with(c)
    }

    /// Whether this is any string literal.
    pub fn is_string(&self) -> bool {
        matches!(self.kind, Tok::Str | Tok::EStr | Tok::DollarStr)
    }

    /// The value of a string literal, or of a (quoted) identifier: quotes removed, escapes decoded.
    /// Unquoted words are returned lower-cased, as PostgreSQL folds them.
    pub fn value(&self) -> String {
        let t = &self.text;
        match self.kind {
            Tok::Str => {
                let start = t.find('\'').map_or(0, |i| i + 1);
                let end = if t.len() > start && t.ends_with('\'') {
                    t.len() - 1
                } else {
                    t.len()
                };
                t.get(start..end).unwrap_or("").replace("''", "'")
            }
            Tok::EStr => decode_escape_string(t.get(2..t.len().saturating_sub(1)).unwrap_or("")),
            Tok::DollarStr => {
                let tag_end = t[1..].find('$').map_or(t.len(), |i| i + 2);
                let tag_len = tag_end;
                if t.len() >= 2 * tag_len {
                    t[tag_len..t.len() - tag_len].to_string()
                } else {
                    t.get(tag_len..).unwrap_or("").to_string()
                }
            }
            Tok::QuotedIdent => t
                .get(1..t.len().saturating_sub(1))
                .unwrap_or("")
                .replace("\"\"", "\""),
            Tok::Word => t.to_ascii_lowercase(),
            _ => t.clone(),
        }
    }
}

/// Quotes `s` as an SQL string literal.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quotes `s` as an SQL identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Decodes the body of an `E'...'` string (PostgreSQL's backslash escapes).
fn decode_escape_string(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                // '' inside an E string is one quote.
                if chars.peek() == Some(&'\'') {
                    chars.next();
                }
                out.push('\'');
            }
            '\\' => {
                let Some(e) = chars.next() else {
                    out.push('\\');
                    break;
                };
                match e {
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            match chars.peek().and_then(|d| d.to_digit(8)) {
                                Some(d) => {
                                    v = v * 8 + d;
                                    chars.next();
                                }
                                None => break,
                            }
                        }
                        out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                    }
                    'x' | 'u' | 'U' => {
                        let max = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < max {
                            match chars.peek().and_then(|d| d.to_digit(16)) {
                                Some(d) => {
                                    v = v * 16 + d;
                                    chars.next();
                                    n += 1;
                                }
                                None => break,
                            }
                        }
                        if n == 0 {
                            out.push(e);
                        } else {
                            out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                        }
                    }
                    other => out.push(other),
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || !c.is_ascii() && !c.is_whitespace()
}

fn is_ident_char(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

/// Splits `sql` into tokens. Rendering them back (concatenating their texts) gives `sql`.
///
/// Fails with a syntax error on an unterminated quote, quoted identifier, dollar quote or
/// block comment.
pub(crate) fn tokenize(sql: &str) -> Result<Vec<Token>, CompatError> {
    let mut out = Vec::new();
    lex(sql, &mut out)?;
    Ok(out)
}

/// Lexes `sql` into `out`; on an error, `out` holds the tokens before the bad one.
fn lex(sql: &str, out: &mut Vec<Token>) -> Result<(), CompatError> {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let rest = &sql[i..];
        let Some(c) = rest.chars().next() else { break };
        let (kind, len) = if c.is_whitespace() {
            let n = rest
                .char_indices()
                .find(|(_, ch)| !ch.is_whitespace())
                .map_or(rest.len(), |(k, _)| k);
            (Tok::Space, n)
        } else if rest.starts_with("--") {
            (Tok::Comment, rest.find('\n').unwrap_or(rest.len()))
        } else if rest.starts_with("/*") {
            (Tok::Comment, block_comment_len(rest)?)
        } else if c == '\'' {
            (Tok::Str, quoted_len(rest, b'\'', false, "string literal")?)
        } else if (c == 'E' || c == 'e') && rest[1..].starts_with('\'') {
            (
                Tok::EStr,
                1 + quoted_len(&rest[1..], b'\'', true, "string literal")?,
            )
        } else if matches!(c, 'X' | 'x' | 'B' | 'b' | 'N' | 'n') && rest[1..].starts_with('\'') {
            (
                Tok::Str,
                1 + quoted_len(&rest[1..], b'\'', false, "string literal")?,
            )
        } else if c == '"' {
            (
                Tok::QuotedIdent,
                quoted_len(rest, b'"', false, "quoted identifier")?,
            )
        } else if c == '$' {
            let digits = rest[1..]
                .find(|ch: char| !ch.is_ascii_digit())
                .unwrap_or(rest.len() - 1);
            if digits > 0 {
                (Tok::Param, 1 + digits)
            } else if let Some(tag_len) = dollar_tag_len(rest) {
                let tag = &rest[..tag_len];
                match rest[tag_len..].find(tag) {
                    Some(end) => (Tok::DollarStr, tag_len + end + tag_len),
                    None => return Err(CompatError::syntax("unterminated dollar-quoted string")),
                }
            } else {
                (Tok::Punct, 1)
            }
        } else if c.is_ascii_digit()
            || (c == '.' && rest[1..].starts_with(|d: char| d.is_ascii_digit()))
        {
            (Tok::Number, number_len(rest))
        } else if is_ident_start(c) {
            let n = rest
                .char_indices()
                .find(|(_, ch)| !is_ident_char(*ch))
                .map_or(rest.len(), |(k, _)| k);
            (Tok::Word, n)
        } else if rest.starts_with("::") {
            (Tok::Cast, 2)
        } else {
            let kind = match c {
                '(' => Tok::Open,
                ')' => Tok::Close,
                ',' => Tok::Comma,
                ';' => Tok::Semi,
                '.' => Tok::Dot,
                _ => Tok::Punct,
            };
            (kind, c.len_utf8())
        };
        out.push(Token::new(kind, &sql[i..i + len]));
        i += len;
    }
    Ok(())
}

fn block_comment_len(s: &str) -> Result<usize, CompatError> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err(CompatError::syntax("unterminated /* comment"))
}

/// Length of a quoted token starting at `s[0] == q`; the quote doubled is an escaped quote, and
/// with `backslash` a backslash escapes the next byte.
fn quoted_len(s: &str, q: u8, backslash: bool, what: &str) -> Result<usize, CompatError> {
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
        } else if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return Ok(i + 1);
            }
        } else {
            i += 1;
        }
    }
    Err(CompatError::syntax(format!("unterminated {what}")))
}

/// Length of `$tag$` at the start of `s` (`$$` included), if it is one.
fn dollar_tag_len(s: &str) -> Option<usize> {
    let body = &s[1..];
    let end = body.find('$')?;
    let tag = &body[..end];
    let valid = tag.is_empty()
        || (tag.starts_with(|c: char| is_ident_start(c))
            && tag.chars().all(|c| is_ident_char(c) && c != '$'));
    valid.then_some(end + 2)
}

fn number_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        while *i < b.len() && (b[*i].is_ascii_digit() || b[*i] == b'_') {
            *i += 1;
        }
    };
    if s.starts_with("0x") || s.starts_with("0X") {
        i = 2;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
        }
        return i;
    }
    digits(&mut i);
    // `1..` is not a decimal point (array slices); a dot followed by a digit or not a dot is.
    if i < b.len() && b[i] == b'.' && b.get(i + 1) != Some(&b'.') {
        i += 1;
        digits(&mut i);
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            i = j;
            digits(&mut i);
        }
    }
    i
}

/// Concatenates the tokens' texts.
pub(crate) fn render(tokens: &[Token]) -> String {
    tokens.iter().map(|t| t.text.as_str()).collect()
}

/// The tokens without spaces and comments.
pub(crate) fn significant(tokens: &[Token]) -> Vec<Token> {
    tokens.iter().filter(|t| !t.is_trivia()).cloned().collect()
}

/// Renders significant tokens with single spaces where SQL needs them.
pub(crate) fn render_spaced(tokens: &[Token]) -> String {
    let mut out = String::new();
    let mut prev: Option<&Token> = None;
    for t in tokens {
        if let Some(p) = prev {
            let tight = matches!(p.kind, Tok::Open | Tok::Dot | Tok::Cast)
                || matches!(
                    t.kind,
                    Tok::Close | Tok::Comma | Tok::Dot | Tok::Cast | Tok::Semi
                )
                || (t.kind == Tok::Open
                    && matches!(p.kind, Tok::Word | Tok::QuotedIdent)
                    && !is_keyword_before_paren(p));
            if !tight {
                out.push(' ');
            }
        }
        out.push_str(&t.text);
        prev = Some(t);
    }
    out
}

fn is_keyword_before_paren(t: &Token) -> bool {
    const KW: &[&str] = &[
        "AS",
        "ON",
        "IN",
        "KEY",
        "VALUES",
        "CHECK",
        "UNIQUE",
        "EXISTS",
        "AND",
        "OR",
        "NOT",
        "USING",
        "WHERE",
        "WITH",
        "FROM",
        "SELECT",
        "TABLE",
        "DEFAULT",
        "REFERENCES",
        "THEN",
        "ELSE",
        "WHEN",
    ];
    KW.iter().any(|k| t.is_kw(k))
}

/// Splits a simple-query string into statements: at `;` outside quotes, comments and
/// parentheses. Each statement is returned trimmed, without its `;`; statements made only of
/// spaces and comments are dropped. Text that does not lex (an unterminated quote) is returned
/// as one statement from where the last one ended, so [`crate::translate`] reports the error.
pub fn split(sql: &str) -> Vec<String> {
    let tokens = match tokenize(sql) {
        Ok(t) => t,
        Err(_) => return split_prefix_then_rest(sql),
    };
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut current: Vec<&Token> = Vec::new();
    for t in &tokens {
        match t.kind {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            Tok::Semi if depth <= 0 => {
                push_statement(&mut out, &current);
                current.clear();
                depth = 0;
                continue;
            }
            _ => {}
        }
        current.push(t);
    }
    push_statement(&mut out, &current);
    out
}

fn push_statement(out: &mut Vec<String>, tokens: &[&Token]) {
    if tokens.iter().all(|t| t.is_trivia()) {
        return;
    }
    let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
    out.push(text.trim().to_string());
}

/// For input that does not lex: split what lexes before the first bad `;`-free tail.
fn split_prefix_then_rest(sql: &str) -> Vec<String> {
    // Find the longest prefix ending in ';' that lexes, split it, and keep the rest whole. A
    // prefix ending at a ';' lexes exactly when that ';' is a `;` token, or sits in a `--`
    // comment, among the tokens that lex before the bad one: a token ends where it ends whatever
    // follows it, and a string, quoted name or block comment cut at a ';' inside it is
    // unterminated. So one pass finds it (lexing every such prefix took time quadratic in the
    // statement's length: minutes for a megabyte of ';' after an unterminated quote).
    let mut tokens = Vec::new();
    let _ = lex(sql, &mut tokens);
    let mut best = 0;
    let mut at = 0;
    for t in &tokens {
        match t.kind {
            Tok::Semi => best = at + 1,
            Tok::Comment if t.text.starts_with("--") => {
                if let Some(k) = t.text.rfind(';') {
                    best = at + k + 1;
                }
            }
            _ => {}
        }
        at += t.text.len();
    }
    let mut out = if best > 0 {
        split(&sql[..best])
    } else {
        Vec::new()
    };
    let rest = sql[best..].trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// The index of the next significant token at or after `i`.
pub(crate) fn next_sig(tokens: &[Token], mut i: usize) -> Option<usize> {
    while i < tokens.len() {
        if !tokens[i].is_trivia() {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The index of the previous significant token strictly before `i`.
pub(crate) fn prev_sig(tokens: &[Token], i: usize) -> Option<usize> {
    (0..i).rev().find(|&k| !tokens[k].is_trivia())
}

/// The index of the `)` matching the `(` at `open`.
pub(crate) fn matching_close(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (k, t) in tokens.iter().enumerate().skip(open) {
        match t.kind {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

/// The index of the `(` matching the `)` at `close`.
pub(crate) fn matching_open(tokens: &[Token], close: usize) -> Option<usize> {
    let mut depth = 0i32;
    for k in (0..=close).rev() {
        match tokens[k].kind {
            Tok::Close => depth += 1,
            Tok::Open => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits significant tokens at top-level commas.
pub(crate) fn split_commas(tokens: &[Token]) -> Vec<Vec<Token>> {
    let mut out = vec![Vec::new()];
    let mut depth = 0i32;
    for t in tokens {
        match t.kind {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            Tok::Comma if depth == 0 => {
                out.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = out.last_mut() {
            last.push(t.clone());
        }
    }
    out.retain(|v| !v.is_empty());
    out
}

#[cfg(test)]
mod tests {
    /// The longest prefix ending in ';' that lexes, found by lexing every such prefix (what
    /// `split_prefix_then_rest` did before it took one pass).
    fn best_prefix_by_lexing_each(sql: &str) -> usize {
        let mut best = 0;
        for (i, c) in sql.char_indices() {
            if c == ';' && super::tokenize(&sql[..=i]).is_ok() {
                best = i + 1;
            }
        }
        best
    }

    fn split_by_lexing_each(sql: &str) -> Vec<String> {
        let best = best_prefix_by_lexing_each(sql);
        let mut out = if best > 0 {
            super::split(&sql[..best])
        } else {
            Vec::new()
        };
        let rest = sql[best..].trim();
        if !rest.is_empty() {
            out.push(rest.to_string());
        }
        out
    }

    #[test]
    fn the_prefix_split_of_input_that_does_not_lex_is_the_longest_prefix_that_does() {
        const PIECES: &[&str] = &[
            ";", ";", "'", "\"", "E'", "\\", "$$", "$a$", "$1", "--", "\n", "/*", "*/", " ", "x",
            "1", "1e", "(", ")", "é", "''", ".",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut checked = 0;
        for _ in 0..20_000 {
            let len = 1 + next(14);
            let sql: String = (0..len).map(|_| PIECES[next(PIECES.len())]).collect();
            if super::tokenize(&sql).is_ok() {
                continue;
            }
            checked += 1;
            assert_eq!(super::split(&sql), split_by_lexing_each(&sql), "{sql:?}");
        }
        assert!(checked > 5_000, "only {checked} inputs did not lex");
    }

    #[test]
    fn a_long_statement_that_does_not_lex_splits_in_linear_time() {
        // An unterminated quote, then a megabyte of ';': lexing every prefix took minutes.
        let sql = format!("SELECT 1; '{}", ";".repeat(1 << 20));
        let started = std::time::Instant::now();
        let parts = super::split(&sql);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "SELECT 1");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    use super::*;

    #[test]
    fn tokens_render_back_to_the_input() {
        let sql = "SELECT E'a\\'b', $x$ ; $x$, \"q\"\"i\" -- c;\n/* a /* b */ ; */ $1::int, 1.5e3;";
        let toks = tokenize(sql).unwrap();
        assert_eq!(render(&toks), sql);
        let kinds: Vec<Tok> = significant(&toks).iter().map(|t| t.kind).collect();
        assert_eq!(
            kinds,
            vec![
                Tok::Word,
                Tok::EStr,
                Tok::Comma,
                Tok::DollarStr,
                Tok::Comma,
                Tok::QuotedIdent,
                Tok::Param,
                Tok::Cast,
                Tok::Word,
                Tok::Comma,
                Tok::Number,
                Tok::Semi
            ]
        );
    }

    #[test]
    fn values_decode_quotes_and_escapes() {
        let toks =
            significant(&tokenize(r#"'it''s' E'a\tb\\\x41\'' $t$x'y$t$ "A""b" Foo"#).unwrap());
        let vals: Vec<String> = toks.iter().map(Token::value).collect();
        assert_eq!(vals, vec!["it's", "a\tb\\A'", "x'y", "A\"b", "foo"]);
    }

    #[test]
    fn unterminated_quotes_are_syntax_errors() {
        for bad in [
            "select 'abc",
            "select \"abc",
            "select $$abc",
            "select /* abc",
        ] {
            assert_eq!(tokenize(bad).unwrap_err().sqlstate, "42601", "{bad}");
        }
    }

    #[test]
    fn split_respects_quotes_comments_and_drops_empty_statements() {
        let sql = "BEGIN; select ';' ; -- a;b\n select $$;$$, E'\\';' /* ; */;;  ; \"a;b\"";
        assert_eq!(
            split(sql),
            vec![
                "BEGIN",
                "select ';'",
                "-- a;b\n select $$;$$, E'\\';' /* ; */",
                "\"a;b\""
            ]
        );
        assert!(split(" ;; -- only a comment\n").is_empty());
        assert_eq!(
            split("create rule r as on insert to t do (select 1; select 2)"),
            vec!["create rule r as on insert to t do (select 1; select 2)"]
        );
    }

    #[test]
    fn split_keeps_an_unterminated_tail_whole() {
        assert_eq!(
            split("select 1; select 'oops; select 2"),
            vec!["select 1", "select 'oops; select 2"]
        );
    }
}
