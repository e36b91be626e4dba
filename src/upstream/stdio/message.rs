//! Messages for the child: one request or notification encoded as one line of JSON (a
//! client's body forwarded as sent but for its id), within the size limit.

use serde_json::value::RawValue;
use serde_json::Value;

use super::error::StdioError;
use crate::jsonrpc;

/// One request or notification for the child.
#[derive(Clone, Copy)]
pub(super) enum Call<'a> {
    /// A client's request body, parsed strictly already: forwarded byte for byte with only
    /// the id's value replaced.
    Body {
        body: &'a [u8],
        rpc: &'a jsonrpc::RpcRequest,
    },
    /// A message made here; `params` is compact JSON.
    Parts {
        method: &'a str,
        params: Option<&'a RawValue>,
    },
}

impl Call<'_> {
    pub(super) fn method(&self) -> &str {
        match self {
            Call::Body { rpc, .. } => &rpc.method,
            Call::Parts { method, .. } => method,
        }
    }

    /// The message as one line, under the given id (`None`: a notification).
    pub(super) fn encode(self, id: Option<u64>, max: usize) -> Result<Vec<u8>, StdioError> {
        match self {
            Call::Parts { method, params } => {
                #[derive(serde::Serialize)]
                struct Line<'a> {
                    jsonrpc: &'static str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    id: Option<u64>,
                    method: &'a str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    params: Option<&'a RawValue>,
                }
                let line = Line {
                    jsonrpc: "2.0",
                    id,
                    method,
                    params,
                };
                encode(&line, max)
            }
            // A line break in a valid body can only be whitespace between tokens (JSON
            // strings cannot hold one), but it would split the message: re-encode those.
            Call::Body { body, .. } if body.iter().any(|b| *b == b'\n' || *b == b'\r') => {
                reencoded(body, id, max)
            }
            Call::Body { body, rpc } => match (id, rpc.id_span()) {
                (Some(id), Some(span)) => {
                    let (head, tail) = (body.get(..span.start), body.get(span.end..));
                    let (Some(head), Some(tail)) = (head, tail) else {
                        return reencoded(body, Some(id), max);
                    };
                    let mut digits = itoa::Buffer::new();
                    line_of(&[head, digits.format(id).as_bytes(), tail], max)
                }
                (None, None) if rpc.id.is_none() => line_of(&[body], max),
                _ => reencoded(body, id, max),
            },
        }
    }
}

/// A request body re-encoded as one compact line, its id set to `id` (or removed).
fn reencoded(body: &[u8], id: Option<u64>, max: usize) -> Result<Vec<u8>, StdioError> {
    let mut msg: Value =
        serde_json::from_slice(body).map_err(|e| StdioError::InvalidRequest(e.to_string()))?;
    let Some(obj) = msg.as_object_mut() else {
        return Err(StdioError::InvalidRequest(
            "a JSON-RPC message must be an object".into(),
        ));
    };
    match id {
        Some(id) => obj.insert("id".into(), Value::from(id)),
        None => obj.remove("id"),
    };
    encode(&msg, max)
}

/// One message as one line: compact JSON (which never contains a raw newline) plus `\n`.
pub(super) fn encode<T: serde::Serialize + ?Sized>(
    msg: &T,
    max: usize,
) -> Result<Vec<u8>, StdioError> {
    let mut line =
        serde_json::to_vec(msg).map_err(|e| StdioError::InvalidRequest(e.to_string()))?;
    check_len(line.len(), max)?;
    line.push(b'\n');
    Ok(line)
}

/// The pieces joined into one line plus `\n`, when they fit in `max` bytes.
fn line_of(pieces: &[&[u8]], max: usize) -> Result<Vec<u8>, StdioError> {
    let len = pieces.iter().map(|p| p.len()).sum();
    check_len(len, max)?;
    let mut line = Vec::with_capacity(len + 1);
    for piece in pieces {
        line.extend_from_slice(piece);
    }
    line.push(b'\n');
    Ok(line)
}

/// Refuses a message longer than [`StdioConfig::max_message_bytes`].
fn check_len(len: usize, max: usize) -> Result<(), StdioError> {
    if len > max {
        Err(StdioError::TooLarge { len, limit: max })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::upstream::stdio::test_support::{call, echo};

    #[test]
    fn encode_is_one_line_and_bounded() {
        let line = encode(&json!({"s": "a\nb"}), 100).unwrap();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        assert!(matches!(
            encode(&json!({"s": "x".repeat(100)}), 50),
            Err(StdioError::TooLarge { limit: 50, .. })
        ));
    }

    fn body_line(body: &str, id: Option<u64>, max: usize) -> Result<Vec<u8>, StdioError> {
        let rpc = jsonrpc::parse_request(body.as_bytes()).unwrap();
        Call::Body {
            body: body.as_bytes(),
            rpc: &rpc,
        }
        .encode(id, max)
    }

    #[test]
    fn a_clients_body_is_forwarded_as_sent_but_for_the_id() {
        let body = r#"{"jsonrpc":"2.0", "id" : "client-7","method":"tools/call","params":{"name":"echo","arguments":{"m":"a\u00e9 \"id\":1"}},"x":[1]}"#;
        let line = body_line(body, Some(42), 1 << 20).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            body.replace(r#""client-7""#, "42") + "\n"
        );
        // A notification goes as it is.
        let note = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert_eq!(
            body_line(note, None, 1 << 20).unwrap(),
            format!("{note}\n").as_bytes()
        );
        assert!(matches!(
            body_line(body, Some(42), 20),
            Err(StdioError::TooLarge { limit: 20, .. })
        ));
    }

    #[test]
    fn a_pretty_printed_body_is_sent_on_one_line() {
        let body = "{\n  \"jsonrpc\": \"2.0\",\r\n  \"id\": 3,\n  \"method\": \"tools/call\",\n  \"params\": {\"name\": \"echo\", \"arguments\": {\"m\": \"a b\"}}\n}";
        let line = body_line(body, Some(9), 1 << 20).unwrap();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(!line.contains(&b'\r'));
        let sent: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            sent,
            json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"m": "a b"}}})
        );
        let compact = echo("x");
        let line = call(&compact).encode(None, 1 << 20).unwrap();
        let sent: Value = serde_json::from_slice(&line).unwrap();
        assert!(sent.get("id").is_none(), "a notification has no id");
        assert!(matches!(
            call(&compact).encode(Some(1), 10),
            Err(StdioError::TooLarge { limit: 10, .. })
        ));
    }
}
