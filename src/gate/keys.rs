//! The key lifecycle: creating, reading, listing, changing, rotating and revoking keys.
//!
//! Every caller goes through these methods rather than the store, so the rules that belong to
//! the core (amount bounds, what a key looks like) hold however a key is managed: from the
//! admin API, from a program embedding the gate, or from a test. They stay thin: each
//! checks its input and makes one store call; events and answers are the caller's business.

use std::collections::BTreeMap;
use std::fmt;

use super::Gate;
use crate::amount::MAX_AMOUNT;
use crate::blocking::block_on;
use crate::key::{generate_key, mask_key, KeyDigest, KeyId, KeyRecord, KeyRef};
use crate::store::{KeyPage, KeyStore, KeyUpdate, MemoryKeyStore, StoreError, StoreStats};

/// The longest key the gate accepts, to store or to look up.
const MAX_KEY_LEN: usize = 256;
/// The shortest key [`Gate::import_key`] stores.
const MIN_IMPORTED_KEY_LEN: usize = 16;

/// Why a key could not be created, changed or read.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The OS random source failed.
    #[error("cannot generate a key: {0}")]
    Random(String),
    /// The input is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// A key just created or rotated: the plaintext key, to be shown once, and its record as
/// stored (which holds only the key's digest and masked form). `Debug` masks the key.
#[derive(Clone)]
pub struct IssuedKey {
    /// The full API key. Only its holder has it from now on.
    pub key: String,
    /// The key's record as stored.
    pub record: KeyRecord,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("key", &mask_key(&self.key))
            .field("record", &self.record)
            .finish()
    }
}

/// A fresh key from the OS random source.
fn new_key() -> Result<String, GateError> {
    generate_key().map_err(|e| GateError::Random(e.to_string()))
}

/// The digest of a key presented to change it, refusing text that cannot be a key.
fn presented(key: &str) -> Result<KeyDigest, GateError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(GateError::Invalid("'key' must be the full API key".into()));
    }
    Ok(KeyDigest::of(key))
}

/// How many times a change by account id follows the account to its current key when a
/// rotation moved it between the lookup and the change.
const ID_RETRIES: usize = 8;

/// Refuses a balance no figure may reach.
fn check_credits(credits: u64) -> Result<(), GateError> {
    if credits > MAX_AMOUNT {
        return Err(GateError::Invalid("credits too large".into()));
    }
    Ok(())
}

impl<S: KeyStore> Gate<S> {
    /// Creates a key named `name` with `credits` and returns the plaintext key (shown once).
    pub async fn create_key(&self, name: &str, credits: u64) -> Result<String, GateError> {
        Ok(self.create_key_with(name, credits, &[]).await?.key)
    }

    /// Creates a key named `name` with `credits`, set up by `setup` (tool lists, expiry,
    /// quota, tags, IP allowlist, spending limit, …) before it is stored, so it never exists
    /// without them. A change the key's bounds refuse fails the whole creation
    /// ([`StoreError::Invalid`]) and nothing is stored.
    ///
    /// ```
    /// use paygate_mcp::{block_on, Gate, KeyUpdate, PayGateConfig};
    ///
    /// let gate = Gate::new(PayGateConfig::default()).unwrap();
    /// let acl = |tool: &str| KeyUpdate::SetAcl {
    ///     allowed_tools: vec![tool.to_string()],
    ///     denied_tools: Vec::new(),
    /// };
    /// let issued = block_on(gate.create_key_with("alice", 50, &[acl("search")])).unwrap();
    /// assert_eq!(issued.record.allowed_tools, ["search"]);
    /// assert!(block_on(gate.create_key_with("bob", 50, &[acl("")])).is_err(), "no empty names");
    /// assert_eq!(block_on(gate.key_stats()).unwrap().total_keys, 1, "bob was never stored");
    /// ```
    pub async fn create_key_with(
        &self,
        name: &str,
        credits: u64,
        setup: &[KeyUpdate],
    ) -> Result<IssuedKey, GateError> {
        self.create_key_as(None, name, credits, setup).await
    }

    /// [`Gate::create_key_with`] for the account `id` when given: a second key for the same
    /// id is refused ([`StoreError::Duplicate`]), so callers racing to make one account's
    /// key (gateways sharing a store) make one.
    pub(crate) async fn create_key_as(
        &self,
        id: Option<KeyId>,
        name: &str,
        credits: u64,
        setup: &[KeyUpdate],
    ) -> Result<IssuedKey, GateError> {
        check_credits(credits)?;
        let key = new_key()?;
        let mut record = KeyRecord::new(&key, name, credits, self.clock.now_ms());
        if id.is_some() {
            record.key_id = id;
        }
        for change in setup {
            change.apply(&mut record)?;
        }
        self.store.insert(record.clone()).await?;
        Ok(IssuedKey { key, record })
    }

