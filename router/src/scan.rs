//! A lexer for PostgreSQL statement text that only finds where tokens start and end.
//!
//! The plan cache needs the literal-free shape of every simple-protocol statement (see
//! [`crate::normalize`]); tokenizing with sqlparser allocates a `String` per token and
//! re-displays each one, which cost more than everything else the proxy does per transaction.
//! This scanner follows PostgreSQL's own lexical rules (`scan.l`: comments nest, `''` inside
//! strings, `E'…'` backslash escapes, dollar quoting, how operators end) and yields borrowed
//! slices, allocating nothing. Text it cannot scan (an unterminated string or comment) yields
//! `None`, and callers fall back to the full parser.

/// What a token is, as far as finding constants needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Whitespace or a comment.
    Blank,
    /// An identifier or keyword; `quoted` for `"…"` (never a keyword).
    Word { quoted: bool },
    /// A numeric constant. `glued` when an identifier character follows it at once
    /// (`0x1F`, `1_000`, `12abc`): versions of PostgreSQL read those differently.
    Number { glued: bool },
    /// A standard string constant `'…'`.
    String,
    /// Any other string constant: `E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'`, `$tag$…$tag$`.
    OtherString,
    /// A parameter, `$1`.
    Param,
    /// An operator (`=`, `<>`, `||`, `->>`…), cut where PostgreSQL cuts it.
    Operator,
    /// One of `( ) , ; [ ] . :` or `::`, or any other single character.
    Punct,
}

/// One token: its kind and its exact text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: Kind,
    pub text: &'a str,
}

/// Iterates over the tokens of a statement; `Some(Err(()))` ends a text that does not scan.
#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    sql: &'a str,
    pos: usize,
}

