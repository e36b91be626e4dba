//! Webhooks: usage and admin events POSTed in batches to an HTTP(S) endpoint, signed with
//! HMAC-SHA256.
//!
//! `WebhookSink` (cargo feature `webhook`, on by default) is an [`EventSink`](crate::EventSink)
//! that queues every usage event and the admin events listed in [`WEBHOOK_ADMIN_EVENTS`], and
//! a background task delivers them as
//!
//! ```json
//! {"events": [ ...usage events... ], "adminEvents": [ ...admin events... ]}
//! ```
//!
//! with at most 10 events (both kinds together) per POST, sent as soon as 10 are waiting and
//! at least every 5 seconds. Failed POSTs (network errors, timeouts, HTTP 5xx, 408 and 429)
//! are retried with exponential backoff. The queue is bounded: when it is full the oldest
//! event is dropped and counted. Each queued event is bounded too: a usage event's text
//! fields are cut to [`MAX_EVENT_TEXT_BYTES`](crate::meter::MAX_EVENT_TEXT_BYTES) bytes and
//! an admin event's data to about 8 KiB, so the queue's memory is bounded whatever the
//! requests held. Recording an event never waits on the network, so a slow or
//! dead endpoint never slows or fails a tool call.
//!
//! When a secret is set, each POST carries
//! `X-PayGate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! Receivers check it with [`verify_signature`], which is available without the `webhook`
//! feature.

mod signature;

#[cfg(feature = "webhook")]
mod config;
#[cfg(feature = "webhook")]
mod delivery;
#[cfg(feature = "webhook")]
mod queue;
#[cfg(feature = "webhook")]
mod sink;
#[cfg(all(test, feature = "webhook"))]
mod test_support;
#[cfg(feature = "webhook")]
mod transport;

pub use signature::{signature_header, verify_signature, SIGNATURE_HEADER};

#[cfg(feature = "webhook")]
pub use config::{WebhookConfig, WebhookError};
#[cfg(feature = "webhook")]
pub use queue::WebhookStats;
#[cfg(feature = "webhook")]
pub use sink::{WebhookHandle, WebhookSink};

/// The admin event types delivered by webhooks; other admin events are not sent.
pub const WEBHOOK_ADMIN_EVENTS: [&str; 6] = [
    "key.created",
    "key.topup",
    "key.revoked",
    "key.rotated",
    "key.expired",
    "alert.fired",
];

/// Most events (usage and admin together) in one webhook POST.
pub const MAX_BATCH_EVENTS: usize = 10;
