//! The embedded default store: keys in memory, sharded so threads working on different keys
//! never wait for each other.

use std::collections::{BTreeMap, HashMap};
use std::future::{ready, Ready};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;

use parking_lot::{Mutex, RwLock};

mod charge;
mod grants;
mod payments;
pub(in crate::store) mod tags;

pub(crate) use grants::{GrantSection, GrantSnapshot};

use super::compact::StoredKey;
use super::{
    ChargeOutcome, ChargeReceipt, ChargeRequest, KeyPage, KeySnapshot, KeyStore, KeyUpdate,
    StoreError, StoreStats,
};
use crate::deny::DenyReason;
use crate::key::{KeyDigest, KeyId, KeyRecord};
use crate::ratelimit::{KeyWindows, WINDOW_MS};
use charge::{denied, key_denial, Limits};
use tags::Tag;

/// Shards are chosen by the digest's first byte, so iterating shards in order walks keys in
/// digest order: listing needs no merge.
const SHARDS: usize = 64;

/// Keys a tag search takes from the tag index at a time.
const SEARCH_SLICE: usize = 256;

/// Rotations remembered for refunds in flight.
const MOVED_KEPT: usize = 1024;

/// Digests are uniformly random already: hashing their first 8 bytes is enough.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(buf);
        }
    }
}

type WindowMap = HashMap<KeyDigest, Box<KeyWindows>, BuildHasherDefault<DigestHasher>>;

#[derive(Default)]
struct Shard {
    keys: BTreeMap<KeyDigest, StoredKey>,
    /// Rate windows of keys with calls in the last minute only.
    windows: WindowMap,
    last_sweep_ms: i64,
    /// Bumped by every change to a record, so snapshots can skip an unchanged store.
    version: u64,
    /// This shard's share of the store-wide aggregates, kept under the shard's own lock so
    /// threads on different keys never touch a shared counter.
    stats: StoreStats,
}

/// Moves one record's contribution in `stats` from `before` to `after`.
fn adjust(stats: &mut StoreStats, before: (u64, u64), after: (u64, u64)) {
    stats.active_keys = stats
        .active_keys
        .wrapping_sub(before.0)
        .wrapping_add(after.0);
    stats.total_credits = stats
        .total_credits
        .wrapping_sub(before.1)
        .wrapping_add(after.1);
}

impl Shard {
    /// Frees the windows of keys idle for a minute; runs at most once a minute per shard.
    fn sweep_windows(&mut self, now_ms: i64) {
        if now_ms - self.last_sweep_ms < WINDOW_MS {
            return;
        }
        self.last_sweep_ms = now_ms;
        self.windows.retain(|_, w| !w.is_idle(now_ms));
    }
}

/// Keys, balances, quota counters and rate windows in process memory.
///
/// ```
/// use paygate_mcp::{KeyRecord, KeyStore, MemoryKeyStore};
/// # paygate_mcp::block_on(async {
/// let store = MemoryKeyStore::new();
/// let rec = KeyRecord::new("pg_0123456789abcdef0123456789abcdef0123456789abcdef", "demo", 10, 0);
/// store.insert(rec.clone()).await.unwrap();
/// assert_eq!(store.get(&rec.key_hash).await.unwrap().unwrap().credits, 10);
/// assert_eq!(store.stats().await.unwrap().total_credits, 10);
/// # });
/// ```
pub struct MemoryKeyStore {
    /// Set by a state-file load that skipped records: the original file stays as `.bak`.
    pub(super) original: Mutex<Option<super::state_file::OriginalPin>>,
    shards: Box<[Mutex<Shard>]>,
    /// Recent rotations (old digest, new digest), so a refund for a call charged before its
    /// key rotated still finds the account. Bounded: the oldest are forgotten first.
    moved: Mutex<std::collections::VecDeque<(KeyDigest, KeyDigest)>>,
    /// Key ids to the first 8 bytes of the digest of the key that holds them now (the
    /// record, found from there, has the last word: 18 bytes an entry rather than 42 keep a
    /// million keys within their memory budget). Taken only after a shard lock, never before
    /// one.
    ids: RwLock<HashMap<KeyId, u64>>,
    /// Every key's tags (shared sets) and the keys under each tag. Taken only after a shard
    /// lock, never before one.
    tags: RwLock<tags::TagIndex>,
    /// Held shared by each rotation and exclusively by an export, so a snapshot never sees a
    /// record that moved between shards twice, or not at all. Taken before any shard lock.
    rotations: RwLock<()>,
    /// OAuth clients and grants (SPEC §12), saved in the state file with the keys.
    pub(crate) grants: grants::GrantTable,
    /// Payments credited (SPEC §13), saved in the state file with the keys. Taken before
    /// any other lock.
    payments: Mutex<payments::PaymentLog>,
}

