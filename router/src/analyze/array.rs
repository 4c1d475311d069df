//! PostgreSQL array values, for `key = ANY(...)`: the text form (`{1,2,"x y"}`), used by array
//! literals and text-format Bind parameters, and the binary form of binary-format parameters.
//!
//! Both decoders only split an array into its elements (NULL elements are `None`); the key type
//! reads each element afterwards. Multi-dimensional arrays are flattened, as `ANY` does.

/// Most dimensions PostgreSQL allows (`MAXDIM`).
const MAX_DIMS: usize = 6;

/// Splits the text form of an array into its elements, following PostgreSQL's `array_in`:
/// optional `[lo:hi]=` dimension decoration, nested braces, double-quoted elements with
/// backslash escapes, unquoted elements trimmed of surrounding whitespace, unquoted `NULL`.
pub(crate) fn parse_text_array(text: &str) -> Result<Vec<Option<String>>, String> {
    let mut rest = text.trim_start();
    if rest.starts_with('[') {
        // Dimension decoration such as `[1:3]={1,2,3}`: bounds do not matter to ANY.
        let eq = rest.find('=').ok_or("dimension decoration without '='")?;
        rest = rest[eq + 1..].trim_start();
    }
    let mut chars = rest.chars().peekable();
    if chars.next() != Some('{') {
        return Err("array value must start with \"{\"".into());
    }
    let mut out = Vec::new();
    let mut depth = 1usize;
    // After `{` or `,` an element (or nested array) is expected; after an element, `,` or `}`.
    let mut expect_element = true;
    let mut just_opened = true;
    while depth > 0 {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else {
            return Err("unexpected end of input".into());
        };
        if expect_element {
            match c {
                '{' => {
                    chars.next();
                    depth += 1;
                    if depth > MAX_DIMS {
                        return Err(format!("more than {MAX_DIMS} dimensions"));
                    }
                    just_opened = true;
                }
                '}' if just_opened => {
                    // Empty (sub)array.
                    chars.next();
                    depth -= 1;
                    expect_element = false;
                    just_opened = false;
                }
                '"' => {
                    chars.next();
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            None => return Err("unterminated quoted element".into()),
                            Some('"') => break,
                            Some('\\') => value.push(chars.next().ok_or("unterminated escape")?),
                            Some(other) => value.push(other),
                        }
                    }
                    out.push(Some(value));
                    expect_element = false;
                    just_opened = false;
                }
                ',' | '}' => return Err(format!("unexpected \"{c}\"")),
                _ => {
                    let mut value = String::new();
                    let mut escaped_len = 0usize;
                    let mut any_escape = false;
                    while let Some(&c) = chars.peek() {
                        match c {
                            ',' | '}' => break,
                            '{' | '"' => {
                                return Err(format!("unexpected \"{c}\" inside an element"))
                            }
                            '\\' => {
                                chars.next();
                                value.push(chars.next().ok_or("unterminated escape")?);
                                escaped_len = value.len();
                                any_escape = true;
                            }
                            _ => {
                                chars.next();
                                value.push(c);
                            }
                        }
                    }
                    // Trailing whitespace is not part of an unquoted element (unless escaped).
                    let keep = value.trim_end().len().max(escaped_len);
                    value.truncate(keep);
                    if !any_escape && value.eq_ignore_ascii_case("null") {
                        out.push(None);
                    } else {
                        out.push(Some(value));
                    }
                    expect_element = false;
                    just_opened = false;
                }
            }
        } else {
            chars.next();
            match c {
                ',' => expect_element = true,
                '}' => depth -= 1,
                _ => return Err(format!("unexpected \"{c}\" after an element")),
            }
        }
    }
    if chars.any(|c| !c.is_whitespace()) {
        return Err("junk after closing \"}\"".into());
    }
    Ok(out)
}

