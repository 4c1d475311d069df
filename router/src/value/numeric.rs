//! Exact arithmetic on PostgreSQL `numeric` values in text form, for combining aggregates across
//! shards without floating point: addition (`sum`), whose scale is the larger input scale, and
//! the division of `avg`, whose scale and rounding follow PostgreSQL's `select_div_scale` and
//! `div_var` (at least 16 significant digits, half away from zero).

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

/// `sum / count` as PostgreSQL's `avg` prints it; `None` for a non-numeric sum.
pub fn average(sum: &str, count: u64) -> Option<String> {
    if count == 0 {
        return None;
    }
    if matches!(sum, "NaN" | "Infinity" | "-Infinity") {
        return Some(sum.to_owned());
    }
    let (negative, int, frac) = parts(sum)?;
    let count_digits = count.to_string();
    let (weight1, first1) = weight_and_first(int, frac);
    let (weight2, first2) = weight_and_first(&count_digits, "");
    let mut qweight = weight1 - weight2;
    if first1 <= first2 {
        qweight -= 1;
    }
    let rscale = (16 - qweight * 4).max(frac.len() as i64).clamp(0, 1000) as usize;
    // (int.frac * 10^scale) / count, with the numerator as decimal digits. PostgreSQL keeps at
    // most 1,000 fractional digits; a sum with more is divided at its own scale, and the
    // digits past `rscale` then round the result.
    let scale = rscale.max(frac.len());
    let mut numerator: Vec<u8> = int.bytes().chain(frac.bytes()).map(|c| c - b'0').collect();
    numerator.extend(std::iter::repeat_n(0, scale - frac.len()));
    let mut quotient = Vec::with_capacity(numerator.len());
    let mut remainder: u128 = 0;
    for d in numerator {
        remainder = remainder * 10 + u128::from(d);
        quotient.push((remainder / u128::from(count)) as u8);
        remainder %= u128::from(count);
    }
    let round_up = if scale > rscale {
        // The first dropped digit decides: all after it, remainder included, add less than
        // one unit of it.
        let keep = quotient.len() - (scale - rscale);
        let first_dropped = quotient.get(keep).copied().unwrap_or(0);
        quotient.truncate(keep);
        first_dropped >= 5
    } else {
        remainder * 2 >= u128::from(count)
    };
    if round_up {
        // Round half away from zero: add one unit in the last place.
        let mut i = quotient.len();
        loop {
            if i == 0 {
                quotient.insert(0, 1);
                break;
            }
            i -= 1;
            if quotient[i] == 9 {
                quotient[i] = 0;
            } else {
                quotient[i] += 1;
                break;
            }
        }
    }
    if quotient.len() < rscale + 1 {
        let pad = rscale + 1 - quotient.len();
        quotient.splice(0..0, std::iter::repeat_n(0, pad));
    }
    Some(format_decimal(negative, &quotient, rscale))
}

/// PostgreSQL's numeric weight (base-10000 digit position) and first non-zero base-10000 digit
/// of a magnitude; `(0, 0)` for zero.
fn weight_and_first(int: &str, frac: &str) -> (i64, u32) {
    let int = int.trim_start_matches('0');
    if !int.is_empty() {
        let head = match int.len() % 4 {
            0 => 4,
            n => n,
        };
        let groups = int.len().div_ceil(4) as i64;
        return (groups - 1, int[..head].parse().unwrap_or(0));
    }
    let mut padded = frac.to_owned();
    while !padded.len().is_multiple_of(4) {
        padded.push('0');
    }
    for (j, group) in padded.as_bytes().chunks(4).enumerate() {
        let value: u32 = std::str::from_utf8(group)
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        if value != 0 {
            return (-(j as i64) - 1, value);
        }
    }
    (0, 0)
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

    #[test]
    fn averages_like_postgres() {
        // Values printed by PostgreSQL 15.18 for avg() / numeric division of the same inputs.
        let cases = [
            ("3", 2, "1.5000000000000000"),
            ("30", 2, "15.0000000000000000"),
            ("10", 3, "3.3333333333333333"),
            ("20", 3, "6.6666666666666667"),
            ("-20", 3, "-6.6666666666666667"),
            ("0", 5, "0.00000000000000000000"),
            ("12345678", 7, "1763668.285714285714"),
            ("0.001", 3, "0.00033333333333333333"),
            ("123456789012", 7, "17636684144.57142857"),
            ("5", 123456, "0.000040500259201658890617"),
            ("1.50", 4, "0.37500000000000000000"),
            ("100000", 1, "100000.000000000000"),
        ];
        for (sum, count, want) in cases {
            assert_eq!(
                average(sum, count).as_deref(),
                Some(want),
                "{sum} / {count}"
            );
        }
    }

    #[test]
    fn a_sum_finer_than_postgres_keeps_is_rounded_to_1000_digits() {
        // Each expected value is what PostgreSQL 15 printed for avg() of the same values.
        let zeros = "0".repeat(999);
        // 5 × 10^-1001 rounds half away from zero to 10^-1000; 4 × 10^-1001 to zero.
        let half = format!("0.{zeros}05");
        assert_eq!(average(&half, 1), Some(format!("0.{zeros}1")));
        assert_eq!(
            average(&format!("-{half}"), 1),
            Some(format!("-0.{zeros}1"))
        );
        let less = format!("0.{zeros}04");
        assert_eq!(average(&less, 1), Some(format!("0.{zeros}0")));
        // 1.99…9 (1,001 nines) carries into the integer part.
        let nines = format!("1.{}", "9".repeat(1001));
        assert_eq!(average(&nines, 1), Some(format!("2.{}", "0".repeat(1000))));
        // 0.33…3 (1,002 threes) / 1: the dropped 3s round down.
        let threes = format!("0.{}", "3".repeat(1002));
        assert_eq!(average(&threes, 1), Some(format!("0.{}", "3".repeat(1000))));
        // Three rows of 0.11…1 (1,001 ones), summed by the shards.
        let sum = format!("0.{}", "3".repeat(1001));
        assert_eq!(average(&sum, 3), Some(format!("0.{}", "1".repeat(1000))));
    }
}
