//! The Stripe endpoints (SPEC §13), served when the config has a `stripe` section:
//! `POST /stripe/webhook` credits paid checkouts and invoices once, and `POST /checkout`
//! lets a key holder buy a credit package through Stripe Checkout.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::{bad_request, error, json_reply, AdminRequest, AdminState, ApiError, Handled};
use crate::config::StripeSettings;
use crate::key::{KeyRecord, KeyRef};
use crate::payments::event::{self, Account, Action, Purchase};
use crate::payments::signature;
use crate::store::{KeyStore, PaymentCredit, PaymentOutcome};

/// The Stripe settings in force and, with a secret key, the client that creates sessions.
pub(crate) struct Payments {
    settings: StripeSettings,
    #[cfg(feature = "stripe")]
    client: Option<crate::payments::checkout::StripeClient>,
}

impl Payments {
    /// From the gate's config; `None` without a `stripe` section.
    pub(crate) fn from_settings(settings: Option<StripeSettings>) -> Option<Arc<Self>> {
        let settings = settings?;
        #[cfg(feature = "stripe")]
        let client = match crate::payments::checkout::StripeClient::new(&settings) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "Stripe checkout disabled");
                None
            }
        };
        Some(Arc::new(Self {
            settings,
            #[cfg(feature = "stripe")]
            client,
        }))
    }

    /// The packages on sale, for `/pricing` and discovery.
    pub(crate) fn packages(&self) -> serde_json::Value {
        let sellable = self.sells();
        json!(self
            .settings
            .packages
            .iter()
            .map(|p| json!({"id": p.id, "credits": p.credits, "purchasable": sellable}))
            .collect::<Vec<_>>())
    }
}

impl Payments {
    /// Whether `POST /checkout` sells (a secret key, and a client to reach Stripe with).
    pub(crate) fn sells(&self) -> bool {
        #[cfg(feature = "stripe")]
        return self.client.is_some();
        #[cfg(not(feature = "stripe"))]
        return false;
    }
}

fn payments<St>(state: &AdminState<St>) -> Result<&Payments, ApiError> {
    state
        .payments
        .as_deref()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "not found"))
}

/// `POST /stripe/webhook`: a signed Stripe event. 400 (nothing changed) when the signature,
/// its time or the body is wrong; 200 otherwise, saying whether it credited; 503 when the
/// store cannot be reached, so Stripe delivers it again.
pub(crate) async fn stripe_webhook<St: KeyStore>(
    state: &AdminState<St>,
    req: &AdminRequest,
) -> Handled {
    let p = payments(state)?;
    let Some(secret) = p.settings.webhook_secret.as_deref() else {
        return Err(error(StatusCode::NOT_FOUND, "not found"));
    };
    let header = req
        .headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now_ms = state.gate.clock().now_ms();
    if let Err(e) = signature::verify(header, &req.body, secret, now_ms.div_euclid(1000)) {
        tracing::warn!(error = %e, "Stripe webhook refused");
        return Err(bad_request(format!("webhook signature: {e}")));
    }
    let now_secs = now_ms.div_euclid(1000);
    let purchase = match event::read_at(&req.body, &p.settings, Some(now_secs)) {
        Ok(Action::Credit(purchase)) => purchase,
        Ok(Action::Ignore(reason)) => return Ok(ignored(&reason)),
        Ok(Action::Unusable { reason, ids }) => {
            return Ok(unmatched(state, &ids, json!({}), &reason))
        }
        Err(e) => return Err(bad_request(e.to_string())),
    };
    let Some(account) = account_of(state, &purchase).await? else {
        return Ok(unmatched(
            state,
            &purchase.ids,
            known(&purchase),
            "no key holds the account",
        ));
    };
    let ids: Vec<&str> = purchase.ids.iter().map(String::as_str).collect();
    let credit = PaymentCredit {
        key_id: account.id(),
        credits: purchase.credits,
        ids: &ids,
        now_ms,
    };
    let outcome = state
        .gate
        .store()
        .credit_payment(&credit)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "Stripe payment not credited yet; Stripe delivers it again");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable; deliver the event again",
            )
        })?;
    match outcome {
        PaymentOutcome::Credited(rec) => {
            let data = json!({
                "actor": "stripe",
                "keyMasked": rec.key_masked,
                "keyId": rec.id(),
                "creditsAdded": purchase.credits,
                "newBalance": rec.credits,
                "eventId": purchase.ids.first(),
                "paymentId": purchase.ids.get(1),
            });
            state.gate.emit("billing.stripe_topup", data.clone());
            state.gate.emit("key.topup", data);
            Ok(json_reply(
                StatusCode::OK,
                &json!({"received": true, "credited": true, "credits": purchase.credits, "keyId": rec.id()}),
            ))
        }
        PaymentOutcome::AlreadyCredited => Ok(ignored("this payment was credited already")),
        PaymentOutcome::UnknownAccount => Ok(unmatched(
            state,
            &purchase.ids,
            known(&purchase),
            "no key holds the account",
        )),
        PaymentOutcome::Revoked => Ok(unmatched(
            state,
            &purchase.ids,
            known(&purchase),
            "the key is revoked",
        )),
        PaymentOutcome::TooLarge => Ok(unmatched(
            state,
            &purchase.ids,
            known(&purchase),
            "the balance would pass the largest amount",
        )),
    }
}

