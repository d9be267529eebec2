//! Maps keyed by ids weaver hands out itself (request ids, client ids),
//! never by bytes from outside: they need no flood-resistant hash, and
//! SipHash was a few percent of the relay's time per request. A
//! multiplicative hash spreads sequential ids over the table.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing: 2^64 divided by the golden ratio, odd.
const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(K);
    }
}

/// A map keyed by a weaver-issued id.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_spread_over_buckets_and_control_bytes() {
        let b = BuildHasherDefault::<IdHasher>::default();
        // The low bits pick the bucket, the top 7 bits are the control
        // byte: both must vary across a run of sequential ids.
        let hashes: Vec<u64> = (1..=1024u64).map(|i| b.hash_one(i)).collect();
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let tops: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(buckets.len(), 1024, "1024 ids, 1024 buckets");
        assert!(tops.len() >= 100, "only {} control bytes in use", tops.len());
        let mut m: IdMap<u64> = IdMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert!((0..10_000).all(|i| m[&i] == i * 2));
    }
}
