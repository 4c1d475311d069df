//! What the console sends back for one command, and its encoding as backend messages: a result
//! table (`RowDescription` with text columns, `DataRow`s, `CommandComplete`), a completion
//! with notices, or an error with a hint.

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse,
};
use pgwire::messages::Message;
use shardline_router::sqlstate;

/// PostgreSQL's `text` type.
const TEXT_OID: u32 = 25;

/// The console's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Rows under named text columns, completed with `SHOW`.
    Table(Table),
    /// A command that returns no rows: its tag, after notices for the operator.
    Done {
        /// `CommandComplete` tag.
        tag: &'static str,
        /// Sent first, as `NOTICE`s.
        notices: Vec<String>,
    },
    /// A refused command.
    Error {
        /// SQLSTATE code.
        sqlstate: &'static str,
        /// What went wrong.
        message: String,
        /// What to do about it.
        hint: Option<String>,
    },
    /// An empty query string.
    Empty,
}

/// A result table; every value is text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Column names.
    pub columns: &'static [&'static str],
    /// Rows, one value per column.
    pub rows: Vec<Vec<String>>,
    /// `CommandComplete` tag; `SHOW` gets the row count appended, as PgBouncer does.
    pub tag: &'static str,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: &'static [&'static str]) -> Table {
        Table {
            columns,
            rows: Vec::new(),
            tag: "SHOW",
        }
    }

    /// The same table completed with another tag (e.g. `EXPLAIN`).
    pub fn with_tag(mut self, tag: &'static str) -> Table {
        self.tag = tag;
        self
    }

    /// Adds a row; it should have one value per column.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

impl Reply {
    /// A completion without notices.
    pub fn done(tag: &'static str) -> Reply {
        Reply::Done {
            tag,
            notices: Vec::new(),
        }
    }

    /// An error without a hint.
    pub fn error(sqlstate: &'static str, message: impl Into<String>) -> Reply {
        Reply::Error {
            sqlstate,
            message: message.into(),
            hint: None,
        }
    }

    /// The backend messages of this reply (without `ReadyForQuery`).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            Reply::Table(table) => {
                let fields = table
                    .columns
                    .iter()
                    .map(|name| {
                        FieldDescription::new((*name).to_owned(), 0, 0, TEXT_OID, -1, -1, 0)
                    })
                    .collect();
                put(&mut buf, &RowDescription::new(fields));
                for row in &table.rows {
                    let mut data = BytesMut::new();
                    for value in row {
                        data.put_i32(i32::try_from(value.len()).unwrap_or(i32::MAX));
                        data.put_slice(value.as_bytes());
                    }
                    let count = i16::try_from(row.len()).unwrap_or(i16::MAX);
                    put(&mut buf, &DataRow::new(data, count));
                }
                let tag = match table.tag {
                    "SHOW" => format!("SHOW {}", table.rows.len()),
                    other => other.to_owned(),
                };
                put(&mut buf, &CommandComplete::new(tag));
            }
            Reply::Done { tag, notices } => {
                for notice in notices {
                    put(
                        &mut buf,
                        &NoticeResponse::new(fields(
                            "NOTICE",
                            sqlstate::SUCCESSFUL_COMPLETION,
                            notice,
                            None,
                        )),
                    );
                }
                put(&mut buf, &CommandComplete::new((*tag).to_owned()));
            }
            Reply::Error {
                sqlstate,
                message,
                hint,
            } => put(
                &mut buf,
                &ErrorResponse::new(fields("ERROR", sqlstate, message, hint.as_deref())),
            ),
            Reply::Empty => put(&mut buf, &EmptyQueryResponse::new()),
        }
        buf.freeze()
    }
}

fn fields(severity: &str, code: &str, message: &str, hint: Option<&str>) -> Vec<(u8, String)> {
    let mut fields = vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    if let Some(hint) = hint {
        fields.push((b'H', hint.to_owned()));
    }
    fields
}

fn put(buf: &mut BytesMut, message: &impl Message) {
    // pgwire refuses only messages beyond its size limits, far above a console answer.
    if let Err(e) = message.encode(buf) {
        tracing::error!(error = %e, "could not encode a console message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_row_description_rows_and_completion() {
        let mut table = Table::new(&["name", "value"]);
        table.push(vec!["a".into(), "1".into()]);
        let bytes = Reply::Table(table).encode();
        let tags: Vec<u8> = frames(&bytes).iter().map(|f| f[0]).collect();
        assert_eq!(tags, b"TDC");
        let hinted = Reply::Error {
            sqlstate: "42601",
            message: "no".into(),
            hint: Some("try SHOW HELP".into()),
        };
        let bytes = hinted.encode();
        assert!(bytes.windows(13).any(|w| w == b"Htry SHOW HEL"));
    }

    fn frames(mut bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while bytes.len() >= 5 {
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            out.push(&bytes[..=len]);
            bytes = &bytes[len + 1..];
        }
        out
    }
}
