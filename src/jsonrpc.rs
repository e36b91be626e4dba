//! JSON-RPC 2.0 as the gate needs it: strict parsing of one request (duplicate keys are
//! refused, since two parsers could read them differently) and error responses.

use std::fmt;

use bytes::BytesMut;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::gate::Decision;

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC 2.0 request object (or ambiguous, or a batch).
pub const INVALID_REQUEST: i64 = -32600;
/// Bad parameters (e.g. `tools/call` without a string `params.name`).
pub const INVALID_PARAMS: i64 = -32602;
/// The gate could not decide (store unavailable) or the downstream failed.
pub const INTERNAL_ERROR: i64 = -32603;

/// Why a request body is not a request the gate accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// What is wrong, safe to show the caller.
    pub message: String,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// One parsed JSON-RPC request or notification.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The id; `None` for a notification.
    pub id: Option<Value>,
    /// The method, exactly as sent.
    pub method: String,
    /// The params, if any.
    pub params: Option<Value>,
}

impl RpcRequest {
    /// For `tools/call`: the tool name, or an error when `params.name` is not a string.
    pub fn tool_name(&self) -> Result<&str, RpcError> {
        self.params
            .as_ref()
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::new(INVALID_PARAMS, "tools/call needs a string params.name"))
    }

    /// For `tools/call`: the arguments' size as compact JSON (0 when absent).
    pub fn arguments_len(&self) -> usize {
        self.params
            .as_ref()
            .and_then(|p| p.get("arguments"))
            .map_or(0, crate::pricing::compact_json_len)
    }
}

/// Parses a request body: one JSON-RPC 2.0 request object, strictly.
///
/// ```
/// use paygate_mcp::jsonrpc::{parse_request, INVALID_REQUEST, PARSE_ERROR};
/// let req = parse_request(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#).unwrap();
/// assert_eq!(req.tool_name().unwrap(), "echo");
/// assert_eq!(parse_request(b"{nope").unwrap_err().code, PARSE_ERROR);
/// let dup = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#;
/// assert_eq!(parse_request(dup).unwrap_err().code, INVALID_REQUEST);
/// ```
pub fn parse_request(body: &[u8]) -> Result<RpcRequest, RpcError> {
    let value = match serde_json::from_slice::<StrictValue>(body) {
        Ok(v) => v.0,
        Err(e) if e.to_string().starts_with(DUPLICATE) => {
            return Err(RpcError::new(
                INVALID_REQUEST,
                "ambiguous request: duplicate key in a JSON object",
            ))
        }
        Err(_) => {
            return Err(RpcError::new(
                PARSE_ERROR,
                "Parse error: body is not valid JSON",
            ))
        }
    };
    let Value::Object(mut obj) = value else {
        return Err(RpcError::new(
            INVALID_REQUEST,
            if value.is_array() {
                "batch requests are not accepted; send one request per POST"
            } else {
                "a JSON-RPC request must be an object"
            },
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(RpcError::new(INVALID_REQUEST, "jsonrpc must be \"2.0\""));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err(RpcError::new(INVALID_REQUEST, "method must be a string")),
    };
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => {
            return Err(RpcError::new(
                INVALID_REQUEST,
                "id must be a string, number or null",
            ))
        }
    };
    let params = match obj.remove("params") {
        None => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => {
            return Err(RpcError::new(
                INVALID_REQUEST,
                "params must be an object or array",
            ))
        }
    };
    Ok(RpcRequest { id, method, params })
}

/// A JSON-RPC error response body.
///
/// ```
/// let body = paygate_mcp::jsonrpc::error_body(Some(&serde_json::json!(7)), -32600, "bad", None);
/// let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(v["id"], 7);
/// assert_eq!(v["error"]["code"], -32600);
/// ```
pub fn error_body(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Vec<u8> {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    let body = json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error});
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The JSON-RPC error response for a gate denial, with `data` carrying `reason`, `tool`,
/// `creditsRequired`, `remainingCredits` and, for rate limits, `retryAfterSeconds`.
pub fn denial_body(id: Option<&Value>, decision: &Decision) -> Vec<u8> {
    let Some(reason) = decision.reason else {
        return error_body(id, INTERNAL_ERROR, "denied", None);
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
    error_body(
        id,
        reason.category().jsonrpc_code(),
        &decision.message(),
        Some(data),
    )
}

/// What a downstream JSON-RPC response says about the call, for refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// A `result` without `isError: true`.
    Success,
    /// A `result` with `isError: true`.
    ToolError,
    /// An `error` object.
    RpcError,
}

/// Classifies a downstream JSON-RPC message if it is the response with `id`.
pub fn classify_response(message: &Value, id: &Value) -> Option<CallOutcome> {
    let obj = message.as_object()?;
    if obj.get("id") != Some(id) {
        return None;
    }
    if obj.contains_key("error") {
        return Some(CallOutcome::RpcError);
    }
    let result = obj.get("result")?;
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        Some(CallOutcome::ToolError)
    } else {
        Some(CallOutcome::Success)
    }
}

