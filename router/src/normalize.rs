//! Literal-free statement text for the plan cache.
//!
//! Simple-protocol clients put constants in the SQL (`SELECT … WHERE id = 42`), so every
//! statement text is new and would be parsed from scratch. Replacing the constants that can
//! matter for routing — comparison operands, `IN (…)` lists and `VALUES (…)` rows — by `$n`
//! gives one text per statement shape; its plan is cached once and routed with the constants as
//! text parameters. Other constants (`LIMIT 10`, `uuid '…'`, negative numbers) stay in the text:
//! they only make the cache key more specific, never the route different.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A statement with its routing-relevant constants replaced by `$1`, `$2`, ….
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub text: String,
    /// The constants, in parameter order, as text parameters carry them.
    pub literals: Vec<String>,
}

/// What a parenthesis opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// `IN (…)` or a `VALUES` row: its elements are constants worth replacing.
    List,
    Other,
}

/// The literal-free form of `sql`, or `None` when it has no constant to replace or is not a
/// data statement (SET, DDL… are left alone).
pub fn normalize(sql: &str) -> Option<Normalized> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize().ok()?;
    let first = tokens.iter().find(|t| !matches!(t, Token::Whitespace(_)))?;
    let Token::Word(word) = first else {
        return None;
    };
    if !matches!(
        word.keyword,
        Keyword::SELECT | Keyword::INSERT | Keyword::UPDATE | Keyword::DELETE | Keyword::WITH
    ) {
        return None;
    }
    let mut text = String::with_capacity(sql.len());
    let mut literals = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    // Depth at which a `VALUES` list is open, so `(…), (…)` rows are recognised.
    let mut values_depth: Option<usize> = None;
    let mut previous: Option<&Token> = None;
    for token in &tokens {
        if matches!(token, Token::Placeholder(_)) {
            return None;
        }
        let replace = match token {
            Token::Number(..) | Token::SingleQuotedString(_) => match previous {
                Some(
                    Token::Eq | Token::Neq | Token::Lt | Token::Gt | Token::LtEq | Token::GtEq,
                ) => true,
                Some(Token::LParen | Token::Comma) => groups.last() == Some(&Group::List),
                _ => false,
            },
            _ => false,
        };
        if replace {
            literals.push(match token {
                Token::Number(n, _) => n.clone(),
                Token::SingleQuotedString(s) => s.clone(),
                _ => String::new(),
            });
            text.push_str(&format!("${}", literals.len()));
        } else {
            text.push_str(&token.to_string());
        }
        match token {
            Token::LParen => {
                let list = match previous {
                    Some(Token::Word(w)) => matches!(w.keyword, Keyword::IN | Keyword::VALUES),
                    Some(Token::Comma) => values_depth == Some(groups.len()),
                    _ => false,
                };
                if matches!(previous, Some(Token::Word(w)) if w.keyword == Keyword::VALUES) {
                    values_depth = Some(groups.len());
                }
                groups.push(if list { Group::List } else { Group::Other });
            }
            Token::RParen => {
                groups.pop();
            }
            Token::Word(w)
                if values_depth == Some(groups.len()) && w.keyword != Keyword::VALUES =>
            {
                values_depth = None
            }
            _ => {}
        }
        if !matches!(token, Token::Whitespace(_)) {
            previous = Some(token);
        }
    }
    (!literals.is_empty()).then_some(Normalized { text, literals })
}

/// Whether `sql` parses; a normalized text that does not is not used.
pub fn parses(sql: &str) -> bool {
    Parser::parse_sql(&PostgreSqlDialect {}, sql).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (statement, expected literal-free text and constants)
    type Case<'a> = (&'a str, Option<(&'a str, &'a [&'a str])>);

    #[test]
    fn constants_that_route_become_parameters() {
        let cases: &[Case] = &[
            (
                "SELECT name FROM users WHERE id = 42",
                Some(("SELECT name FROM users WHERE id = $1", &["42"])),
            ),
            (
                "select * from t where a = 'x''y' and b in (1, 2,3)",
                Some((
                    "select * from t where a = $1 and b in ($2, $3,$4)",
                    &["x'y", "1", "2", "3"],
                )),
            ),
            (
                "INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b') RETURNING id",
                Some((
                    "INSERT INTO users (id, name) VALUES ($1, $2), ($3, $4) RETURNING id",
                    &["1", "a", "2", "b"],
                )),
            ),
            (
                "UPDATE users SET name = 'n' WHERE id = 7",
                Some(("UPDATE users SET name = $1 WHERE id = $2", &["n", "7"])),
            ),
            ("SELECT * FROM t WHERE id = -5 LIMIT 10", None),
            (
                "SELECT * FROM t WHERE u = uuid 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                None,
            ),
            ("SELECT coalesce(a, 1) FROM t", None),
            ("SET statement_timeout = 5", None),
            ("SELECT * FROM t WHERE id = $1", None),
            ("SELECT 1", None),
        ];
        for (sql, want) in cases {
            let got = normalize(sql);
            let want = want.map(|(text, literals)| Normalized {
                text: text.to_string(),
                literals: literals.iter().map(|l| l.to_string()).collect(),
            });
            assert_eq!(got, want, "{sql}");
        }
    }

    #[test]
    fn function_arguments_inside_values_rows_stay() {
        let n = normalize("INSERT INTO t (a, b) VALUES (1, lower('X')), (2, 'y') ON CONFLICT (a) DO UPDATE SET b = 'z'");
        let n = n.map(|n| (n.text, n.literals.len()));
        assert_eq!(
            n,
            Some(("INSERT INTO t (a, b) VALUES ($1, lower('X')), ($2, $3) ON CONFLICT (a) DO UPDATE SET b = $4".to_string(), 4))
        );
    }
}