/// Splits a binary-format array (`array_send`): ndim, has-null flag, element type oid, then
/// (size, lower bound) per dimension, then each element as a length (-1 for NULL) and bytes.
pub(crate) fn parse_binary_array(bytes: &[u8]) -> Result<Vec<Option<&[u8]>>, String> {
    let mut reader = Reader { bytes, pos: 0 };
    let ndim = reader.i32()?;
    let _flags = reader.i32()?;
    let _element_type = reader.i32()?;
    if ndim == 0 {
        return if reader.pos == bytes.len() {
            Ok(Vec::new())
        } else {
            Err("junk after an empty array".into())
        };
    }
    let ndim = usize::try_from(ndim)
        .ok()
        .filter(|n| *n <= MAX_DIMS)
        .ok_or_else(|| format!("invalid number of dimensions {ndim}"))?;
    let mut count = 1usize;
    for _ in 0..ndim {
        let size = reader.i32()?;
        let _lower_bound = reader.i32()?;
        let size = usize::try_from(size).map_err(|_| format!("invalid dimension size {size}"))?;
        count = count.checked_mul(size).ok_or("array too large")?;
    }
    // Every element takes at least its 4-byte length, which bounds `count` by the input size.
    if count > (bytes.len() - reader.pos) / 4 {
        return Err("array shorter than its dimensions".into());
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = reader.i32()?;
        if len == -1 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| format!("invalid element length {len}"))?;
        out.push(Some(reader.take(len)?));
    }
    if reader.pos != bytes.len() {
        return Err("junk after the last element".into());
    }
    Ok(out)
}

/// A cursor over big-endian binary data.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("truncated array")?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|e| e.map(str::to_owned)).collect()
    }

    #[test]
    fn text_arrays_follow_array_in() {
        let cases: &[(&str, Option<Vec<Option<String>>>)] = &[
            ("{1,2,3}", Some(s(&[Some("1"), Some("2"), Some("3")]))),
            ("{}", Some(vec![])),
            (" { 1 , 2 } ", Some(s(&[Some("1"), Some("2")]))),
            (
                "{\"x y\",\"a\\\"b\",c\\,d}",
                Some(s(&[Some("x y"), Some("a\"b"), Some("c,d")])),
            ),
            (
                "{NULL,null,\"NULL\",\\NULL}",
                Some(s(&[None, None, Some("NULL"), Some("NULL")])),
            ),
            (
                "{{1,2},{3,4}}",
                Some(s(&[Some("1"), Some("2"), Some("3"), Some("4")])),
            ),
            ("[1:2]={7,8}", Some(s(&[Some("7"), Some("8")]))),
            ("{a b}", Some(s(&[Some("a b")]))),
            ("{1,2", None),
            ("1,2", None),
            ("{1,,2}", None),
            ("{1}}", None),
            ("{\"unterminated}", None),
            ("{{{{{{{1}}}}}}}", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_text_array(text).ok(), *want, "{text:?}");
        }
    }

    fn binary(ndim: i32, dims: &[i32], elements: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&ndim.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&20u32.to_be_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
        }
        for e in elements {
            match e {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }

    #[test]
    fn binary_arrays_follow_array_send() {
        let one = 1i64.to_be_bytes();
        let two = 2i64.to_be_bytes();
        let data = binary(1, &[3], &[Some(&one), None, Some(&two)]);
        assert_eq!(
            parse_binary_array(&data),
            Ok(vec![Some(&one[..]), None, Some(&two[..])])
        );
        let data = binary(2, &[1, 2], &[Some(&one), Some(&two)]);
        assert_eq!(parse_binary_array(&data).map(|v| v.len()), Ok(2));
        assert_eq!(parse_binary_array(&binary(0, &[], &[])), Ok(vec![]));
        // Malformed inputs are errors, never panics.
        assert!(parse_binary_array(&[]).is_err());
        assert!(parse_binary_array(&binary(1, &[5], &[Some(&one)])).is_err());
        assert!(parse_binary_array(&binary(1, &[-1], &[])).is_err());
        assert!(parse_binary_array(&binary(7, &[1; 7], &[Some(&one)])).is_err());
        assert!(parse_binary_array(&binary(2, &[i32::MAX, i32::MAX], &[])).is_err());
        let mut bad_len = binary(1, &[1], &[Some(&one)]);
        bad_len[20..24].copy_from_slice(&(-7i32).to_be_bytes());
        assert!(parse_binary_array(&bad_len).is_err());
        let mut trailing = binary(1, &[1], &[Some(&one)]);
        trailing.push(0);
        assert!(parse_binary_array(&trailing).is_err());
    }
}
