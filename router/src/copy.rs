//! `COPY … FROM STDIN` into a sharded table: which column is the shard key, where one row
//! ends in the data stream, and how the key field of a row reads — for the text and CSV
//! formats, byte for byte as PostgreSQL parses them. The proxy uses this to send each row to
//! the shard that owns it.

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};

use crate::config::{Config, TableRule};
use crate::key::KeyValue;
use crate::plan::RouteError;
use crate::sqlstate;

/// How the rows of a COPY stream are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format: delimiter-separated, backslash escapes, `\N` for NULL.
    Text { delimiter: u8, null: Vec<u8> },
    /// CSV: quoted fields may hold delimiters and newlines.
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
        header: bool,
    },
}

/// A `COPY table [(columns)] FROM STDIN` into a table split by key.
#[derive(Debug, Clone)]
pub struct CopyInto {
    /// The table as written in the statement.
    pub table: String,
    /// The column list, lower-cased; empty means every column in table order.
    pub columns: Vec<String>,
    pub format: CopyFormat,
    pub rule: TableRule,
}

/// Recognises a COPY of rows into a sharded table. `None` for any other statement (the
/// router's own route applies); an error for COPY forms that cannot be split (binary format).
pub fn copy_into(config: &Config, sql: &str) -> Option<Result<CopyInto, RouteError>> {
    let mut statements = crate::analyze::parse_repaired(sql)?;
    if statements.len() != 1 {
        return None;
    }
    let Some(Statement::Copy {
        source: CopySource::Table {
            table_name,
            columns,
        },
        to: false,
        target: CopyTarget::Stdin,
        options,
        legacy_options,
        ..
    }) = statements.pop()
    else {
        return None;
    };
    let table = table_name.to_string();
    let rule = config.table(&table)?.clone();
    rule.key_column()?;
    Some(format(&options, &legacy_options).map(|format| {
        CopyInto {
            table,
            columns: columns
                .iter()
                .map(|c| c.value.to_ascii_lowercase())
                .collect(),
            format,
            rule,
        }
    }))
}

impl CopyInto {
    /// Whether the column list leaves out the shard key (its default then has to make it).
    pub fn leaves_out_key(&self) -> bool {
        !self.columns.is_empty() && self.key_position(&self.columns).is_none()
    }

    /// The COPY statement `sql` (this COPY) with the shard key first in its column list, and
    /// this spec to match: the proxy then puts a generated key first in every row.
    pub fn with_key_first(&self, sql: &str) -> Option<(String, CopyInto)> {
        let key = self.rule.key_column()?.to_owned();
        let mut statements = crate::analyze::parse_repaired(sql)?;
        let Some(Statement::Copy {
            source: CopySource::Table { columns, .. },
            ..
        }) = statements.first_mut()
        else {
            return None;
        };
        columns.insert(0, sqlparser::ast::Ident::new(&key));
        let rewritten = statements.first()?.to_string();
        let mut spec = self.clone();
        spec.columns.insert(0, key);
        Some((rewritten, spec))
    }

    /// The byte that separates fields of a row.
    pub fn delimiter(&self) -> u8 {
        match &self.format {
            CopyFormat::Text { delimiter, .. } | CopyFormat::Csv { delimiter, .. } => *delimiter,
        }
    }
}

