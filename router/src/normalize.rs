//! Literal-free statement text for the plan cache.
//!
//! Simple-protocol clients put constants in the SQL (`SELECT … WHERE id = 42`), so every
//! statement text is new and would be parsed from scratch. Replacing the constants that can
//! matter for routing — comparison operands, `IN (…)` lists and `VALUES (…)` rows — by `$n`
//! gives one text per statement shape; its plan is cached once and routed with the constants as
//! text parameters. Other constants (`LIMIT 10`, `uuid '…'`, negative numbers) stay in the text:
//! they only make the cache key more specific, never the route different.

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::scan::{Kind, Scanner, Token};

/// A statement's constants, in parameter order, as text parameters carry them. Nearly every
/// statement has one or two: kept in place, so routing a statement allocates no list.
pub type Literals<'a> = SmallVec<[Cow<'a, str>; 2]>;

/// A statement with its routing-relevant constants replaced by `$1`, `$2`, ….
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// The statement's own text but for the replaced constants: the plan cache's key.
    pub text: String,
    /// The constants, in parameter order, as text parameters carry them.
    pub literals: Literals<'a>,
    /// Where each parameter starts in `text` (see [`literals_in`]).
    pub holes: Vec<usize>,
}

/// What a parenthesis opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// `IN (…)` or a `VALUES` row: its elements are constants worth replacing.
    List,
    Other,
}

/// Comparison operators whose constant operand may be a shard key.
const COMPARISONS: &[&str] = &["=", "<>", "!=", "<", ">", "<=", ">="];

/// The literal-free form of `sql`, or `None` when it has no constant to replace, is not a
/// data statement (SET, DDL… are left alone), has parameters of its own, or does not scan.
pub fn normalize(sql: &str) -> Option<Normalized<'_>> {
    let mut scanner = Scanner::new(sql);
    let first = significant(&mut scanner)?;
    let data = first.kind == (Kind::Word { quoted: false })
        && ["select", "insert", "update", "delete", "with"]
            .iter()
            .any(|k| first.text.eq_ignore_ascii_case(k));
    if !data {
        return None;
    }
    let mut text = String::with_capacity(sql.len() + 8);
    text.push_str(first.text);
    let mut literals = Literals::new();
    let mut holes = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    // Depth at which a `VALUES` list is open, so `(…), (…)` rows are recognised.
    let mut values_depth: Option<usize> = None;
    let mut previous = first;
    while let Some(token) = scanner.next() {
        let token = token.ok()?;
        let constant = match token.kind {
            Kind::Param => return None,
            Kind::Number { glued } => !glued,
            Kind::String => !continues(&scanner),
            _ => false,
        };
        let replace = constant
            && match (previous.kind, previous.text) {
                (Kind::Operator, op) => COMPARISONS.contains(&op),
                (Kind::Punct, "(" | ",") => groups.last() == Some(&Group::List),
                _ => false,
            };
        if replace {
            literals.push(value_of(token));
            holes.push(text.len());
            text.push('$');
            push_decimal(&mut text, literals.len());
        } else {
            text.push_str(token.text);
        }
        match (token.kind, token.text) {
            (Kind::Punct, "(") => {
                let list = match (previous.kind, previous.text) {
                    (Kind::Word { quoted: false }, word) => {
                        word.eq_ignore_ascii_case("in") || word.eq_ignore_ascii_case("values")
                    }
                    (Kind::Punct, ",") => values_depth == Some(groups.len()),
                    _ => false,
                };
                if is_keyword(previous, "values") {
                    values_depth = Some(groups.len());
                }
                groups.push(if list { Group::List } else { Group::Other });
            }
            (Kind::Punct, ")") => {
                groups.pop();
            }
            (Kind::Word { .. }, _)
                if values_depth == Some(groups.len()) && !is_keyword(token, "values") =>
            {
                values_depth = None
            }
            _ => {}
        }
        if token.kind != Kind::Blank {
            previous = token;
        }
    }
    (!literals.is_empty()).then_some(Normalized {
        text,
        literals,
        holes,
    })
}

