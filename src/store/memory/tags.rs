//! The memory store's tags. Keys made by one script tend to share their tags, so each
//! distinct set of tags is held once and shared by every key carrying it, and one store-wide
//! index maps each tag to the keys that carry it (an index per shard held a copy of each tag
//! in nearly every shard).

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::Arc;

use crate::key::KeyDigest;

/// One tag: (name, value).
pub(crate) type Tag = (Box<str>, Box<str>);

/// A key's tags, sorted by name; keys with the same tags share one allocation. A thin
/// pointer, so a key pays 8 bytes for its tags.
#[derive(Debug, Clone)]
pub(crate) struct TagSet(Arc<Box<[Tag]>>);

impl TagSet {
    /// `tags` sorted by name; `None` when there are none.
    pub(crate) fn new<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<TagSet> {
        let mut tags: Vec<Tag> = tags
            .into_iter()
            .map(|(name, value)| (name.into(), value.into()))
            .collect();
        if tags.is_empty() {
            return None;
        }
        tags.sort();
        Some(TagSet(Arc::new(tags.into_boxed_slice())))
    }

    pub(crate) fn as_slice(&self) -> &[Tag] {
        &self.0
    }
}

impl PartialEq for TagSet {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.as_slice() == other.as_slice()
    }
}

/// A canonical set in the interner, looked up by its tags.
struct Interned(TagSet);

impl Borrow<[Tag]> for Interned {
    fn borrow(&self) -> &[Tag] {
        self.0.as_slice()
    }
}

impl PartialEq for Interned {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice() == other.0.as_slice()
    }
}

impl Eq for Interned {}

impl Hash for Interned {
    // Must hash as `[Tag]` does, for lookups through `Borrow`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_slice().hash(state);
    }
}

/// How many keys one tag's set holds in a sorted vector before it becomes a B-tree.
const FEW_KEYS: usize = 32;

/// The keys under one tag. A sorted vector holds a few in a few dozen bytes where a B-tree
/// node takes ~370; a tag on many keys moves to a B-tree, so adding and removing stay cheap.
enum DigestSet {
    Few(Vec<KeyDigest>),
    Many(BTreeSet<KeyDigest>),
}

impl Default for DigestSet {
    fn default() -> Self {
        DigestSet::Few(Vec::new())
    }
}

impl DigestSet {
    fn insert(&mut self, key: KeyDigest) {
        match self {
            DigestSet::Few(keys) => match keys.binary_search(&key) {
                Ok(_) => {}
                Err(at) if keys.len() < FEW_KEYS => keys.insert(at, key),
                Err(_) => {
                    let mut many: BTreeSet<KeyDigest> = keys.drain(..).collect();
                    many.insert(key);
                    *self = DigestSet::Many(many);
                }
            },
            DigestSet::Many(keys) => {
                keys.insert(key);
            }
        }
    }

    fn remove(&mut self, key: &KeyDigest) {
        match self {
            DigestSet::Few(keys) => {
                if let Ok(at) = keys.binary_search(key) {
                    keys.remove(at);
                }
            }
            DigestSet::Many(keys) => {
                keys.remove(key);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            DigestSet::Few(keys) => keys.len(),
            DigestSet::Many(keys) => keys.len(),
        }
    }

    /// The keys after `after` (all when none), in order.
    fn after(&self, after: Option<KeyDigest>) -> Box<dyn Iterator<Item = &KeyDigest> + '_> {
        match self {
            DigestSet::Few(keys) => {
                let start = after.map_or(0, |a| keys.partition_point(|k| *k <= a));
                Box::new(keys[start..].iter())
            }
            DigestSet::Many(keys) => {
                let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
                Box::new(keys.range((lower, Bound::Unbounded)))
            }
        }
    }
}

/// Every key's tags: the distinct sets, and the keys under each tag.
#[derive(Default)]
pub(crate) struct TagIndex {
    sets: HashSet<Interned>,
    keys: HashMap<(Box<str>, Box<str>), DigestSet>,
}

impl TagIndex {
    /// Indexes `key` under each of its tags, and makes `tags` the shared copy of its set.
    pub(crate) fn add(&mut self, key: KeyDigest, tags: &mut Option<TagSet>) {
        let Some(set) = tags else { return };
        match self.sets.get(set.as_slice()) {
            Some(canonical) => *set = canonical.0.clone(),
            None => {
                self.sets.insert(Interned(set.clone()));
            }
        }
        for tag in set.as_slice() {
            match self.keys.get_mut(tag) {
                Some(keys) => keys.insert(key),
                None => {
                    let mut keys = DigestSet::default();
                    keys.insert(key);
                    self.keys.insert(tag.clone(), keys);
                }
            }
        }
    }

