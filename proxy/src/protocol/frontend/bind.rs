//! The `Bind` message: read in place (every `Bind` a client sends is looked into, so reading
//! one allocates nothing), and the few rewrites the proxy makes of it.

use bytes::{BufMut, Bytes, BytesMut};
use shardline_router::{Param, Params};

use super::{Cursor, Frame, Malformed};

/// A `Bind` message: portal, statement, and the parameters with their formats, as slices of
/// the client's frame.
#[derive(Debug, Clone)]
pub struct BindView<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Parameter format codes as sent: big-endian `i16`s.
    formats: &'a [u8],
    /// Parameter values as sent: each a big-endian `i32` length (-1: NULL) and its bytes.
    values: &'a [u8],
    /// How many parameter values there are.
    count: usize,
    /// Result column format codes as sent: big-endian `i16`s.
    result_formats: &'a [u8],
    /// Offset in the body where the fields after the statement name start.
    tail_offset: usize,
}

impl<'a> BindView<'a> {
    /// Reads a `Bind` frame, checking every length in it.
    pub fn new(frame: &'a Frame) -> Result<Self, Malformed> {
        let body = frame.body();
        let mut c = Cursor::new(body, "Bind");
        let portal = c.cstr()?;
        let statement = c.cstr()?;
        let tail_offset = body.len() - c.rest.len();
        let nformats = c.count()?;
        let formats = c.take(nformats * 2)?;
        let count = c.count()?;
        if nformats > 1 && nformats != count {
            return c.fail("format count does not match parameter count");
        }
        let values_start = c.rest;
        for _ in 0..count {
            match c.i32()? {
                -1 => {}
                n if n >= 0 => {
                    c.take(n as usize)?;
                }
                _ => return c.fail("negative parameter length"),
            }
        }
        let values = &values_start[..values_start.len() - c.rest.len()];
        let nresults = c.count()?;
        let result_formats = c.take(nresults * 2)?;
        Ok(BindView {
            portal,
            statement,
            formats,
            values,
            count,
            result_formats,
            tail_offset,
        })
    }