/// The constants of `sql` when it has the shape `text` with parameters at `holes` (what
/// [`normalize`] returned for an earlier statement): `normalize(sql)`'s literals when its text
/// is `text`, `None` otherwise. Found by comparing the text between the parameters and
/// scanning only the constants, without building the text again — a client's next
/// statement nearly always has the shape of its last.
///
/// The scanner reads a token from where it starts alone, so equal text between equal token
/// boundaries scans to equal tokens, and a constant standing where the shape has a parameter
/// follows the same tokens the replaced one followed, so [`normalize`] would replace it too.
pub fn literals_in<'s>(text: &str, holes: &[usize], sql: &'s str) -> Option<Literals<'s>> {
    let mut scanner = Scanner::new(sql);
    let first = significant(&mut scanner)?;
    // The shape starts at the statement's first token (comments before it are not kept).
    let mut pos = first.text.as_ptr() as usize - sql.as_ptr() as usize;
    let mut shape_pos = 0;
    let mut literals = Literals::with_capacity(holes.len());
    for (i, &hole) in holes.iter().enumerate() {
        let between = text.get(shape_pos..hole)?;
        let rest = sql.get(pos..)?;
        if !rest.starts_with(between) {
            return None;
        }
        pos += between.len();
        let mut scanner = Scanner::new(sql.get(pos..)?);
        let token = scanner.next()?.ok()?;
        let constant = match token.kind {
            Kind::Number { glued } => !glued,
            Kind::String => !continues(&scanner),
            _ => false,
        };
        if !constant {
            return None;
        }
        literals.push(value_of(token));
        pos += token.text.len();
        shape_pos = hole + 1 + decimal_len(i + 1);
    }
    (sql.get(pos..)? == text.get(shape_pos..)?).then_some(literals)
}

/// How many digits `n` has in decimal.
fn decimal_len(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |digits| digits as usize + 1)
}

/// The next token that is not whitespace or a comment.
fn significant<'a>(scanner: &mut Scanner<'a>) -> Option<Token<'a>> {
    scanner
        .find(|t| {
            !matches!(
                t,
                Ok(Token {
                    kind: Kind::Blank,
                    ..
                })
            )
        })?
        .ok()
}

/// Whether the string just scanned goes on in the next one: PostgreSQL joins `'a'` and `'b'`
/// separated by whitespace holding a newline into one constant. Such text is left alone.
fn continues(scanner: &Scanner<'_>) -> bool {
    let mut ahead = scanner.clone();
    let mut newline = false;
    for token in ahead.by_ref() {
        match token {
            Ok(Token {
                kind: Kind::Blank,
                text,
            }) => newline |= text.contains(['\n', '\r']),
            Ok(Token { kind, .. }) => return newline && kind == Kind::String,
            Err(()) => return false,
        }
    }
    false
}

fn is_keyword(token: Token<'_>, keyword: &str) -> bool {
    token.kind == (Kind::Word { quoted: false }) && token.text.eq_ignore_ascii_case(keyword)
}