/// Takes one complete SSE event (through its blank line) off the front of `buf`.
pub(crate) fn split_event(buf: &mut BytesMut) -> Option<BytesMut> {
    let pos = buf.windows(2).position(|w| w == b"\n\n");
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let (end, sep) = match (pos, crlf) {
        (Some(a), Some(b)) if b < a => (b, 4),
        (Some(a), _) => (a, 2),
        (None, Some(b)) => (b, 4),
        (None, None) => return None,
    };
    let event = buf.split_to(end + sep);
    Some(event)
}

/// The joined `data:` lines of one SSE event.
pub(crate) fn sse_data(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    data
}

/// The JSON-RPC message answering `id` in a whole response body, JSON or SSE.
pub(crate) fn find_response(body: &[u8], id: &Value) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return (v.get("id") == Some(id)).then_some(v);
    }
    let mut buf = BytesMut::from(body);
    buf.extend_from_slice(b"\n\n");
    while let Some(event) = split_event(&mut buf) {
        let data = sse_data(&event);
        if let Ok(v) = serde_json::from_slice::<Value>(&data) {
            if v.get("id") == Some(id) {
                return Some(v);
            }
        }
    }
    None
}

const DUPLICATE: &str = "duplicate key";

/// A `serde_json::Value` that refuses duplicate object keys at any depth.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if out.insert(key, v).is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_rules() {
        let bad = [
            (
                &br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#[..],
                INVALID_REQUEST,
            ),
            (br#"{"id":1,"method":"x"}"#, INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","id":1,"method":5}"#, INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
                INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
                INVALID_REQUEST,
            ),
            (
                br#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#,
                INVALID_REQUEST,
            ),
            (br#""just a string""#, INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","method":"x","method":"y"}"#,
                INVALID_REQUEST,
            ),
            (b"", PARSE_ERROR),
            (b"\xff\xfe", PARSE_ERROR),
            (br#"{"jsonrpc":"2.0""#, PARSE_ERROR),
        ];
        for (body, code) in bad {
            assert_eq!(
                parse_request(body).unwrap_err().code,
                code,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let n =
            parse_request(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(n.id.is_none());
    }

    #[test]
    fn tool_name_must_be_a_string() {
        for params in [r#"{}"#, r#"{"name":5}"#, r#"{"name":null}"#, r#"["echo"]"#] {
            let body =
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#);
            assert_eq!(
                parse_request(body.as_bytes())
                    .unwrap()
                    .tool_name()
                    .unwrap_err()
                    .code,
                INVALID_PARAMS
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse_request(body.as_bytes()).unwrap_err().code,
            PARSE_ERROR
        );
    }

    #[test]
    fn classify_matches_only_the_calls_id() {
        let id = json!(3);
        assert_eq!(
            classify_response(&json!({"jsonrpc":"2.0","id":3,"result":{}}), &id),
            Some(CallOutcome::Success)
        );
        assert_eq!(
            classify_response(
                &json!({"jsonrpc":"2.0","id":3,"result":{"isError":true}}),
                &id
            ),
            Some(CallOutcome::ToolError)
        );
        assert_eq!(
            classify_response(&json!({"jsonrpc":"2.0","id":3,"error":{}}), &id),
            Some(CallOutcome::RpcError)
        );
        assert_eq!(
            classify_response(&json!({"jsonrpc":"2.0","id":"3","error":{}}), &id),
            None
        );
        assert_eq!(
            classify_response(
                &json!({"jsonrpc":"2.0","method":"notifications/progress"}),
                &id
            ),
            None
        );
    }
}
