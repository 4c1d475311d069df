//! Token-level work done before and around parsing: repairs for syntax sqlparser misreads,
//! a guard against expressions too deep to handle safely, and the scan for configured table
//! names that backs the "never a silent wrong shard" rule.

use std::collections::BTreeSet;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace, Word};

use crate::config::Config;

/// Longest run of infix operators that may form one left-deep expression. sqlparser builds
/// such chains iteratively, but dropping (and walking) the resulting tree recurses once per
/// operator, so an unbounded chain could overflow a task's stack. Thousands of conditions
/// still fit; longer lists belong in `IN (...)` or `= ANY($1)`.
pub(super) const MAX_OPERATOR_CHAIN: usize = 4000;

/// Tokenizes like sqlparser's own `Parser::try_with_sql` does.
pub(super) fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, String> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|e| e.to_string())
}

/// True for tokens that carry no meaning (whitespace and comments).
fn is_blank(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_) | Token::EOF)
}

/// Whether an expression in `tokens` goes deeper than [`MAX_OPERATOR_CHAIN`]: such text is
/// refused before sqlparser builds its tree.
pub(super) fn too_deep(tokens: &[TokenWithSpan]) -> bool {
    longest_operator_chain(tokens) > MAX_OPERATOR_CHAIN
}

/// How deep the deepest expression of the statement goes, in infix operators: a chain of n
/// operators is a tree n deep, and a parenthesized chain in one of its operands hangs its own
/// depth below that (`(a + … + b) * … * c` nested eight times deep is as deep as the eight
/// chains together). Commas separate expressions: the elements of a list stand side by side.
pub(super) fn longest_operator_chain(tokens: &[TokenWithSpan]) -> usize {
    /// One parenthesis level: the chain of the element being read, the deepest group within
    /// it, and the deepest element finished before it.
    #[derive(Default)]
    struct Level {
        chain: usize,
        below: usize,
        done: usize,
    }
    impl Level {
        fn depth(&self) -> usize {
            self.done.max(self.chain + self.below)
        }
    }
    /// Closes the innermost level into the one around it.
    fn close(levels: &mut Vec<Level>) {
        if let Some(inner) = levels.pop() {
            if let Some(outer) = levels.last_mut() {
                outer.below = outer.below.max(inner.depth());
            }
        }
    }
    let mut levels = vec![Level::default()];
    for t in tokens {
        match &t.token {
            Token::LParen | Token::LBracket | Token::LBrace => levels.push(Level::default()),
            Token::RParen | Token::RBracket | Token::RBrace if levels.len() > 1 => {
                close(&mut levels)
            }
            Token::RParen | Token::RBracket | Token::RBrace => {}
            Token::Comma | Token::SemiColon => {
                if let Some(level) = levels.last_mut() {
                    level.done = level.depth();
                    level.chain = 0;
                    level.below = 0;
                }
            }
            token if counts_as_operator(token) => {
                if let Some(level) = levels.last_mut() {
                    level.chain += 1;
                }
            }
            _ => {}
        }
    }
    // Groups left open (text that will not parse anyway) count as closed.
    while levels.len() > 1 {
        close(&mut levels);
    }
    levels.first().map_or(0, Level::depth)
}

fn counts_as_operator(token: &Token) -> bool {
    match token {
        Token::Word(w) => {
            matches!(
                w.keyword,
                Keyword::AND
                    | Keyword::OR
                    | Keyword::IS
                    | Keyword::COLLATE
                    | Keyword::LIKE
                    | Keyword::ILIKE
                    | Keyword::SIMILAR
                    | Keyword::BETWEEN
                    | Keyword::IN
                    | Keyword::AT
                    | Keyword::OVERLAPS
                    | Keyword::OPERATOR
            ) && w.quote_style.is_none()
        }
        Token::Whitespace(_)
        | Token::EOF
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::Placeholder(_)
        | Token::Period
        | Token::Colon => false,
        _ => true,
    }
}

