//! JSON-RPC 2.0 as the gate needs it: strict parsing of one request (duplicate keys are
//! refused, since two parsers could read them differently) and error responses.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::DeserializeSeed;
use serde_json::value::RawValue;
use serde_json::Value;

mod scan;
mod sse;
#[cfg(test)]
mod tests;

use scan::{Members, ObjectSeed, Params, Shape, DUPLICATE, LINEAR_KEYS};
pub use sse::{classify_response, CallOutcome};
pub(crate) use sse::{find_response, split_event, split_event_after, sse_data};

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC 2.0 request object (or ambiguous, or a batch).
pub const INVALID_REQUEST: i64 = -32600;
/// Bad parameters (e.g. `tools/call` without a string `params.name`).
pub const INVALID_PARAMS: i64 = -32602;
/// The gate could not decide (store unavailable) or the downstream failed.
pub const INTERNAL_ERROR: i64 = -32603;

/// The longest method or tool name a request may carry, in bytes. Names are kept (usage
/// events, analytics, metrics), so an unbounded one would let a caller without a key grow
/// the gateway's memory.
pub const MAX_NAME_BYTES: usize = 256;

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
///
/// Only what the gate reads is kept: the envelope, `params.name`, and the size of
/// `params.arguments`, which the parse measures on the way through instead of building a
/// tree. The params themselves stay in the body, which is forwarded unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The id; `None` for a notification.
    pub id: Option<Value>,
    /// The method, exactly as sent.
    pub method: String,
    /// `params.name` when params is an object and the name is a string of at most
    /// [`MAX_NAME_BYTES`]; a longer name is never copied.
    tool: Option<String>,
    /// `params.name` was a string longer than [`MAX_NAME_BYTES`].
    tool_too_long: bool,
    /// `params.uri` when it is a string (what `Mcp-Name` carries for `resources/read`).
    uri: Option<String>,
    /// Compact JSON length of `params.arguments` (0 when absent).
    arguments_len: usize,
    /// Where the id's value sits in the parsed body.
    id_span: Option<Range<usize>>,
}

/// A request body with its parse, left in the request's extensions by the gate's layers so
/// services behind them (the upstreams) need not parse it again.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    /// The body exactly as received and forwarded.
    pub body: bytes::Bytes,
    /// Its parse.
    pub rpc: std::sync::Arc<RpcRequest>,
}

impl ParsedRequest {
    /// The parse, when it is of `body` (a service in between may have changed the body).
    pub fn of(extensions: &http::Extensions, body: &[u8]) -> Option<std::sync::Arc<RpcRequest>> {
        extensions
            .get::<ParsedRequest>()
            .filter(|p| p.body == body)
            .map(|p| p.rpc.clone())
    }
}

impl RpcRequest {
    /// For `tools/call`: the tool name, or an error when `params.name` is not a string.
    pub fn tool_name(&self) -> Result<&str, RpcError> {
        if self.tool_too_long {
            return Err(RpcError::new(
                INVALID_PARAMS,
                "params.name is longer than 256 bytes",
            ));
        }
        self.tool
            .as_deref()
            .ok_or_else(|| RpcError::new(INVALID_PARAMS, "tools/call needs a string params.name"))
    }

    /// What an MCP 2026-07-28 client sends as `Mcp-Name` for this request: `params.name`
    /// when it is a string (tools, prompts), else `params.uri` (resources).
    pub fn mcp_name(&self) -> Option<&str> {
        if self.tool_too_long {
            return None;
        }
        self.tool.as_deref().or(self.uri.as_deref())
    }

    /// For `tools/call`: the arguments' size as compact JSON (0 when absent), the same count
    /// as [`compact_json_len`](crate::pricing::compact_json_len) of the parsed arguments.
    pub fn arguments_len(&self) -> usize {
        self.arguments_len
    }

    /// The byte range of the id's value in the body this request was parsed from, so the id
    /// can be replaced without re-encoding the rest.
    pub(crate) fn id_span(&self) -> Option<Range<usize>> {
        self.id_span.clone()
    }

    /// The id exactly as the client wrote it, for answers the gateway writes itself: `1.0`
    /// stays `1.0` and a 30-digit id keeps every digit (a parsed number would not).
    ///
    /// `body` is the body this request was parsed from.
    pub fn id_as_sent<'b>(&self, body: &'b [u8]) -> Option<&'b str> {
        std::str::from_utf8(body.get(self.id_span.clone()?)?).ok()
    }
}

