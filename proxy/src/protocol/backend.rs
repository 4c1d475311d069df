//! Backend messages: the ones the proxy writes itself (errors, synthesized completions, startup
//! replies), encoded with pgwire's message types, and cheap inspection of the ones shards send.

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::{BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;

use super::Frame;

/// Backend message type bytes the proxy looks for.
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// The SQLSTATE table, shared with the router and the admin console.
pub use shardline_router::sqlstate;

fn encode(message: &impl Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.message_length() + 1);
    // pgwire refuses only messages above its size limits; the ones built here are far smaller,
    // and an empty result would only drop a message the proxy composed itself.
    if let Err(e) = message.encode(&mut buf) {
        tracing::error!(error = %e, "could not encode a proxy-built message");
        buf.clear();
    }
    buf.freeze()
}

/// An `ErrorResponse` with severity ERROR.
pub fn error(code: &str, message: &str) -> Bytes {
    error_with_severity("ERROR", code, message)
}

/// An `ErrorResponse` with severity FATAL, sent before closing a connection.
pub fn fatal(code: &str, message: &str) -> Bytes {
    error_with_severity("FATAL", code, message)
}

fn error_with_severity(severity: &str, code: &str, message: &str) -> Bytes {
    encode(&ErrorResponse::new(vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ]))
}

/// A `NoticeResponse` with severity NOTICE.
pub fn notice(message: &str) -> Bytes {
    notice_with_severity("NOTICE", sqlstate::SUCCESSFUL_COMPLETION, message)
}

/// A `NoticeResponse` with severity WARNING.
pub fn warning(code: &str, message: &str) -> Bytes {
    notice_with_severity("WARNING", code, message)
}

fn notice_with_severity(severity: &str, code: &str, message: &str) -> Bytes {
    encode(&NoticeResponse::new(vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ]))
}

/// `ReadyForQuery` with a transaction status byte (`I`, `T` or `E`).
pub fn ready_for_query(status: u8) -> Bytes {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status))
}

/// A `ParameterDescription` (its body) without its last `hidden` parameters (the proxy's own,
/// added to a statement it rewrote).
pub fn without_last_params(body: &[u8], hidden: usize) -> Bytes {
    let count = body
        .get(..2)
        .map_or(0, |n| usize::from(u16::from_be_bytes([n[0], n[1]])));
    let kept = count.saturating_sub(hidden);
    let mut out = BytesMut::with_capacity(7 + 4 * kept);
    out.put_u8(tag::PARAMETER_DESCRIPTION);
    out.put_i32(i32::try_from(6 + 4 * kept).unwrap_or(i32::MAX));
    out.put_u16(u16::try_from(kept).unwrap_or(u16::MAX));
    out.put_slice(body.get(2..2 + 4 * kept).unwrap_or_default());
    out.freeze()
}

/// `CommandComplete` with the given tag.
pub fn command_complete(tag: &str) -> Bytes {
    encode(&CommandComplete::new(tag.to_owned()))
}

/// A message with no body, such as `ParseComplete`.
pub fn empty(tag: u8) -> Bytes {
    Bytes::copy_from_slice(&[tag, 0, 0, 0, 4])
}

/// `ParameterStatus` reporting a server setting to the client.
pub fn parameter_status(name: &str, value: &str) -> Bytes {
    encode(&ParameterStatus::new(name.to_owned(), value.to_owned()))
}

/// `BackendKeyData` with the proxy's own cancel key for this client.
pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    encode(&BackendKeyData::new(pid, SecretKey::I32(secret)))
}

/// Transaction status of a `ReadyForQuery`.
pub fn ready_status(frame: &Frame) -> u8 {
    frame.body().first().copied().unwrap_or(b'I')
}

/// Tag of a `CommandComplete` as the shard sent it, from its body. Read on the answer to
/// every statement, so not checked as UTF-8: what is compared with it is ASCII.
pub fn command_tag_bytes(body: &[u8]) -> &[u8] {
    body.strip_suffix(&[0]).unwrap_or(body)
}

/// Tag text of a `CommandComplete` (`"SELECT 3"`, `"INSERT 0 1"`), from its body.
pub fn command_tag(body: &[u8]) -> &str {
    std::str::from_utf8(command_tag_bytes(body)).unwrap_or("")
}