/// Repairs PostgreSQL syntax that sqlparser 0.63 misreads or rejects, at the token level, so the
/// parser sees an equivalent statement:
/// - `FROM ONLY t` / `UPDATE ONLY t` / `JOIN ONLY t`: sqlparser reads `ONLY` as a table named
///   "only" aliased `t` (a silent misroute), or fails. `ONLY` does not matter for routing.
/// - `TABLE t` as a statement: rewritten to `SELECT * FROM t`.
/// - `COPY … (FREEZE ON, HEADER OFF)`: sqlparser knows only `TRUE`/`FALSE` after a boolean
///   COPY option (`pgbench -i` sends `freeze on`).
/// - `INSERT … OVERRIDING SYSTEM VALUE` (or `USER VALUE`): sqlparser rejects it; it does not
///   matter for routing.
pub(super) fn repair(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let tokens = without_overriding(tokens);
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len() + 4);
    let mut at_statement_start = true;
    for t in tokens {
        if let Token::Word(w) = &t.token {
            if w.quote_style.is_none() && w.keyword == Keyword::ONLY && previous_allows_only(&out) {
                continue;
            }
            if let Some(value) = copy_boolean(w, &out) {
                out.push(TokenWithSpan::wrap(Token::make_keyword(value)));
                continue;
            }
            if w.quote_style.is_none() && w.keyword == Keyword::TABLE && at_statement_start {
                out.push(TokenWithSpan::wrap(Token::make_keyword("SELECT")));
                out.push(TokenWithSpan::wrap(Token::Whitespace(Whitespace::Space)));
                out.push(TokenWithSpan::wrap(Token::Mul));
                out.push(TokenWithSpan::wrap(Token::Whitespace(Whitespace::Space)));
                out.push(TokenWithSpan::wrap(Token::make_keyword("FROM")));
                at_statement_start = false;
                continue;
            }
        }
        if !is_blank(&t.token) {
            at_statement_start = matches!(t.token, Token::SemiColon);
        }
        out.push(t);
    }
    out
}

/// `tokens` without `OVERRIDING SYSTEM VALUE` / `OVERRIDING USER VALUE` clauses.
fn without_overriding(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let word = |t: &TokenWithSpan, values: &[&str]| match &t.token {
        Token::Word(w) if w.quote_style.is_none() => {
            values.iter().any(|v| w.value.eq_ignore_ascii_case(v))
        }
        _ => false,
    };
    if !tokens.iter().any(|t| word(t, &["OVERRIDING"])) {
        return tokens;
    }
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if word(&tokens[i], &["OVERRIDING"]) {
            let words: Vec<usize> = (i + 1..tokens.len())
                .filter(|&j| !is_blank(&tokens[j].token))
                .take(2)
                .collect();
            if let [kind, value] = words[..] {
                if word(&tokens[kind], &["SYSTEM", "USER"]) && word(&tokens[value], &["VALUE"]) {
                    i = value + 1;
                    continue;
                }
            }
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    out
}

/// `TRUE` or `FALSE` for an `ON` or `OFF` that follows a boolean COPY option.
fn copy_boolean(word: &Word, out: &[TokenWithSpan]) -> Option<&'static str> {
    if word.quote_style.is_some() {
        return None;
    }
    let value = match word.value.to_ascii_lowercase().as_str() {
        "on" => "TRUE",
        "off" => "FALSE",
        _ => return None,
    };
    match out
        .iter()
        .rev()
        .find(|t| !is_blank(&t.token))
        .map(|t| &t.token)
    {
        Some(Token::Word(option))
            if option.quote_style.is_none()
                && matches!(option.keyword, Keyword::FREEZE | Keyword::HEADER) =>
        {
            Some(value)
        }
        _ => None,
    }
}

/// Whether an `ONLY` following the tokens so far is the inheritance keyword before a table name.
fn previous_allows_only(out: &[TokenWithSpan]) -> bool {
    match out.iter().rev().find(|t| !is_blank(&t.token)).map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => matches!(
            w.keyword,
            Keyword::FROM | Keyword::JOIN | Keyword::UPDATE | Keyword::TABLE | Keyword::TRUNCATE | Keyword::INTO
        ),
        Some(Token::Comma) => out.iter().rev().any(|t| matches!(&t.token, Token::Word(w) if w.keyword == Keyword::FROM && w.quote_style.is_none())),
        _ => false,
    }
}

