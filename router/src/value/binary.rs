//! PostgreSQL's binary wire format for the few values the proxy must read or write itself when
//! merging results for a client that asked for binary columns: sort keys are decoded to compare
//! them, and combined `count`/`sum`/`avg` values (computed exactly in text) are encoded back.

/// `numeric`'s sign words in its binary form.
const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// A signed integer of 2, 4 or 8 bytes.
pub fn integer(bytes: &[u8]) -> Option<i64> {
    Some(match bytes.len() {
        2 => i64::from(i16::from_be_bytes(bytes.try_into().ok()?)),
        4 => i64::from(i32::from_be_bytes(bytes.try_into().ok()?)),
        8 => i64::from_be_bytes(bytes.try_into().ok()?),
        _ => return None,
    })
}

/// A `float4` or `float8`.
pub fn float(bytes: &[u8]) -> Option<f64> {
    Some(match bytes.len() {
        4 => f64::from(f32::from_be_bytes(bytes.try_into().ok()?)),
        8 => f64::from_be_bytes(bytes.try_into().ok()?),
        _ => return None,
    })
}

/// A binary `numeric` as PostgreSQL prints it (`-12.50`, `NaN`, `Infinity`).
pub fn numeric_text(bytes: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes(
            bytes.get(2 * i..2 * i + 2)?.try_into().ok()?,
        ))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        NUMERIC_NAN => return Some("NaN".into()),
        NUMERIC_PINF => return Some("Infinity".into()),
        NUMERIC_NINF => return Some("-Infinity".into()),
        NUMERIC_POSITIVE | NUMERIC_NEGATIVE => {}
        _ => return None,
    }
    let digits = (0..ndigits)
        .map(|i| word(4 + i).filter(|d| *d < 10_000))
        .collect::<Option<Vec<u16>>>()?;
    let digit_at = |position: i64| -> u16 {
        // `position` counts base-10000 digits from the first (weight `weight`).
        usize::try_from(position)
            .ok()
            .and_then(|p| digits.get(p).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if sign == NUMERIC_NEGATIVE {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit_at(0).to_string());
        for position in 1..=weight {
            text.push_str(&format!("{:04}", digit_at(position)));
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut position = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit_at(position)));
            position += 1;
        }
        fraction.truncate(dscale);
        text.push('.');
        text.push_str(&fraction);
    }
    Some(text)
}

/// Numeric text (as PostgreSQL prints it) in binary form; `None` if it is not numeric text.
pub fn numeric_binary(text: &str) -> Option<Vec<u8>> {
    let special = match text {
        "NaN" => Some(NUMERIC_NAN),
        "Infinity" => Some(NUMERIC_PINF),
        "-Infinity" => Some(NUMERIC_NINF),
        _ => None,
    };
    if let Some(sign) = special {
        return Some(words(&[0, 0, sign, 0]));
    }
    let (negative, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = magnitude.split_once('.').unwrap_or((magnitude, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let dscale = u16::try_from(frac.len()).ok()?;
    // Align to base-10000 groups around the decimal point.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let aligned: String = "0".repeat(int_pad) + int + frac + &"0".repeat(frac_pad);
    let mut groups: Vec<u16> = aligned
        .as_bytes()
        .chunks(4)
        .map(|c| c.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
        .collect();
    let mut weight = i16::try_from((int.len() + int_pad) / 4).ok()? - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= i16::try_from(leading).ok()?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (weight, sign) = if groups.is_empty() {
        (0, NUMERIC_POSITIVE)
    } else if negative {
        (weight, NUMERIC_NEGATIVE)
    } else {
        (weight, NUMERIC_POSITIVE)
    };
    let mut header = vec![
        u16::try_from(groups.len()).ok()?,
        weight as u16,
        sign,
        dscale,
    ];
    header.extend(groups);
    Some(words(&header))
}

fn words(words: &[u16]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_round_trips_through_binary() {
        for text in [
            "0",
            "0.00",
            "1",
            "-1",
            "12345678.9",
            "-0.000123",
            "10000",
            "99990000.0001",
            "3.14159265358979323846",
            "-1234567890123456789012345.50",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            let binary = numeric_binary(text);
            assert_eq!(
                binary.as_deref().and_then(numeric_text).as_deref(),
                Some(text),
                "{text}"
            );
        }
        assert_eq!(numeric_binary("1e5"), None);
        assert_eq!(numeric_binary("-"), None);
    }

    #[test]
    fn numeric_binary_matches_postgres_layout() {
        // 12345.678 is digits [1, 2345, 6780], weight 1, dscale 3, as numeric_send writes it.
        assert_eq!(
            numeric_binary("12345.678"),
            Some(words(&[3, 1, NUMERIC_POSITIVE, 3, 1, 2345, 6780]))
        );
        assert_eq!(
            numeric_binary("-0.0005"),
            Some(words(&[1, (-1i16) as u16, NUMERIC_NEGATIVE, 4, 5]))
        );
    }

    #[test]
    fn integers_and_floats_by_width() {
        assert_eq!(integer(&(-7i16).to_be_bytes()), Some(-7));
        assert_eq!(integer(&(-7i32).to_be_bytes()), Some(-7));
        assert_eq!(integer(&i64::MIN.to_be_bytes()), Some(i64::MIN));
        assert_eq!(integer(&[1, 2, 3]), None);
        assert_eq!(float(&1.5f32.to_be_bytes()), Some(1.5));
        assert_eq!(float(&(-2.25f64).to_be_bytes()), Some(-2.25));
    }
}
