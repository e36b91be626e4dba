//! JSON-RPC 2.0 as the gate needs it: strict parsing of one request (duplicate keys are
//! refused, since two parsers could read them differently) and error responses.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use bytes::BytesMut;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

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

const DUPLICATE: &str = "duplicate key";

/// Objects with more keys than this check duplicates with a hash set instead of a scan.
const LINEAR_KEYS: usize = 16;

/// The keys of one JSON object seen so far. Keys live on a stack shared by the whole parse
/// (an object's keys sit above those of the objects around it) until an object grows past
/// [`LINEAR_KEYS`], when its keys move to a hash set so hostile bodies stay linear.
struct Seen<'s, 'de> {
    stack: &'s mut Vec<Cow<'de, str>>,
    base: usize,
    spill: Option<HashSet<Cow<'de, str>>>,
}

impl<'s, 'de> Seen<'s, 'de> {
    fn new(stack: &'s mut Vec<Cow<'de, str>>) -> Self {
        let base = stack.len();
        Self {
            stack,
            base,
            spill: None,
        }
    }

    /// Records `key`; an error when the object already had it.
    fn insert<E: de::Error>(&mut self, key: Cow<'de, str>) -> Result<(), E> {
        let fresh = match &mut self.spill {
            Some(set) => set.insert(key),
            None if self.stack[self.base..].contains(&key) => false,
            None if self.stack.len() - self.base < LINEAR_KEYS => {
                self.stack.push(key);
                true
            }
            None => {
                let mut set: HashSet<_> = self.stack.drain(self.base..).collect();
                set.insert(key);
                self.spill = Some(set);
                true
            }
        };
        if fresh {
            Ok(())
        } else {
            Err(E::custom(DUPLICATE))
        }
    }

    /// The shared stack, for the value of the key just inserted.
    fn stack(&mut self) -> &mut Vec<Cow<'de, str>> {
        self.stack
    }
}

impl Drop for Seen<'_, '_> {
    fn drop(&mut self) {
        self.stack.truncate(self.base);
    }
}

/// An object key, borrowed from the body unless it had escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// What [`Scan`] learned about one value.
struct Scanned<'de> {
    /// Its length as compact JSON.
    len: usize,
    /// The string, when the value is one.
    text: Option<Cow<'de, str>>,
}

/// Walks one value without building it: refuses duplicate keys at any depth and measures
/// the value's compact JSON length (what `serde_json::to_vec` of the parsed value gives).
struct Scan<'s, 'de> {
    keys: &'s mut Vec<Cow<'de, str>>,
}

