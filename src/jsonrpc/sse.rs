//! Reading answers: what a JSON-RPC response says about a call, and SSE event framing.

use bytes::BytesMut;
use serde_json::Value;

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

/// Classifies a downstream JSON-RPC message if it is a response (a `result` or an `error`,
/// no `method`).
///
/// The id is deliberately not compared: a POST carries one request, so the first response
/// in its answer is that request's. Comparing ids would let a client pick an id the
/// downstream spells differently (`1.0` answered as `1`) and have a successful call refunded.
///
/// ```
/// use paygate_mcp::jsonrpc::{classify_response, CallOutcome};
/// use serde_json::json;
/// let ok = json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}});
/// assert_eq!(classify_response(&ok), Some(CallOutcome::Success));
/// let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress"});
/// assert_eq!(classify_response(&progress), None);
/// ```
pub fn classify_response(message: &Value) -> Option<CallOutcome> {
    let obj = message.as_object()?;
    if obj.contains_key("method") {
        return None; // a request or notification from the server, not the answer
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
    split_event_after(buf, &mut 0)
}

/// [`split_event`] for a buffer that grows a chunk at a time: `scanned` bytes at its front
/// are known to hold no blank line, so each chunk is searched once (a stream arriving in
/// small pieces costs linear time, not quadratic). Reset to 0 when an event is taken.
pub(crate) fn split_event_after(buf: &mut BytesMut, scanned: &mut usize) -> Option<BytesMut> {
    // A separator may straddle the old end: look back up to three bytes.
    let from = (*scanned).min(buf.len()).saturating_sub(3);
    let tail = &buf[from..];
    let pos = tail.windows(2).position(|w| w == b"\n\n");
    let crlf = tail.windows(4).position(|w| w == b"\r\n\r\n");
    let (end, sep) = match (pos, crlf) {
        (Some(a), Some(b)) if b < a => (b, 4),
        (Some(a), _) => (a, 2),
        (None, Some(b)) => (b, 4),
        (None, None) => {
            *scanned = buf.len();
            return None;
        }
    };
    *scanned = 0;
    Some(buf.split_to(from + end + sep))
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
