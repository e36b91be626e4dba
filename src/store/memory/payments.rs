//! The memory store's record of credited payments: ids with the time they were credited,
//! oldest first, forgotten after [`PAYMENT_RETENTION_MS`].

use std::collections::{HashMap, VecDeque};

use super::MemoryKeyStore;
use crate::store::payments::{check_ids, PaymentCredit, PaymentOutcome, PaymentSeen};
use crate::store::{KeyStore as _, KeyUpdate, StoreError, PAYMENT_RETENTION_MS};

/// Payment ids credited, by id and in order.
#[derive(Default)]
pub(crate) struct PaymentLog {
    seen: HashMap<String, i64>,
    order: VecDeque<(i64, String)>,
}

impl PaymentLog {
    fn forget_before(&mut self, cutoff_ms: i64) {
        while self.order.front().is_some_and(|(at, _)| *at < cutoff_ms) {
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }

    /// The ids, oldest first.
    fn seen(&self) -> Vec<PaymentSeen> {
        self.order
            .iter()
            .map(|(at_ms, id)| PaymentSeen {
                id: id.clone(),
                at_ms: *at_ms,
            })
            .collect()
    }

    fn record(&mut self, id: &str, at_ms: i64) {
        if self.seen.insert(id.to_string(), at_ms).is_none() {
            self.order.push_back((at_ms, id.to_string()));
        }
    }
}

impl MemoryKeyStore {
    /// [`KeyStore::credit_payment`](crate::store::KeyStore::credit_payment): the payment log
    /// is held through the whole step, so two credits of one payment cannot interleave.
    pub(super) fn credit_payment_now(
        &self,
        p: &PaymentCredit<'_>,
    ) -> Result<PaymentOutcome, StoreError> {
        check_ids(p.ids)?;
        let mut log = self.payments.lock();
        log.forget_before(p.now_ms.saturating_sub(PAYMENT_RETENTION_MS));
        if p.ids.iter().any(|id| log.seen.contains_key(*id)) {
            return Ok(PaymentOutcome::AlreadyCredited);
        }
        // A rotation may move the account between finding it and changing it: look again.
        for _ in 0..8 {
            let Some(digest) = self.find_id(&p.key_id).into_inner()? else {
                return Ok(PaymentOutcome::UnknownAccount);
            };
            let applied = self.with_record(&digest, |rec, _| {
                (rec.id() == p.key_id)
                    .then(|| KeyUpdate::TopUp(p.credits).apply(rec).map(|()| rec.clone()))
            });
            match applied.flatten() {
                None => continue,
                Some(Ok(rec)) => {
                    for id in p.ids {
                        log.record(id, p.now_ms);
                    }
                    return Ok(PaymentOutcome::Credited(Box::new(rec)));
                }
                Some(Err(StoreError::Revoked)) => return Ok(PaymentOutcome::Revoked),
                Some(Err(StoreError::Invalid(_))) => return Ok(PaymentOutcome::TooLarge),
                Some(Err(e)) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(
            "the key kept rotating; try again".into(),
        ))
    }

    /// Every record and the payment ids remembered, as of one moment: a payment is in both
    /// (its credits and its ids) or in neither, so a snapshot can never credit it twice, or
    /// lose it, after a restart.
    pub(crate) fn export_with_payments(&self) -> (Vec<crate::key::KeyRecord>, Vec<PaymentSeen>) {
        let log = self.payments.lock();
        let keys = self.export();
        (keys, log.seen())
    }

    /// The payment ids remembered, oldest first.
    pub fn payments_seen(&self) -> Vec<PaymentSeen> {
        self.payments.lock().seen()
    }

    /// Remembers payment ids read from a state file; returns how many were not usable.
    pub(crate) fn restore_payments(&self, seen: Vec<serde_json::Value>) -> usize {
        let mut log = self.payments.lock();
        let mut parsed: Vec<PaymentSeen> = Vec::with_capacity(seen.len());
        let mut skipped = 0;
        for value in seen {
            match serde_json::from_value::<PaymentSeen>(value) {
                Ok(p) if check_ids(&[p.id.as_str()]).is_ok() => parsed.push(p),
                _ => skipped += 1,
            }
        }
        parsed.sort_by_key(|p| p.at_ms);
        for p in parsed {
            log.record(&p.id, p.at_ms);
        }
        skipped
    }
}