/// Length of `s` as a JSON string the way `serde_json` writes it: quoted, with `"` and `\`
/// escaped, control characters as `\n`-style or `\u00XX` escapes, everything else as is.
fn quoted_len(s: &str) -> usize {
    2 + s.len()
        + s.bytes()
            .map(|b| match b {
                b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 1,
                0x00..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// Comma-separated members between two brackets.
fn bracketed(members: usize, inner: usize) -> usize {
    2 + inner + members.saturating_sub(1)
}

impl<'de> DeserializeSeed<'de> for Scan<'_, 'de> {
    type Value = Scanned<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Scan<'_, 'de> {
    fn scalar(len: usize) -> Scanned<'de> {
        Scanned { len, text: None }
    }
    fn text(text: Cow<'de, str>) -> Scanned<'de> {
        Scanned {
            len: quoted_len(&text),
            text: Some(text),
        }
    }
}

impl<'de> Visitor<'de> for Scan<'_, 'de> {
    type Value = Scanned<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Self::scalar(if v { 4 } else { 5 }))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Self::scalar(itoa::Buffer::new().format(v).len()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Self::scalar(itoa::Buffer::new().format(v).len()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // Parsed numbers are finite, so this is a number, never `null`.
        Ok(Self::scalar(crate::pricing::compact_json_len(
            &Value::from(v),
        )))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Self::text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Self::text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Self::text(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Self::scalar(4))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Self::scalar(4))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (mut n, mut inner) = (0, 0);
        while let Some(item) = seq.next_element_seed(Scan {
            keys: &mut *self.keys,
        })? {
            n += 1;
            inner += item.len;
        }
        Ok(Self::scalar(bracketed(n, inner)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = Seen::new(self.keys);
        let (mut n, mut inner) = (0, 0);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            inner += quoted_len(&key) + 1;
            seen.insert(key)?;
            inner += map.next_value_seed(Scan { keys: seen.stack() })?.len;
            n += 1;
        }
        Ok(Self::scalar(bracketed(n, inner)))
    }
}

/// A JSON value as the gate needs it: an object read into `T`, or only its kind.
enum Shape<T> {
    Object(T),
    Array,
    Other,
}

/// The members of one object a reader keeps; every other member is scanned and dropped.
trait Fields<'de>: Default {
    /// Reads the value of `key` (already checked for duplicates).
    fn read<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<(), A::Error>;
}

/// Reads an object into `F` strictly; an array is scanned, a scalar only named.
struct ObjectSeed<'s, 'de, F> {
    keys: &'s mut Vec<Cow<'de, str>>,
    fields: std::marker::PhantomData<F>,
}

impl<'s, 'de, F> ObjectSeed<'s, 'de, F> {
    fn new(keys: &'s mut Vec<Cow<'de, str>>) -> Self {
        Self {
            keys,
            fields: std::marker::PhantomData,
        }
    }
}

impl<'de, F: Fields<'de>> DeserializeSeed<'de> for ObjectSeed<'_, 'de, F> {
    type Value = Shape<F>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: Fields<'de>> Visitor<'de> for ObjectSeed<'_, 'de, F> {
    type Value = Shape<F>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Scan { keys: self.keys }.visit_seq(seq)?;
        Ok(Shape::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = Seen::new(self.keys);
        let mut fields = F::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            // Cloning a borrowed key copies a pointer; only escaped keys were allocated.
            seen.insert(key.clone())?;
            fields.read(&key, &mut map, seen.stack())?;
        }
        Ok(Shape::Object(fields))
    }
}

/// The request object's members the gate reads.
#[derive(Default)]
struct Members<'de> {
    jsonrpc: Option<Cow<'de, str>>,
    method: Option<Cow<'de, str>>,
    id: Option<&'de RawValue>,
    params: Option<Shape<Params<'de>>>,
}

impl<'de> Fields<'de> for Members<'de> {
    fn read<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<(), A::Error> {
        match key {
            "jsonrpc" => self.jsonrpc = map.next_value_seed(Scan { keys })?.text,
            "method" => self.method = map.next_value_seed(Scan { keys })?.text,
            "id" => self.id = Some(map.next_value()?),
            "params" => self.params = Some(map.next_value_seed(ObjectSeed::new(keys))?),
            _ => {
                map.next_value_seed(Scan { keys })?;
            }
        }
        Ok(())
    }
}

/// What the gate reads from `params`.
#[derive(Default)]
struct Params<'de> {
    name: Option<Cow<'de, str>>,
    uri: Option<Cow<'de, str>>,
    arguments: usize,
}

