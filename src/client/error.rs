//! What a call through a gateway can end in, by class: the gateway's denials as the
//! JSON-RPC error codes SPEC §3 gives them, the tool's own errors, and transport failures.

use std::time::Duration;

/// Why a call did not return a tool result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// `-32402`: not enough credits, a spending limit or a quota.
    #[error("payment required ({reason}): {credits_required} credits needed")]
    PaymentRequired {
        /// The gate's reason (`insufficient_credits`, `spending_limit`, ...).
        reason: String,
        /// What the call costs.
        credits_required: u64,
        /// The key's balance, when known.
        remaining: Option<u64>,
    },
    /// `-32001`: a rate limit.
    #[error("rate limited ({reason})")]
    RateLimited {
        /// The gate's reason (`rate_limited`, `tool_rate_limited`).
        reason: String,
        /// When a call could pass (`retryAfterSeconds`, else `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// `-32002` or HTTP 401: a missing, invalid or expired key or token.
    #[error("unauthorized ({reason})")]
    Unauthorized {
        /// The gate's reason, or `invalid_token` / `http_401`.
        reason: String,
    },
    /// `-32003` or HTTP 403: the key may not call this tool (or its token lacks a scope).
    #[error("forbidden ({reason})")]
    Forbidden {
        /// The gate's reason.
        reason: String,
    },
    /// Any other JSON-RPC error: the tool's, the server's or the gateway's.
    #[error("JSON-RPC error {code}: {message}")]
    Tool {
        /// The JSON-RPC code.
        code: i64,
        /// Its message.
        message: String,
        /// Its data, if any.
        data: Option<serde_json::Value>,
    },
    /// The gateway could not be reached, or answered what is not MCP.
    #[error("transport: {0}")]
    Transport(String),
}

impl ClientError {
    /// The error for a JSON-RPC error object.
    pub(crate) fn from_rpc(error: &serde_json::Value, retry_header: Option<Duration>) -> Self {
        let code = error.get("code").and_then(|c| c.as_i64()).unwrap_or(0);
        let message = error
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string();
        let data = error.get("data").cloned();
        let field = |name: &str| data.as_ref().and_then(|d| d.get(name));
        let reason = field("reason")
            .and_then(|r| r.as_str())
            .unwrap_or_default()
            .to_string();
        // A denial is the gateway's only when its reason is one of the gate's and belongs to
        // the code: MCP and its SDKs use some of these codes for other things (`-32002`
        // resource not found, `-32001` a request timeout), which must not trigger a token
        // refresh, a wait or a payment.
        let gate_reason =
            crate::DenyReason::from_name(&reason).filter(|r| r.category().jsonrpc_code() == code);
        match (code, gate_reason) {
            (-32402, Some(_)) => ClientError::PaymentRequired {
                reason,
                credits_required: field("creditsRequired")
                    .and_then(|c| c.as_u64())
                    .unwrap_or(0),
                remaining: field("remainingCredits").and_then(|c| c.as_u64()),
            },
            (-32001, Some(_)) => ClientError::RateLimited {
                reason,
                retry_after: field("retryAfterSeconds")
                    .and_then(|s| s.as_u64())
                    .map(Duration::from_secs)
                    .or(retry_header),
            },
            (-32002, Some(_)) => ClientError::Unauthorized { reason },
            (-32003, Some(_)) => ClientError::Forbidden { reason },
            _ => ClientError::Tool {
                code,
                message,
                data,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_gates_reasons_make_a_denial() {
        let resource =
            json!({"code": -32002, "message": "Resource not found", "data": {"uri": "x"}});
        assert!(matches!(
            ClientError::from_rpc(&resource, None),
            ClientError::Tool { code: -32002, .. }
        ));
        let timeout = json!({"code": -32001, "message": "Request timed out"});
        assert!(matches!(
            ClientError::from_rpc(&timeout, None),
            ClientError::Tool { code: -32001, .. }
        ));
        // A gate reason under another family's code is not a denial either.
        let crossed = json!({"code": -32402, "data": {"reason": "rate_limited"}});
        assert!(matches!(
            ClientError::from_rpc(&crossed, None),
            ClientError::Tool { .. }
        ));
        let paid = json!({"code": -32402, "data": {"reason": "daily_call_quota_exceeded", "creditsRequired": 2}});
        assert!(matches!(
            ClientError::from_rpc(&paid, None),
            ClientError::PaymentRequired {
                credits_required: 2,
                ..
            }
        ));
    }

    #[test]
    fn a_rate_limit_waits_for_the_body_figure_else_the_header() {
        let header = Some(Duration::from_secs(9));
        let with_figure =
            json!({"code": -32001, "data": {"reason": "rate_limited", "retryAfterSeconds": 4}});
        let without = json!({"code": -32001, "data": {"reason": "rate_limited"}});
        let wait = |e: ClientError| match e {
            ClientError::RateLimited { retry_after, .. } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            wait(ClientError::from_rpc(&with_figure, header)),
            Some(Duration::from_secs(4))
        );
        assert_eq!(wait(ClientError::from_rpc(&without, header)), header);
        assert_eq!(wait(ClientError::from_rpc(&without, None)), None);
    }
}
