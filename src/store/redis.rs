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
//! | `paygate:stats` | hash | key count, active keys, credits held |
//!
//! Key rotation and the store-wide statistics touch more than one slot: on Redis Cluster run
//! all keys of a deployment in one slot (a prefix like `paygate:{all}:`) or use a single node.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};

use super::{
    ChargeOutcome, ChargeReceipt, ChargeRequest, KeyPage, KeySnapshot, KeyStore, KeyUpdate,
    StoreError, StoreStats,
};
use crate::amount::MAX_AMOUNT;
use crate::clock::ms_to_datetime;
use crate::deny::DenyReason;
use crate::key::{canonical_ip, KeyDigest, KeyRecord};
use crate::quota::{Quota, QuotaUsage};
use crate::ratelimit::RateState;

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
}

/// A charge to undo once Redis answers: one whose reply was lost (undone only if it turns
/// out to have happened), or one whose refund failed. Undoing is keyed by the charge's nonce,
/// so trying twice undoes once.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Owed {
    key: String,
    nonce: String,
    /// When the charge was made or tried (the gateway's clock, ms).
    #[serde(default)]
    at_ms: i64,
    /// For a refund: the receipt's credits, day and month. A receipt proves the charge, so
    /// it is refunded even once Redis no longer remembers it; a lost reply proves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    receipt: Option<(u64, i64, i64)>,
}

/// What undoing one charge found.
enum Undone {
    /// Undone on this key (where a rotation may have moved it).
    On(KeyDigest),
    /// Nothing on record to undo: never charged, or undone already.
    Nothing,
    /// Not on record, but old enough that it may have been forgotten: cannot be told.
    Unknown,
}

/// The charges owed back, bounded, and mirrored to a file when one is configured so a
/// restart in the middle of an outage does not forget them. The file is written by the
/// background task (at most every 200 ms, outside the lock), never on a caller's request.
struct Backlog {
    items: std::collections::VecDeque<Owed>,
    limit: usize,
    file: Option<std::path::PathBuf>,
    /// The file is behind the queue.
    dirty: bool,
    /// Charges that could not be told apart from ones never made (see [`Undone::Unknown`]).
    unknown: u64,
}

impl Backlog {
    fn is_full(&self) -> bool {
        self.items.len() >= self.limit
    }

    fn push(&mut self, owed: Owed) {
        self.items.push_back(owed);
        self.dirty = true;
    }

    fn pop_front(&mut self) {
        self.items.pop_front();
        self.dirty = true;
    }

    /// What the file should hold now, if it is behind.
    fn take_snapshot(&mut self) -> Option<(std::path::PathBuf, Vec<u8>)> {
        let path = self.file.clone().filter(|_| self.dirty)?;
        self.dirty = false;
        Some((path, serde_json::to_vec(&self.items).unwrap_or_default()))
    }

    /// Writes a snapshot durably (temp file, fsync, rename).
    fn write(path: &std::path::Path, body: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    fn load(path: &std::path::Path) -> Result<std::collections::VecDeque<Owed>, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Corrupt(format!(
                    "owed-charges file {} is not what this store writes: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(StoreError::Unavailable(format!(
                "cannot read owed-charges file {}: {e}",
                path.display()
            ))),
        }
    }
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

