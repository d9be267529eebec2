//! Compute requests counted for `/metrics`: how many by op and outcome, and
//! how long they took (a fixed-bucket histogram). Pure and bounded: at most
//! [`MAX_OPS`] op names are kept apart, later ones count as `other` (a
//! client may name any op; the labels must not grow without end).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::protocol::ErrorKind;

/// Upper bounds of the latency buckets, in seconds (`+Inf` is implied).
pub const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Distinct op labels kept; the rest count as [`OTHER`].
pub const MAX_OPS: usize = 64;
/// The label of ops past [`MAX_OPS`].
pub const OTHER: &str = "other";

/// How a request ended, as a label.
pub fn outcome(r: Result<(), ErrorKind>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(ErrorKind::Cancelled) => "cancelled",
        Err(ErrorKind::Timeout) => "timeout",
        Err(ErrorKind::Busy) => "busy",
        Err(ErrorKind::UnknownOp) => "unknown_op",
        Err(ErrorKind::TooLarge) => "too_large",
        Err(ErrorKind::ComputeDown) => "compute_down",
        Err(ErrorKind::ShuttingDown) => "shutting_down",
        Err(_) => "error",
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Requests by op, then by outcome. Counting one looks both up by
    /// reference: only an op's or an outcome's first request allocates.
    requests: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Answered requests per latency bucket (not cumulative); the last one
    /// is `+Inf`.
    pub buckets: [u64; BUCKETS.len() + 1],
    pub sum_secs: f64,
    pub count: u64,
}

impl Tally {
    /// Count one request of `op` that ended with `outcome`; `took`, when it
    /// was timed, goes into the histogram.
    pub fn record(&mut self, op: &str, outcome: &'static str, took: Option<Duration>) {
        let by_outcome = match self.requests.get_mut(op) {
            Some(m) => m,
            None => {
                let label = if self.requests.len() < MAX_OPS { op } else { OTHER };
                self.requests.entry(label.to_string()).or_default()
            }
        };
        *by_outcome.entry(outcome).or_insert(0) += 1;
        if let Some(d) = took {
            let s = d.as_secs_f64();
            let i = BUCKETS.iter().position(|&b| s <= b).unwrap_or(BUCKETS.len());
            self.buckets[i] += 1;
            self.sum_secs += s;
            self.count += 1;
        }
    }

    /// Requests counted, by (op, outcome), in that order.
    pub fn requests(&self) -> impl Iterator<Item = ((&str, &'static str), u64)> + '_ {
        self.requests
            .iter()
            .flat_map(|(op, m)| m.iter().map(move |(outcome, n)| ((op.as_str(), *outcome), *n)))
    }

    /// Requests of `op` that ended with `outcome`.
    pub fn get(&self, op: &str, outcome: &str) -> u64 {
        self.requests.get(op).and_then(|m| m.get(outcome)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_op_and_outcome_and_buckets_latency() {
        let mut t = Tally::default();
        t.record("echo", "ok", Some(Duration::from_micros(300)));
        t.record("echo", "ok", Some(Duration::from_millis(30)));
        t.record("echo", "timeout", Some(Duration::from_secs(60)));
        t.record("render", "busy", None);
        assert_eq!(t.get("echo", "ok"), 2);
        assert_eq!(t.get("render", "busy"), 1);
        assert_eq!(t.count, 3);
        assert_eq!(t.buckets[0], 1);
        assert_eq!(t.buckets[6], 1, "30 ms falls in the 50 ms bucket");
        assert_eq!(t.buckets[BUCKETS.len()], 1, "60 s is only under +Inf");
        assert_eq!(outcome(Err(ErrorKind::Timeout)), "timeout");
    }

    #[test]
    fn the_mux_counts_what_it_answers_and_what_times_out() {
        use crate::daemon::mux::{Limits, Mux, OpRef};
        let mut m = Mux::new(Limits::default());
        // Timed with the readings it is given (the turns' clock).
        let taken = std::time::Instant::now();
        let id = m.submit(1, 1, OpRef::Code(1), "echo".into(), vec![], taken).unwrap();
        m.next_send().unwrap();
        m.complete(id, crate::wire::status::OK, vec![], taken + Duration::from_millis(30));
        assert_eq!(m.tally.buckets[6], 1, "30 ms after it was taken: the 50 ms bucket");
        let id =
            m.submit(1, 2, OpRef::Name("render".into()), "render".into(), vec![], taken).unwrap();
        m.set_timeout(id, 5);
        m.expire(id).unwrap();
        assert_eq!(m.tally.get("echo", "ok"), 1);
        assert_eq!(m.tally.get("render", "timeout"), 1);
        assert_eq!(m.tally.count, 2);
    }

    #[test]
    fn op_labels_are_bounded() {
        let mut t = Tally::default();
        for i in 0..1000 {
            t.record(&format!("op{i}"), "unknown_op", None);
        }
        t.record("op0", "ok", None);
        let ops: std::collections::BTreeSet<_> = t.requests().map(|((o, _), _)| o).collect();
        assert_eq!(ops.len(), MAX_OPS + 1);
        assert_eq!(t.get(OTHER, "unknown_op"), 1000 - MAX_OPS as u64);
        assert_eq!(t.get("op0", "ok"), 1, "a known op keeps its label");
        assert_eq!(t.requests().count(), MAX_OPS + 2, "(op, outcome) pairs");
    }
}