/// Characters PostgreSQL builds operators from.
const OP_CHARS: &[u8] = b"~!@#^&|`?+-*/%<>=";
/// An operator containing one of these may end in `+` or `-`.
const OP_KEEPS_SIGN: &[u8] = b"~!@#^&|`?%";

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of `sql`.
    pub fn new(sql: &'a str) -> Scanner<'a> {
        Scanner { sql, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.sql.as_bytes()
    }

    fn at(&self, offset: usize) -> Option<u8> {
        self.bytes().get(self.pos + offset).copied()
    }

    /// The end of the token starting at `self.pos`, and its kind.
    fn token_end(&self) -> Option<(usize, Kind)> {
        let bytes = self.bytes();
        let start = self.pos;
        let first = bytes[start];
        let second = self.at(1);
        let found = match first {
            b if is_blank(b) => (self.run_from(start, is_blank), Kind::Blank),
            b'-' if second == Some(b'-') => {
                let end = bytes[start..]
                    .iter()
                    .position(|b| matches!(b, b'\n' | b'\r'))
                    .map_or(bytes.len(), |p| start + p);
                (end, Kind::Blank)
            }
            b'/' if second == Some(b'*') => (block_comment_end(bytes, start)?, Kind::Blank),
            b'\'' => (quoted_end(bytes, start + 1, b'\'', false)?, Kind::String),
            b'"' => (
                quoted_end(bytes, start + 1, b'"', false)?,
                Kind::Word { quoted: true },
            ),
            b'$' => self.dollar()?,
            b'0'..=b'9' => self.number(),
            b'.' if second.is_some_and(|b| b.is_ascii_digit()) => self.number(),
            b if is_ident_start(b) => self.word()?,
            b':' if second == Some(b':') => (start + 2, Kind::Punct),
            b if OP_CHARS.contains(&b) => (operator_end(bytes, start), Kind::Operator),
            _ => (start + char_len(self.sql, start), Kind::Punct),
        };
        Some(found)
    }

    /// The end of a run of bytes `keep` accepts, from `from`.
    fn run_from(&self, from: usize, keep: fn(u8) -> bool) -> usize {
        let bytes = self.bytes();
        bytes[from..]
            .iter()
            .position(|b| !keep(*b))
            .map_or(bytes.len(), |p| from + p)
    }

    /// `$1`, `$tag$…$tag$` or `$$…$$`.
    fn dollar(&self) -> Option<(usize, Kind)> {
        let bytes = self.bytes();
        let start = self.pos;
        if self.at(1).is_some_and(|b| b.is_ascii_digit()) {
            return Some((
                self.run_from(start + 1, |b| b.is_ascii_digit()),
                Kind::Param,
            ));
        }
        let tag_end = if self.at(1).is_some_and(is_ident_start) {
            self.run_from(start + 2, |b| is_ident_start(b) || b.is_ascii_digit())
        } else {
            start + 1
        };
        if bytes.get(tag_end) != Some(&b'$') {
            // A lone `$` is not valid SQL; let the server say so.
            return Some((start + 1, Kind::Punct));
        }
        let tag = &bytes[start..=tag_end];
        let body = tag_end + 1;
        let close = find(&bytes[body..], tag)?;
        Some((body + close + tag.len(), Kind::OtherString))
    }

    /// A numeric constant, as PostgreSQL 15 reads one.
    fn number(&self) -> (usize, Kind) {
        let bytes = self.bytes();
        let digits = |from: usize| self.run_from(from, |b| b.is_ascii_digit());
        let mut end = digits(self.pos);
        // `1..5` is an integer followed by `..`, not a decimal.
        if bytes.get(end) == Some(&b'.') && bytes.get(end + 1) != Some(&b'.') {
            end = digits(end + 1);
        }
        if matches!(bytes.get(end), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
            if bytes.get(end + 1 + sign).is_some_and(u8::is_ascii_digit) {
                end = digits(end + 1 + sign);
            }
        }
        let glued = bytes.get(end).is_some_and(|b| is_ident_char(*b));
        (end, Kind::Number { glued })
    }

    /// An identifier or keyword, or a string with a prefix (`E'…'`, `U&"…"`…).
    fn word(&self) -> Option<(usize, Kind)> {
        let bytes = self.bytes();
        let start = self.pos;
        let end = self.run_from(start, is_ident_char);
        let prefix = &bytes[start..end];
        let next = bytes.get(end).copied();
        if prefix.len() == 1 && next == Some(b'\'') {
            return match prefix[0].to_ascii_lowercase() {
                b'e' => Some((quoted_end(bytes, end + 1, b'\'', true)?, Kind::OtherString)),
                b'b' | b'x' | b'n' => {
                    Some((quoted_end(bytes, end + 1, b'\'', false)?, Kind::OtherString))
                }
                _ => Some((end, Kind::Word { quoted: false })),
            };
        }
        if prefix.eq_ignore_ascii_case(b"u") && next == Some(b'&') {
            match bytes.get(end + 1) {
                Some(b'\'') => {
                    return Some((quoted_end(bytes, end + 2, b'\'', false)?, Kind::OtherString))
                }
                Some(b'"') => {
                    return Some((
                        quoted_end(bytes, end + 2, b'"', false)?,
                        Kind::Word { quoted: true },
                    ))
                }
                _ => {}
            }
        }
        Some((end, Kind::Word { quoted: false }))
    }
}

impl<'a> Iterator for Scanner<'a> {
    type Item = Result<Token<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.sql.len() {
            return None;
        }
        let Some((end, kind)) = self.token_end() else {
            self.pos = self.sql.len();
            return Some(Err(()));
        };
        // Every token ends on a character boundary: each rule stops at an ASCII byte or at the
        // end of the text.
        let token = self.sql.get(self.pos..end).map(|text| Token { kind, text });
        self.pos = end;
        Some(token.ok_or(()))
    }
}

/// The end of a quoted string or identifier whose body starts at `from`: a doubled quote is
/// part of it, and so is a backslash-escaped character in `E'…'` strings.
fn quoted_end(bytes: &[u8], from: usize, quote: u8, backslashes: bool) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if backslashes => i += 2,
            b if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The end of a `/* … */` comment starting at `start`; they nest.