impl<'de> Fields<'de> for Params<'de> {
    fn read<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<(), A::Error> {
        let value = map.next_value_seed(Scan { keys })?;
        match key {
            "name" => self.name = value.text,
            "uri" => self.uri = value.text,
            "arguments" => self.arguments = value.len,
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn call_with(params: &str) -> Result<RpcRequest, RpcError> {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#);
        parse_request(body.as_bytes())
    }

    #[test]
    fn duplicates_are_found_at_any_depth_and_only_within_one_object() {
        let refused = [
            r#"{"name":"t","arguments":{"a":{"b":[{"c":1,"c":2}]}}}"#,
            r#"{"name":"t","arguments":{"a":1,"\u0061":2}}"#,
            r#"{"name":"t","arguments":1,"extra":{"x":{},"x":{}}}"#,
            r#"[{"k":1,"k":1}]"#,
        ];
        for params in refused {
            assert_eq!(
                call_with(params).unwrap_err().code,
                INVALID_REQUEST,
                "{params}"
            );
        }
        let accepted = [
            r#"{"name":"t","arguments":[{"a":1},{"a":2}]}"#,
            r#"{"name":"t","arguments":{"a":{"a":{"a":1}},"b":{"a":2}}}"#,
        ];
        for params in accepted {
            assert!(call_with(params).is_ok(), "{params}");
        }
        // Past the linear scan, a hash set takes over; a late duplicate is still found.
        let keys: Vec<String> = (0..200).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let wide = format!(r#"{{"name":"t","arguments":{{{}}}}}"#, keys.join(","));
        assert!(call_with(&wide).is_ok());
        let late = format!(
            r#"{{"name":"t","arguments":{{{},"k3":0}}}}"#,
            keys.join(",")
        );
        assert_eq!(call_with(&late).unwrap_err().code, INVALID_REQUEST);
        // Top-level members are checked too, wherever they sit.
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{},"id":2}"#;
        assert_eq!(parse_request(body).unwrap_err().code, INVALID_REQUEST);
    }

    #[test]
    fn the_parse_reads_name_size_and_where_the_id_is() {
        let body = "{\"id\" : \"a-1\", \"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{ \"name\" : \"t\",\n \"arguments\" : { \"q\" : [1, 2.5, \"\\u00e9\"] } }}";
        let req = parse_request(body.as_bytes()).unwrap();
        assert_eq!(req.tool_name().unwrap(), "t");
        assert_eq!(req.arguments_len(), r#"{"q":[1,2.5,"é"]}"#.len());
        assert_eq!(req.id, Some(json!("a-1")));
        let span = req.id_span().unwrap();
        assert_eq!(&body[span], r#""a-1""#);
        let bare = parse_request(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#).unwrap();
        assert_eq!((bare.id_span(), bare.arguments_len()), (None, 0));
        // Ids that are not a string, number or null are refused however deep they go.
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":{}{},"method":"x"}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(
            parse_request(deep.as_bytes()).unwrap_err().code,
            INVALID_REQUEST
        );
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".*".prop_map(Value::from),
            "[\"\\\\/\u{0}-\u{1f}\u{7f}-\u{10ffff}]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The measured size is what the pricing rules were written against: the compact
        /// JSON of the parsed arguments, however the caller laid them out.
        #[test]
        fn arguments_len_is_the_compact_length_of_the_parsed_arguments(
            args in arb_json(),
            pretty in proptest::prelude::any::<bool>(),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&args).unwrap()
            } else {
                serde_json::to_string(&args).unwrap()
            };
            let req = call_with(&format!(r#"{{"arguments":{text},"name":"tool"}}"#)).unwrap();
            let reparsed: Value = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(req.arguments_len(), crate::pricing::compact_json_len(&reparsed));
            proptest::prop_assert_eq!(req.tool_name().unwrap(), "tool");
        }
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
    fn gateway_answers_carry_the_id_exactly_as_sent() {
        for id in [
            "1.0",
            "1e0",
            "-0",
            "123456789012345678901234567890",
            "\"a\\\"b\"",
            "null",
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call"}}"#);
            let req = parse_request(body.as_bytes()).unwrap();
            assert_eq!(req.id_as_sent(body.as_bytes()), Some(id));
            let reply =
                error_body_as_sent(req.id_as_sent(body.as_bytes()), INVALID_PARAMS, "m", None);
            let text = String::from_utf8(reply).unwrap();
            assert!(text.contains(&format!(r#""id":{id},"#)), "{text}");
            serde_json::from_str::<Value>(&text).expect("valid JSON");
        }
        let none = error_body_as_sent(None, INVALID_PARAMS, "m", None);
        assert!(String::from_utf8(none).unwrap().contains(r#""id":null"#));
    }

    #[test]
    fn names_are_bounded_at_parse_time() {
        let call = |name: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#
            )
        };
        let longest = "a".repeat(MAX_NAME_BYTES);
        let req = parse_request(call(&longest).as_bytes()).unwrap();
        assert_eq!(req.tool_name().unwrap(), longest);
        let req = parse_request(call(&"a".repeat(1 << 20)).as_bytes()).unwrap();
        assert_eq!(req.tool_name().unwrap_err().code, INVALID_PARAMS);
        assert!(req.tool.is_none(), "a too-long name is not kept");
        assert_eq!(req.mcp_name(), None);
        let method = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
            "m".repeat(MAX_NAME_BYTES + 1)
        );
        assert_eq!(
            parse_request(method.as_bytes()).unwrap_err().code,
            INVALID_REQUEST
        );
    }

    #[test]
    fn mcp_name_is_the_name_else_the_uri() {
        let read = parse_request(
            br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#,
        )
        .unwrap();
        assert_eq!(read.mcp_name(), Some("file:///a"));
        let prompt = parse_request(
            br#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","uri":"x"}}"#,
        )
        .unwrap();
        assert_eq!(prompt.mcp_name(), Some("p"));
        let ping = parse_request(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap();
        assert_eq!(ping.mcp_name(), None);
    }

    #[test]
    fn classify_reads_the_first_response_whatever_its_id() {
        for id in [json!(3), json!(3.0), json!("3"), json!(null), json!(-0.0)] {
            let ok = json!({"jsonrpc":"2.0","id":id,"result":{}});
            assert_eq!(classify_response(&ok), Some(CallOutcome::Success));
        }
        assert_eq!(
            classify_response(&json!({"jsonrpc":"2.0","id":3,"result":{"isError":true}})),
            Some(CallOutcome::ToolError)
        );
        assert_eq!(
            classify_response(&json!({"jsonrpc":"2.0","id":3,"error":{}})),
            Some(CallOutcome::RpcError)
        );
        // Server-to-client requests and notifications are not the answer.
        assert_eq!(
            classify_response(&json!({"jsonrpc":"2.0","id":9,"method":"sampling/createMessage"})),
            None
        );
        assert_eq!(
            classify_response(&json!({"jsonrpc":"2.0","method":"notifications/progress"})),
            None
        );
    }
}
