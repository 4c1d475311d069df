//! Text in the client's `client_encoding`.
//!
//! PostgreSQL reads query text in the encoding the client set, and so does the proxy: it
//! decodes a `Query` or `Parse` to route it, and encodes the SQL it sends a backend (a
//! re-prepared statement, a rewritten query, the client's settings) in the encoding that
//! backend uses. Data rows and parameters pass as the client's bytes.
//!
//! UTF8 (and SQL_ASCII, whose bytes a UTF8 server reads as UTF8) and the single-byte encodings
//! round-trip exactly: decoding then encoding gives back the client's bytes. Other multi-byte
//! encodings (EUC_JP, SJIS, BIG5, GBK…) map some characters differently from PostgreSQL's
//! tables, so their non-ASCII query text is refused rather than guessed at.

use std::borrow::Cow;

use encoding_rs::Encoding;

/// A client's `client_encoding`, as the proxy reads and writes its query text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEncoding {
    Utf8,
    /// ISO 8859-1: every byte is the code point of the same value.
    Latin1,
    /// A single-byte encoding whose table maps each byte to one character and back.
    SingleByte(&'static Encoding),
    /// An encoding the proxy reads only ASCII text of.
    AsciiOnly,
}

/// Why text could not pass between encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextError {
    /// Bytes that are not text in the client's encoding.
    Invalid,
    /// A character the target encoding has no byte for.
    Untranslatable,
    /// Non-ASCII text in an encoding the proxy does not read.
    Unsupported,
}

impl ClientEncoding {
    /// The encoding PostgreSQL knows as `name` (any of its spellings: `LATIN9`, `iso-8859-15`,
    /// `'win1252'`…); names the proxy has no table for read ASCII only.
    pub fn named(name: &str) -> ClientEncoding {
        // PostgreSQL's own cleaning: letters and digits, lower-cased (no allocation).
        let mut buf = [0u8; 16];
        let mut len = 0;
        for byte in name.bytes().filter(u8::is_ascii_alphanumeric) {
            let Some(slot) = buf.get_mut(len) else {
                return ClientEncoding::AsciiOnly;
            };
            *slot = byte.to_ascii_lowercase();
            len += 1;
        }
        let clean = std::str::from_utf8(&buf[..len]).unwrap_or_default();
        let single = |encoding| ClientEncoding::SingleByte(encoding);
        match clean {
            "utf8" | "unicode" | "sqlascii" => ClientEncoding::Utf8,
            "latin1" | "iso88591" => ClientEncoding::Latin1,
            "latin2" | "iso88592" => single(encoding_rs::ISO_8859_2),
            "latin3" | "iso88593" => single(encoding_rs::ISO_8859_3),
            "latin4" | "iso88594" => single(encoding_rs::ISO_8859_4),
            "latin6" | "iso885910" => single(encoding_rs::ISO_8859_10),
            "latin7" | "iso885913" => single(encoding_rs::ISO_8859_13),
            "latin8" | "iso885914" => single(encoding_rs::ISO_8859_14),
            "latin9" | "iso885915" => single(encoding_rs::ISO_8859_15),
            "latin10" | "iso885916" => single(encoding_rs::ISO_8859_16),
            "iso88595" => single(encoding_rs::ISO_8859_5),
            "iso88596" => single(encoding_rs::ISO_8859_6),
            "iso88597" => single(encoding_rs::ISO_8859_7),
            "iso88598" => single(encoding_rs::ISO_8859_8),
            "win1250" | "windows1250" => single(encoding_rs::WINDOWS_1250),
            "win1251" | "windows1251" | "win" => single(encoding_rs::WINDOWS_1251),
            "win1252" | "windows1252" => single(encoding_rs::WINDOWS_1252),
            "win1253" | "windows1253" => single(encoding_rs::WINDOWS_1253),
            "win1254" | "windows1254" => single(encoding_rs::WINDOWS_1254),
            "win1255" | "windows1255" => single(encoding_rs::WINDOWS_1255),
            "win1256" | "windows1256" => single(encoding_rs::WINDOWS_1256),
            "win1257" | "windows1257" => single(encoding_rs::WINDOWS_1257),
            "win1258" | "windows1258" | "abc" | "tcvn" | "tcvn5712" | "vscii" => {
                single(encoding_rs::WINDOWS_1258)
            }
            "win866" | "alt" | "cp866" => single(encoding_rs::IBM866),
            "win874" => single(encoding_rs::WINDOWS_874),
            "koi8r" | "koi8" => single(encoding_rs::KOI8_R),
            "koi8u" => single(encoding_rs::KOI8_U),
            _ => ClientEncoding::AsciiOnly,
        }
    }