fn block_comment_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The end of the operator starting at `start`, cut as PostgreSQL cuts it: before a comment
/// start, and without trailing `+`/`-` unless it holds a character that allows them (so
/// `=-5` is `=` then `-5`).
fn operator_end(bytes: &[u8], start: usize) -> usize {
    let mut end = start;
    while end < bytes.len() && OP_CHARS.contains(&bytes[end]) {
        if end > start && matches!(&bytes[end..], [b'-', b'-', ..] | [b'/', b'*', ..]) {
            break;
        }
        end += 1;
    }
    let op = &bytes[start..end];
    if op.len() > 1 && !op.iter().any(|b| OP_KEEPS_SIGN.contains(b)) {
        while end > start + 1 && matches!(bytes[end - 1], b'+' | b'-') {
            end -= 1;
        }
    }
    end
}

/// The byte length of the character at `at`.
fn char_len(text: &str, at: usize) -> usize {
    text.get(at..)
        .and_then(|rest| rest.chars().next())
        .map_or(1, char::len_utf8)
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(sql: &str) -> Option<Vec<(Kind, &str)>> {
        Scanner::new(sql)
            .map(|t| t.map(|t| (t.kind, t.text)))
            .collect::<Result<_, _>>()
            .ok()
    }

    fn significant(sql: &str) -> Vec<&str> {
        tokens(sql)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| *k != Kind::Blank)
            .map(|(_, t)| t)
            .collect()
    }

    #[test]
    fn tokens_cover_the_text_exactly() {
        let sql = "SELECT \"a\"\"b\", 'it''s', E'x\\'y', $q$ a ' b $q$, $$x$$ /* c /* d */ */ -- e\n FROM t WHERE id=-5 AND u&'x' = U&\"y\" AND a::int <> $1;";
        let scanned = tokens(sql).map(|t| t.iter().map(|(_, s)| *s).collect::<String>());
        assert_eq!(scanned.as_deref(), Some(sql));
    }

    #[test]
    fn operators_end_where_postgresql_ends_them() {
        assert_eq!(significant("a=-5"), ["a", "=", "-", "5"]);
        assert_eq!(significant("a<>-5"), ["a", "<>", "-", "5"]);
        assert_eq!(significant("a @- 5"), ["a", "@-", "5"]);
        assert_eq!(significant("a=--x\n1"), ["a", "=", "1"]);
        assert_eq!(significant("a*/*x*/2"), ["a", "*", "2"]);
        assert_eq!(significant("j->>'k'"), ["j", "->>", "'k'"]);
        assert_eq!(significant("x::int"), ["x", "::", "int"]);
    }

    #[test]
    fn constants_are_told_apart() {
        let kinds = |sql| {
            tokens(sql)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds("1.5e-3"), [Kind::Number { glued: false }]);
        assert_eq!(kinds(".5"), [Kind::Number { glued: false }]);
        assert_eq!(
            kinds("0x1F"),
            [Kind::Number { glued: true }, Kind::Word { quoted: false }]
        );
        assert_eq!(kinds("1..2").first(), Some(&Kind::Number { glued: false }));
        assert_eq!(kinds("'a'"), [Kind::String]);
        for other in ["E'a\\'b'", "b'101'", "X'1F'", "N'a'", "U&'a'", "$t$'$t$"] {
            assert_eq!(kinds(other), [Kind::OtherString], "{other}");
        }
        assert_eq!(kinds("$12"), [Kind::Param]);
        assert_eq!(kinds("a$b"), [Kind::Word { quoted: false }]);
        assert_eq!(kinds("é"), [Kind::Word { quoted: false }]);
    }

    #[test]
    fn unterminated_text_does_not_scan() {
        for bad in ["'abc", "E'a\\'", "\"x", "/* a /* b */", "$q$ body"] {
            assert_eq!(tokens(bad), None, "{bad}");
        }
    }
}