fn format(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<CopyFormat, RouteError> {
    let mut csv = false;
    let (mut delimiter, mut null, mut quote, mut escape, mut header) =
        (None, None, b'"', None, false);
    let single_byte = |c: char| {
        u8::try_from(u32::from(c)).map_err(|_| {
            RouteError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "COPY delimiter, quote and escape must be single-byte characters",
            )
        })
    };
    for option in options {
        match option {
            CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                "csv" => csv = true,
                "text" => csv = false,
                _ => return Err(binary()),
            },
            CopyOption::Delimiter(c) => delimiter = Some(single_byte(*c)?),
            CopyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = single_byte(*c)?,
            CopyOption::Escape(c) => escape = Some(single_byte(*c)?),
            CopyOption::Freeze(_)
            | CopyOption::Encoding(_)
            | CopyOption::ForceQuote(_)
            | CopyOption::ForceNotNull(_)
            | CopyOption::ForceNull(_) => {}
        }
    }
    for option in legacy {
        match option {
            CopyLegacyOption::Binary => return Err(binary()),
            CopyLegacyOption::Delimiter(c) => delimiter = Some(single_byte(*c)?),
            CopyLegacyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyLegacyOption::Csv(csv_options) => {
                csv = true;
                for o in csv_options {
                    match o {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(c) => quote = single_byte(*c)?,
                        CopyLegacyCsvOption::Escape(c) => escape = Some(single_byte(*c)?),
                        CopyLegacyCsvOption::ForceQuote(_)
                        | CopyLegacyCsvOption::ForceNotNull(_) => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(if csv {
        CopyFormat::Csv {
            delimiter: delimiter.unwrap_or(b','),
            quote,
            escape: escape.unwrap_or(quote),
            null: null.unwrap_or_default(),
            header,
        }
    } else {
        CopyFormat::Text {
            delimiter: delimiter.unwrap_or(b'\t'),
            null: null.unwrap_or_else(|| b"\\N".to_vec()),
        }
    })
}

fn binary() -> RouteError {
    RouteError::new(sqlstate::FEATURE_NOT_SUPPORTED, "COPY … FROM STDIN in binary format into a sharded table is not supported; use the text or CSV format")
}

impl CopyInto {
    /// Position of the shard key among the fields of a row, given the table's columns in
    /// order (used when the statement has no column list).
    pub fn key_position(&self, table_columns: &[String]) -> Option<usize> {
        let key = self.rule.key_column()?;
        let columns = if self.columns.is_empty() {
            table_columns
        } else {
            &self.columns
        };
        columns.iter().position(|c| c.eq_ignore_ascii_case(key))
    }

    /// The shard key of one row (without its line end), ready to place.
    pub fn key_of(&self, row: &[u8], position: usize) -> Result<KeyValue, String> {
        let field = match &self.format {
            CopyFormat::Text { delimiter, null } => text_field(row, *delimiter, null, position),
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => csv_field(row, *delimiter, *quote, *escape, null, position),
        }?;
        let key = self.rule.key_column().unwrap_or("key");
        let text = field.ok_or_else(|| {
            format!(
                "a row has a NULL shard key {}.{key}; every row needs a key",
                self.table
            )
        })?;
        let text = String::from_utf8(text)
            .map_err(|_| "the shard key of a row is not valid UTF-8".to_owned())?;
        self.rule
            .key_type()
            .ok_or("table is not split by key")?
            .parse_text(&text)
            .map_err(|e| e.to_string())
    }
}

/// Field `position` of a text-format row, escapes decoded; `None` for NULL.
fn text_field(
    row: &[u8],
    delimiter: u8,
    null: &[u8],
    position: usize,
) -> Result<Option<Vec<u8>>, String> {
    let mut index = 0;
    let mut start = 0;
    let mut i = 0;
    while i <= row.len() {
        let at_end = i == row.len();
        if at_end || row[i] == delimiter {
            if index == position {
                let raw = &row[start..i];
                return Ok(if raw == null {
                    None
                } else {
                    Some(unescape_text(raw))
                });
            }
            index += 1;
            start = i + 1;
        } else if row[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    Err(format!("a row has fewer than {} fields", position + 1))
}

/// Decodes the backslash escapes of the text format.
fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' || i + 1 == raw.len() {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'x' => {
                let digits: Vec<u8> = raw[i..]
                    .iter()
                    .take(2)
                    .take_while(|d| d.is_ascii_hexdigit())
                    .copied()
                    .collect();
                match std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|d| u8::from_str_radix(d, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += digits.len();
                    }
                    None => out.push(b'x'),
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Field `position` of a CSV row, unquoted; `None` for NULL (an unquoted field equal to the
/// NULL string).
fn csv_field(
    row: &[u8],
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
    position: usize,
) -> Result<Option<Vec<u8>>, String> {
    let mut index = 0;
    let mut i = 0;
    loop {
        let mut value = Vec::new();
        let mut quoted = false;
        let mut in_quotes = false;
        while i < row.len() {
            let b = row[i];
            if in_quotes {
                if b == escape
                    && escape != quote
                    && row.get(i + 1).is_some_and(|n| *n == quote || *n == escape)
                {
                    value.push(row[i + 1]);
                    i += 2;
                    continue;
                }
                if b == quote {
                    if escape == quote && row.get(i + 1) == Some(&quote) {
                        value.push(quote);
                        i += 2;
                        continue;
                    }
                    in_quotes = false;
                } else {
                    value.push(b);
                }
            } else if b == quote {
                in_quotes = true;
                quoted = true;
            } else if b == delimiter {
                break;
            } else {
                value.push(b);
            }
            i += 1;
        }
        if index == position {
            return Ok(if !quoted && value == null {
                None
            } else {
                Some(value)
            });
        }
        if i >= row.len() {
            return Err(format!("a row has fewer than {} fields", position + 1));
        }
        index += 1;
        i += 1;
    }
}

/// Cuts a COPY data stream, arriving in arbitrary chunks, into whole rows.
#[derive(Debug)]
pub struct RowSplitter {
    format: CopyFormat,
    pending: Vec<u8>,
    /// How far `pending` has been scanned, and the quote/escape state there.
    scanned: usize,
    in_quotes: bool,
    after_backslash: bool,
}

impl RowSplitter {
    /// A splitter for rows in `format`.
    pub fn new(format: CopyFormat) -> RowSplitter {
        RowSplitter {
            format,
            pending: Vec::new(),
            scanned: 0,
            in_quotes: false,
            after_backslash: false,
        }
    }

    /// Adds a chunk and hands every completed row (including its line end) to `row`.
    pub fn push(&mut self, chunk: &[u8], mut row: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.pending.len() {
            let b = self.pending[i];
            let ends_row = match &self.format {
                CopyFormat::Text { .. } => {
                    if self.after_backslash {
                        self.after_backslash = false;
                        false
                    } else if b == b'\\' {
                        self.after_backslash = true;
                        false
                    } else {
                        b == b'\n'
                    }
                }
                CopyFormat::Csv { quote, escape, .. } => {
                    if self.in_quotes {
                        if b == *escape && escape != quote {
                            if i + 1 == self.pending.len() {
                                // The escaped byte has not arrived yet: look again next time.
                                break;
                            }
                            i += 1;
                        } else if b == *quote {
                            self.in_quotes = false;
                        }
                        false
                    } else if b == *quote {
                        self.in_quotes = true;
                        false
                    } else {
                        b == b'\n'
                    }
                }
            };
            i += 1;
            if ends_row {
                row(&self.pending[start..i]);
                start = i;
            }
        }
        self.pending.drain(..start);
        self.scanned = i - start;
    }

    /// Bytes held of a row not yet complete.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// What is left after the last complete row (a final row without a line end).
    pub fn finish(self) -> Vec<u8> {
        self.pending
    }
}

/// A row without its line end (`\n` or `\r\n`).
pub fn trim_line_end(row: &[u8]) -> &[u8] {
    let row = row.strip_suffix(b"\n").unwrap_or(row);
    row.strip_suffix(b"\r").unwrap_or(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let yaml = "users: [{name: app, password: app}]\nshards: [{name: s0, port: 1}, {name: s1, port: 2}]\ntables:\n  - {name: users, sharding: hash, column: id}\n  - {name: accounts, sharding: hash, column: email, type: text}\n";
        match Config::from_yaml(yaml) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn spec(sql: &str) -> CopyInto {
        match copy_into(&config(), sql) {
            Some(Ok(spec)) => spec,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn recognises_copy_into_sharded_tables() {
        let s = spec("COPY users (name, id) FROM STDIN");
        assert_eq!(s.key_position(&[]), Some(1));
        assert!(matches!(
            s.format,
            CopyFormat::Text {
                delimiter: b'\t',
                ..
            }
        ));
        let s = spec("COPY users FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ';')");
        assert!(matches!(
            s.format,
            CopyFormat::Csv {
                delimiter: b';',
                header: true,
                ..
            }
        ));
        assert_eq!(s.key_position(&["name".into(), "id".into()]), Some(1));
        let keyless = copy_into(&config(), "COPY users (name) FROM STDIN WITH (FORMAT csv)");
        let Some(Ok(keyless)) = keyless else {
            panic!("not a COPY into users");
        };
        assert!(keyless.leaves_out_key());
        let (sql, keyed) = keyless
            .with_key_first("COPY users (name) FROM STDIN WITH (FORMAT csv)")
            .unwrap_or_else(|| panic!("not rewritten"));
        assert_eq!(keyed.columns, ["id", "name"]);
        assert!(sql.starts_with("COPY users (id, name) FROM STDIN"), "{sql}");
        assert_eq!(keyed.delimiter(), b',');
        // pgbench -i's spelling of boolean options.
        let s = spec("copy users from stdin with (freeze on, format csv, header off)");
        assert!(matches!(s.format, CopyFormat::Csv { header: false, .. }));
        assert!(copy_into(&config(), "COPY other FROM STDIN").is_none());
        assert!(copy_into(&config(), "COPY users TO STDOUT").is_none());
        assert!(matches!(
            copy_into(&config(), "COPY users FROM STDIN (FORMAT binary)"),
            Some(Err(_))
        ));
    }

    #[test]
    fn rows_split_across_chunks_with_escapes_and_quotes() {
        let text = b"1\ta\\\nb\n2\tc\n3\td";
        for cut in 0..text.len() {
            let mut splitter = RowSplitter::new(CopyFormat::Text {
                delimiter: b'\t',
                null: b"\\N".to_vec(),
            });
            let mut rows = Vec::new();
            splitter.push(&text[..cut], |r| rows.push(r.to_vec()));
            splitter.push(&text[cut..], |r| rows.push(r.to_vec()));
            rows.push(splitter.finish());
            assert_eq!(
                rows,
                vec![
                    b"1\ta\\\nb\n".to_vec(),
                    b"2\tc\n".to_vec(),
                    b"3\td".to_vec()
                ],
                "cut at {cut}"
            );
        }
        let csv = b"1,\"multi\nline, with comma\"\n2,\"q\"\"uote\"\n";
        for cut in 0..csv.len() {
            let format = CopyFormat::Csv {
                delimiter: b',',
                quote: b'"',
                escape: b'"',
                null: Vec::new(),
                header: false,
            };
            let mut splitter = RowSplitter::new(format);
            let mut rows = Vec::new();
            splitter.push(&csv[..cut], |r| rows.push(r.to_vec()));
            splitter.push(&csv[cut..], |r| rows.push(r.to_vec()));
            assert_eq!(rows.len(), 2, "cut at {cut}: {rows:?}");
            assert!(splitter.finish().is_empty());
        }
    }

    #[test]
    fn key_fields_decode_like_postgres() {
        let s = spec("COPY accounts (id, email) FROM STDIN");
        assert_eq!(
            s.key_of(b"1\tann\\texample", 1),
            Ok(KeyValue::Text("ann\texample".into()))
        );
        assert_eq!(s.key_of(b"1\t\\101b", 1), Ok(KeyValue::Text("Ab".into())));
        assert!(s.key_of(b"1\t\\N", 1).is_err());
        assert!(s.key_of(b"1", 1).is_err());
        let s = spec("COPY accounts (id, email) FROM STDIN (FORMAT csv)");
        assert_eq!(
            s.key_of(b"1,\"a,\"\"b\"\"\"", 1),
            Ok(KeyValue::Text("a,\"b\"".into()))
        );
        assert_eq!(s.key_of(b"1,\"\"", 1), Ok(KeyValue::Text(String::new())));
        assert!(s.key_of(b"1,", 1).is_err(), "unquoted empty is NULL in CSV");
    }
}