/// A constant's value as a text parameter carries it.
fn value_of(token: Token<'_>) -> Cow<'_, str> {
    match token.kind {
        Kind::String => {
            let body = token
                .text
                .strip_prefix('\'')
                .and_then(|t| t.strip_suffix('\''))
                .unwrap_or(token.text);
            if body.contains('\'') {
                Cow::Owned(body.replace("''", "'"))
            } else {
                Cow::Borrowed(body)
            }
        }
        _ => Cow::Borrowed(token.text),
    }
}

/// Appends `n` in decimal, without going through `fmt`.
fn push_decimal(text: &mut String, n: usize) {
    if n >= 10 {
        push_decimal(text, n / 10);
    }
    text.push(char::from(b'0' + (n % 10) as u8));
}

/// Whether `sql` parses (and safely: see [`crate::analyze::parse`]); a normalized text that
/// does not is not used.
pub fn parses(sql: &str) -> bool {
    crate::analyze::parse(sql).is_some()
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
            (
                "/* c */ SELECT a FROM t WHERE k=-1 OR k= 2 OR k<>'b' -- 'z'\n AND j->>'f' = E'q' AND k IN ( 3 ,4 )",
                Some((
                    "SELECT a FROM t WHERE k=-1 OR k= $1 OR k<>$2 -- 'z'\n AND j->>'f' = E'q' AND k IN ( $3 ,$4 )",
                    &["2", "b", "3", "4"],
                )),
            ),
            (
                "WITH x AS (SELECT 1) SELECT * FROM t WHERE k = 1.5e3 AND s = $$a$$ AND n = 0x1F",
                Some((
                    "WITH x AS (SELECT 1) SELECT * FROM t WHERE k = $1 AND s = $$a$$ AND n = 0x1F",
                    &["1.5e3"],
                )),
            ),
            (
                "delete from \"In\" where \"In\" = 'é' and x in('1')",
                Some((
                    "delete from \"In\" where \"In\" = $1 and x in($2)",
                    &["é", "1"],
                )),
            ),
            // PostgreSQL joins strings split over lines: such text is planned as it is.
            ("SELECT * FROM t WHERE k = 'a'\n 'b'", None),
            ("SELECT * FROM t WHERE k = 'unterminated", None),
            ("  ", None),
        ];
        for (sql, want) in cases {
            let got = normalize(sql).map(|n| (n.text, n.literals));
            let want = want.map(|(text, literals)| {
                let literals: Literals = literals.iter().map(|l| Cow::Borrowed(*l)).collect();
                (text.to_string(), literals)
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

    /// Statements of a few shapes, each with constants of every kind the scanner knows.
    fn corpus() -> Vec<String> {
        let values = [
            "1",
            "42",
            "-5",
            "1.5e3",
            "0x1F",
            "12abc",
            "'a'",
            "'x''y'",
            "''",
            "'é'",
            "'a'\n 'b'",
            "'a' 'b'",
            "E'q'",
            "$$d$$",
            "$1",
            "NULL",
            "(1)",
            "'unterminated",
        ];
        let templates = [
            "SELECT name FROM users WHERE id = {}",
            "select * from t where a = {} and b in ({}, {},{})",
            "INSERT INTO users (id, name) VALUES ({}, {}), ({}, 'b') RETURNING id",
            "/* lead */ UPDATE users SET name = {} WHERE id = {} -- tail {}",
            "DELETE FROM t WHERE k<>{} OR k IN ( {} ,{} ) LIMIT 10",
            "WITH x AS (SELECT {}) SELECT * FROM t WHERE k = {}",
        ];
        let mut corpus = Vec::new();
        for template in templates {
            let holes = template.matches("{}").count();
            for round in 0..values.len() {
                let mut sql = template.to_string();
                for i in 0..holes {
                    sql = sql.replacen("{}", values[(round + i * 7) % values.len()], 1);
                }
                corpus.push(sql);
            }
        }
        corpus.push("  SELECT name FROM users WHERE id = 7".into());
        corpus.push("SELECT name FROM users WHERE id = 7 ".into());
        corpus.push("SELECT name FROM users WHERE id = 7;".into());
        corpus.push("SELECT name FROM users WHERE id =7".into());
        corpus
    }

    #[test]
    fn a_statement_matches_a_shape_exactly_when_normalize_agrees() {
        let corpus = corpus();
        let shapes: Vec<Normalized> = corpus.iter().filter_map(|sql| normalize(sql)).collect();
        assert!(shapes.len() > 40, "the corpus should have many shapes");
        let mut matched = 0;
        for shape in &shapes {
            for sql in &corpus {
                let got = literals_in(&shape.text, &shape.holes, sql);
                let want = normalize(sql)
                    .filter(|n| n.text == shape.text)
                    .map(|n| n.literals);
                assert_eq!(got, want, "{sql:?} against {:?}", shape.text);
                matched += usize::from(got.is_some());
            }
        }
        assert!(
            matched > shapes.len(),
            "statements of a shape should match it"
        );
    }

    #[test]
    fn more_than_nine_parameters_match() {
        let sql = |v: usize| {
            let list: Vec<String> = (0..12).map(|i| (i * v).to_string()).collect();
            format!("SELECT * FROM t WHERE k IN ({})", list.join(", "))
        };
        let shape = normalize(&sql(1)).map(|n| (n.text, n.holes));
        let Some((text, holes)) = shape else {
            panic!("the statement should normalize");
        };
        let other = sql(3);
        let literals = literals_in(&text, &holes, &other);
        assert_eq!(literals.as_ref().map(|l| l.len()), Some(12));
        assert_eq!(literals, normalize(&other).map(|n| n.literals));
    }
}
