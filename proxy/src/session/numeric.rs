//! Exact addition of PostgreSQL `numeric` values in text form, for combining `sum()` across
//! shards: no floating point, the result scale is the larger input scale, as PostgreSQL's own
//! numeric addition gives.

/// `a + b` for numeric text (`-12.50`, `NaN`, `Infinity`); `None` if either is not numeric.
pub fn add(a: &str, b: &str) -> Option<String> {
    let special = |s: &str| matches!(s, "NaN" | "Infinity" | "-Infinity");
    if special(a) || special(b) {
        return Some(
            match (a, b) {
                ("NaN", _) | (_, "NaN") => "NaN",
                ("Infinity", "-Infinity") | ("-Infinity", "Infinity") => "NaN",
                ("Infinity", _) | (_, "Infinity") => "Infinity",
                _ => "-Infinity",
            }
            .to_owned(),
        );
    }
    let (neg_a, int_a, frac_a) = parts(a)?;
    let (neg_b, int_b, frac_b) = parts(b)?;
    let scale = frac_a.len().max(frac_b.len());
    let digits = |int: &str, frac: &str| -> Vec<u8> {
        let mut d: Vec<u8> = int.bytes().chain(frac.bytes()).map(|c| c - b'0').collect();
        d.extend(std::iter::repeat_n(0, scale - frac.len()));
        d
    };
    let (da, db) = (digits(int_a, frac_a), digits(int_b, frac_b));
    let (negative, magnitude) = if neg_a == neg_b {
        (neg_a, add_magnitudes(&da, &db))
    } else if compare_magnitudes(&da, &db).is_ge() {
        (neg_a, subtract_magnitudes(&da, &db))
    } else {
        (neg_b, subtract_magnitudes(&db, &da))
    };
    Some(format_decimal(negative, &magnitude, scale))
}

/// Sign, integer digits and fraction digits of a finite numeric text.
fn parts(s: &str) -> Option<(bool, &str, &str)> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let valid = !(int.is_empty() && frac.is_empty())
        && int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit());
    valid.then_some((negative, int, frac))
}

fn trimmed(d: &[u8]) -> &[u8] {
    let start = d.iter().position(|x| *x != 0).unwrap_or(d.len());
    &d[start..]
}

fn compare_magnitudes(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (a, b) = (trimmed(a), trimmed(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn add_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let len = a.len().max(b.len()) + 1;
    let mut out = vec![0u8; len];
    let mut carry = 0;
    for i in 0..len {
        let x = if i < a.len() { a[a.len() - 1 - i] } else { 0 };
        let y = if i < b.len() { b[b.len() - 1 - i] } else { 0 };
        let sum = x + y + carry;
        out[len - 1 - i] = sum % 10;
        carry = sum / 10;
    }
    out
}

/// `a - b` for `a >= b`.
fn subtract_magnitudes(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i8;
    for i in 0..a.len() {
        let x = a[a.len() - 1 - i] as i8;
        let y = if i < b.len() {
            b[b.len() - 1 - i] as i8
        } else {
            0
        };
        let mut d = x - y - borrow;
        borrow = 0;
        if d < 0 {
            d += 10;
            borrow = 1;
        }
        out[a.len() - 1 - i] = d as u8;
    }
    out
}

fn format_decimal(negative: bool, digits: &[u8], scale: usize) -> String {
    let split = digits.len() - scale;
    let int: String = trimmed(&digits[..split])
        .iter()
        .map(|d| char::from(b'0' + d))
        .collect();
    let frac: String = digits[split..]
        .iter()
        .map(|d| char::from(b'0' + d))
        .collect();
    let zero = digits.iter().all(|d| *d == 0);
    let mut s = String::new();
    if negative && !zero {
        s.push('-');
    }
    s.push_str(if int.is_empty() { "0" } else { &int });
    if scale > 0 {
        s.push('.');
        s.push_str(&frac);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_like_postgres() {
        let cases = [
            ("1", "2", "3"),
            ("1.5", "2.25", "3.75"),
            ("-1.50", "1.5", "0.00"),
            ("-10", "3.3", "-6.7"),
            (
                "99999999999999999999999999999999",
                "1",
                "100000000000000000000000000000000",
            ),
            ("0.001", "-0.002", "-0.001"),
            ("NaN", "1", "NaN"),
            ("Infinity", "-Infinity", "NaN"),
            ("-Infinity", "5", "-Infinity"),
        ];
        for (a, b, want) in cases {
            assert_eq!(add(a, b).as_deref(), Some(want), "{a} + {b}");
        }
        assert_eq!(add("1x", "1"), None);
    }
}
