//! Reading an MCP Streamable HTTP answer: one JSON-RPC message as `application/json`, or an
//! SSE stream (`text/event-stream`) whose `data:` events carry messages, among which the
//! answer to our request.

use serde_json::Value;

/// The JSON-RPC message answering request `id` in `body` (JSON or SSE); an error with a
/// null id (the server could not read the request) answers it too.
pub(crate) fn find_answer(content_type: &str, body: &[u8], id: u64) -> Option<Value> {
    let is_ours = |m: &Value| {
        let ours = match m.get("id") {
            Some(Value::Null) => m.get("error").is_some(),
            Some(v) => v.as_u64() == Some(id) || v.as_f64() == Some(id as f64),
            None => false,
        };
        ours && (m.get("result").is_some() || m.get("error").is_some())
    };
    if content_type
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
    {
        let text = String::from_utf8_lossy(body);
        // Events are separated by a blank line; their data lines are joined by newlines.
        let mut data = String::new();
        for line in text.lines().chain(std::iter::once("")) {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                if !data.is_empty() {
                    if let Ok(m) = serde_json::from_str::<Value>(&data) {
                        if is_ours(&m) {
                            return Some(m);
                        }
                    }
                    data.clear();
                }
            } else if let Some(rest) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
        }
        None
    } else {
        serde_json::from_slice::<Value>(body).ok().filter(is_ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_found_in_json_and_in_sse_streams() {
        let json = br#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#;
        assert!(find_answer("application/json", json, 3).is_some());
        assert!(find_answer("application/json", json, 4).is_none());
        let sse = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\ndata: \"id\":3,\"result\":{}}\n\n";
        let m = find_answer("text/event-stream", sse, 3).unwrap();
        assert_eq!(m["result"], serde_json::json!({}));
        assert!(find_answer("text/event-stream", b"data: not json\n\n", 3).is_none());
        // A comment, `data:` without a space, a server request before the answer.
        let sse = b": keep-alive\n\ndata:{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"ping\"}\n\ndata:{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":-32402}}\n\n";
        let m = find_answer("Text/Event-Stream", sse, 3).unwrap();
        assert_eq!(m["error"]["code"], -32402);
        // An error the server could not tie to a request.
        let parse =
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#;
        assert!(find_answer("application/json", parse, 3).is_some());
    }
}