/// Parses a request body: one JSON-RPC 2.0 request object, strictly. Duplicate keys at any
/// depth are refused; nothing but the envelope is built.
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
    // Checking UTF-8 once up front spares the parser checking every string on its own.
    let text = std::str::from_utf8(body)
        .map_err(|_| RpcError::new(PARSE_ERROR, "Parse error: body is not valid JSON"))?;
    let mut keys = Vec::with_capacity(LINEAR_KEYS);
    let mut de = serde_json::Deserializer::from_str(text);
    let envelope = ObjectSeed::<Members>::new(&mut keys)
        .deserialize(&mut de)
        .and_then(|envelope| de.end().map(|()| envelope))
        .map_err(syntax_or_duplicate)?;
    let members = match envelope {
        Shape::Object(members) => members,
        Shape::Array => {
            return Err(RpcError::new(
                INVALID_REQUEST,
                "batch requests are not accepted; send one request per POST",
            ))
        }
        Shape::Other => {
            return Err(RpcError::new(
                INVALID_REQUEST,
                "a JSON-RPC request must be an object",
            ))
        }
    };
    if members.jsonrpc.as_deref() != Some("2.0") {
        return Err(RpcError::new(INVALID_REQUEST, "jsonrpc must be \"2.0\""));
    }
    let Some(method) = members.method else {
        return Err(RpcError::new(INVALID_REQUEST, "method must be a string"));
    };
    if method.len() > MAX_NAME_BYTES {
        return Err(RpcError::new(
            INVALID_REQUEST,
            "method is longer than 256 bytes",
        ));
    }
    let (id, id_span) = match members.id {
        None => (None, None),
        Some(raw) => {
            let text = raw.get();
            // Only a string, number or null is read; anything else is refused unread.
            let scalar = matches!(
                text.as_bytes().first(),
                Some(b'"' | b'-' | b'0'..=b'9' | b'n')
            );
            let Some(id) = scalar
                .then(|| serde_json::from_str::<Value>(text).ok())
                .flatten()
            else {
                return Err(RpcError::new(
                    INVALID_REQUEST,
                    "id must be a string, number or null",
                ));
            };
            (Some(id), span_in(body, text))
        }
    };
    let (name, uri, arguments_len) = match members.params {
        None | Some(Shape::Array) => (None, None, 0),
        Some(Shape::Object(Params {
            name,
            uri,
            arguments,
        })) => (name, uri, arguments),
        Some(Shape::Other) => {
            return Err(RpcError::new(
                INVALID_REQUEST,
                "params must be an object or array",
            ))
        }
    };
    let tool_too_long = name.as_ref().is_some_and(|n| n.len() > MAX_NAME_BYTES);
    Ok(RpcRequest {
        id,
        method: method.into_owned(),
        tool: name.filter(|_| !tool_too_long).map(Cow::into_owned),
        tool_too_long,
        uri: uri.map(Cow::into_owned),
        arguments_len,
        id_span,
    })
}

/// Where `part`, a slice borrowed from `body`, sits in it.
fn span_in(body: &[u8], part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let span = start..start.checked_add(part.len())?;
    (body.get(span.clone()) == Some(part.as_bytes())).then_some(span)
}

fn syntax_or_duplicate(e: serde_json::Error) -> RpcError {
    if e.is_data() && e.to_string().starts_with(DUPLICATE) {
        RpcError::new(
            INVALID_REQUEST,
            "ambiguous request: duplicate key in a JSON object",
        )
    } else {
        RpcError::new(PARSE_ERROR, "Parse error: body is not valid JSON")
    }
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
    envelope(id.unwrap_or(&Value::Null), code, message, data)
}

/// [`error_body`] with the id exactly as the client wrote it (see [`RpcRequest::id_as_sent`]),
/// so an id no number type holds (`1e400`, 30 digits) comes back unchanged.
pub(crate) fn error_body_as_sent(
    id: Option<&str>,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Vec<u8> {
    // The text was checked to be one JSON scalar when the request was parsed.
    match id.and_then(|text| RawValue::from_string(text.to_owned()).ok()) {
        Some(raw) => envelope(&*raw, code, message, data),
        None => envelope(&Value::Null, code, message, data),
    }
}

fn envelope<I: serde::Serialize + ?Sized>(
    id: &I,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Envelope<'a, I: ?Sized> {
        jsonrpc: &'static str,
        id: &'a I,
        error: ErrorObject<'a>,
    }
    #[derive(serde::Serialize)]
    struct ErrorObject<'a> {
        code: i64,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    }
    serde_json::to_vec(&Envelope {
        jsonrpc: "2.0",
        id,
        error: ErrorObject {
            code,
            message,
            data,
        },
    })
    .unwrap_or_default()
}
