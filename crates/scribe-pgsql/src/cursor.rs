//! A cursor over significant tokens, for the small recursive-descent parsers of the DDL,
//! session and COPY statements.

use crate::lexer::{matching_close, Tok, Token};

/// A position in a slice of significant tokens (no spaces or comments).
pub(crate) struct Cursor<'a> {
    pub toks: &'a [Token],
    pub i: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(toks: &'a [Token]) -> Self {
        Cursor { toks, i: 0 }
    }

    /// The current token.
    pub fn peek(&self) -> Option<&'a Token> {
        self.toks.get(self.i)
    }

    /// The token `n` places ahead.
    pub fn peek_at(&self, n: usize) -> Option<&'a Token> {
        self.toks.get(self.i + n)
    }

    /// Whether the current token is keyword `kw`.
    pub fn is_kw(&self, kw: &str) -> bool {
        self.peek().is_some_and(|t| t.is_kw(kw))
    }

    /// Whether the next tokens are the keywords `kws`.
    pub fn is_kws(&self, kws: &[&str]) -> bool {
        kws.iter()
            .enumerate()
            .all(|(n, kw)| self.peek_at(n).is_some_and(|t| t.is_kw(kw)))
    }

    /// Consumes keyword `kw` if it is next.
    pub fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.i += 1;
        }
        yes
    }

    /// Consumes the keywords `kws` if they are all next.
    pub fn eat_kws(&mut self, kws: &[&str]) -> bool {
        let yes = self.is_kws(kws);
        if yes {
            self.i += kws.len();
        }
        yes
    }

    /// Consumes one of `kws`, returning it lower-cased.
    pub fn eat_one_of(&mut self, kws: &[&str]) -> Option<String> {
        let t = self.peek()?;
        let hit = kws.iter().find(|k| t.is_kw(k))?;
        self.i += 1;
        Some(hit.to_ascii_lowercase())
    }

    /// Consumes and returns the next token.
    pub fn next(&mut self) -> Option<&'a Token> {
        let t = self.toks.get(self.i)?;
        self.i += 1;
        Some(t)
    }

    /// Whether the current token is of kind `k`.
    pub fn is(&self, k: Tok) -> bool {
        self.peek().is_some_and(|t| t.kind == k)
    }

    /// Whether all tokens are consumed.
    pub fn at_end(&self) -> bool {
        self.i >= self.toks.len()
    }

    /// The remaining tokens.
    pub fn rest(&self) -> &'a [Token] {
        self.toks.get(self.i..).unwrap_or(&[])
    }

    /// If the current token is `(`, consumes the group and returns the tokens inside it.
    pub fn group(&mut self) -> Option<&'a [Token]> {
        if !self.is(Tok::Open) {
            return None;
        }
        let close = matching_close(self.toks, self.i)?;
        let inner = &self.toks[self.i + 1..close];
        self.i = close + 1;
        Some(inner)
    }

    /// Consumes a possibly qualified name (`a`, `"A"`, `s.a`), returning its tokens.
    pub fn name(&mut self) -> Option<&'a [Token]> {
        let start = self.i;
        if !self
            .peek()
            .is_some_and(|t| matches!(t.kind, Tok::Word | Tok::QuotedIdent))
        {
            return None;
        }
        self.i += 1;
        while self.is(Tok::Dot)
            && self
                .peek_at(1)
                .is_some_and(|t| matches!(t.kind, Tok::Word | Tok::QuotedIdent))
        {
            self.i += 2;
        }
        Some(&self.toks[start..self.i])
    }
}
