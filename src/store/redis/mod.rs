//! A Redis-backed store (cargo feature `redis`): any number of gateway processes share keys,
//! balances, quota counters and rate windows.
//!
//! Each gated call is one round trip: a Lua script (sent with `EVALSHA`, reloaded after
//! `NOSCRIPT`) checks the key and applies the charge atomically, so gateways racing on one key
//! can never overspend it, exceed a limit or double-count. Time comes from Redis (`TIME`) so
//! gateways with skewed clocks agree.
//!
//! Layout, under a configurable prefix (default `paygate:`), with the digest in a hash tag so
//! one key's data lives in one cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `paygate:{<digest>}` | hash | the key's record |
//! | `paygate:{<digest>}:w` / `:w:<tool>` | sorted set | rate windows (expire when idle) |
//! | `paygate:{<digest>}:c` / `:cd` | sorted set / hash | the key's last 10,000 charges for a day (nonces by time / each one's price and quota period by nonce), to undo one whose reply was lost or refund one late |
//! | `paygate:{<digest>}:moved` | string | for a day after a rotation, the new digest, so refunds of calls in flight find the account |
//! | `paygate:keys` | sorted set | every digest, for paging |
//! | `paygate:ids` | hash | account id → digest of its current key |
//! | `paygate:schema` | string | `2` once every key is in the id and tag indexes |
//! | `paygate:tag:<name length>:<name>=<value>` | set | digests of the keys carrying the tag |
//! | `paygate:stats` | hash | key count, active keys, credits held |
//! | `paygate:payments` | sorted set | payment ids credited in the last 30 days, by time |
//! | `paygate:oauth:...` | | OAuth clients, codes and grants (see `grants.rs`) |
//!
//! Key rotation and the store-wide statistics touch more than one slot: on Redis Cluster run
//! all keys of a deployment in one slot (a prefix like `paygate:{all}:`) or use a single node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use super::{
    ChargeOutcome, ChargeReceipt, ChargeRequest, KeyPage, KeySnapshot, KeyStore, KeyUpdate,
    StoreError, StoreStats,
};
use crate::amount::MAX_AMOUNT;
use crate::key::{KeyDigest, KeyId, KeyRecord};

mod charge;
mod codec;
mod grants;
mod index;
mod owed;

use codec::{record_fields, record_from};
use owed::{Backlog, Undone};

const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// Where the store's time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisTime {
    /// Redis's own clock (`TIME`), so every gateway agrees. The default.
    #[default]
    Server,
    /// The time in each request (the gate's `Clock`), for tests with a manual clock.
    Request,
}

/// How to reach Redis and lay out keys.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://` with TLS support compiled into `redis`).
    pub url: String,
    /// Prefix of every key name.
    pub prefix: String,
    /// Longest wait for one reply; past it the call fails closed.
    pub response_timeout: Duration,
    /// Longest wait to (re)connect.
    pub connection_timeout: Duration,
    /// Where time comes from.
    pub time: RedisTime,
    /// Most charges owed back (replies lost or refunds failed in an outage) before new
    /// charges are refused. Default 10,000.
    pub owed_limit: usize,
    /// A file that mirrors the owed charges, so a restart during an outage still undoes
    /// them. Default none.
    pub owed_file: Option<std::path::PathBuf>,
}

impl RedisConfig {
    /// Defaults for `url`: prefix `paygate:`, 2 s timeouts, Redis time.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "paygate:".into(),
            response_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(2),
            time: RedisTime::Server,
            owed_limit: 10_000,
            owed_file: None,
        }
    }

    /// Sets the file that mirrors charges owed back after an outage.
    pub fn with_owed_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.owed_file = Some(path.into());
        self
    }

    /// Sets how many charges may be owed back before new charges are refused.
    pub fn with_owed_limit(mut self, limit: usize) -> Self {
        self.owed_limit = limit;
        self
    }

    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets where time comes from.
    pub fn with_time(mut self, time: RedisTime) -> Self {
        self.time = time;
        self
    }

    /// Sets the reply timeout.
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }
}

