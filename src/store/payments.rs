//! Crediting a payment exactly once (SPEC §13): the payment's ids (a Stripe event id, its
//! checkout session id) are recorded in the same atomic store step as the top-up, so a
//! redelivered, replayed, reordered or concurrent notice of one payment credits once.
//! Ids are kept for [`PAYMENT_RETENTION_MS`] (Stripe redelivers for three days), then
//! forgotten, so the record does not grow forever.

use crate::key::{KeyId, KeyRecord};

/// How long a payment's ids are remembered: 30 days.
pub const PAYMENT_RETENTION_MS: i64 = 30 * 86_400_000;

/// Most ids one payment records.
pub const MAX_PAYMENT_IDS: usize = 4;

/// Longest payment id accepted.
pub const MAX_PAYMENT_ID_LEN: usize = 255;

/// One payment to credit.
#[derive(Debug, Clone, Copy)]
pub struct PaymentCredit<'a> {
    /// The account paid for.
    pub key_id: KeyId,
    /// Credits bought.
    pub credits: u64,
    /// The payment's ids (1 to [`MAX_PAYMENT_IDS`]): if any was credited before, nothing is.
    pub ids: &'a [&'a str],
    /// The time of the credit.
    pub now_ms: i64,
}

/// What crediting a payment did.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentOutcome {
    /// Credited; the key afterwards.
    Credited(Box<KeyRecord>),
    /// One of its ids was credited before: nothing changed.
    AlreadyCredited,
    /// No key holds the account.
    UnknownAccount,
    /// The account's key is revoked: nothing changed.
    Revoked,
    /// The balance would pass the largest amount: nothing changed.
    TooLarge,
}

/// One remembered payment id (for snapshots).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSeen {
    /// The id.
    pub id: String,
    /// When it was credited.
    pub at_ms: i64,
}

/// Refuses ids that cannot be a payment's.
pub(crate) fn check_ids(ids: &[&str]) -> Result<(), super::StoreError> {
    let ok = !ids.is_empty()
        && ids.len() <= MAX_PAYMENT_IDS
        && ids.iter().all(|id| {
            !id.is_empty()
                && id.len() <= MAX_PAYMENT_ID_LEN
                && id.bytes().all(|b| b.is_ascii_graphic())
        });
    if ok {
        Ok(())
    } else {
        Err(super::StoreError::Invalid(format!(
            "a payment has 1 to {MAX_PAYMENT_IDS} ids of 1 to {MAX_PAYMENT_ID_LEN} visible ASCII characters"
        )))
    }
}