/// Names of configured tables that appear as identifiers (any part of a dotted name) in the
/// tokens, as config keys.
pub(super) fn configured_words(config: &Config, tokens: &[TokenWithSpan]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for t in tokens {
        if let Token::Word(w) = &t.token {
            let key = w.value.to_ascii_lowercase();
            if config.tables.contains_key(&key) {
                found.insert(key);
            }
        }
    }
    found
}

/// Like [`configured_words`] for text the tokenizer rejects: every run of identifier characters,
/// including inside strings and comments (erring towards "mentioned").
pub(super) fn configured_words_raw(config: &Config, sql: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for word in sql.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')) {
        let key = word.to_ascii_lowercase();
        if !key.is_empty() && config.tables.contains_key(&key) {
            found.insert(key);
        }
    }
    found
}

/// The first `n` words of the statement, upper-cased (keywords and identifiers alike).
pub(super) fn leading_words(tokens: &[TokenWithSpan], n: usize) -> Vec<String> {
    tokens
        .iter()
        .filter(|t| !is_blank(&t.token))
        .take(n)
        .map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            other => other.to_string(),
        })
        .collect()
}

/// The first `n` words of raw text, upper-cased, for text the tokenizer rejects.
pub(super) fn leading_words_raw(sql: &str, n: usize) -> Vec<String> {
    sql.split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .filter(|w| !w.is_empty())
        .take(n)
        .map(str::to_ascii_uppercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(tokens: &[TokenWithSpan]) -> String {
        tokens.iter().map(|t| t.token.to_string()).collect()
    }

    #[test]
    fn repairs_only_and_table() {
        let cases = [
            ("SELECT * FROM ONLY users u", "SELECT * FROM  users u"),
            ("UPDATE ONLY users SET a = 1", "UPDATE  users SET a = 1"),
            (
                "SELECT 1 FETCH FIRST 1 ROWS ONLY",
                "SELECT 1 FETCH FIRST 1 ROWS ONLY",
            ),
            ("BEGIN READ ONLY", "BEGIN READ ONLY"),
            ("TABLE users", "SELECT * FROM users"),
            ("SELECT 1; TABLE users", "SELECT 1; SELECT * FROM users"),
            (
                "INSERT INTO t (id) OVERRIDING SYSTEM VALUE VALUES (1)",
                "INSERT INTO t (id)  VALUES (1)",
            ),
            ("SELECT overriding FROM t", "SELECT overriding FROM t"),
        ];
        for (input, want) in cases {
            let tokens = tokenize(input).unwrap_or_default();
            assert_eq!(text(&repair(tokens)), want, "{input}");
        }
    }

    #[test]
    fn measures_operator_chains() {
        let tokens = tokenize("SELECT * FROM t WHERE a = 1 OR a = 2 OR (b = 3 AND c = 4)")
            .unwrap_or_default();
        // `*`, `=`, `OR`, `=`, `OR` outside, and `=`, `AND`, `=` in the operand below them.
        assert_eq!(longest_operator_chain(&tokens), 8);
        let tokens = tokenize("SELECT f(a + b, c + d), e").unwrap_or_default();
        assert_eq!(longest_operator_chain(&tokens), 1);
        let tokens = tokenize("SELECT (1 + 2, (3 + 4 + 5)), 6 + 7").unwrap_or_default();
        assert_eq!(longest_operator_chain(&tokens), 2);
    }

    #[test]
    fn nested_chains_add_up() {
        // Nine levels of 3,990 operators each: no level alone is over the limit, but the
        // tree is 35,910 deep, which overflowed a worker's stack.
        let mut sql = String::from("1");
        for _ in 0..9 {
            sql = format!("({sql}{})", " + 1".repeat(3990));
        }
        let tokens = tokenize(&format!("SELECT {sql}")).unwrap_or_default();
        assert_eq!(longest_operator_chain(&tokens), 9 * 3990);
        let tokens = tokenize("SELECT (((1 + 2) + 3) + 4), ((5))").unwrap_or_default();
        assert_eq!(longest_operator_chain(&tokens), 3);
    }
}
