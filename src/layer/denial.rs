//! The JSON-RPC answer for a gate denial (SPEC §4): the wire form of a [`Decision`], kept at
//! the edge so the protocol code knows nothing of the gate's policy.

use serde_json::{json, Value};

use crate::gate::Decision;
use crate::jsonrpc;

/// The JSON-RPC error response for a gate denial, with `data` carrying `reason`, `tool`,
/// `creditsRequired`, `remainingCredits` and, for rate limits, `retryAfterSeconds`.
pub fn denial_body(id: Option<&Value>, decision: &Decision) -> Vec<u8> {
    let (code, message, data) = denial_parts(decision);
    jsonrpc::error_body(id, code, &message, data)
}

/// [`denial_body`] with the id as the client wrote it.
pub(crate) fn denial_body_as_sent(id: Option<&str>, decision: &Decision) -> Vec<u8> {
    let (code, message, data) = denial_parts(decision);
    jsonrpc::error_body_as_sent(id, code, &message, data)
}

fn denial_parts(decision: &Decision) -> (i64, String, Option<Value>) {
    let Some(reason) = decision.reason else {
        return (jsonrpc::INTERNAL_ERROR, "denied".into(), None);
    };
    let mut data = json!({
        "reason": reason.as_str(),
        "tool": decision.tool,
        "creditsRequired": decision.credits_required,
        "remainingCredits": decision.remaining_credits,
    });
    if let Some(retry) = decision.retry_after_secs {
        data["retryAfterSeconds"] = json!(retry);
    }
    (
        reason.category().jsonrpc_code(),
        decision.message(),
        Some(data),
    )
}
