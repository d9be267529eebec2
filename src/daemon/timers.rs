//! Deadlines, not sleeps: a min-heap of (instant, key). The reactor's poll
//! timeout is the nearest deadline. A key names what the deadline is for;
//! arming a key again moves its deadline, cancelling it disarms it (the heap
//! entry is dropped lazily).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Timers<K> {
    /// (deadline, generation); a generation not in `keys` was cancelled or
    /// re-armed.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Live generation -> key.
    keys: HashMap<u64, K>,
    /// Key -> its live generation.
    live: HashMap<K, u64>,
    next: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers { heap: BinaryHeap::new(), keys: HashMap::new(), live: HashMap::new(), next: 1 }
    }
}

impl<K: Clone + Eq + Hash> Timers<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Arm `key` to fire at `at`, replacing a deadline it already had.
    pub fn arm(&mut self, at: Instant, key: K) {
        let gen = self.next;
        self.next += 1;
        if let Some(old) = self.live.insert(key.clone(), gen) {
            self.keys.remove(&old);
        }
        self.keys.insert(gen, key);
        self.heap.push(Reverse((at, gen)));
    }

    /// Disarm; a no-op for a key that is not armed.
    pub fn cancel(&mut self, key: &K) {
        if let Some(gen) = self.live.remove(key) {
            self.keys.remove(&gen);
        }
    }

    /// How long poll may sleep: until the nearest live deadline.
    pub fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        while let Some(Reverse((at, gen))) = self.heap.peek().copied() {
            if self.keys.contains_key(&gen) {
                return Some(at.saturating_duration_since(now));
            }
            self.heap.pop();
        }
        None
    }

    /// Take every key due at `now`, earliest first.
    pub fn expired(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(Reverse((at, gen))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(k) = self.keys.remove(&gen) {
                self.live.remove(&k);
                out.push(k);
            }
        }
        out
    }

    /// Armed keys.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    #[cfg(test)]
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
        let ms = Duration::from_millis;
        let mut t = Timers::new();
        t.arm(t0 + ms(30), "c");
        t.arm(t0 + ms(20), "b");
        t.arm(t0 + ms(10), "a");
        assert_eq!(t.next_timeout(t0), Some(ms(10)));
        t.cancel(&"b");
        assert_eq!(t.expired(t0 + ms(25)), vec!["a"]);
        assert_eq!(t.next_timeout(t0), Some(ms(30)));
        assert_eq!(t.expired(t0 + ms(1000)), vec!["c"]);
        assert_eq!(t.next_timeout(t0), None);
        assert!(t.is_empty());
    }

    #[test]
    fn arming_a_key_again_moves_its_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Timers::new();
        t.arm(t0 + ms(10), "a");
        t.arm(t0 + ms(50), "a");
        assert_eq!(t.len(), 1);
        assert!(t.expired(t0 + ms(20)).is_empty(), "the old deadline is gone");
        assert_eq!(t.next_timeout(t0), Some(ms(50)));
        assert_eq!(t.expired(t0 + ms(50)), vec!["a"]);
        t.cancel(&"a");
        assert!(t.is_empty());
    }
}