/// The 32 hex digits of an address as IPv6 (IPv4 mapped), as the scripts compare them.
fn ip_hex(ip: IpAddr) -> String {
    let v6 = match canonical_ip(ip) {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    hex::encode(v6.octets())
}

/// An allowlist entry as `[hex, prefix]` in the IPv6 space.
fn net_entry(net: &IpNet) -> serde_json::Value {
    let prefix = match net {
        IpNet::V4(n) => u32::from(n.prefix_len()) + 96,
        IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    serde_json::json!([ip_hex(net.network()), prefix])
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The hash fields a record is stored as. `with_counters` adds balances and counters, which
/// only inserts write: afterwards the scripts own them.
fn record_fields(rec: &KeyRecord, with_counters: bool) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("m", rec.key_masked.clone()),
        ("n", rec.name.clone()),
        ("ca", rec.created_at.timestamp_millis().to_string()),
        ("limit", rec.spending_limit.to_string()),
        (
            "exp",
            rec.expires_at
                .map(|t| t.timestamp_millis().to_string())
                .unwrap_or_default(),
        ),
        ("xn", if rec.expiry_notified { "1" } else { "0" }.into()),
        ("allow", json(&rec.allowed_tools)),
        ("deny", json(&rec.denied_tools)),
        (
            "ips",
            json(&rec.ip_allowlist.iter().map(net_entry).collect::<Vec<_>>()),
        ),
        ("ipsrc", json(&rec.ip_allowlist)),
        ("quota", rec.quota.map(|q| json(&q)).unwrap_or_default()),
        ("tags", json(&rec.tags)),
    ];
    if with_counters {
        let u = &rec.quota_usage;
        f.extend([
            ("active", if rec.active { "1" } else { "0" }.into()),
            ("credits", rec.credits.to_string()),
            ("spent", rec.total_spent.to_string()),
            ("calls", rec.total_calls.to_string()),
            ("qd", u.day.to_string()),
            ("qdc", u.daily_calls.to_string()),
            ("qdcr", u.daily_credits.to_string()),
            ("qm", u.month.to_string()),
            ("qmc", u.monthly_calls.to_string()),
            ("qmcr", u.monthly_credits.to_string()),
            (
                "lu",
                rec.last_used_at
                    .map(|t| t.timestamp_millis().to_string())
                    .unwrap_or_default(),
            ),
            ("pver", "0".into()),
        ]);
    }
    f
}

/// Rebuilds a record from its hash, refusing data this store did not write.
fn record_from(key: KeyDigest, h: &HashMap<String, String>) -> Result<KeyRecord, StoreError> {
    let text = |f: &str| h.get(f).map(String::as_str).unwrap_or("");
    let int = |f: &str| -> Result<u64, StoreError> {
        match text(f) {
            "" => Ok(0),
            t => t
                .parse::<u64>()
                .ok()
                .filter(|v| *v <= MAX_AMOUNT)
                .ok_or_else(|| corrupt(f)),
        }
    };
    let signed = |f: &str| -> Result<i64, StoreError> {
        match text(f) {
            "" => Ok(0),
            t => t.parse::<i64>().map_err(|_| corrupt(f)),
        }
    };
    let time = |f: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        match text(f) {
            "" => Ok(None),
            t => t
                .parse::<i64>()
                .map(|ms| Some(ms_to_datetime(ms)))
                .map_err(|_| corrupt(f)),
        }
    };
    fn parse<T: serde::de::DeserializeOwned + Default>(
        h: &HashMap<String, String>,
        f: &str,
    ) -> Result<T, StoreError> {
        match h.get(f).map(String::as_str) {
            None | Some("") => Ok(T::default()),
            Some(t) => serde_json::from_str(t).map_err(|_| corrupt(f)),
        }
    }
    let rec = KeyRecord {
        key_hash: key,
        key_masked: text("m").to_string(),
        name: text("n").to_string(),
        credits: int("credits")?,
        total_spent: int("spent")?,
        total_calls: int("calls")?,
        created_at: time("ca")?.unwrap_or_else(|| ms_to_datetime(0)),
        last_used_at: time("lu")?,
        active: text("active") == "1",
        spending_limit: int("limit")?,
        allowed_tools: parse(h, "allow")?,
        denied_tools: parse(h, "deny")?,
        expires_at: time("exp")?,
        quota: parse::<Option<Quota>>(h, "quota")?,
        tags: parse::<BTreeMap<String, String>>(h, "tags")?,
        ip_allowlist: parse::<Vec<IpNet>>(h, "ipsrc")?,
        quota_usage: QuotaUsage {
            day: signed("qd")?,
            daily_calls: int("qdc")?,
            daily_credits: int("qdcr")?,
            month: signed("qm")?,
            monthly_calls: int("qmc")?,
            monthly_credits: int("qmcr")?,
        },
        expiry_notified: text("xn") == "1",
    };
    rec.validate().map_err(StoreError::Corrupt)?;
    Ok(rec)
}

