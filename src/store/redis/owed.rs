//! Charges owed back after an outage: a reply lost in flight or a refund Redis could not
//! take, kept in order (and in a file when configured) and settled once Redis answers.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::RedisError;

use crate::key::KeyDigest;
use crate::store::{ChargeReceipt, StoreError};

use super::{unavailable, RedisKeyStore, RedisTime};

/// A charge to undo once Redis answers: one whose reply was lost (undone only if it turns
/// out to have happened), or one whose refund failed. Undoing is keyed by the charge's nonce,
/// so trying twice undoes once.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Owed {
    key: String,
    nonce: String,
    /// When the charge was made or tried (the gateway's clock, ms).
    #[serde(default)]
    at_ms: i64,
    /// For a refund: the receipt's credits, day and month. A receipt proves the charge, so
    /// it is refunded even once Redis no longer remembers it; a lost reply proves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    receipt: Option<(u64, i64, i64)>,
    /// What the receipt's charge counted (see [`counted_letters`]); absent in files written
    /// before the checks were split, whose charges counted both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counted: Option<String>,
}

/// `b` when a charge counted billing's totals, `q` when it counted the quota counters.
pub(super) fn counted_letters(r: &ChargeReceipt) -> String {
    let mut out = String::new();
    if r.billed {
        out.push('b');
    }
    if r.counted {
        out.push('q');
    }
    out
}

/// What undoing one charge found.
pub(super) enum Undone {
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
pub(super) struct Backlog {
    items: std::collections::VecDeque<Owed>,
    limit: usize,
    file: Option<std::path::PathBuf>,
    /// The file is behind the queue.
    dirty: bool,
    /// Charges that could not be told apart from ones never made (see [`Undone::Unknown`]).
    unknown: u64,
}

impl Backlog {
    /// The backlog, with what `file` (when given) still holds from before a restart.
    pub(super) fn open(limit: usize, file: Option<std::path::PathBuf>) -> Result<Self, StoreError> {
        let items = match &file {
            Some(path) => Self::load(path)?,
            None => Default::default(),
        };
        Ok(Self {
            items,
            limit: limit.max(1),
            file,
            dirty: false,
            unknown: 0,
        })
    }

    pub(super) fn is_full(&self) -> bool {
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

/// Brings the owed-charges file up to date, off the lock and off the runtime's threads.
pub(super) async fn persist(owed: &Arc<Mutex<Backlog>>) {
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
    /// Undoes owed charges in the background until Redis answers, a batch every 200 ms
    /// while any are owed; never on a caller's request.
    pub(super) fn spawn_compensator(&self) {
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
    pub(super) async fn undo(
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
                    .arg("0")
                    .arg(at_ms)
                    .arg(&now)
                    .arg(counted_letters(r)),
                None => inv
                    .arg(0)
                    .arg(0)
                    .arg(0)
                    .arg(nonce)
                    .arg("1")
                    .arg(at_ms)
                    .arg(&now),
            };
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
    pub(super) async fn settle_owed(&self) {
        loop {
            let Some(next) = self.owed.lock().items.front().cloned() else {
                return;
            };
            let Some(key) = KeyDigest::from_hex(&next.key) else {
                self.owed.lock().pop_front();
                continue;
            };
            let counted = next.counted.as_deref().unwrap_or("bq");
            let receipt = next.receipt.map(|(credits, day, month)| ChargeReceipt {
                key,
                credits,
                day,
                month,
                billed: counted.contains('b'),
                counted: counted.contains('q'),
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
    pub(super) fn note_outage(&self, e: &RedisError) {
        use std::sync::atomic::Ordering;
        if !self.outage.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "Redis store unavailable; calls fail closed until it answers");
        }
    }

    /// Logs the end of an outage, once; a plain load on the usual path.
    pub(super) fn note_answered(&self) {
        use std::sync::atomic::Ordering;
        if self.outage.load(Ordering::Relaxed) && self.outage.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis store answers again");
        }
    }

    /// Owes Redis the undoing of the charge `nonce` on `key`, made or tried at `at_ms`.
    pub(super) fn owe(
        &self,
        key: &KeyDigest,
        nonce: &str,
        at_ms: i64,
        receipt: Option<&ChargeReceipt>,
    ) {
        self.owed.lock().push(Owed {
            key: key.to_hex(),
            nonce: nonce.to_string(),
            at_ms,
            receipt: receipt.map(|r| (r.credits, r.day, r.month)),
            counted: receipt.map(counted_letters),
        });
    }
}
