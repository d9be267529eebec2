//! Deadlines, not sleeps: a min-heap of (instant, timer). The reactor's poll
//! timeout is the nearest deadline. Cancelled timers are dropped lazily.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// A handle to cancel an armed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

#[derive(Debug)]
pub struct Timers<K> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    live: HashMap<u64, K>,
    next: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers { heap: BinaryHeap::new(), live: HashMap::new(), next: 1 }
    }
}

impl<K> Timers<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Arm `kind` to fire at `at`.
    pub fn arm(&mut self, at: Instant, kind: K) -> TimerId {
        let id = self.next;
        self.next += 1;
        self.heap.push(Reverse((at, id)));
        self.live.insert(id, kind);
        TimerId(id)
    }

    /// Disarm; a no-op for a timer that already fired.
    pub fn cancel(&mut self, id: TimerId) {
        self.live.remove(&id.0);
    }

    /// How long poll may sleep: until the nearest live deadline.
    pub fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if self.live.contains_key(&id) {
                return Some(at.saturating_duration_since(now));
            }
            self.heap.pop();
        }
        None
    }

    /// Take every timer due at `now`, earliest first.
    pub fn expired(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(k) = self.live.remove(&id) {
                out.push(k);
            }
        }
        out
    }

    /// Live timers (for tests and status).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_skips_cancelled() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.arm(t0 + Duration::from_millis(30), "c");
        let b = t.arm(t0 + Duration::from_millis(20), "b");
        t.arm(t0 + Duration::from_millis(10), "a");
        assert_eq!(t.next_timeout(t0), Some(Duration::from_millis(10)));
        t.cancel(b);
        assert_eq!(t.expired(t0 + Duration::from_millis(25)), vec!["a"]);
        assert_eq!(t.next_timeout(t0), Some(Duration::from_millis(30)));
        assert_eq!(t.expired(t0 + Duration::from_secs(1)), vec!["c"]);
        assert_eq!(t.next_timeout(t0), None);
        assert!(t.is_empty());
    }
}