fn reason_of(text: &str) -> Option<DenyReason> {
    use DenyReason::*;
    Some(match text {
        "invalid_api_key" => InvalidApiKey,
        "api_key_expired" => ApiKeyExpired,
        "ip_not_allowed" => IpNotAllowed,
        "tool_not_allowed" => ToolNotAllowed,
        "tool_denied" => ToolDenied,
        "rate_limited" => RateLimited,
        "tool_rate_limited" => ToolRateLimited,
        "insufficient_credits" => InsufficientCredits,
        "spending_limit_exceeded" => SpendingLimitExceeded,
        "daily_call_quota_exceeded" => DailyCallQuotaExceeded,
        "monthly_call_quota_exceeded" => MonthlyCallQuotaExceeded,
        "daily_credit_quota_exceeded" => DailyCreditQuotaExceeded,
        "monthly_credit_quota_exceeded" => MonthlyCreditQuotaExceeded,
        _ => return None,
    })
}

/// Reads the charge script's reply array.
struct Reply(Vec<Value>);

impl Reply {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.0.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            Some(Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("reply")),
            _ => Err(corrupt("reply")),
        }
    }
    fn uint(&self, i: usize) -> Result<u64, StoreError> {
        u64::try_from(self.int(i)?.max(0)).map_err(|_| corrupt("reply"))
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.0.get(i) {
            Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Some(Value::SimpleString(s)) => Ok(s.clone()),
            Some(Value::Int(n)) => Ok(n.to_string()),
            Some(Value::Nil) | None => Ok(String::new()),
            _ => Err(corrupt("reply")),
        }
    }
}