    /// Takes `key` out from under each of its tags, and forgets the set when no other key
    /// holds it.
    pub(crate) fn remove(&mut self, key: &KeyDigest, tags: Option<TagSet>) {
        let Some(set) = tags else { return };
        for tag in set.as_slice() {
            if let Some(keys) = self.keys.get_mut(tag) {
                keys.remove(key);
                if keys.len() == 0 {
                    self.keys.remove(tag);
                }
            }
        }
        // Held by the interner and by `set`: no key holds it any more.
        if Arc::strong_count(&set.0) <= 2 {
            self.sets.remove(set.as_slice());
        }
    }

    /// Moves a key's entries from `old` to `new` (a rotation); its set stays shared.
    pub(crate) fn rekey(&mut self, old: &KeyDigest, new: KeyDigest, tags: Option<&TagSet>) {
        for tag in tags.map_or(&[][..], TagSet::as_slice) {
            if let Some(keys) = self.keys.get_mut(tag) {
                keys.remove(old);
                keys.insert(new);
            }
        }
    }

    /// Up to `max` keys after `after`, in digest order, carrying the rarest of `wanted`;
    /// `None` when some wanted tag is on no key. The caller checks the other tags.
    pub(crate) fn candidates(
        &self,
        wanted: &[(Box<str>, Box<str>)],
        after: Option<KeyDigest>,
        max: usize,
    ) -> Option<Vec<KeyDigest>> {
        let rarest = wanted
            .iter()
            .map(|tag| self.keys.get(tag))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min_by_key(|keys| keys.len())?;
        Some(rarest.after(after).take(max).copied().collect())
    }

    /// Distinct tag sets held (for tests).
    #[cfg(test)]
    pub(crate) fn distinct_sets(&self) -> usize {
        self.sets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> KeyDigest {
        KeyDigest([n; 32])
    }

    #[test]
    fn a_tag_set_keeps_order_and_members_across_its_two_forms() {
        let keys: Vec<KeyDigest> = (0..100).map(|n| KeyDigest::of(&format!("k{n}"))).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        let mut set = DigestSet::default();
        for (n, key) in keys.iter().enumerate() {
            set.insert(*key);
            set.insert(*key);
            assert_eq!(set.len(), n + 1, "a repeat adds nothing");
            assert_eq!(matches!(set, DigestSet::Few(_)), n < FEW_KEYS);
        }
        let all: Vec<KeyDigest> = set.after(None).copied().collect();
        assert_eq!(all, sorted);
        let tail: Vec<KeyDigest> = set.after(Some(sorted[49])).copied().collect();
        assert_eq!(tail, sorted[50..]);
        for key in &keys {
            set.remove(key);
        }
        assert_eq!(set.len(), 0);
        let mut few = DigestSet::default();
        for key in &keys[..5] {
            few.insert(*key);
        }
        let mut five = keys[..5].to_vec();
        five.sort();
        let tail: Vec<KeyDigest> = few.after(Some(five[1])).copied().collect();
        assert_eq!(tail, five[2..]);
    }
    #[test]
    fn keys_with_the_same_tags_share_one_set_until_the_last_goes() {
        let mut index = TagIndex::default();
        let mut a = TagSet::new([("team", "red"), ("env", "prod")]);
        let mut b = TagSet::new([("env", "prod"), ("team", "red")]);
        index.add(digest(1), &mut a);
        index.add(digest(2), &mut b);
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(index.distinct_sets(), 1);
        let red = [("team".into(), "red".into())];
        assert_eq!(
            index.candidates(&red, None, 10),
            Some(vec![digest(1), digest(2)])
        );
        assert_eq!(
            index.candidates(&red, Some(digest(1)), 10),
            Some(vec![digest(2)])
        );
        index.remove(&digest(1), Some(a));
        assert_eq!(index.distinct_sets(), 1);
        index.remove(&digest(2), Some(b));
        assert_eq!(index.distinct_sets(), 0);
        assert_eq!(index.candidates(&red, None, 10), None);
    }

    #[test]
    fn the_rarest_wanted_tag_picks_the_candidates() {
        let mut index = TagIndex::default();
        for n in 0..10 {
            let mut tags = TagSet::new([("env", "prod")]);
            if n == 7 {
                tags = TagSet::new([("env", "prod"), ("team", "red")]);
            }
            index.add(digest(n), &mut tags);
        }
        let wanted = [("env".into(), "prod".into()), ("team".into(), "red".into())];
        assert_eq!(index.candidates(&wanted, None, 10), Some(vec![digest(7)]));
        assert_eq!(
            index.candidates(&wanted[..1], None, 3).map(|c| c.len()),
            Some(3)
        );
    }
}
