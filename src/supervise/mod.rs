//! Supervised processes (doc in progress).

pub mod backoff;
pub mod config;
pub mod events;
pub mod graph;
pub mod machine;
pub mod ring;
pub mod supervisor;

use std::time::Duration;

/// A duration the way the configuration writes it: `"0"`, `"250ms"`,
/// `"1.5s"`, `"2m"`, `"1m30s"`, `"1h"`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return if d.is_zero() { "0".into() } else { format!("{}us", d.as_micros()) };
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        return format!("{}s", s.trim_end_matches('0').trim_end_matches('.'));
    }
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms % 60_000);
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
    use crate::supervise::config::parse_duration;

    #[test]
    fn durations_print_the_way_they_are_written() {
        for s in ["0", "250ms", "1s", "1.5s", "59.999s", "2m", "1m30s", "1h", "1h1m500ms"] {
            assert_eq!(human(parse_duration(s).unwrap()), s);
        }
    }
}