    /// Stores an existing plaintext key (e.g. migrated from another gateway): 16 to 256
    /// printable ASCII characters.
    pub async fn import_key(&self, key: &str, name: &str, credits: u64) -> Result<(), GateError> {
        let len_ok = (MIN_IMPORTED_KEY_LEN..=MAX_KEY_LEN).contains(&key.len());
        if !len_ok || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(GateError::Invalid(format!(
                "a key must be {MIN_IMPORTED_KEY_LEN} to {MAX_KEY_LEN} printable ASCII characters"
            )));
        }
        check_credits(credits)?;
        let rec = KeyRecord::new(key, name, credits, self.clock.now_ms());
        self.store.insert(rec).await?;
        Ok(())
    }

    /// The digest of the key `key` names now; `None` when there is no such account.
    async fn resolve(&self, key: KeyRef<'_>) -> Result<Option<KeyDigest>, GateError> {
        match key {
            KeyRef::Key(key) => presented(key).map(Some),
            KeyRef::Id(id) => Ok(self.store.find_id(&id).await?),
        }
    }

    /// Runs `op` on the key `key` names. By id, when the key is gone by the time `op` runs
    /// (a rotation moved the account in between), `op` runs again on the account's new key.
    async fn on_key<T, F, Fut>(&self, key: KeyRef<'_>, mut op: F) -> Result<Option<T>, GateError>
    where
        F: FnMut(KeyDigest) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
    {
        let Some(mut digest) = self.resolve(key).await? else {
            return Ok(None);
        };
        for _ in 0..ID_RETRIES {
            let out = op(digest).await?;
            if out.is_some() || matches!(key, KeyRef::Key(_)) {
                return Ok(out);
            }
            match self.resolve(key).await? {
                Some(moved) if moved != digest => digest = moved,
                _ => return Ok(None),
            }
        }
        Err(StoreError::Unavailable("the key kept rotating; try again".into()).into())
    }

    /// The record of the key `key` names (the full API key, or its account id), revoked or
    /// not; `None` when there is no such key. Any text may be asked for: what is not a key is
    /// simply not found.
    ///
    /// ```
    /// use paygate_mcp::{block_on, Gate, PayGateConfig};
    /// let gate = Gate::new(PayGateConfig::default()).unwrap();
    /// let issued = block_on(gate.create_key_with("alice", 5, &[])).unwrap();
    /// let by_id = block_on(gate.get_key(issued.record.id())).unwrap().unwrap();
    /// assert_eq!(by_id.key_hash, issued.record.key_hash);
    /// assert!(block_on(gate.get_key("pg_nothing")).unwrap().is_none());
    /// ```
    pub async fn get_key(
        &self,
        key: impl Into<KeyRef<'_>>,
    ) -> Result<Option<KeyRecord>, GateError> {
        let key = key.into();
        if let KeyRef::Key(text) = key {
            // Lookups take any text (self-service reads with whatever the caller sent).
            return Ok(self.store.get(&KeyDigest::of(text)).await?);
        }
        self.on_key(key, |d| async move { self.store.get(&d).await })
            .await
    }

    /// Up to `limit` keys after the cursor `after` (a [`KeyPage::next_cursor`]), in the
    /// store's stable order.
    pub async fn list_keys(
        &self,
        after: Option<KeyDigest>,
        limit: usize,
    ) -> Result<KeyPage, GateError> {
        Ok(self.store.list(after, limit).await?)
    }

    /// Up to `limit` keys whose tags hold every pair in `tags`.
    pub async fn search_keys(
        &self,
        tags: &BTreeMap<String, String>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, GateError> {
        Ok(self.store.search_by_tags(tags, limit).await?)
    }

    /// How many keys there are, how many are active, and the credits they hold.
    pub async fn key_stats(&self) -> Result<StoreStats, GateError> {
        Ok(self.store.stats().await?)
    }

    /// Applies `change` to the key `key` names (the full API key, or its account id) in one
    /// atomic step and returns the record afterwards; `None` when there is no such key. A
    /// revoked key takes no change but [`KeyUpdate::Revoke`] ([`StoreError::Revoked`]); a
    /// change that would break a bound is refused ([`StoreError::Invalid`]) and changes
    /// nothing.
    pub async fn update_key(
        &self,
        key: impl Into<KeyRef<'_>>,
        change: KeyUpdate,
    ) -> Result<Option<KeyRecord>, GateError> {
        let change = &change;
        self.on_key(key.into(), |d| async move {
            self.store.update(&d, change).await
        })
        .await
    }

    /// Adds `credits` (at least 1) to `key`'s balance; the balance stays within
    /// [`MAX_AMOUNT`]. `None` when there is no such key.
    pub async fn top_up(
        &self,
        key: impl Into<KeyRef<'_>>,
        credits: u64,
    ) -> Result<Option<KeyRecord>, GateError> {
        if credits == 0 {
            return Err(GateError::Invalid("'credits' must be at least 1".into()));
        }
        self.update_key(key, KeyUpdate::TopUp(credits)).await
    }

    /// Deactivates `key` for good: its calls are refused from now on, and its record stays
    /// for reports. Revoking a revoked key changes nothing. `None` when there is no such key.
    /// Every OAuth grant acting for the account ends with it.
    pub async fn revoke(&self, key: impl Into<KeyRef<'_>>) -> Result<Option<KeyRecord>, GateError> {
        let rec = self.update_key(key, KeyUpdate::Revoke).await?;
        if let Some(rec) = &rec {
            self.end_grants(rec).await;
        }
        Ok(rec)
    }

    /// Replaces the key `key` names (the key, or its account id) by a new key that takes
    /// over all of its state (balance, limits, counters, tags, account id); the old key
    /// stops working at once, and so does every OAuth grant acting for the account. `None`
    /// when there is no such key;
    /// a revoked key cannot be rotated ([`StoreError::Revoked`]).
    pub async fn rotate(&self, key: impl Into<KeyRef<'_>>) -> Result<Option<IssuedKey>, GateError> {
        let new_key = new_key()?;
        let (digest, masked) = (KeyDigest::of(&new_key), mask_key(&new_key));
        let record = self
            .on_key(key.into(), |old| {
                let masked = masked.clone();
                async move { self.store.rotate(&old, digest, masked).await }
            })
            .await?;
        if let Some(record) = &record {
            // A grant was approved with the old key: it does not carry over to the new one.
            self.end_grants(record).await;
        }
        Ok(record.map(|record| IssuedKey {
            key: new_key,
            record,
        }))
    }
}

impl<S: KeyStore> Gate<S> {
    /// Ends the OAuth grants acting for `rec`'s account after its key was revoked or
    /// rotated. The key change has happened either way, so a store failure here is logged,
    /// not returned: those grants act for a key that no longer works (they are checked by
    /// its digest on every call), and the store drops them when they expire.
    async fn end_grants(&self, rec: &KeyRecord) {
        if let Err(e) = self.store.revoke_account(&rec.id()).await {
            tracing::warn!(key_id = %rec.id(), error = %e, "OAuth grants of a revoked or rotated key not ended");
        }
    }

    /// Imports the state file of paygate-mcp 1.8 (its plaintext keys become digest
    /// records with their balances, counters, ACL, quota, tags, allowlist and expiry), and
    /// says what it skipped. Keys already in the store are left as they are.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use paygate_mcp::{Gate, PayGateConfig};
    /// let file = std::env::temp_dir().join(format!("ts18-doc-{}.json", std::process::id()));
    /// std::fs::write(&file, r#"[["pg_0123456789abcdef0123", {"name": "alice", "credits": 40}]]"#).unwrap();
    /// let gate = Gate::new(PayGateConfig::default()).unwrap();
    /// let report = gate.import_ts18_state(&file).await.unwrap();
    /// assert_eq!((report.imported, report.skipped), (1, 0));
    /// assert_eq!(gate.get_key("pg_0123456789abcdef0123").await.unwrap().unwrap().credits, 40);
    /// # std::fs::remove_file(&file).unwrap();
    /// # });
    /// ```
    pub async fn import_ts18_state(
        &self,
        path: &std::path::Path,
    ) -> Result<crate::store::state_file::ImportReport, crate::store::StateFileError> {
        crate::store::state_file::import_ts18(&self.store, path, self.clock.now_ms()).await
    }
}

impl Gate<MemoryKeyStore> {
    /// [`Gate::create_key`] without an async runtime.
    pub fn create_key_blocking(&self, name: &str, credits: u64) -> Result<String, GateError> {
        block_on(self.create_key(name, credits))
    }
}
