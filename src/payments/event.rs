//! What a Stripe event means for credits: which events pay, which account they pay for
//! (`metadata.paygate_key_id`, or 1.8's `metadata.paygate_api_key`), how many credits
//! (`metadata.paygate_credits`, or the package's), and the ids that make it one payment.

use serde_json::Value;

use crate::config::StripeSettings;
use crate::key::KeyId;

/// Longest event body read (Stripe's events are a few KiB).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Oldest paying event credited, in seconds: a day inside the 30 days payment ids are kept.
pub const MAX_EVENT_AGE_SECS: i64 = 29 * 86_400;

/// The account a payment is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    /// `metadata.paygate_key_id`.
    KeyId(KeyId),
    /// 1.8's `metadata.paygate_api_key` (the key itself).
    ApiKey(String),
}

/// A payment to credit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// Whom it pays for.
    pub account: Account,
    /// Credits it buys.
    pub credits: u64,
    /// The event's id, then the paid object's (checkout session or invoice): any of them
    /// credited before means this one is too.
    pub ids: Vec<String>,
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Credit it (once).
    Credit(Purchase),
    /// Answer 200 and change nothing, for this reason: the event does not pay.
    Ignore(String),
    /// Answer 200 and change nothing, but tell the operator: money was taken and cannot be
    /// credited (its metadata names no usable account or amount).
    Unusable {
        /// Why.
        reason: String,
        /// The event's id, then the paid object's when it has one.
        ids: Vec<String>,
    },
}

/// Why an event body is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EventError(pub String);

/// Reads a verified event body and decides what it means.
///
/// ```
/// use paygate_mcp::config::StripeSettings;
/// use paygate_mcp::payments::event::{read, Action};
/// let body = br#"{"id": "evt_1", "type": "checkout.session.completed", "data": {"object":
///     {"id": "cs_1", "payment_status": "paid",
///      "metadata": {"paygate_key_id": "kid_0123456789abcdef0123", "paygate_credits": "500"}}}}"#;
/// let Action::Credit(p) = read(body, &StripeSettings::default()).unwrap() else { panic!() };
/// assert_eq!((p.credits, p.ids.join(",")), (500, "evt_1,cs_1".to_string()));
/// ```
pub fn read(body: &[u8], settings: &StripeSettings) -> Result<Action, EventError> {
    read_at(body, settings, None)
}