struct Scripts {
    charge: Script,
    refund: Script,
    insert: Script,
    topup: Script,
    revoke: Script,
    policy: Script,
    rotate: Script,
    reindex: Script,
    payment: Script,
    oauth: grants::GrantScripts,
}

/// Keys, balances, quota counters and rate windows in Redis.
///
/// ```no_run
/// # async fn run() -> Result<(), paygate_mcp::StoreError> {
/// use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore};
/// let store = RedisKeyStore::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisKeyStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    time: RedisTime,
    scripts: Arc<Scripts>,
    owed: Arc<Mutex<Backlog>>,
    /// Redis did not answer the last charge: logged once per outage, and once on recovery.
    outage: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for RedisKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKeyStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(field: &str) -> StoreError {
    StoreError::Corrupt(format!("field '{field}' is not what this store writes"))
}

impl RedisKeyStore {
    /// Connects (and keeps reconnecting in the background whenever the connection drops).
    pub async fn connect(config: RedisConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| StoreError::Unavailable(format!("bad Redis URL: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connection_timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(unavailable)?;
        let store = Self {
            conn,
            prefix: config.prefix.into(),
            time: config.time,
            scripts: Arc::new(Scripts {
                charge: script(include_str!("lua/charge.lua")),
                refund: script(include_str!("lua/refund.lua")),
                insert: script(include_str!("lua/insert.lua")),
                topup: script(include_str!("lua/topup.lua")),
                revoke: script(include_str!("lua/revoke.lua")),
                policy: script(include_str!("lua/policy.lua")),
                rotate: script(include_str!("lua/rotate.lua")),
                reindex: script(include_str!("lua/reindex.lua")),
                payment: script(include_str!("lua/payment.lua")),
                oauth: grants::GrantScripts::new(),
            }),
            owed: Arc::new(Mutex::new(Backlog::open(
                config.owed_limit,
                config.owed_file.clone(),
            )?)),
            outage: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        store.upgrade_indexes().await?;
        store.spawn_compensator();
        Ok(store)
    }

    fn rec_key(&self, key: &KeyDigest) -> String {
        format!("{}{{{}}}", self.prefix, key.to_hex())
    }
    fn index_key(&self) -> String {
        format!("{}keys", self.prefix)
    }
    fn stats_key(&self) -> String {
        format!("{}stats", self.prefix)
    }
}

impl RedisKeyStore {
    async fn fetch(&self, key: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.rec_key(key))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if h.is_empty() {
            return Ok(None);
        }
        record_from(*key, &h).map(Some)
    }

    async fn update_inner(
        &self,
        key: &KeyDigest,
        change: &KeyUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let rec_key = self.rec_key(key);
        let mut conn = self.conn.clone();
        match change {
            KeyUpdate::TopUp(n) => {
                let r: i64 = self
                    .scripts
                    .topup
                    .key(&rec_key)
                    .key(self.stats_key())
                    .arg(*n)
                    .arg(MAX_AMOUNT)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                match r {
                    -1 => return Ok(None),
                    -2 => {
                        return Err(StoreError::Invalid(format!(
                            "balance would exceed {MAX_AMOUNT} credits"
                        )))
                    }
                    -3 => return Err(StoreError::Revoked),
                    _ => {}
                }
            }
            KeyUpdate::Revoke => {
                let r: i64 = self
                    .scripts
                    .revoke
                    .key(&rec_key)
                    .key(self.stats_key())
                    .invoke_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                if r == -1 {
                    return Ok(None);
                }
            }
            _ => {
                // Policy changes: read, apply the shared rules, write back if nobody else did.
                for _ in 0..16 {
                    let mut conn = self.conn.clone();
                    let h: HashMap<String, String> = redis::cmd("HGETALL")
                        .arg(&rec_key)
                        .query_async(&mut conn)
                        .await
                        .map_err(unavailable)?;
                    if h.is_empty() {
                        return Ok(None);
                    }
                    let pver: i64 = h.get("pver").and_then(|v| v.parse().ok()).unwrap_or(0);
                    let mut rec = record_from(*key, &h)?;
                    let before = self.tag_sets(&rec.tags);
                    change.apply(&mut rec)?;
                    let after = self.tag_sets(&rec.tags);
                    let left: Vec<&String> = before.iter().filter(|s| !after.contains(s)).collect();
                    let joined: Vec<&String> =
                        after.iter().filter(|s| !before.contains(s)).collect();
                    let mut inv = self.scripts.policy.key(&rec_key);
                    inv.arg(pver)
                        .arg(key.to_hex())
                        .arg(left.len())
                        .arg(left)
                        .arg(joined.len())
                        .arg(joined);
                    for (f, v) in record_fields(&rec, false) {
                        inv.arg(f).arg(v);
                    }
                    let r: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
                    match r {
                        -1 => return Ok(None),
                        -2 => return Err(StoreError::Revoked),
                        1 => return self.fetch(key).await,
                        _ => continue,
                    }
                }
                return Err(StoreError::Unavailable(
                    "the key kept changing; try again".into(),
                ));
            }
        }
        self.fetch(key).await
    }
}

impl RedisKeyStore {
    async fn credit_payment_inner(
        &self,
        p: &crate::store::PaymentCredit<'_>,
    ) -> Result<crate::store::PaymentOutcome, StoreError> {
        use crate::store::PaymentOutcome;
        crate::store::payments::check_ids(p.ids)?;
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.payment.key(format!("{}payments", self.prefix));
        inv.key(self.ids_key())
            .key(self.stats_key())
            .arg(&*self.prefix)
            .arg(p.key_id.to_string())
            .arg(p.credits)
            .arg(MAX_AMOUNT)
            .arg(p.now_ms)
            .arg(p.now_ms.saturating_sub(crate::store::PAYMENT_RETENTION_MS));
        for id in p.ids {
            inv.arg(*id);
        }
        let reply: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        let code = match reply.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => return Err(corrupt("payment reply")),
        };
        match code {
            1 => {
                let digest = match reply.get(1) {
                    Some(redis::Value::BulkString(b)) => std::str::from_utf8(b)
                        .ok()
                        .and_then(KeyDigest::from_hex)
                        .ok_or_else(|| corrupt("payment reply"))?,
                    _ => return Err(corrupt("payment reply")),
                };
                let rec = self
                    .fetch(&digest)
                    .await?
                    .ok_or_else(|| corrupt("payment"))?;
                Ok(PaymentOutcome::Credited(Box::new(rec)))
            }
            0 => Ok(PaymentOutcome::AlreadyCredited),
            -1 => Ok(PaymentOutcome::UnknownAccount),
            -2 => Ok(PaymentOutcome::TooLarge),
            -3 => Ok(PaymentOutcome::Revoked),
            _ => Err(corrupt("payment reply")),
        }
    }
}

impl KeyStore for RedisKeyStore {
    async fn charge(&self, req: &ChargeRequest<'_>) -> Result<ChargeOutcome, StoreError> {
        self.charge_inner(req).await
    }

