//! What one weavelet connection has been sent and has said: the latest
//! unsent document is coalesced (a newer one replaces it, so a weavelet
//! that does not read costs one document at most), acknowledgements are
//! checked against what was sent, and `status` is rate-limited.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::codec;
use super::doc::{self, Doc};
use super::KEEP;

/// At most one `status` per weavelet this often; extra ones are dropped.
pub const STATUS_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct Delivery {
    /// The last document written to the connection and its revision.
    sent: Option<(u64, Doc)>,
    /// Revisions written, newest last (the last [`KEEP`]).
    sent_revs: VecDeque<u64>,
    /// A document waits for the connection's queue to drain.
    pub pending: bool,
    /// The newest revision it applied.
    pub applied: Option<u64>,
    /// The training step of its last message that had one.
    pub step: Option<u64>,
    /// The last rejection: revision and reason.
    pub rejected: Option<(u64, String)>,
    /// The latest metrics of `status`.
    pub metrics: BTreeMap<String, f64>,
    last_status: Option<Instant>,
}

impl Delivery {
    pub fn new() -> Self {
        Self::default()
    }

    /// The revision last written to the connection.
    pub fn sent_revision(&self) -> Option<u64> {
        self.sent.as_ref().map(|s| s.0)
    }

    /// Offer `target`'s document at `revision`. With the connection's
    /// queue empty (`idle`) the `config` line to write is returned;
    /// otherwise the offer is remembered (only that one is pending: the
    /// caller offers the then current document when the queue drains).
    pub fn offer(
        &mut self,
        target: &str,
        revision: u64,
        values: &Doc,
        idle: bool,
    ) -> Option<Vec<u8>> {
        if self.sent.as_ref().is_some_and(|(r, d)| *r == revision && d == values) {
            self.pending = false;
            return None;
        }
        if !idle {
            self.pending = true;
            return None;
        }
        self.pending = false;
        let empty = Doc::new();
        let before = self.sent.as_ref().map_or(&empty, |s| &s.1);
        let changed = doc::changed_keys(before, values);
        let line = codec::config(target, revision, values, &changed);
        self.sent = Some((revision, values.clone()));
        if self.sent_revs.back() != Some(&revision) {
            self.sent_revs.push_back(revision);
            if self.sent_revs.len() > KEEP {
                self.sent_revs.pop_front();
            }
        }
        Some(line)
    }

    fn check_sent(&self, revision: u64) -> Result<(), String> {
        if self.sent_revs.contains(&revision) {
            Ok(())
        } else {
            Err(format!("revision {revision} was never sent to this connection"))
        }
    }

    /// `applied`.
    pub fn applied(&mut self, revision: u64, step: Option<u64>) -> Result<(), String> {
        self.check_sent(revision)?;
        self.applied = Some(self.applied.map_or(revision, |a| a.max(revision)));
        if step.is_some() {
            self.step = step;
        }
        Ok(())
    }

    /// `rejected`.
    pub fn rejected(
        &mut self,
        revision: u64,
        step: Option<u64>,
        reason: String,
    ) -> Result<(), String> {
        self.check_sent(revision)?;
        self.rejected = Some((revision, reason));
        if step.is_some() {
            self.step = step;
        }
        Ok(())
    }

    /// `status`: kept unless one came less than [`STATUS_EVERY`] ago.
    /// Whether it was kept.
    pub fn status(
        &mut self,
        step: Option<u64>,
        metrics: BTreeMap<String, f64>,
        now: Instant,
    ) -> bool {
        if self.last_status.is_some_and(|t| now.saturating_duration_since(t) < STATUS_EVERY) {
            return false;
        }
        self.last_status = Some(now);
        if step.is_some() {
            self.step = step;
        }
        self.metrics = metrics;
        true
    }

    /// Revisions behind `current`.
    pub fn lag(&self, current: u64) -> u64 {
        current.saturating_sub(self.applied.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn doc(v: Value) -> Doc {
        serde_json::from_value(v).unwrap()
    }

    fn parsed(line: &[u8]) -> Value {
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn the_latest_unsent_document_replaces_older_ones() {
        let mut d = Delivery::new();
        let first = d.offer("t", 0, &doc(json!({"a": 1, "b": 2})), true).unwrap();
        assert_eq!(parsed(&first)["changed"], json!(["a", "b"]), "every key first");
        assert!(d.offer("t", 0, &doc(json!({"a": 1, "b": 2})), true).is_none(), "nothing new");
        // The queue is busy: revisions 1 and 2 come, nothing is written.
        assert!(d.offer("t", 1, &doc(json!({"a": 5, "b": 2})), false).is_none());
        assert!(d.offer("t", 2, &doc(json!({"a": 5})), false).is_none());
        assert!(d.pending);
        // Drained: only the newest goes out, with every key changed since
        // the last one sent.
        let l = parsed(&d.offer("t", 2, &doc(json!({"a": 5})), true).unwrap());
        assert_eq!((l["revision"].as_u64(), &l["changed"]), (Some(2), &json!(["a", "b"])));
        assert!(!d.pending);
        assert!(d.applied(1, None).unwrap_err().contains("never sent"));
        d.applied(2, Some(40)).unwrap();
        d.applied(0, None).unwrap();
        assert_eq!((d.applied, d.step, d.lag(5)), (Some(2), Some(40), 3));
        d.rejected(2, None, "no".into()).unwrap();
        assert_eq!(d.rejected, Some((2, "no".into())));
        assert!(d.rejected(9, None, "x".into()).is_err());
    }

    #[test]
    fn status_is_rate_limited() {
        let mut d = Delivery::new();
        let t = Instant::now();
        assert!(d.status(Some(1), BTreeMap::new(), t));
        assert!(!d.status(Some(2), BTreeMap::new(), t + Duration::from_millis(50)));
        assert_eq!(d.step, Some(1));
        assert!(d.status(Some(3), BTreeMap::new(), t + STATUS_EVERY));
        assert_eq!(d.step, Some(3));
    }
}