/// Brings the owed-charges file up to date, off the lock and off the runtime's threads.
async fn persist(owed: &Arc<Mutex<Backlog>>) {
    let Some((path, body)) = owed.lock().take_snapshot() else {
        return;
    };
    let written = tokio::task::spawn_blocking(move || {
        Backlog::write(&path, &body).map_err(|e| format!("{}: {e}", path.display()))
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        // Try again on the next round; the queue in memory still holds everything.
        owed.lock().dirty = true;
        tracing::error!("could not write the owed-charges file; retrying");
    }
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
            }),
            owed: Arc::new(Mutex::new(Backlog {
                items: match &config.owed_file {
                    Some(path) => Backlog::load(path)?,
                    None => Default::default(),
                },
                limit: config.owed_limit.max(1),
                file: config.owed_file.clone(),
                dirty: false,
                unknown: 0,
            })),
            outage: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
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

    /// Undoes owed charges in the background until Redis answers, a batch every 200 ms
    /// while any are owed; never on a caller's request.
    fn spawn_compensator(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.owed);
        let outage = self.outage.clone();
        let (conn, prefix, time, scripts) = (
            self.conn.clone(),
            self.prefix.clone(),
            self.time,
            self.scripts.clone(),
        );
        handle.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Stops once every handle to the store is gone.
                let Some(owed) = weak.upgrade() else { return };
                persist(&owed).await;
                if owed.lock().items.is_empty() {
                    continue;
                }
                let store = RedisKeyStore {
                    conn: conn.clone(),
                    prefix: prefix.clone(),
                    time,
                    scripts: scripts.clone(),
                    owed,
                    outage: outage.clone(),
                };
                store.settle_owed().await;
                persist(&store.owed).await;
            }
        });
    }

    /// Undoes the charge recorded under `nonce` (made or tried at `at_ms`), following
    /// rotations: from the receipt when given, else as the record says (a lost reply).
    async fn undo(
        &self,
        key: KeyDigest,
        nonce: &str,
        at_ms: i64,
        receipt: Option<&ChargeReceipt>,
    ) -> Result<Undone, StoreError> {
        let mut key = key;
        let mut conn = self.conn.clone();
        // With request time (tests on a manual clock) the charge's own time stands for now.
        let now = match self.time {
            RedisTime::Server => String::new(),
            RedisTime::Request => at_ms.to_string(),
        };
        for _ in 0..8 {
            let rec = self.rec_key(&key);
            let mut inv = self.scripts.refund.prepare_invoke();
            inv.key(&rec)
                .key(format!("{rec}:c"))
                .key(self.stats_key())
                .key(format!("{rec}:cd"));
            match receipt {
                Some(r) => inv
                    .arg(r.credits)
                    .arg(r.day)
                    .arg(r.month)
                    .arg(nonce)
                    .arg("0"),
                None => inv.arg(0).arg(0).arg(0).arg(nonce).arg("1"),
            };
            inv.arg(at_ms).arg(&now);
            let r: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
            match r {
                1 => return Ok(Undone::On(key)),
                0 => return Ok(Undone::Nothing),
                -2 => return Ok(Undone::Unknown),
                _ => {}
            }
            // A rotation while the call ran moved the record (and its charge record) to a
            // new digest and left a pointer behind.
            let moved: Option<String> = redis::cmd("GET")
                .arg(format!("{rec}:moved"))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match moved.as_deref().and_then(KeyDigest::from_hex) {
                Some(next) => key = next,
                None => return Ok(Undone::Nothing),
            }
        }
        Ok(Undone::Nothing)
    }

    /// Charges owed back and not yet undone: replies lost in an outage, and refunds that
    /// could not be applied then.
    pub fn unsettled_charges(&self) -> usize {
        self.owed.lock().items.len()
    }

    /// Owed charges that could not be settled because Redis no longer remembered them: a
    /// lost reply older than a day, or older than the key's 10,000 newest charges. Each was
    /// logged (tracing, error level) with its key digest; none was given back or dropped silently.
    pub fn unresolved_charges(&self) -> u64 {
        self.owed.lock().unknown
    }

    /// Undoes owed charges in order; stops at the first Redis does not answer for.
    async fn settle_owed(&self) {
        loop {
            let Some(next) = self.owed.lock().items.front().cloned() else {
                return;
            };
            let Some(key) = KeyDigest::from_hex(&next.key) else {
                self.owed.lock().pop_front();
                continue;
            };
            let receipt = next.receipt.map(|(credits, day, month)| ChargeReceipt {
                key,
                credits,
                day,
                month,
                nonce: Some(next.nonce.clone()),
                charged_at_ms: next.at_ms,
            });
            match self
                .undo(key, &next.nonce, next.at_ms, receipt.as_ref())
                .await
            {
                Err(_) => return,
                Ok(Undone::Unknown) => {
                    tracing::error!(
                        key = %next.key,
                        "a charge whose reply was lost is no longer on record; it could not be \
                         checked and was not given back"
                    );
                    self.owed.lock().unknown += 1;
                }
                Ok(_) => {}
            }
            self.owed.lock().pop_front();
        }
    }

    /// Logs the start of an outage, once.
    fn note_outage(&self, e: &RedisError) {
        use std::sync::atomic::Ordering;
        if !self.outage.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "Redis store unavailable; calls fail closed until it answers");
        }
    }

    /// Logs the end of an outage, once; a plain load on the usual path.
    fn note_answered(&self) {
        use std::sync::atomic::Ordering;
        if self.outage.load(Ordering::Relaxed) && self.outage.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis store answers again");
        }
    }

    /// Owes Redis the undoing of the charge `nonce` on `key`, made or tried at `at_ms`.
    fn owe(&self, key: &KeyDigest, nonce: &str, at_ms: i64, receipt: Option<&ChargeReceipt>) {
        self.owed.lock().push(Owed {
            key: key.to_hex(),
            nonce: nonce.to_string(),
            at_ms,
            receipt: receipt.map(|r| (r.credits, r.day, r.month)),
        });
    }

    async fn charge_inner(&self, req: &ChargeRequest<'_>) -> Result<ChargeOutcome, StoreError> {
        // Fail closed rather than charge what could not be undone.
        if self.owed.lock().is_full() {
            return Err(StoreError::Unavailable(
                "too many charges still owed back after an outage; refusing new charges".into(),
            ));
        }
        let rec = self.rec_key(&req.key);
        let nonce = crate::key::generate_key()
            .map(|k| k[3..19].to_string())
            .map_err(|e| StoreError::Unavailable(format!("no randomness: {e}")))?;
        let q = req.global_quota.unwrap_or_default();
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.charge.prepare_invoke();
        inv.key(&rec)
            .key(format!("{rec}:w"))
            .key(format!("{rec}:w:{}", req.tool))
            .key(format!("{rec}:c"))
            .key(self.stats_key())
            .key(format!("{rec}:wt"))
            .key(format!("{rec}:cd"))
            .arg(req.price)
            .arg(req.tool)
            .arg(req.client_ip.map(ip_hex).unwrap_or_default())
            .arg(req.global_rate_limit)
            .arg(req.tool_rate_limit)
            .arg(q.daily_call_limit)
            .arg(q.monthly_call_limit)
            .arg(q.daily_credit_limit)
            .arg(q.monthly_credit_limit)
            .arg(if req.global_quota.is_some() { "1" } else { "0" })
            .arg(if req.shadow { "1" } else { "0" })
            .arg(match self.time {
                RedisTime::Server => String::new(),
                RedisTime::Request => req.now_ms.to_string(),
            })
            .arg(&nonce)
            .arg(req.checks.letters());
        let reply = match inv.invoke_async::<Vec<Value>>(&mut conn).await {
            Ok(v) => {
                self.note_answered();
                Reply(v)
            }
            Err(e) => {
                self.note_outage(&e);
                // The script may have run with its reply lost: settle it once Redis answers.
                if !req.shadow && !e.is_connection_refusal() {
                    self.owe(&req.key, &nonce, req.now_ms, None);
                }
                return Err(unavailable(e));
            }
        };
        let code = reply.int(0)?;
        if code == 2 {
            return Ok(ChargeOutcome {
                denial: Some(DenyReason::InvalidApiKey),
                retry_after_secs: None,
                snapshot: None,
                rate: None,
                receipt: None,
                newly_expired: false,
            });
        }
        let denial = match code {
            0 => None,
            _ => Some(reason_of(&reply.text(1)?).ok_or_else(|| corrupt("reason"))?),
        };
        let retry = reply.uint(2)?;
        let quota_text = reply.text(10)?;
        let quota = match quota_text.as_str() {
            "" => req.global_quota,
            t => Some(serde_json::from_str::<Quota>(t).map_err(|_| corrupt("quota"))?),
        };
        let exp = reply.text(7)?;
        let usage = QuotaUsage {
            day: reply.int(11)?,
            daily_calls: reply.uint(12)?,
            daily_credits: reply.uint(13)?,
            month: reply.int(14)?,
            monthly_calls: reply.uint(15)?,
            monthly_credits: reply.uint(16)?,
        };
        let snapshot = KeySnapshot {
            key: req.key,
            name: reply.text(8)?,
            key_masked: reply.text(9)?,
            credits: reply.uint(3)?,
            total_spent: reply.uint(4)?,
            total_calls: reply.uint(5)?,
            spending_limit: reply.uint(6)?,
            expires_at_ms: if exp.is_empty() {
                None
            } else {
                Some(exp.parse().map_err(|_| corrupt("exp"))?)
            },
            quota,
            quota_usage: usage,
        };
        let rate_limit = reply.int(17)?;
        let rate = (rate_limit >= 0).then(|| RateState {
            limit: u64::try_from(rate_limit).unwrap_or(0),
            remaining: reply.uint(18).unwrap_or(0),
            reset_secs: reply.uint(19).unwrap_or(0),
        });
        let receipt = (reply.int(21)? == 1).then_some(ChargeReceipt {
            key: req.key,
            credits: req.checks.price(req.price),
            day: usage.day,
            month: usage.month,
            nonce: Some(nonce),
            charged_at_ms: req.now_ms,
        });
        Ok(ChargeOutcome {
            denial,
            retry_after_secs: (retry > 0).then_some(retry),
            snapshot: Some(snapshot),
            rate,
            receipt,
            newly_expired: reply.int(20)? == 1,
        })
    }

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
                    change.apply(&mut rec)?;
                    let mut inv = self.scripts.policy.key(&rec_key);
                    inv.arg(pver);
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
        inv.key(self.index_key())
            .key(self.stats_key())
            .arg(record.key_hash.to_hex());
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
            .arg(old.to_hex())
            .arg(new_key.to_hex())
            .arg(new_masked)
            .arg(format!("{o}:w:"))
            .arg(format!("{n}:w:"))
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
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.list(after, 1000).await?;
            out.extend(
                page.keys
                    .into_iter()
                    .filter(|r| tags.iter().all(|(k, v)| r.tags.get(k) == Some(v))),
            );
            if out.len() >= limit {
                out.truncate(limit);
                return Ok(out);
            }
            match page.next_cursor {
                Some(c) => after = Some(c),
                None => return Ok(out),
            }
        }
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
