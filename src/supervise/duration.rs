//! Durations the way `weaver.toml` writes them, both ways: read with
//! [`parse_duration`], printed with [`human`] (in messages, `ps` and
//! give-up reasons), so what weaver prints can be pasted back into the
//! file.

use std::time::Duration;

const MS_PER_SEC: u128 = 1000;
const MS_PER_MIN: u128 = 60 * MS_PER_SEC;
const MS_PER_HOUR: u128 = 60 * MS_PER_MIN;

/// `"500ms"`, `"2s"`, `"1.5s"`, `"1m30s"`, `"2h"`, `"0"`: a number and a
/// unit (`ms`, `s`, `m`, `h`), repeated; a bare `0` is allowed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "bad duration \"{s}\": write a number and a unit (ms, s, m, h) like \"500ms\", \
             \"1.5s\" or \"1m30s\", or an integer of milliseconds"
        )
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
            return Err(bad());
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let ms_per_unit = match unit {
            "ms" => 1,
            "s" => MS_PER_SEC,
            "m" => MS_PER_MIN,
            "h" => MS_PER_HOUR,
            _ => return Err(bad()),
        };
        let scale = ms_per_unit as f64 / MS_PER_SEC as f64;
        total += value * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A duration the way the configuration writes it: `"0"`, `"250ms"`,
/// `"1.5s"`, `"2m"`, `"1m30s"`, `"1h"`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() { "0".into() } else { format!("{}us", d.as_micros()) };
    }
    if ms < MS_PER_SEC {
        return format!("{ms}ms");
    }
    if ms < MS_PER_MIN {
        let s = format!("{:.3}", d.as_secs_f64());
        return format!("{}s", s.trim_end_matches('0').trim_end_matches('.'));
    }
    let (h, m, s) = (ms / MS_PER_HOUR, ms % MS_PER_HOUR / MS_PER_MIN, ms % MS_PER_MIN);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&human(Duration::from_millis(s as u64)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let ms = |s: &str| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("2s"), Ok(2000));
        assert_eq!(ms("1.5s"), Ok(1500));
        assert_eq!(ms("1m"), Ok(60_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("0"), Ok(0));
        for bad in ["", "5", "s", "1.s", ".5s", "2 s", "-1s", "3d", "1e3ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn durations_print_the_way_they_are_written() {
        for s in ["0", "250ms", "1s", "1.5s", "59.999s", "2m", "1m30s", "1h", "1h1m500ms"] {
            assert_eq!(human(parse_duration(s).unwrap()), s);
        }
    }
}
