//! [`StdioError`]: why a request to the child, or starting the child, failed, and how each
//! failure is answered (HTTP status, JSON-RPC error code and `data.reason`).

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};

#[cfg(doc)]
use super::{StdioConfig, StdioUpstream};
use crate::jsonrpc;

/// Why a request to the child, or starting the child, failed.
///
/// ```
/// use paygate_mcp::upstream::StdioError;
/// let e = StdioError::Timeout(std::time::Duration::from_millis(300));
/// assert_eq!(e.reason(), "upstream_timeout");
/// assert_eq!(e.http_status(), http::StatusCode::GATEWAY_TIMEOUT);
/// assert_eq!(e.jsonrpc_code(), -32603);
/// ```
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// [`StdioUpstream::spawn`] was called outside a tokio runtime.
    #[error("no tokio runtime: StdioUpstream::spawn must be called inside one")]
    NoRuntime,
    /// The program could not be started.
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The program.
        command: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The child started but did not complete the MCP handshake.
    #[error("MCP handshake with `{command}` failed: {reason}")]
    Handshake {
        /// The program.
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// The message is not a JSON-RPC 2.0 request or notification object.
    #[error("Invalid request: {0}")]
    InvalidRequest(String),
    /// The message is longer than [`StdioConfig::max_message_bytes`].
    #[error("Invalid request: message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message's size as one line of JSON.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The child did not answer in time.
    #[error("Upstream timed out: no answer from the MCP server within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The child exited (or closed its stdout) before answering.
    #[error("Upstream crashed: the MCP server process exited before answering")]
    Crashed,
    /// The child is down and being restarted.
    #[error("Upstream unavailable: the MCP server process is restarting")]
    Unavailable,
    /// The upstream was shut down.
    #[error("Upstream unavailable: the MCP server was shut down")]
    ShutDown,
}

impl StdioError {
    /// The machine reason carried in the JSON-RPC error's `data.reason`.
    ///
    /// ```
    /// assert_eq!(paygate_mcp::upstream::StdioError::Crashed.reason(), "upstream_crashed");
    /// ```
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRuntime | Self::Spawn { .. } | Self::Handshake { .. } => "upstream_unavailable",
            Self::InvalidRequest(_) => "invalid_request",
            Self::TooLarge { .. } => "message_too_large",
            Self::Timeout(_) => "upstream_timeout",
            Self::Crashed => "upstream_crashed",
            Self::Unavailable | Self::ShutDown => "upstream_unavailable",
        }
    }

    /// The HTTP status [`StdioUpstream`] answers with.
    ///
    /// ```
    /// use paygate_mcp::upstream::StdioError;
    /// assert_eq!(StdioError::Unavailable.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    /// ```
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Crashed => StatusCode::BAD_GATEWAY,
            Self::NoRuntime
            | Self::Spawn { .. }
            | Self::Handshake { .. }
            | Self::Unavailable
            | Self::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON-RPC error code: `-32600` for a bad request, else `-32603`.
    ///
    /// ```
    /// use paygate_mcp::upstream::StdioError;
    /// assert_eq!(StdioError::InvalidRequest("x".into()).jsonrpc_code(), -32600);
    /// ```
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            Self::InvalidRequest(_) | Self::TooLarge { .. } => jsonrpc::INVALID_REQUEST,
            _ => jsonrpc::INTERNAL_ERROR,
        }
    }

    /// The JSON-RPC error response for the request with `id`.
    ///
    /// ```
    /// use paygate_mcp::upstream::StdioError;
    /// let body = StdioError::Crashed.to_jsonrpc(Some(&serde_json::json!(7)));
    /// assert_eq!(body["id"], 7);
    /// assert_eq!(body["error"]["code"], -32603);
    /// assert_eq!(body["error"]["data"]["reason"], "upstream_crashed");
    /// ```
    pub fn to_jsonrpc(&self, id: Option<&Value>) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": id.cloned().unwrap_or(Value::Null),
            "error": {
                "code": self.jsonrpc_code(),
                "message": self.to_string(),
                "data": {"reason": self.reason()},
            },
        })
    }
}

/// How a pending request ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Crashed,
    ShutDown,
}

impl From<Failure> for StdioError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Crashed => StdioError::Crashed,
            Failure::ShutDown => StdioError::ShutDown,
        }
    }
}