/// [`read`], refusing paying events created more than [`MAX_EVENT_AGE_SECS`] before
/// `now_secs` (their ids may have left the payment record, so they could credit again).
pub fn read_at(
    body: &[u8],
    settings: &StripeSettings,
    now_secs: Option<i64>,
) -> Result<Action, EventError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(EventError("the event is larger than 256 KiB".into()));
    }
    let event: Value = serde_json::from_slice(body)
        .map_err(|_| EventError("the body is not a JSON event".into()))?;
    let text = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
    let (Some(id), Some(kind)) = (text(&event, "id"), text(&event, "type")) else {
        return Err(EventError("the event has no id or type".into()));
    };
    let object = event
        .get("data")
        .and_then(|d| d.get("object"))
        .filter(|o| o.is_object())
        .ok_or_else(|| EventError("the event has no data.object".into()))?;
    // A connected account's event (Stripe Connect) is not this merchant's payment.
    if event.get("account").is_some_and(|a| !a.is_null()) {
        return Ok(Action::Ignore(
            "an event of a connected account does not add credits".into(),
        ));
    }
    let subscription = object.get("mode").and_then(Value::as_str) == Some("subscription");
    let metadata = match kind.as_str() {
        // A subscription's payments, the first included, are its invoices.
        "checkout.session.completed" | "checkout.session.async_payment_succeeded"
            if subscription =>
        {
            return Ok(Action::Ignore(
                "a subscription is credited by its invoice.paid events".into(),
            ))
        }
        "checkout.session.completed" => {
            if object.get("payment_status").and_then(Value::as_str) != Some("paid") {
                return Ok(Action::Ignore(
                    "the session is not paid yet (checkout.session.async_payment_succeeded credits it)".into(),
                ));
            }
            object.get("metadata")
        }
        "checkout.session.async_payment_succeeded" => object.get("metadata"),
        "invoice.paid" => {
            // A trial, a full discount or the customer's balance: no money was taken.
            if object.get("amount_paid").and_then(Value::as_i64) == Some(0) {
                return Ok(Action::Ignore("the invoice took no money".into()));
            }
            // Subscription invoices carry the subscription's metadata; where depends on the
            // API version.
            [
                object.get("metadata"),
                object.pointer("/subscription_details/metadata"),
                object.pointer("/parent/subscription_details/metadata"),
            ]
            .into_iter()
            .flatten()
            .find(|m| m.get("paygate_key_id").is_some() || m.get("paygate_api_key").is_some())
        }
        _ => return Ok(Action::Ignore(format!("{kind} does not add credits"))),
    };
    let unusable = |reason: &str| {
        let ids = std::iter::once(id.clone())
            .chain(text(object, "id"))
            .collect();
        Ok(Action::Unusable {
            reason: reason.into(),
            ids,
        })
    };
    let created = event.get("created").and_then(Value::as_i64);
    if let (Some(now), Some(created)) = (now_secs, created) {
        if now.saturating_sub(created) > MAX_EVENT_AGE_SECS {
            return unusable(
                "the event is older than 29 days: its payment may be credited already",
            );
        }
    }
    let Some(object_id) = text(object, "id") else {
        return Err(EventError("the paid object has no id".into()));
    };
    let metadata = metadata.cloned().unwrap_or(Value::Null);
    let account = if let Some(id) = text(&metadata, "paygate_key_id") {
        match id.parse::<KeyId>() {
            Ok(id) => Account::KeyId(id),
            Err(_) => return unusable("metadata.paygate_key_id is not a key id"),
        }
    } else if let Some(key) = text(&metadata, "paygate_api_key") {
        Account::ApiKey(key)
    } else {
        return Ok(Action::Ignore(
            "no metadata.paygate_key_id: not a paygate purchase".into(),
        ));
    };
    // The operator's package list has the last word on what a package buys.
    let package =
        text(&metadata, "paygate_package").and_then(|p| settings.package(&p).map(|p| p.credits));
    let credits = package
        .or(match metadata.get("paygate_credits") {
            Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        })
        .filter(|c| *c > 0);
    let Some(credits) = credits else {
        return unusable("no metadata.paygate_credits or known metadata.paygate_package");
    };
    Ok(Action::Credit(Purchase {
        account,
        credits,
        ids: vec![id, object_id],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, object: Value) -> Vec<u8> {
        json!({"id": "evt_1", "type": kind, "data": {"object": object}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn paid_events_credit_and_others_are_ignored() {
        let settings: StripeSettings = serde_json::from_value(json!({
            "packages": [{"id": "starter", "credits": 500, "priceId": "price_1"}]
        }))
        .unwrap();
        let meta =
            json!({"paygate_key_id": "kid_0123456789abcdef0123", "paygate_package": "starter"});
        let paid = json!({"id": "cs_1", "payment_status": "paid", "metadata": meta});
        let Action::Credit(p) =
            read(&event("checkout.session.completed", paid), &settings).unwrap()
        else {
            panic!("credits");
        };
        assert_eq!(p.credits, 500, "from the package");
        let unpaid = json!({"id": "cs_1", "payment_status": "unpaid", "metadata": meta});
        assert!(matches!(
            read(
                &event("checkout.session.completed", unpaid.clone()),
                &settings
            )
            .unwrap(),
            Action::Ignore(_)
        ));
        assert!(matches!(
            read(
                &event("checkout.session.async_payment_succeeded", unpaid),
                &settings
            )
            .unwrap(),
            Action::Credit(_)
        ));
        let invoice = json!({"id": "in_1", "parent": {"subscription_details": {"metadata":
            {"paygate_api_key": "pg_abc", "paygate_credits": 100}}}});
        let Action::Credit(p) = read(&event("invoice.paid", invoice), &settings).unwrap() else {
            panic!("invoice credits");
        };
        assert_eq!(
            (p.account, p.credits),
            (Account::ApiKey("pg_abc".into()), 100)
        );
        for (kind, object) in [
            ("payment_intent.succeeded", json!({"id": "pi_1"})),
            (
                "checkout.session.completed",
                json!({"id": "cs_2", "payment_status": "paid"}),
            ),
            (
                "checkout.session.completed",
                json!({"id": "cs_4", "mode": "subscription", "payment_status": "paid", "metadata": meta}),
            ),
            (
                "invoice.paid",
                json!({"id": "in_2", "amount_paid": 0, "metadata": meta}),
            ),
        ] {
            assert!(
                matches!(
                    read(&event(kind, object.clone()), &settings).unwrap(),
                    Action::Ignore(_)
                ),
                "{kind} {object}"
            );
        }
        // Paid, but nothing to credit with: the operator must hear of it.
        for metadata in [
            json!({"paygate_key_id": "kid_0123456789abcdef0123"}),
            json!({"paygate_key_id": "not-a-key-id", "paygate_credits": 5}),
        ] {
            let object = json!({"id": "cs_3", "payment_status": "paid", "metadata": metadata});
            assert!(matches!(
                read(&event("checkout.session.completed", object), &settings).unwrap(),
                Action::Unusable { .. }
            ));
        }
        // The package's credits win over the metadata's; a connected account's event and an
        // event older than the payment record credit nothing.
        let cheap = json!({"id": "cs_5", "payment_status": "paid", "metadata":
            {"paygate_key_id": "kid_0123456789abcdef0123", "paygate_package": "starter", "paygate_credits": "9999999"}});
        let Action::Credit(p) = read(
            &event("checkout.session.completed", cheap.clone()),
            &settings,
        )
        .unwrap() else {
            panic!("credits");
        };
        assert_eq!(p.credits, 500);
        let mut connect: Value =
            serde_json::from_slice(&event("checkout.session.completed", cheap.clone())).unwrap();
        connect["account"] = json!("acct_1");
        assert!(matches!(
            read(connect.to_string().as_bytes(), &settings).unwrap(),
            Action::Ignore(_)
        ));
        let mut old: Value =
            serde_json::from_slice(&event("checkout.session.completed", cheap)).unwrap();
        old["created"] = json!(1_700_000_000);
        let now = 1_700_000_000 + MAX_EVENT_AGE_SECS + 1;
        assert!(matches!(
            read_at(old.to_string().as_bytes(), &settings, Some(now)).unwrap(),
            Action::Unusable { .. }
        ));
        for bad in [
            &b"not json"[..],
            br#"{"id": "evt_1"}"#,
            br#"{"id": "e", "type": "x"}"#,
        ] {
            assert!(read(bad, &settings).is_err());
        }
    }
}