    /// Text the client sent, as UTF-8 (borrowed when it already is).
    pub fn decode(self, bytes: &[u8]) -> Result<Cow<'_, str>, TextError> {
        let as_utf8 = || {
            std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|_| TextError::Invalid)
        };
        match self {
            // Nearly every client: checked in one pass.
            ClientEncoding::Utf8 => as_utf8(),
            // ASCII reads the same in every encoding.
            _ if bytes.is_ascii() => as_utf8(),
            ClientEncoding::Latin1 => {
                Ok(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()))
            }
            ClientEncoding::SingleByte(encoding) => encoding
                .decode_without_bom_handling_and_without_replacement(bytes)
                .ok_or(TextError::Invalid),
            ClientEncoding::AsciiOnly => Err(TextError::Unsupported),
        }
    }

    /// `text` as bytes in this encoding (borrowed when they are its UTF-8 bytes).
    pub fn encode(self, text: &str) -> Result<Cow<'_, [u8]>, TextError> {
        if text.is_ascii() {
            return Ok(Cow::Borrowed(text.as_bytes()));
        }
        match self {
            ClientEncoding::Utf8 => Ok(Cow::Borrowed(text.as_bytes())),
            ClientEncoding::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).map_err(|_| TextError::Untranslatable))
                .collect::<Result<Vec<u8>, _>>()
                .map(Cow::Owned),
            ClientEncoding::SingleByte(encoding) => {
                let (bytes, _, unmappable) = encoding.encode(text);
                if unmappable {
                    Err(TextError::Untranslatable)
                } else {
                    Ok(bytes)
                }
            }
            ClientEncoding::AsciiOnly => Err(TextError::Unsupported),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_spellings_name_the_same_encoding() {
        for name in ["LATIN9", "latin9", "'latin9'", "ISO-8859-15", "iso_8859_15"] {
            assert_eq!(
                ClientEncoding::named(name),
                ClientEncoding::SingleByte(encoding_rs::ISO_8859_15),
                "{name}"
            );
        }
        assert_eq!(ClientEncoding::named("UTF8"), ClientEncoding::Utf8);
        assert_eq!(ClientEncoding::named("SQL_ASCII"), ClientEncoding::Utf8);
        assert_eq!(ClientEncoding::named("EUC_JP"), ClientEncoding::AsciiOnly);
    }

    #[test]
    fn single_byte_text_round_trips_to_the_clients_bytes() {
        // "select '€'" in LATIN9, where the euro sign is 0xA4.
        let latin9 = ClientEncoding::named("LATIN9");
        let bytes = b"select '\xa4'";
        let text = latin9.decode(bytes).expect("valid LATIN9");
        assert_eq!(text, "select '\u{20ac}'");
        assert_eq!(latin9.encode(&text).expect("encodable"), &bytes[..]);
        // Every byte of LATIN1 is a character and comes back as itself.
        let all: Vec<u8> = (0..=255).filter(|b| *b != 0).collect();
        let latin1 = ClientEncoding::Latin1;
        let text = latin1.decode(&all).expect("every byte is LATIN1");
        assert_eq!(latin1.encode(&text).expect("encodable"), &all[..]);
    }

    #[test]
    fn text_the_encoding_cannot_carry_is_an_error() {
        assert_eq!(
            ClientEncoding::Latin1.encode("\u{20ac}"),
            Err(TextError::Untranslatable)
        );
        assert_eq!(
            ClientEncoding::named("LATIN9").encode("\u{4e2d}"),
            Err(TextError::Untranslatable)
        );
        assert_eq!(
            ClientEncoding::Utf8.decode(b"select '\xa4'"),
            Err(TextError::Invalid)
        );
        assert_eq!(
            ClientEncoding::AsciiOnly.decode("select 'é'".as_bytes()),
            Err(TextError::Unsupported)
        );
        assert_eq!(
            ClientEncoding::AsciiOnly.decode(b"select 1").as_deref(),
            Ok("select 1")
        );
    }
}