/// The key a purchase is for (1.8's metadata names the key itself).
async fn account_of<St: KeyStore>(
    state: &AdminState<St>,
    purchase: &Purchase,
) -> Result<Option<KeyRecord>, ApiError> {
    let found = match &purchase.account {
        Account::KeyId(id) => state.gate.get_key(*id).await,
        Account::ApiKey(key) if key.is_empty() || key.len() > 256 => return Ok(None),
        Account::ApiKey(key) => state.gate.get_key(KeyRef::Key(key)).await,
    };
    found.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable; deliver the event again",
        )
    })
}

fn ignored(reason: &str) -> super::Reply {
    json_reply(
        StatusCode::OK,
        &json!({"received": true, "credited": false, "reason": reason}),
    )
}

/// Money was paid but cannot be credited: 200 (Stripe retrying would not help), and the
/// operator is told through the audit log and admin events which payment (`ids`: the event's,
/// then the paid object's) to look at, with what is known of it (`known`).
fn unmatched<St: KeyStore>(
    state: &AdminState<St>,
    ids: &[String],
    known: serde_json::Value,
    why: &str,
) -> super::Reply {
    tracing::warn!(
        event = ids.first().map(String::as_str),
        why,
        "a Stripe payment could not be credited"
    );
    let mut data = json!({
        "actor": "stripe",
        "eventId": ids.first(),
        "paymentId": ids.get(1),
        "reason": why,
    });
    if let (Some(data), serde_json::Value::Object(known)) = (data.as_object_mut(), known) {
        data.extend(known);
    }
    state.gate.emit("billing.stripe_unmatched", data);
    ignored(why)
}

/// What is known of a purchase that cannot be credited: its account (a key masked) and
/// credits.
fn known(purchase: &Purchase) -> serde_json::Value {
    let account = match &purchase.account {
        Account::KeyId(id) => json!(id),
        Account::ApiKey(key) => json!(crate::key::mask_key(key)),
    };
    json!({"account": account, "credits": purchase.credits})
}

/// `POST /checkout` `{"package": "<id>"}` with `X-API-Key` (or an OAuth access token): a
/// Stripe Checkout Session for the caller's account, `{url, sessionId}`.
#[cfg(feature = "stripe")]
pub(crate) async fn checkout<St: KeyStore>(
    state: &AdminState<St>,
    req: &AdminRequest,
    client_ip: Option<std::net::IpAddr>,
) -> Handled {
    let p = payments(state)?;
    let Some(client) = &p.client else {
        return Err(error(StatusCode::NOT_FOUND, "not found"));
    };
    let account = caller(state, req).await?;
    if !account.permits_ip(client_ip) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "this key is not allowed from this address",
        ));
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        package: String,
    }
    let body: Body = req.json()?;
    let package = p.settings.package(&body.package).ok_or_else(|| {
        let known: Vec<&str> = p.settings.packages.iter().map(|p| p.id.as_str()).collect();
        bad_request(format!("unknown package; on sale: {}", known.join(", ")))
    })?;
    let idempotency_key = idempotency_key(req, &account, &package.id)?;
    let session = client
        .create_session(&p.settings, package, &account.id(), &idempotency_key)
        .await
        .map_err(|e| error(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "url": session.url,
            "sessionId": session.id,
            "package": package.id,
            "credits": package.credits,
            "keyId": account.id(),
        }),
    ))
}

/// The account asking: its `X-API-Key`, or the account an OAuth access token acts for.
#[cfg(feature = "stripe")]
async fn caller<St: KeyStore>(
    state: &AdminState<St>,
    req: &AdminRequest,
) -> Result<KeyRecord, ApiError> {
    let unauthorized = || error(StatusCode::UNAUTHORIZED, "send your API key in X-API-Key");
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let rec = if let Some(key) = header("x-api-key").filter(|k| !k.is_empty()) {
        state.gate.get_key(key).await?
    } else if let (Some(oauth), Some(token)) =
        (&state.oauth, crate::edge::bearer_token(&req.headers))
    {
        match oauth.authenticate(token).await {
            Ok(grant) => state.gate.get_key(grant.key_id).await?,
            Err(_) => return Err(unauthorized()),
        }
    } else {
        return Err(unauthorized());
    };
    let now_ms = state.gate.clock().now_ms();
    rec.filter(|r| r.active && !r.is_expired_at(now_ms))
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "invalid or expired API key"))
}

/// Stripe's `Idempotency-Key`: from the caller's own `Idempotency-Key` (so its retry gets the
/// same session), scoped to its account and package; else a fresh one.
#[cfg(feature = "stripe")]
fn idempotency_key(
    req: &AdminRequest,
    account: &KeyRecord,
    package: &str,
) -> Result<String, ApiError> {
    use sha2::{Digest as _, Sha256};
    match req.headers.get("idempotency-key") {
        Some(v) => {
            let given = v
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 255)
                .ok_or_else(|| {
                    bad_request("Idempotency-Key must be 1 to 255 visible characters")
                })?;
            let digest = Sha256::digest(format!("{}\n{package}\n{given}", account.id()));
            Ok(format!("paygate-{}", hex::encode(&digest[..16])))
        }
        None => {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes)
                .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "random source failed"))?;
            Ok(format!("paygate-{}", hex::encode(bytes)))
        }
    }
}