/// Name and value of a `ParameterStatus`.
pub fn parameter(frame: &Frame) -> Option<(&str, &str)> {
    let mut parts = frame.body().split(|b| *b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

/// A field (by code: `C` SQLSTATE, `M` message…) of an `ErrorResponse` or `NoticeResponse`.
pub fn error_field(frame: &Frame, code: u8) -> Option<&str> {
    let mut rest = frame.body();
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        if field == code {
            return std::str::from_utf8(&tail[..end]).ok();
        }
        rest = &tail[end + 1..];
    }
    None
}

/// Whether an `ErrorResponse` ends the backend's connection (severity `FATAL` or `PANIC`):
/// the server closes the socket after it, as after `pg_terminate_backend` or an idle timeout.
pub fn ends_connection(frame: &Frame) -> bool {
    let severity = error_field(frame, b'V').or_else(|| error_field(frame, b'S'));
    matches!(severity, Some("FATAL" | "PANIC"))
}

/// The same `ErrorResponse` with the shard's name put in front of its message, so a client of a
/// multi-shard statement knows where it failed; every other field (SQLSTATE…) is kept.
pub fn error_naming_shard(frame: &Frame, shard: &str) -> Bytes {
    let mut fields = Vec::new();
    let mut rest = frame.body();
    while let Some((&field, tail)) = rest.split_first() {
        let Some(end) = tail.iter().position(|b| *b == 0) else {
            break;
        };
        if field == 0 {
            break;
        }
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        let value = if field == b'M' {
            format!("shard {shard}: {value}")
        } else {
            value
        };
        fields.push((field, value));
        rest = &tail[end + 1..];
    }
    encode(&ErrorResponse::new(fields))
}

/// The first column of a `DataRow` body as text (`None` for NULL or invalid UTF-8): how the
/// proxy reads the one-value answers of the queries it sends itself.
pub fn first_text_field(body: &[u8]) -> Option<String> {
    let len = usize::try_from(i32::from_be_bytes(body.get(2..6)?.try_into().ok()?)).ok()?;
    String::from_utf8(body.get(6..6 + len)?.to_vec()).ok()
}

/// Row count at the end of a `CommandComplete` tag, if it has one.
pub fn tag_row_count(tag: &str) -> Option<u64> {
    tag.rsplit(' ').next()?.parse().ok()
}

/// Sums the `CommandComplete` tags of one statement run on several shards
/// (`UPDATE 2` + `UPDATE 3` = `UPDATE 5`; `INSERT 0 1` + `INSERT 0 1` = `INSERT 0 2`).
pub fn sum_tags(tags: &[String]) -> String {
    let Some(first) = tags.first() else {
        return String::new();
    };
    let Some(prefix_end) = first.rfind(' ') else {
        return first.clone();
    };
    if tag_row_count(first).is_none() {
        return first.clone();
    }
    // Counts come from the shards: added without overflowing, whatever they say.
    let total = tags
        .iter()
        .filter_map(|t| tag_row_count(t))
        .fold(0u64, u64::saturating_add);
    format!("{} {total}", &first[..prefix_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_sum_like_one_server() {
        let t = |v: &[&str]| sum_tags(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(t(&["UPDATE 2", "UPDATE 3"]), "UPDATE 5");
        assert_eq!(t(&["INSERT 0 1", "INSERT 0 0"]), "INSERT 0 1");
        assert_eq!(t(&["SELECT 0", "SELECT 7"]), "SELECT 7");
        assert_eq!(t(&["CREATE TABLE", "CREATE TABLE"]), "CREATE TABLE");
    }

    #[test]
    fn errors_roundtrip_and_name_the_shard() {
        let e = Frame::from_bytes(error("23505", "duplicate key"));
        assert_eq!(error_field(&e, b'C'), Some("23505"));
        let named = Frame::from_bytes(error_naming_shard(&e, "s2"));
        assert_eq!(error_field(&named, b'M'), Some("shard s2: duplicate key"));
        assert_eq!(error_field(&named, b'C'), Some("23505"));
    }
}