    /// How many parameters the client bound.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the client bound no parameters.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Parameter `index` in the router's terms, format applied. The values are walked from
    /// the first, so this is for a few parameters: [`BindView::params`] reads many at once.
    pub fn param(&self, index: usize) -> Option<Param<'a>> {
        let value = self.values().nth(index)?;
        Some(self.as_param(index, value))
    }

    /// Parameters in the router's terms, format applied.
    pub fn params(&self) -> Vec<Param<'a>> {
        self.values()
            .enumerate()
            .map(|(i, value)| self.as_param(i, value))
            .collect()
    }

    /// Whether some text parameter has bytes outside ASCII (which a non-UTF-8
    /// `client_encoding` must decode before a key is hashed).
    pub fn has_non_ascii_text(&self) -> bool {
        self.values()
            .enumerate()
            .any(|(i, v)| v.is_some_and(|b| !b.is_ascii()) && !self.is_binary(i))
    }

    /// Result column format codes: none (all text), one for all columns, or one per column.
    pub fn result_formats(&self) -> Vec<i16> {
        self.result_formats
            .chunks_exact(2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .collect()
    }

    /// A `Bind` of the unnamed statement into the unnamed portal carrying only the parameters
    /// `params` (client indexes, in the new order), with the given result formats: how a
    /// rewritten statement is bound on a shard.
    pub fn subset(&self, params: &[usize], result_formats: &[i16]) -> Bytes {
        let all: Vec<Option<&[u8]>> = self.values().collect();
        let values: Vec<(bool, Option<&[u8]>)> = params
            .iter()
            .map(|&i| (self.is_binary(i), all.get(i).copied().flatten()))
            .collect();
        build_bind(b"", b"", &values, result_formats)
    }

    /// The same `Bind` with `extra` text values after the client's: the keys the proxy
    /// generated for the parameters it added to the statement.
    pub fn with_appended(&self, extra: &[String]) -> Bytes {
        let values: Vec<(bool, Option<&[u8]>)> = self
            .values()
            .enumerate()
            .map(|(i, value)| (self.is_binary(i), value))
            .chain(extra.iter().map(|v| (false, Some(v.as_bytes()))))
            .collect();
        build_bind(self.portal, self.statement, &values, &self.result_formats())
    }

    /// The same `Bind` aimed at another statement name.
    pub fn retarget(&self, frame: &Frame, statement: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        self.retarget_into(frame, statement, &mut buf);
        buf.freeze()
    }

    /// [`BindView::retarget`], written at the end of `out`.
    pub fn retarget_into(&self, frame: &Frame, statement: &[u8], out: &mut BytesMut) {
        let tail = &frame.body()[self.tail_offset..];
        let len = 4 + self.portal.len() + 1 + statement.len() + 1 + tail.len();
        out.reserve(len + 1);
        out.put_u8(b'B');
        out.put_i32(len as i32);
        out.put_slice(self.portal);
        out.put_u8(0);
        out.put_slice(statement);
        out.put_u8(0);
        out.put_slice(tail);
    }

    /// The values, in order (`None` is NULL); their lengths were checked by [`BindView::new`].
    fn values(&self) -> impl Iterator<Item = Option<&'a [u8]>> + '_ {
        let mut rest = self.values;
        (0..self.count).map_while(move |_| {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = i32::from_be_bytes(*len);
            let Ok(len) = usize::try_from(len) else {
                rest = tail;
                return Some(None);
            };
            let (value, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(Some(value))
        })
    }

    /// Value `index` (`None`: NULL) as the router reads it.
    fn as_param(&self, index: usize, value: Option<&'a [u8]>) -> Param<'a> {
        match value {
            None => Param::Null,
            Some(bytes) if self.is_binary(index) => Param::Binary(bytes),
            Some(bytes) => Param::Text(bytes),
        }
    }

    /// Whether value `index` is in binary: no codes means all text, one code applies to every
    /// value, otherwise one code per value.
    fn is_binary(&self, index: usize) -> bool {
        let code = match self.formats.len() {
            0 => return false,
            2 => &self.formats[..2],
            _ => match self.formats.get(index * 2..index * 2 + 2) {
                Some(code) => code,
                None => return false,
            },
        };
        i16::from_be_bytes([code[0], code[1]]) == 1
    }
}

impl Params for BindView<'_> {
    fn get(&self, index: usize) -> Option<Param<'_>> {
        self.param(index)
    }
}