    async fn refund(
        &self,
        receipt: ChargeReceipt,
        now_ms: i64,
    ) -> Result<Option<KeySnapshot>, StoreError> {
        let Some(nonce) = receipt.nonce.as_deref() else {
            return Ok(None); // every receipt this store issues carries its nonce
        };
        let at_ms = receipt.charged_at_ms;
        match self.undo(receipt.key, nonce, at_ms, Some(&receipt)).await {
            Ok(Undone::On(key)) => Ok(self
                .fetch(&key)
                .await?
                .map(|rec| KeySnapshot::of(&rec, now_ms, None))),
            Ok(Undone::Nothing | Undone::Unknown) => Ok(None),
            Err(e) => {
                // Owed until Redis answers; the nonce makes a late second try a no-op.
                self.owe(&receipt.key, nonce, at_ms, Some(&receipt));
                Err(e)
            }
        }
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        record.validate().map_err(StoreError::Invalid)?;
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.insert.key(self.rec_key(&record.key_hash));
        let sets = self.tag_sets(&record.tags);
        inv.key(self.index_key())
            .key(self.stats_key())
            .key(self.ids_key())
            .arg(record.key_hash.to_hex())
            .arg(record.id().to_string())
            .arg(sets.len())
            .arg(&sets);
        for (f, v) in record_fields(&record, true) {
            inv.arg(f).arg(v);
        }
        let r: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        if r == 0 {
            return Err(StoreError::Duplicate);
        }
        Ok(())
    }

