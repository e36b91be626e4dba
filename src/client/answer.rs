//! Reading an MCP Streamable HTTP answer: one JSON-RPC message as `application/json`, or an
//! SSE stream (`text/event-stream`) whose `data:` events carry messages, among which the
//! answer to our request.

use serde_json::Value;

/// Whether `m` answers request `id`: a result or error with that id, or an error with a null
/// id (the server could not read the request).
pub(crate) fn answers(m: &Value, id: u64) -> bool {
    let ours = match m.get("id") {
        Some(Value::Null) => m.get("error").is_some(),
        Some(v) => v.as_u64() == Some(id) || v.as_f64() == Some(id as f64),
        None => false,
    };
    ours && (m.get("result").is_some() || m.get("error").is_some())
}

/// Whether a `Content-Type` is an SSE stream.
pub(crate) fn is_event_stream(content_type: &str) -> bool {
    content_type
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
}

/// The JSON-RPC message answering request `id` in `body` (JSON or a whole SSE stream).
pub(crate) fn find_answer(content_type: &str, body: &[u8], id: u64) -> Option<Value> {
    if is_event_stream(content_type) {
        let mut reader = SseReader::default();
        let mut events = reader.push(body);
        events.extend(reader.finish());
        events
            .iter()
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .find(|m| answers(m, id))
    } else {
        serde_json::from_slice::<Value>(body)
            .ok()
            .filter(|m| answers(m, id))
    }
}

/// An SSE stream read as it arrives (the WHATWG `text/event-stream` format): events end at a
/// blank line, their `data:` lines join with newlines, and `id:` sets the id to resume from.
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    /// The last event id the stream set: where a resumed stream (`Last-Event-ID`) picks up.
    pub(crate) last_event_id: Option<String>,
}

impl SseReader {
    /// A reader for the rest of a stream resumed after event `last`.
    pub(crate) fn resuming(last: String) -> Self {
        Self {
            last_event_id: Some(last),
            ..Self::default()
        }
    }

    /// Reads `chunk`; answers the data of every event it completed.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &byte in chunk {
            if byte == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.field(&line, &mut events);
            } else {
                self.line.push(byte);
            }
        }
        events
    }

    /// The stream ended: an event left without its blank line still counts.
    pub(crate) fn finish(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.field(&line, &mut events);
        }
        self.field(b"", &mut events);
        events
    }

    fn field(&mut self, line: &[u8], events: &mut Vec<String>) {
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (name, value) = match text.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*text, ""),
        };
        match name {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // An empty id clears it; one with NUL is ignored, as the format says.
            "id" if value.is_empty() => self.last_event_id = None,
            "id" if !value.contains('\0') => self.last_event_id = Some(value.to_string()),
            _ => {}
        }
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

    #[test]
    fn events_are_cut_wherever_the_chunks_fall_and_ids_are_kept() {
        let stream =
            b"id: e1\ndata: {\"a\":1}\r\n\r\n: comment\nid: e2\ndata: x\ndata: y\n\ndata: tail";
        for split in 0..stream.len() {
            let mut reader = SseReader::default();
            let mut events = reader.push(&stream[..split]);
            events.extend(reader.push(&stream[split..]));
            assert_eq!(events, vec![r#"{"a":1}"#, "x\ny"], "split at {split}");
            assert_eq!(reader.last_event_id.as_deref(), Some("e2"));
            assert_eq!(reader.finish(), vec!["tail"]);
        }
    }
}