impl Default for MemoryKeyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryKeyStore")
            .field("stats", &self.stats_now())
            .finish()
    }
}

/// The first 8 bytes of a digest.
fn digest_head(d: &KeyDigest) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&d.0[..8]);
    u64::from_be_bytes(head)
}

/// The lowest and highest digests that start with `head`.
fn digests_with_head(head: u64) -> (KeyDigest, KeyDigest) {
    let (mut low, mut high) = ([0u8; 32], [0xffu8; 32]);
    low[..8].copy_from_slice(&head.to_be_bytes());
    high[..8].copy_from_slice(&head.to_be_bytes());
    (KeyDigest(low), KeyDigest(high))
}

/// What one record adds to the store-wide aggregates.
fn contribution(rec: &StoredKey) -> (u64, u64) {
    if rec.active {
        (1, rec.credits)
    } else {
        (0, 0)
    }
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            original: Mutex::new(None),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            moved: Mutex::new(std::collections::VecDeque::new()),
            ids: RwLock::new(HashMap::new()),
            tags: RwLock::default(),
            rotations: RwLock::new(()),
            grants: grants::GrantTable::default(),
            payments: Mutex::default(),
        }
    }

    fn shard(&self, key: &KeyDigest) -> &Mutex<Shard> {
        &self.shards[usize::from(key.0[0]) * SHARDS / 256]
    }

    /// Runs `f` on one record under its shard lock, keeping the aggregates in step.
    fn with_record<T>(
        &self,
        key: &KeyDigest,
        f: impl FnOnce(&mut KeyRecord, &mut Shard) -> T,
    ) -> Option<T> {
        let mut guard = self.shard(key).lock();
        let shard = &mut *guard;
        let stored = shard.keys.remove(key)?;
        let before = contribution(&stored);
        let mut rec = stored.to_record(*key);
        let out = f(&mut rec, shard);
        let mut stored_after = StoredKey::from_record(&rec);
        if stored.tags == stored_after.tags {
            // Moved, not copied: the shared set's count tells when no key holds it.
            stored_after.tags = stored.tags;
        } else {
            let mut index = self.tags.write();
            index.remove(key, stored.tags);
            index.add(*key, &mut stored_after.tags);
        }
        let stored = stored_after;
        shard.version += 1;
        adjust(&mut shard.stats, before, contribution(&stored));
        shard.keys.insert(*key, stored);
        Some(out)
    }

    /// The aggregates: a fixed 64 shard reads, whatever the number of keys.
    fn stats_now(&self) -> StoreStats {
        self.shards
            .iter()
            .fold(StoreStats::default(), |acc, shard| {
                let s = shard.lock().stats;
                StoreStats {
                    total_keys: acc.total_keys.wrapping_add(s.total_keys),
                    active_keys: acc.active_keys.wrapping_add(s.active_keys),
                    total_credits: acc.total_credits.wrapping_add(s.total_credits),
                }
            })
    }

    /// Every record, shard by shard (for snapshots). Each shard is locked only while copied;
    /// rotations wait until the copy is done, so every account is in it exactly once.
    pub fn export(&self) -> Vec<KeyRecord> {
        let _no_rotation = self.rotations.write();
        self.shards
            .iter()
            .flat_map(|s| {
                let s = s.lock();
                s.keys
                    .iter()
                    .map(|(k, v)| v.to_record(*k))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Frees the rate windows of every key idle for a minute. Charges do this by themselves,
    /// at most once a minute per shard; call it to reclaim memory sooner.
    pub fn sweep_idle_windows(&self, now_ms: i64) {
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            s.last_sweep_ms = i64::MIN / 2;
            s.sweep_windows(now_ms);
        }
    }

    /// A number that changes whenever any record changes (for snapshotting only on change).
    pub fn version(&self) -> u64 {
        let keys: u64 = self.shards.iter().map(|s| s.lock().version).sum();
        keys.wrapping_add(self.grants.version())
    }

    /// OAuth clients, codes waiting, live tokens, grants and spent refresh tokens held
    /// (the bounds of [`GrantLimits`](crate::store::GrantLimits) keep each in check).
    pub fn grant_counts(&self) -> [usize; 5] {
        self.grants.counts()
    }

    /// Drops expired codes and tokens, and grants whose refresh token expired.
    pub fn sweep_grants(&self, now_ms: i64) {
        self.grants.sweep(now_ms);
    }

    /// Number of keys currently holding rate-window memory.
    pub fn keys_with_windows(&self) -> usize {
        self.shards.iter().map(|s| s.lock().windows.len()).sum()
    }

    fn charge_now(&self, req: &ChargeRequest<'_>) -> ChargeOutcome {
        let mut guard = self.shard(&req.key).lock();
        let shard = &mut *guard;
        shard.sweep_windows(req.now_ms);
        let Some(rec) = shard.keys.get_mut(&req.key) else {
            return denied(DenyReason::InvalidApiKey, None);
        };
        let snap = |rec: &StoredKey| Some(rec.snapshot(req.key, req.now_ms, req.global_quota));
        if let Some(out) = key_denial(rec, req, &mut shard.version) {
            return ChargeOutcome {
                snapshot: snap(rec),
                ..out
            };
        }
        // Only the checks present apply (see `Checks`).
        let limits = Limits::of(req);
        let mut windows: Option<&mut KeyWindows> = limits
            .any_window()
            .then(|| &mut **shard.windows.entry(req.key).or_default());
        let first = limits.first_denial(rec, windows.as_deref_mut(), req);
        let (denial, retry_after_secs) = first.map_or((None, None), |(r, t)| (Some(r), t));
        let mut receipt = None;
        if denial.is_none() && !req.shadow {
            shard.version += 1;
            let before = contribution(rec);
            receipt = limits.apply(rec, windows.as_deref_mut(), req);
            adjust(&mut shard.stats, before, contribution(rec));
        }
        // Headers report the window after this call: the tool's when it has one.
        let rate = windows.as_deref_mut().map(|w| limits.reported(w, req));
        if windows.is_some_and(|w| w.is_idle(req.now_ms)) {
            shard.windows.remove(&req.key);
        }
        ChargeOutcome {
            denial,
            retry_after_secs,
            snapshot: snap(rec),
            rate,
            receipt,
            newly_expired: false,
        }
    }
}

// Ready futures (rather than `impl Future`) let callers that know the store skip a runtime.
#[allow(refining_impl_trait)]
impl KeyStore for MemoryKeyStore {
    fn charge(&self, req: &ChargeRequest<'_>) -> Ready<Result<ChargeOutcome, StoreError>> {
        ready(Ok(self.charge_now(req)))
    }

    fn refund(
        &self,
        receipt: ChargeReceipt,
        now_ms: i64,
    ) -> Ready<Result<Option<KeySnapshot>, StoreError>> {
        let mut key = receipt.key;
        // Applied in one locked step on the key; only when the key is gone is a rotation
        // made while the call ran followed (a rotation records its move before it lets go of
        // the shard locks, so a miss here always finds the pointer).
        for _ in 0..MOVED_KEPT {
            let applied = self.with_record(&key, |rec, _| {
                if receipt.billed {
                    rec.credits = rec
                        .credits
                        .saturating_add(receipt.credits)
                        .min(crate::amount::MAX_AMOUNT);
                    rec.total_spent = rec.total_spent.saturating_sub(receipt.credits);
                    rec.total_calls = rec.total_calls.saturating_sub(1);
                }
                if receipt.counted {
                    rec.quota_usage
                        .remove(receipt.credits, receipt.day, receipt.month);
                }
                KeySnapshot::of(rec, now_ms, None)
            });
            if applied.is_some() {
                return ready(Ok(applied));
            }
            match self.moved.lock().iter().rev().find(|(old, _)| *old == key) {
                Some((_, new)) => key = *new,
                None => break,
            }
        }
        ready(Ok(None))
    }

    fn insert(&self, record: KeyRecord) -> Ready<Result<(), StoreError>> {
        let mut shard = self.shard(&record.key_hash).lock();
        if shard.keys.contains_key(&record.key_hash) {
            return ready(Err(StoreError::Duplicate));
        }
        let mut stored = StoredKey::from_record(&record);
        {
            let mut ids = self.ids.write();
            if ids.contains_key(&stored.key_id) {
                return ready(Err(StoreError::Duplicate));
            }
            ids.insert(stored.key_id, digest_head(&record.key_hash));
        }
        adjust(&mut shard.stats, (0, 0), contribution(&stored));
        shard.stats.total_keys += 1;
        shard.version += 1;
        if stored.tags.is_some() {
            self.tags.write().add(record.key_hash, &mut stored.tags);
        }
        shard.keys.insert(record.key_hash, stored);
        ready(Ok(()))
    }

    fn get(&self, key: &KeyDigest) -> Ready<Result<Option<KeyRecord>, StoreError>> {
        ready(Ok(self
            .shard(key)
            .lock()
            .keys
            .get(key)
            .map(|s| s.to_record(*key))))
    }

    fn update(
        &self,
        key: &KeyDigest,
        change: &KeyUpdate,
    ) -> Ready<Result<Option<KeyRecord>, StoreError>> {
        let out = self.with_record(key, |rec, _| {
            change.apply(rec)?;
            Ok(rec.clone())
        });
        ready(out.transpose())
    }

    fn rotate(
        &self,
        old: &KeyDigest,
        new_key: KeyDigest,
        new_masked: String,
    ) -> Ready<Result<Option<KeyRecord>, StoreError>> {
        let _rotating = self.rotations.read();
        // Lock both shards in index order so concurrent rotations cannot deadlock.
        let (a, b) = (self.shard(old), self.shard(&new_key));
        let same = std::ptr::eq(a, b);
        let a_first = (a as *const _ as usize) <= (b as *const _ as usize);
        let (mut first, second) = if same {
            (a.lock(), None)
        } else if a_first {
            let g = a.lock();
            (g, Some(b.lock()))
        } else {
            let g2 = b.lock();
            let g1 = a.lock();
            (g1, Some(g2))
        };
        let new_taken = match &second {
            Some(s) => s.keys.contains_key(&new_key),
            None => first.keys.contains_key(&new_key),
        };
        if new_taken {
            return ready(Err(StoreError::Duplicate));
        }
        match first.keys.get(old) {
            Some(rec) if rec.active => {}
            Some(_) => return ready(Err(StoreError::Revoked)),
            None => return ready(Ok(None)),
        }
        let Some(mut rec) = first.keys.remove(old) else {
            return ready(Ok(None));
        };
        let windows = first.windows.remove(old);
        rec.set_masked(&new_masked);
        if rec.tags.is_some() {
            self.tags.write().rekey(old, new_key, rec.tags.as_ref());
        }
        first.version += 1;
        // The record's share of the aggregates moves with it.
        let share = contribution(&rec);
        adjust(&mut first.stats, share, (0, 0));
        first.stats.total_keys -= 1;
        let out = rec.to_record(new_key);
        let mut second = second;
        let target: &mut Shard = match second.as_deref_mut() {
            Some(s) => s,
            None => &mut first,
        };
        adjust(&mut target.stats, (0, 0), share);
        target.stats.total_keys += 1;
        self.ids.write().insert(rec.key_id, digest_head(&new_key));
        target.keys.insert(new_key, rec);
        if let Some(w) = windows {
            target.windows.insert(new_key, w);
        }
        // Recorded before the shard locks go, so no refund can find neither the old record
        // nor the pointer. (Refunds never hold a shard lock while taking this one.)
        let mut moved = self.moved.lock();
        if moved.len() == MOVED_KEPT {
            moved.pop_front();
        }
        moved.push_back((*old, new_key));
        drop(moved);
        drop(second);
        drop(first);
        ready(Ok(Some(out)))
    }

    fn list(&self, after: Option<KeyDigest>, limit: usize) -> Ready<Result<KeyPage, StoreError>> {
        let limit = limit.max(1);
        let mut keys = Vec::with_capacity(limit.min(1024));
        let start = after.map_or(0, |k| usize::from(k.0[0]) * SHARDS / 256);
        let mut more = false;
        for shard in &self.shards[start..] {
            let shard = shard.lock();
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            for (key, rec) in shard.keys.range((lower, Bound::Unbounded)) {
                if keys.len() == limit {
                    more = true;
                    break;
                }
                keys.push(rec.to_record(*key));
            }
            if more {
                break;
            }
        }
        let next_cursor = if more {
            keys.last().map(|r| r.key_hash)
        } else {
            None
        };
        ready(Ok(KeyPage {
            keys,
            next_cursor,
            total: self.stats_now().total_keys,
        }))
    }

    fn search_by_tags(
        &self,
        tags: &BTreeMap<String, String>,
        limit: usize,
    ) -> Ready<Result<Vec<KeyRecord>, StoreError>> {
        if tags.is_empty() {
            // Every key matches: the first `limit` in listing order.
            return ready(self.list(None, limit).into_inner().map(|page| page.keys));
        }
        let wanted: Vec<Tag> = tags
            .iter()
            .map(|(name, value)| (name.as_str().into(), value.as_str().into()))
            .collect();
        let mut out = Vec::new();
        let mut after = None;
        while out.len() < limit {
            // Only keys carrying the rarest wanted tag are read, a slice at a time; the
            // index is let go before any shard is locked, and each shard is held for one
            // key, so a search never holds up gated calls for long.
            let candidates = {
                let index = self.tags.read();
                index.candidates(&wanted, after, SEARCH_SLICE)
            };
            let Some(candidates) = candidates else { break };
            for key in &candidates {
                if out.len() >= limit {
                    break;
                }
                let shard = self.shard(key).lock();
                if let Some(rec) = shard.keys.get(key).filter(|r| r.has_tags(tags)) {
                    out.push(rec.to_record(*key));
                }
            }
            if candidates.len() < SEARCH_SLICE {
                break;
            }
            after = candidates.last().copied();
        }
        ready(Ok(out))
    }

    fn find_id(&self, id: &KeyId) -> Ready<Result<Option<KeyDigest>, StoreError>> {
        // A rotation may move the account between reading the index and locking the shard:
        // then the index has changed too, and the lookup starts over.
        let mut head = self.ids.read().get(id).copied();
        while let Some(h) = head {
            let (low, high) = digests_with_head(h);
            let found = self
                .shard(&low)
                .lock()
                .keys
                .range(low..=high)
                .find(|(_, rec)| rec.key_id == *id)
                .map(|(digest, _)| *digest);
            if found.is_some() {
                return ready(Ok(found));
            }
            let now = self.ids.read().get(id).copied();
            if now == head {
                break;
            }
            head = now;
        }
        ready(Ok(None))
    }

    fn credit_payment(
        &self,
        payment: &crate::store::PaymentCredit<'_>,
    ) -> Ready<Result<crate::store::PaymentOutcome, StoreError>> {
        ready(self.credit_payment_now(payment))
    }

    fn stats(&self) -> Ready<Result<StoreStats, StoreError>> {
        ready(Ok(self.stats_now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::blocking::block_on;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn tag_search_finds_every_match_across_slices_and_stops_at_the_limit() {
        let store = MemoryKeyStore::new();
        // Enough keys that every shard is scanned in several slices.
        for i in 0..(SHARDS * SEARCH_SLICE * 2) {
            let mut rec = KeyRecord::new(&format!("pg_search_{i:08}"), "k", 1, NOW);
            if i % 7 == 0 {
                rec.tags.insert("team".into(), "red".into());
            }
            block_on(store.insert(rec)).unwrap();
        }
        let want: BTreeMap<String, String> = [("team".to_string(), "red".to_string())].into();
        let expected = (0..SHARDS * SEARCH_SLICE * 2)
            .filter(|i| i % 7 == 0)
            .count();
        let found = block_on(store.search_by_tags(&want, usize::MAX)).unwrap();
        assert_eq!(found.len(), expected);
        assert!(found
            .iter()
            .all(|r| r.tags.get("team").map(String::as_str) == Some("red")));
        let mut digests: Vec<_> = found.iter().map(|r| r.key_hash).collect();
        digests.dedup();
        assert_eq!(digests.len(), expected, "no key listed twice");
        assert_eq!(block_on(store.search_by_tags(&want, 10)).unwrap().len(), 10);
    }

    #[test]
    fn keys_share_their_tags_through_updates_and_rotations() {
        let store = MemoryKeyStore::new();
        let team = |name: &str| -> BTreeMap<String, String> {
            [("team".to_string(), name.to_string())].into()
        };
        let mut digests = Vec::new();
        for i in 0..50 {
            let mut rec = KeyRecord::new(&format!("pg_share_{i:04}"), "k", 1, NOW);
            rec.tags = team("red");
            digests.push(rec.key_hash);
            block_on(store.insert(rec)).unwrap();
        }
        assert_eq!(store.tags.read().distinct_sets(), 1);
        // A refund rewrites the record: its tags stay the shared set.
        let receipt = charge(&store, &digests[0], NOW, 0).receipt.unwrap();
        block_on(store.refund(receipt, NOW)).unwrap();
        assert_eq!(store.tags.read().distinct_sets(), 1);
        let blue: BTreeMap<String, Option<String>> =
            [("team".to_string(), Some("blue".to_string()))].into();
        for key in &digests[..49] {
            block_on(store.update(key, &KeyUpdate::MergeTags(blue.clone()))).unwrap();
        }
        assert_eq!(store.tags.read().distinct_sets(), 2);
        let rotated = KeyDigest::of("pg_share_rotated");
        block_on(store.rotate(&digests[49], rotated, "pg_sha...ated".into())).unwrap();
        let red = block_on(store.search_by_tags(&team("red"), 10)).unwrap();
        assert_eq!(
            red.iter().map(|r| r.key_hash).collect::<Vec<_>>(),
            [rotated]
        );
        block_on(store.update(&rotated, &KeyUpdate::MergeTags(blue))).unwrap();
        assert_eq!(
            store.tags.read().distinct_sets(),
            1,
            "no key is red any more"
        );
        assert!(block_on(store.search_by_tags(&team("red"), 10))
            .unwrap()
            .is_empty());
        assert_eq!(
            block_on(store.search_by_tags(&team("blue"), 100))
                .unwrap()
                .len(),
            50
        );
    }

    fn charge(store: &MemoryKeyStore, key: &KeyDigest, now_ms: i64, limit: u64) -> ChargeOutcome {
        block_on(store.charge(&ChargeRequest {
            key: *key,
            tool: "t",
            price: 1,
            client_ip: None,
            now_ms,
            global_rate_limit: limit,
            tool_rate_limit: 0,
            global_quota: None,
            shadow: false,
            checks: crate::store::Checks::ALL,
        }))
        .unwrap()
    }

    #[test]
    fn idle_keys_hold_no_window_memory() {
        let store = MemoryKeyStore::new();
        let keys: Vec<_> = (0..500u32)
            .map(|n| {
                let rec = KeyRecord::new(&format!("pg_{n:048x}"), "k", 10, NOW);
                let d = rec.key_hash;
                block_on(store.insert(rec)).unwrap();
                d
            })
            .collect();
        // Without rate limits no window is ever allocated.
        for k in &keys {
            charge(&store, k, NOW, 0);
        }
        assert_eq!(store.keys_with_windows(), 0);
        for k in &keys {
            charge(&store, k, NOW, 5);
        }
        assert_eq!(store.keys_with_windows(), 500);
        // A minute later, charges on other keys sweep the idle windows away by themselves.
        let late = NOW + WINDOW_MS + 1;
        for k in keys.iter().take(200) {
            charge(&store, k, late, 0);
        }
        assert!(store.keys_with_windows() < 500);
        store.sweep_idle_windows(late);
        assert_eq!(store.keys_with_windows(), 0);
    }

    #[test]
    fn ids_find_their_key_among_digests_that_share_a_head() {
        let store = MemoryKeyStore::new();
        let mut ids = Vec::new();
        for n in 0..3u8 {
            let mut rec = KeyRecord::new(&format!("pg_head_{n:040}"), "k", 1, NOW);
            let mut digest = [7u8; 32];
            digest[31] = n; // same first 8 bytes
            rec.key_hash = KeyDigest(digest);
            rec.key_id = Some(KeyId::derived(&KeyDigest::of(&n.to_string())));
            ids.push((rec.id(), rec.key_hash));
            block_on(store.insert(rec)).unwrap();
        }
        for (id, digest) in ids {
            assert_eq!(block_on(store.find_id(&id)).unwrap(), Some(digest));
        }
    }

    #[test]
    fn a_snapshot_taken_while_keys_rotate_holds_each_account_once() {
        let store = std::sync::Arc::new(MemoryKeyStore::new());
        let n = 2_000u32;
        let mut current: Vec<KeyDigest> = Vec::new();
        for i in 0..n {
            let rec = KeyRecord::new(&format!("pg_snap_{i:040}"), "k", 1, NOW);
            current.push(rec.key_hash);
            block_on(store.insert(rec)).unwrap();
        }
        let rotating = {
            let store = store.clone();
            std::thread::spawn(move || {
                for round in 0..5u32 {
                    for (i, digest) in current.iter_mut().enumerate() {
                        let new = KeyDigest::of(&format!("pg_snap_{round}_{i}"));
                        block_on(store.rotate(digest, new, "m".into()))
                            .unwrap()
                            .unwrap();
                        *digest = new;
                    }
                }
            })
        };
        while !rotating.is_finished() {
            let records = store.export();
            let ids: std::collections::HashSet<_> = records.iter().map(|r| r.id()).collect();
            assert_eq!(records.len(), n as usize, "each account once, none missing");
            assert_eq!(ids.len(), n as usize);
        }
        rotating.join().unwrap();
    }

    #[test]
    fn list_resumes_after_cursor_across_shards() {
        let store = MemoryKeyStore::new();
        for n in 0..300u32 {
            block_on(store.insert(KeyRecord::new(&format!("pg_{n:048x}"), "k", 1, NOW))).unwrap();
        }
        let first = block_on(store.list(None, 1000)).unwrap();
        assert_eq!(first.keys.len(), 300);
        assert!(first.next_cursor.is_none());
        let sorted: Vec<_> = first.keys.iter().map(|r| r.key_hash).collect();
        let mut expected = sorted.clone();
        expected.sort();
        assert_eq!(sorted, expected, "listing walks keys in digest order");
        let page = block_on(store.list(Some(sorted[149]), 10)).unwrap();
        assert_eq!(page.keys[0].key_hash, sorted[150]);
    }

    #[test]
    fn stats_follow_every_change() {
        let store = MemoryKeyStore::new();
        let rec = KeyRecord::new(
            "pg_0123456789abcdef0123456789abcdef0123456789abcdef",
            "k",
            10,
            NOW,
        );
        let d = rec.key_hash;
        block_on(store.insert(rec)).unwrap();
        let receipt = charge(&store, &d, NOW, 0).receipt.unwrap();
        assert_eq!(store.stats_now().total_credits, 9);
        block_on(store.refund(receipt, NOW)).unwrap();
        assert_eq!(store.stats_now().total_credits, 10);
        block_on(store.update(&d, &KeyUpdate::Revoke)).unwrap();
        let s = store.stats_now();
        assert_eq!((s.total_keys, s.active_keys, s.total_credits), (1, 0, 0));
    }
}
