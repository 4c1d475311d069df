//! Read-only views of the frontend messages the proxy must look into, and the few rewrites it
//! makes (renaming prepared statements). Views borrow from the original frame; nothing is
//! re-encoded unless a rewrite is needed.

use bytes::{BufMut, Bytes, BytesMut};

use super::Frame;

mod bind;
use bind::build_bind;
pub use bind::BindView;

/// A frontend message that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {message} message: {problem}")]
pub struct Malformed {
    pub message: &'static str,
    pub problem: &'static str,
}

/// Walks a message body field by field.
struct Cursor<'a> {
    rest: &'a [u8],
    message: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(body: &'a [u8], message: &'static str) -> Self {
        Cursor {
            rest: body,
            message,
        }
    }

    fn fail<T>(&self, problem: &'static str) -> Result<T, Malformed> {
        Err(Malformed {
            message: self.message,
            problem,
        })
    }

    fn cstr(&mut self) -> Result<&'a [u8], Malformed> {
        // memchr: statements are the longest strings here, and every one is scanned. The
        // empty name (the unnamed statement or portal, the commonest) needs no scan.
        let end = match self.rest.first() {
            Some(0) => 0,
            _ => match memchr::memchr(0, self.rest) {
                Some(end) => end,
                None => return self.fail("missing string terminator"),
            },
        };
        let s = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        Ok(s)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return self.fail("truncated");
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, Malformed> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, Malformed> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self) -> Result<usize, Malformed> {
        let n = self.i16()?;
        usize::try_from(n).or_else(|_| self.fail("negative count"))
    }
}

/// Text of a `Query` message, as the client's bytes (in its `client_encoding`).
pub fn query_bytes(frame: &Frame) -> Result<&[u8], Malformed> {
    Cursor::new(frame.body(), "Query").cstr()
}

/// Text of a `Query` message from a client that speaks UTF-8 (the admin console).
pub fn query_text(frame: &Frame) -> Result<&str, Malformed> {
    let mut c = Cursor::new(frame.body(), "Query");
    let text = c.cstr()?;
    std::str::from_utf8(text).or_else(|_| c.fail("query is not valid UTF-8"))
}

/// A `Parse` message: statement name, query text and declared parameter types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseView<'a> {
    pub name: &'a [u8],
    /// The query text as the client's bytes (in its `client_encoding`).
    pub query: &'a [u8],
    /// The bytes after the query: parameter type count and OIDs, kept for re-preparing.
    pub param_types: &'a [u8],
}

impl<'a> ParseView<'a> {
    /// Reads a `Parse` frame.
    pub fn new(frame: &'a Frame) -> Result<Self, Malformed> {
        let mut c = Cursor::new(frame.body(), "Parse");
        let name = c.cstr()?;
        let query = c.cstr()?;
        let param_types = c.rest;
        let n = c.count()?;
        c.take(n * 4)?;
        Ok(ParseView {
            name,
            query,
            param_types,
        })
    }
}

/// Builds a `Parse` that prepares `query` (bytes in the backend's `client_encoding`) under
/// `name` with the given raw parameter-type bytes.
pub fn build_parse(name: &[u8], query: &[u8], param_types: &[u8]) -> Bytes {
    let len = 4 + name.len() + 1 + query.len() + 1 + param_types.len();
    let mut buf = BytesMut::with_capacity(len + 1);
    buf.put_u8(b'P');
    buf.put_i32(len as i32);
    buf.put_slice(name);
    buf.put_u8(0);
    buf.put_slice(query);
    buf.put_u8(0);
    buf.put_slice(param_types);
    buf.freeze()
}

/// Whether value `index` is in binary under a message's format codes: none means all text, one
/// code applies to every value, otherwise one code per value.
pub fn is_binary(formats: &[i16], index: usize) -> bool {
    match formats {
        [] => false,
        [all] => *all == 1,
        each => each.get(index) == Some(&1),
    }
}

/// `Describe` or `Close`: which kind of object (`S`tatement or `P`ortal) and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetView<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

impl<'a> TargetView<'a> {
    /// Reads a `Describe` (`D`) or `Close` (`C`) frame.
    pub fn new(frame: &'a Frame) -> Result<Self, Malformed> {
        let what = if frame.tag() == b'D' {
            "Describe"
        } else {
            "Close"
        };
        let mut c = Cursor::new(frame.body(), what);
        let kind = c.take(1)?[0];
        if kind != b'S' && kind != b'P' {
            return c.fail("target is neither S nor P");
        }
        let name = c.cstr()?;
        Ok(TargetView { kind, name })
    }