/// A `Bind` of `portal` to `statement` with `values` (binary?, value; `None` is NULL), one
/// format code per value.
pub(super) fn build_bind(
    portal: &[u8],
    statement: &[u8],
    values: &[(bool, Option<&[u8]>)],
    result_formats: &[i16],
) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(b'B');
    buf.put_i32(0);
    buf.put_slice(portal);
    buf.put_u8(0);
    buf.put_slice(statement);
    buf.put_u8(0);
    let count = i16::try_from(values.len()).unwrap_or(i16::MAX);
    buf.put_i16(count);
    for (binary, _) in values {
        buf.put_i16(i16::from(*binary));
    }
    buf.put_i16(count);
    for (_, value) in values {
        match value {
            Some(value) => {
                buf.put_i32(i32::try_from(value.len()).unwrap_or(i32::MAX));
                buf.put_slice(value);
            }
            None => buf.put_i32(-1),
        }
    }
    buf.put_i16(i16::try_from(result_formats.len()).unwrap_or(i16::MAX));
    for &f in result_formats {
        buf.put_i16(f);
    }
    let len = i32::try_from(buf.len() - 1).unwrap_or(i32::MAX);
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(body: &[u8]) -> Frame {
        let mut msg = BytesMut::new();
        msg.put_u8(b'B');
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(body);
        Frame::from_bytes(msg.freeze())
    }

    #[test]
    fn bind_params_and_retarget() {
        let mut body = BytesMut::new();
        body.put_slice(b"p\0stmt\0");
        body.put_i16(1); // one format code for all
        body.put_i16(1); // binary
        body.put_i16(2);
        body.put_i32(8);
        body.put_i64(42);
        body.put_i32(-1);
        body.put_i16(1);
        body.put_i16(1);
        let f = bind(&body);
        let view = match BindView::new(&f) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            view.params(),
            vec![Param::Binary(&42i64.to_be_bytes()), Param::Null]
        );
        assert_eq!(view.param(2), None);
        assert_eq!(view.result_formats(), vec![1]);
        let renamed = Frame::from_bytes(view.retarget(&f, b"other"));
        let again = BindView::new(&renamed).map(|v| (v.statement.to_vec(), v.params()));
        assert_eq!(again, Ok((b"other".to_vec(), view.params())));
    }

    #[test]
    fn formats_apply_per_value_and_rewrites_keep_them() {
        let mut body = BytesMut::new();
        body.put_slice(b"\0s\0");
        body.put_i16(3);
        for code in [0, 1, 0] {
            body.put_i16(code);
        }
        body.put_i16(3);
        body.put_i32(2);
        body.put_slice("é".as_bytes());
        body.put_i32(4);
        body.put_i32(7);
        body.put_i32(1);
        body.put_slice(b"x");
        body.put_i16(0);
        let f = bind(&body);
        let view = match BindView::new(&f) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        let seven = 7i32.to_be_bytes();
        let expected = vec![
            Param::Text("é".as_bytes()),
            Param::Binary(&seven),
            Param::Text(b"x"),
        ];
        assert_eq!(view.params(), expected);
        assert_eq!(Params::get(&view, 1), Some(expected[1]));
        assert!(view.has_non_ascii_text());
        let subset = Frame::from_bytes(view.subset(&[2, 1], &[]));
        let subset = BindView::new(&subset).map(|v| v.params());
        assert_eq!(subset, Ok(vec![expected[2], expected[1]]));
        let appended = Frame::from_bytes(view.with_appended(&["9".to_owned()]));
        let appended = BindView::new(&appended).map(|v| v.params());
        let mut longer = expected.clone();
        longer.push(Param::Text(b"9"));
        assert_eq!(appended, Ok(longer));
    }

    #[test]
    fn many_parameters_read_alike_one_by_one_and_at_once() {
        let mut body = BytesMut::new();
        body.put_slice(b"\0s\0");
        body.put_i16(0);
        body.put_i16(1000);
        for i in 0..1000 {
            if i % 7 == 0 {
                body.put_i32(-1);
            } else {
                let text = i.to_string();
                body.put_i32(text.len() as i32);
                body.put_slice(text.as_bytes());
            }
        }
        body.put_i16(0);
        let f = bind(&body);
        let view = match BindView::new(&f) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        let all = view.params();
        assert_eq!(all.len(), 1000);
        for i in [0, 1, 7, 500, 999] {
            assert_eq!(view.param(i), Some(all[i]), "parameter {i}");
        }
        assert_eq!(all[500], Param::Text(b"500"));
        assert_eq!(all[497], Param::Null);
        let subset = Frame::from_bytes(view.subset(&[999, 0], &[]));
        assert_eq!(
            BindView::new(&subset).map(|v| v.params()),
            Ok(vec![all[999], all[0]])
        );
    }

    #[test]
    fn truncated_messages_are_malformed_not_panics() {
        for body in [
            &b""[..],
            b"p",
            b"p\0s\0\x00",
            b"p\0s\0\x00\x01\x00",
            b"p\0s\0\x00\x00\x00\x01\x00\x00\x00\x09ab",
            b"p\0s\0\x00\x00\x00\x01\xff\xff\xff\xfe",
        ] {
            assert!(BindView::new(&bind(body)).is_err(), "{body:?}");
        }
    }
}
