//! What a Stripe event means for credits: which events pay, which account they pay for
//! (`metadata.paygate_key_id`, or 1.8's `metadata.paygate_api_key`), how many credits
//! (`metadata.paygate_credits`, or the package's), and the ids that make it one payment.

use serde_json::Value;

use crate::config::StripeSettings;
use crate::key::KeyId;

/// Longest event body read (Stripe's events are a few KiB).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

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
    /// Answer 200 and change nothing, for this reason.
    Ignore(String),
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
    let metadata = match kind.as_str() {
        "checkout.session.completed" => {
            if object.get("payment_status").and_then(Value::as_str) != Some("paid") {
                return Ok(Action::Ignore(
                    "the session is not paid yet (checkout.session.async_payment_succeeded credits it)".into(),
                ));
            }
            object.get("metadata")
        }
        "checkout.session.async_payment_succeeded" => object.get("metadata"),
        // Subscription invoices carry the subscription's metadata; where depends on the API
        // version.
        "invoice.paid" => [
            object.get("metadata"),
            object.pointer("/subscription_details/metadata"),
            object.pointer("/parent/subscription_details/metadata"),
        ]
        .into_iter()
        .flatten()
        .find(|m| m.get("paygate_key_id").is_some() || m.get("paygate_api_key").is_some()),
        _ => return Ok(Action::Ignore(format!("{kind} does not add credits"))),
    };
    let Some(object_id) = text(object, "id") else {
        return Err(EventError("the paid object has no id".into()));
    };
    let metadata = metadata.cloned().unwrap_or(Value::Null);
    let account = if let Some(id) = text(&metadata, "paygate_key_id") {
        match id.parse::<KeyId>() {
            Ok(id) => Account::KeyId(id),
            Err(_) => {
                return Ok(Action::Ignore(
                    "metadata.paygate_key_id is not a key id".into(),
                ))
            }
        }
    } else if let Some(key) = text(&metadata, "paygate_api_key") {
        Account::ApiKey(key)
    } else {
        return Ok(Action::Ignore(
            "no metadata.paygate_key_id: not a paygate purchase".into(),
        ));
    };
    let credits = match metadata.get("paygate_credits") {
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    }
    .or_else(|| {
        text(&metadata, "paygate_package").and_then(|p| settings.package(&p).map(|p| p.credits))
    })
    .filter(|c| *c > 0);
    let Some(credits) = credits else {
        return Ok(Action::Ignore(
            "no metadata.paygate_credits or known metadata.paygate_package".into(),
        ));
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
                json!({"id": "cs_3", "payment_status": "paid", "metadata": {"paygate_key_id": "kid_0123456789abcdef0123"}}),
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
        for bad in [
            &b"not json"[..],
            br#"{"id": "evt_1"}"#,
            br#"{"id": "e", "type": "x"}"#,
        ] {
            assert!(read(bad, &settings).is_err());
        }
    }
}