    async fn get(&self, key: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        self.fetch(key).await
    }

    async fn update(
        &self,
        key: &KeyDigest,
        change: &KeyUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.update_inner(key, change).await
    }

    async fn rotate(
        &self,
        old: &KeyDigest,
        new_key: KeyDigest,
        new_masked: String,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (o, n) = (self.rec_key(old), self.rec_key(&new_key));
        let mut conn = self.conn.clone();
        let r: i64 = self
            .scripts
            .rotate
            .key(&o)
            .key(&n)
            .key(self.index_key())
            .key(format!("{o}:w"))
            .key(format!("{n}:w"))
            .key(format!("{o}:c"))
            .key(format!("{n}:c"))
            .key(format!("{o}:wt"))
            .key(format!("{n}:wt"))
            .key(format!("{o}:moved"))
            .key(format!("{o}:cd"))
            .key(format!("{n}:cd"))
            .key(self.ids_key())
            .arg(old.to_hex())
            .arg(new_key.to_hex())
            .arg(new_masked)
            .arg(format!("{o}:w:"))
            .arg(format!("{n}:w:"))
            .arg(KeyId::derived(old).to_string())
            .arg(self.tag_prefix())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match r {
            -1 => Err(StoreError::Duplicate),
            -2 => Err(StoreError::Revoked),
            0 => Ok(None),
            _ => self.fetch(&new_key).await,
        }
    }

    async fn list(&self, after: Option<KeyDigest>, limit: usize) -> Result<KeyPage, StoreError> {
        let limit = limit.max(1);
        let mut conn = self.conn.clone();
        let min = after.map_or_else(|| "-".to_string(), |a| format!("({}", a.to_hex()));
        let (digests, total): (Vec<String>, u64) = redis::pipe()
            .cmd("ZRANGEBYLEX")
            .arg(self.index_key())
            .arg(&min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .cmd("ZCARD")
            .arg(self.index_key())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let more = digests.len() > limit;
        let mut keys = Vec::with_capacity(limit.min(digests.len()));
        let mut pipe = redis::pipe();
        let parsed: Vec<KeyDigest> = digests
            .iter()
            .take(limit)
            .map(|d| KeyDigest::from_hex(d).ok_or_else(|| corrupt("keys")))
            .collect::<Result<_, _>>()?;
        for d in &parsed {
            pipe.cmd("HGETALL").arg(self.rec_key(d));
        }
        let hashes: Vec<HashMap<String, String>> = if parsed.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await.map_err(unavailable)?
        };
        for (d, h) in parsed.iter().zip(hashes) {
            if !h.is_empty() {
                keys.push(record_from(*d, &h)?);
            }
        }
        Ok(KeyPage {
            next_cursor: if more { parsed.last().copied() } else { None },
            keys,
            total,
        })
    }

    async fn search_by_tags(
        &self,
        tags: &BTreeMap<String, String>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.search_inner(tags, limit).await
    }

    async fn find_id(&self, id: &KeyId) -> Result<Option<KeyDigest>, StoreError> {
        self.find_id_inner(id).await
    }

    async fn credit_payment(
        &self,
        payment: &crate::store::PaymentCredit<'_>,
    ) -> Result<crate::store::PaymentOutcome, StoreError> {
        self.credit_payment_inner(payment).await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut conn = self.conn.clone();
        let (total, active, credits): (Option<i64>, Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.stats_key())
            .arg("total")
            .arg("active")
            .arg("credits")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let clamp = |v: Option<i64>| u64::try_from(v.unwrap_or(0)).unwrap_or(0);
        Ok(StoreStats {
            total_keys: clamp(total),
            active_keys: clamp(active),
            total_credits: clamp(credits),
        })
    }
}