    /// The same message (`tag` is `D` or `C`) naming another object.
    pub fn rebuild(&self, tag: u8, name: &[u8]) -> Bytes {
        let len = 4 + 1 + name.len() + 1;
        let mut buf = BytesMut::with_capacity(len + 1);
        buf.put_u8(tag);
        buf.put_i32(len as i32);
        buf.put_u8(self.kind);
        buf.put_slice(name);
        buf.put_u8(0);
        buf.freeze()
    }
}

/// Portal name of an `Execute` message.
pub fn execute_portal(frame: &Frame) -> Result<&[u8], Malformed> {
    Cursor::new(frame.body(), "Execute").cstr()
}

/// The row limit of an `Execute` message (0 for all rows).
pub fn execute_max_rows(frame: &Frame) -> Result<i32, Malformed> {
    let mut c = Cursor::new(frame.body(), "Execute");
    c.cstr()?;
    c.i32()
}

/// The parameter-type bytes of a `Parse` (count, then OIDs) for the parameters `params` of the
/// original, in that order; parameters the client left untyped stay untyped (0).
pub fn param_types_subset(param_types: &[u8], params: &[usize]) -> Vec<u8> {
    let declared = |i: usize| -> [u8; 4] {
        param_types
            .get(2 + 4 * i..6 + 4 * i)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 4])
    };
    let mut out = Vec::with_capacity(2 + 4 * params.len());
    out.extend_from_slice(
        &i16::try_from(params.len())
            .unwrap_or(i16::MAX)
            .to_be_bytes(),
    );
    for &i in params {
        out.extend_from_slice(&declared(i));
    }
    out
}

/// `Describe` of the unnamed portal, `Execute` of it for all rows, and `Sync`: the tail of a
/// statement the proxy runs on a shard in the extended protocol.
pub fn describe_execute_sync() -> &'static [u8] {
    b"D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04"
}

/// `sql` (bytes in the backend's `client_encoding`, no parameters) run through the unnamed
/// statement and portal with `result_formats`, described, executed and synced: a statement
/// the proxy runs on a shard whose rows go to the client in the formats it asked for.
pub fn unnamed_execution(sql: &[u8], result_formats: &[i16]) -> Bytes {
    let mut out = BytesMut::from(&build_parse(b"", sql, &[0, 0])[..]);
    out.extend_from_slice(&build_bind(b"", b"", &[], result_formats));
    out.extend_from_slice(describe_execute_sync());
    out.freeze()
}

/// `Sync`: ends a pipeline; the server answers `ReadyForQuery`.
pub const SYNC: &[u8] = b"S\0\0\0\x04";

/// `Flush`: asks the server to send what it has without ending the pipeline.
pub const FLUSH: &[u8] = b"H\0\0\0\x04";

/// `BEGIN` run through the unnamed statement and portal. Inside a pipeline it turns the
/// implicit transaction (with what already ran in it) into an explicit one, which the proxy
/// can then prepare and commit on several shards together.
pub const BEGIN_IN_PIPELINE: &[u8] =
    b"P\0\0\0\x0d\0BEGIN\0\0\0B\0\0\0\x0c\0\0\0\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0";

/// `Execute` of a portal that never exists: the server fails it, which aborts the pipeline's
/// implicit transaction (or the open transaction) exactly as the client's failed statement
/// would have on a single server.
pub const ABORT_PIPELINE: &[u8] = b"E\0\0\0\x18shardline abort\0\0\0\0\0";

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: Bytes) -> Frame {
        Frame::from_bytes(bytes)
    }

    #[test]
    fn fixed_messages_have_their_lengths() {
        for bytes in [SYNC, FLUSH, BEGIN_IN_PIPELINE, ABORT_PIPELINE] {
            let mut at = 0;
            while at < bytes.len() {
                let len = u32::from_be_bytes([
                    bytes[at + 1],
                    bytes[at + 2],
                    bytes[at + 3],
                    bytes[at + 4],
                ]) as usize;
                at += 1 + len;
            }
            assert_eq!(at, bytes.len(), "{bytes:?}");
        }
        let parse = Frame::from_bytes(Bytes::from_static(&BEGIN_IN_PIPELINE[..14]));
        assert_eq!(
            ParseView::new(&parse).map(|v| v.query).ok(),
            Some(&b"BEGIN"[..])
        );
    }

    #[test]
    fn parse_roundtrips_through_build() {
        let built = frame(build_parse(b"s1", b"SELECT $1", &[0, 1, 0, 0, 0, 20]));
        let view = ParseView::new(&built);
        assert_eq!(
            view,
            Ok(ParseView {
                name: b"s1",
                query: b"SELECT $1",
                param_types: &[0, 1, 0, 0, 0, 20]
            })
        );
    }
}
