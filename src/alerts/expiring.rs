//! A bounded map whose entries go stale some time after their last use, pruned a few entries
//! per call: the alert engine's cooldowns and spike counters.

use std::collections::{HashMap, VecDeque};

use super::PRUNE_STEPS;

/// A map whose entries go stale some time after their last use, pruned incrementally.
///
/// Every key is queued exactly once, in the order it was added. Each
/// [`prune`](Self::prune) looks at a few keys at the front: a stale one is removed, a live
/// one goes to the back of the queue. Each call adds at most one key and looks at
/// [`PRUNE_STEPS`], so stale entries are found within a bounded number of calls, and a hard
/// cap drops the front entries when there are still too many. Every operation is O(1)
/// (amortized), never a scan.
pub(super) struct Expiring<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Copy + Eq + std::hash::Hash, V> Expiring<K, V> {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// The key's value, added with `make` (and queued) when missing; the entries queued
    /// longest are dropped first if that goes over the cap.
    pub(super) fn entry(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.cap {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.map.remove(&old);
            }
            self.order.push_back(key);
        }
        self.map.entry(key).or_insert_with(make)
    }

    /// Looks at up to [`PRUNE_STEPS`] keys at the front of the queue: removes those `stale`
    /// says are, moves the others to the back.
    pub(super) fn prune(&mut self, stale: impl Fn(&K, &V) -> bool) {
        for _ in 0..PRUNE_STEPS.min(self.order.len()) {
            let Some(key) = self.order.pop_front() else {
                return;
            };
            match self.map.get(&key) {
                Some(v) if !stale(&key, v) => self.order.push_back(key),
                _ => {
                    self.map.remove(&key);
                }
            }
        }
    }
}
