//! [`StdioUpstream`]: an MCP server run as a child process, spoken to over stdin/stdout, as a
//! tower service.
//!
//! The child is started by [`StdioUpstream::spawn`], which performs the MCP handshake with it
//! once (`initialize`, then `notifications/initialized`) and caches the `initialize` result.
//! Every HTTP client sharing the child is answered `initialize` from that cache (with its own
//! id) and its `notifications/initialized` is swallowed, so the child sees exactly one
//! handshake per process. The child has [`StdioConfig::handshake_timeout`] to answer it.
//!
//! Messages are newline-delimited JSON-RPC. Requests from many clients share one child and
//! may reuse the same ids (every client's first request is usually `"id": 1`), so each
//! forwarded request gets a fresh internal id; the answer is matched by that id and handed
//! back with the client's original id restored. Anything else the child prints on stdout
//! (notifications, log lines, garbage, answers nobody waits for, lines longer than
//! [`StdioConfig::max_message_bytes`]) is dropped without disturbing the other requests. The
//! child's own requests are answered at once: `ping` with an empty result, everything else
//! with "method not found", since the gateway offers the server no client capabilities.
//! Client notifications are forwarded and answered HTTP 202 with an empty body; a request the
//! gateway stops waiting for (timeout, client gone) is cancelled at the child with
//! `notifications/cancelled` under its internal id.
//!
//! Failures are answered, never left hanging:
//!
//! | what happened | HTTP status | JSON-RPC error `data.reason` |
//! |---|---|---|
//! | no answer within [`StdioConfig::request_timeout`] | 504 | `upstream_timeout` |
//! | the child exited (or closed stdout, or stopped reading stdin) while the request was pending | 502 | `upstream_crashed` |
//! | the child is down (restarting) or the upstream was shut down | 503 | `upstream_unavailable` |
//!
//! all with code `-32603` and the client's original id. A child that exits is restarted with
//! exponential backoff ([`StdioConfig::restart_min_backoff`] doubling up to
//! [`StdioConfig::restart_max_backoff`]; the delay starts over once a child has stayed up for
//! 30 s or for the maximum backoff, whichever is longer), and the handshake is done again.
//!
//! [`StdioUpstream::shutdown`] closes the child's stdin, waits up to
//! [`StdioConfig::shutdown_grace`] for it to exit and then kills it. Dropping the last handle
//! does the same in the background; the child is also killed if the runtime goes away first.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::jsonrpc;
use crate::layer::McpContext;

/// The MCP protocol version the gateway offers the child in its `initialize`.
pub const PROTOCOL_VERSION: &str = "2025-06-18";

/// Lines queued for the child's stdin before senders wait.
const WRITE_QUEUE: usize = 256;
/// Bytes read from the child's stdout at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Longest stderr line forwarded; longer ones are replaced by a note.
const STDERR_LINE_MAX: usize = 64 * 1024;
/// A child that stayed up this long (or the maximum backoff, if longer) resets the backoff.
const STABLE_UPTIME: Duration = Duration::from_secs(30);
/// JSON-RPC "method not found", for requests the child sends the gateway.
const METHOD_NOT_FOUND: i64 = -32601;

/// How to run the MCP server and how patient to be with it.
///
/// ```
/// use std::time::Duration;
/// use paygate_mcp::StdioConfig;
///
/// let cfg = StdioConfig::new("python3", ["-m", "my_mcp_server"])
///     .with_env("LOG_LEVEL", "warning")
///     .with_request_timeout(Duration::from_secs(10))
///     .with_restart_backoff(Duration::from_millis(200), Duration::from_secs(5));
/// assert_eq!(cfg.args, ["-m", "my_mcp_server"]);
/// assert_eq!(cfg.max_message_bytes, 8 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdioConfig {
    /// The program to run (looked up in `PATH` when it has no slash).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for the child on top of the gateway's own environment.
    pub env: Vec<(String, String)>,
    /// The child's working directory (default: the gateway's).
    pub current_dir: Option<PathBuf>,
    /// How long a request waits for the child's answer (default 30 s).
    pub request_timeout: Duration,
    /// How long a freshly started child has to answer `initialize` (default 30 s), apart
    /// from `request_timeout` so that a short request timeout does not fail slow starters.
    pub handshake_timeout: Duration,
    /// The first delay before restarting a child that exited (default 100 ms).
    pub restart_min_backoff: Duration,
    /// The longest delay between restarts (default 10 s).
    pub restart_max_backoff: Duration,
    /// The longest line accepted from or sent to the child (default 8 MiB).
    pub max_message_bytes: usize,
    /// How long [`StdioUpstream::shutdown`] waits for the child to exit after closing its
    /// stdin before killing it (default 5 s).
    pub shutdown_grace: Duration,
    /// Copy the child's stderr to the gateway's stderr, each line prefixed with the command
    /// name and pid, along with notes on restarts (default true; false sends it to null).
    pub forward_stderr: bool,
}

impl StdioConfig {
    /// Runs `command` with `args`, with the defaults for everything else.
    ///
    /// ```
    /// let cfg = paygate_mcp::StdioConfig::new("npx", ["-y", "@modelcontextprotocol/server-everything"]);
    /// assert_eq!(cfg.request_timeout, std::time::Duration::from_secs(30));
    /// ```
    pub fn new<I>(command: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self {
            command: command.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            current_dir: None,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            restart_min_backoff: Duration::from_millis(100),
            restart_max_backoff: Duration::from_secs(10),
            max_message_bytes: 8 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(5),
            forward_stderr: true,
        }
    }

    /// Sets an environment variable for the child.
    ///
    /// ```
    /// let cfg = paygate_mcp::StdioConfig::new("server", ["--stdio"]).with_env("TOKEN", "t");
    /// assert_eq!(cfg.env, [("TOKEN".to_string(), "t".to_string())]);
    /// ```
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the child in `dir`.
    ///
    /// ```
    /// let cfg = paygate_mcp::StdioConfig::new("./server", ["--stdio"]).with_current_dir("/srv/mcp");
    /// assert!(cfg.current_dir.is_some());
    /// ```
    pub fn with_current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// How long a request waits for its answer.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cfg = paygate_mcp::StdioConfig::new("server", ["--stdio"])
    ///     .with_request_timeout(Duration::from_secs(5));
    /// assert_eq!(cfg.request_timeout, Duration::from_secs(5));
    /// ```
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a freshly started child has to complete the MCP handshake.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cfg = paygate_mcp::StdioConfig::new("npx", ["-y", "some-mcp-server"])
    ///     .with_handshake_timeout(Duration::from_secs(120));
    /// assert_eq!(cfg.handshake_timeout, Duration::from_secs(120));
    /// ```
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The restart delay: `min` after a crash, doubling on every further crash up to `max`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cfg = paygate_mcp::StdioConfig::new("server", ["--stdio"])
    ///     .with_restart_backoff(Duration::from_millis(50), Duration::from_secs(2));
    /// assert_eq!(cfg.restart_max_backoff, Duration::from_secs(2));
    /// ```
    pub fn with_restart_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.restart_min_backoff = min;
        self.restart_max_backoff = max;
        self
    }

    /// The longest JSON-RPC message (one line) accepted from or sent to the child.
    ///
    /// ```
    /// let cfg = paygate_mcp::StdioConfig::new("server", ["--stdio"]).with_max_message_bytes(1 << 20);
    /// assert_eq!(cfg.max_message_bytes, 1 << 20);
    /// ```
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// How long shutdown waits for the child to exit on its own before killing it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cfg = paygate_mcp::StdioConfig::new("server", ["--stdio"])
    ///     .with_shutdown_grace(Duration::from_secs(1));
    /// assert_eq!(cfg.shutdown_grace, Duration::from_secs(1));
    /// ```
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Whether to copy the child's stderr (and restart notes) to the gateway's stderr.
    ///
    /// ```
    /// let cfg = paygate_mcp::StdioConfig::new("server", ["--stdio"]).with_forward_stderr(false);
    /// assert!(!cfg.forward_stderr);
    /// ```
    pub fn with_forward_stderr(mut self, forward: bool) -> Self {
        self.forward_stderr = forward;
        self
    }

    /// Settings that cannot work made workable: no zero delays or limits, `max ≥ min`.
    fn normalized(mut self) -> Self {
        let ms = Duration::from_millis(1);
        self.request_timeout = self.request_timeout.max(ms);
        self.handshake_timeout = self.handshake_timeout.max(ms);
        self.restart_min_backoff = self.restart_min_backoff.max(ms);
        self.restart_max_backoff = self.restart_max_backoff.max(self.restart_min_backoff);
        self.max_message_bytes = self.max_message_bytes.max(1);
        self
    }

    /// A short name for log lines: the command's file name.
    fn label(&self) -> String {
        Path::new(&self.command)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.command.clone())
    }
}

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
enum Failure {
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

/// The child's answer as the client sees it (its id restored), one JSON object.
type Reply = Result<Vec<u8>, Failure>;

/// A request waiting for the child's answer.
struct Pending {
    /// The id the client sent, restored on the answer.
    original: Value,
    reply: oneshot::Sender<Reply>,
}

/// One child process as the request path sees it: a queue to its stdin and the requests
/// waiting for its answers.
struct Conn {
    pid: Option<u32>,
    tx: mpsc::Sender<Vec<u8>>,
    /// Internal id → pending request; `None` once the child is gone (nothing new may wait).
    pending: Mutex<Option<HashMap<u64, Pending>>>,
    /// Set when the gateway is stopping the child on purpose.
    closing: AtomicBool,
}

impl Conn {
    fn new(pid: Option<u32>, tx: mpsc::Sender<Vec<u8>>) -> Self {
        Self {
            pid,
            tx,
            pending: Mutex::new(Some(HashMap::new())),
            closing: AtomicBool::new(false),
        }
    }

    fn failure(&self) -> Failure {
        if self.closing.load(Ordering::Acquire) {
            Failure::ShutDown
        } else {
            Failure::Crashed
        }
    }

    fn register(&self, id: u64, original: Value) -> Result<oneshot::Receiver<Reply>, Failure> {
        let (reply, rx) = oneshot::channel();
        match self.pending.lock().as_mut() {
            Some(map) => {
                map.insert(id, Pending { original, reply });
                Ok(rx)
            }
            None => Err(self.failure()),
        }
    }

    /// Whether the child is gone (its pending requests were failed).
    fn is_dead(&self) -> bool {
        self.pending.lock().is_none()
    }

    fn take(&self, id: u64) -> Option<Pending> {
        self.pending.lock().as_mut()?.remove(&id)
    }

    #[cfg(test)]
    fn pending_len(&self) -> usize {
        self.pending.lock().as_ref().map_or(0, HashMap::len)
    }

    /// Fails every pending request at once and refuses new ones.
    fn fail_all(&self) {
        let drained = self.pending.lock().take();
        let failure = self.failure();
        for (_, p) in drained.into_iter().flatten() {
            let _ = p.reply.send(Err(failure));
        }
    }

    /// Queues one message for the child's stdin.
    async fn send(&self, line: Vec<u8>) -> Result<(), Failure> {
        self.tx.send(line).await.map_err(|_| self.failure())
    }

    /// Sends a request under a fresh internal id and waits for the answer, which comes back
    /// with `original` as its id.
    async fn request(
        &self,
        next_id: &AtomicU64,
        original: Value,
        call: Call<'_>,
        timeout: Duration,
        max: usize,
    ) -> Result<Vec<u8>, StdioError> {
        let internal = next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = call.method() != "initialize";
        let line = call.encode(Some(internal), max)?;
        let rx = self.register(internal, original)?;
        // Removes the entry however this future ends: answered, timed out or dropped.
        let _guard = PendingGuard {
            conn: self,
            id: internal,
            cancel,
        };
        let exchange = async {
            self.send(line).await?;
            rx.await.map_err(|_| self.failure())?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(failure)) => Err(failure.into()),
            Err(_) => Err(StdioError::Timeout(timeout)),
        }
    }

    /// Sends a notification (no answer expected).
    async fn notify(
        &self,
        call: Call<'_>,
        timeout: Duration,
        max: usize,
    ) -> Result<(), StdioError> {
        let line = call.encode(None, max)?;
        match tokio::time::timeout(timeout, self.send(line)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(failure.into()),
            Err(_) => Err(StdioError::Timeout(timeout)),
        }
    }

    /// Handles one line from the child's stdout.
    fn handle_line(&self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        // The common case, an answer to one of ours, is read without building its result.
        if let Ok(Incoming {
            id: Some(id),
            method: None,
            result,
            error,
        }) = serde_json::from_slice::<Incoming>(line)
        {
            if result.is_some() || error.is_some() {
                let Ok(internal) = id.get().parse::<u64>() else {
                    return;
                };
                if let Some(pending) = self.take(internal) {
                    let answer = answer_line(&pending.original, result, error);
                    let _ = pending.reply.send(Ok(answer));
                }
                return;
            }
        }
        self.handle_other_line(line);
    }

    /// Any other line: a request or notification from the child, an answer with a `null`
    /// result, a log line or garbage.
    fn handle_other_line(&self, line: &[u8]) {
        let Ok(Value::Object(mut msg)) = serde_json::from_slice::<Value>(line) else {
            return; // a log line or garbage
        };
        if let Some(method) = msg.get("method").and_then(Value::as_str) {
            if let Some(id) = msg.get("id") {
                self.answer_server_request(method, id);
            }
            return; // notifications from the server have no one to go to
        }
        if !msg.contains_key("result") && !msg.contains_key("error") {
            return;
        }
        let Some(internal) = msg.get("id").and_then(Value::as_u64) else {
            return;
        };
        let Some(pending) = self.take(internal) else {
            return; // nobody waits for it any more (timed out) or never did
        };
        msg.insert("id".into(), pending.original);
        let _ = pending
            .reply
            .send(Ok(Value::Object(msg).to_string().into_bytes()));
    }

    /// Answers a request the child sent the gateway, so it does not wait forever.
    fn answer_server_request(&self, method: &str, id: &Value) {
        let answer = if method == "ping" {
            json!({"jsonrpc": "2.0", "id": id, "result": {}})
        } else {
            json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": METHOD_NOT_FOUND,
                    "message": format!("Method not found: the gateway does not offer {method}"),
                },
            })
        };
        if let Ok(line) = encode(&answer, usize::MAX) {
            let _ = self.tx.try_send(line);
        }
    }
}

/// Removes a pending entry when its request stops waiting, and tells the child the request
/// was cancelled when it was never answered.
struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
    cancel: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.conn.take(self.id).is_some() && self.cancel {
            let note = json!({
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": self.id, "reason": "the gateway stopped waiting"},
            });
            if let Ok(line) = encode(&note, usize::MAX) {
                let _ = self.conn.tx.try_send(line);
            }
        }
    }
}

/// An answer from the child, read without building its result or error.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// The answer with the client's id put back: `{"jsonrpc":"2.0","id":…,"result"|"error":…}`.
fn answer_line(id: &Value, result: Option<&RawValue>, error: Option<&RawValue>) -> Vec<u8> {
    let parts = [(&b",\"result\":"[..], result), (&b",\"error\":"[..], error)];
    let size: usize = parts
        .iter()
        .flat_map(|(_, p)| p)
        .map(|p| p.get().len() + 10)
        .sum();
    let mut out = Vec::with_capacity(size + 48);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    // Writing a `Value` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut out, id);
    for (name, part) in parts {
        if let Some(part) = part {
            out.extend_from_slice(name);
            out.extend_from_slice(part.get().as_bytes());
        }
    }
    out.push(b'}');
    out
}

/// One request or notification for the child.
#[derive(Clone, Copy)]
enum Call<'a> {
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
    fn method(&self) -> &str {
        match self {
            Call::Body { rpc, .. } => &rpc.method,
            Call::Parts { method, .. } => method,
        }
    }

    /// The message as one line, under the given id (`None`: a notification).
    fn encode(self, id: Option<u64>, max: usize) -> Result<Vec<u8>, StdioError> {
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
fn encode<T: serde::Serialize + ?Sized>(msg: &T, max: usize) -> Result<Vec<u8>, StdioError> {
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

/// A piece of a byte stream cut at newlines.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A complete line, without its `\n` (or `\r\n`).
    Line(Vec<u8>),
    /// A line longer than the limit, dropped (reported once, when the limit is crossed).
    TooLong,
}

/// Cuts a byte stream into lines of at most `max` bytes without ever holding more than
/// `max` bytes of one line: the rest of a longer line is skipped up to its newline.
struct LineFramer {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineFramer {
    fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    fn push(&mut self, mut data: &[u8], out: &mut Vec<Frame>) {
        while !data.is_empty() {
            let Some(at) = data.iter().position(|b| *b == b'\n') else {
                if !self.discarding {
                    if self.buf.len().saturating_add(data.len()) > self.max {
                        self.buf = Vec::new();
                        self.discarding = true;
                        out.push(Frame::TooLong);
                    } else {
                        self.buf.extend_from_slice(data);
                    }
                }
                return;
            };
            let (head, rest) = data.split_at(at);
            data = rest.get(1..).unwrap_or_default();
            if std::mem::take(&mut self.discarding) {
                continue; // the end of a line already reported as too long
            }
            if self.buf.len().saturating_add(head.len()) > self.max {
                self.buf = Vec::new();
                out.push(Frame::TooLong);
                continue;
            }
            self.buf.extend_from_slice(head);
            let mut line = std::mem::take(&mut self.buf);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(Frame::Line(line));
        }
    }

    /// The last line when the stream ends without a newline.
    fn finish(&mut self) -> Option<Frame> {
        if std::mem::take(&mut self.discarding) || self.buf.is_empty() {
            return None;
        }
        Some(Frame::Line(std::mem::take(&mut self.buf)))
    }
}

/// Reads the child's stdout until it closes, then fails whatever still waits.
async fn read_loop<R: AsyncRead + Unpin>(conn: Arc<Conn>, stdout: R, max: usize) {
    for_each_frame(stdout, max, READ_CHUNK, |frame| {
        if let Frame::Line(line) = frame {
            conn.handle_line(&line);
        }
    })
    .await;
    conn.fail_all();
}

/// Cuts a stream into lines of at most `max` bytes until it ends or fails.
async fn for_each_frame<R: AsyncRead + Unpin>(
    mut source: R,
    max: usize,
    chunk_size: usize,
    mut each: impl FnMut(Frame),
) {
    let mut framer = LineFramer::new(max);
    let mut chunk = vec![0u8; chunk_size];
    let mut frames = Vec::new();
    loop {
        let n = match source.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framer.push(chunk.get(..n).unwrap_or_default(), &mut frames);
        frames.drain(..).for_each(&mut each);
    }
    if let Some(frame) = framer.finish() {
        each(frame);
    }
}

/// Writes queued lines to the child's stdin, whole, one after another. Ends (closing stdin)
/// when the child stops reading or the task is aborted.
async fn write_loop(mut stdin: ChildStdin, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(line) = rx.recv().await {
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

/// Copies the child's stderr to ours, line by line, prefixed with `label`.
async fn stderr_loop<R: AsyncRead + Unpin>(stderr: R, label: String) {
    for_each_frame(stderr, STDERR_LINE_MAX, 8 * 1024, |frame| {
        log_frame(&label, frame)
    })
    .await;
}

fn log_frame(label: &str, frame: Frame) {
    match frame {
        Frame::Line(line) => log(label, &String::from_utf8_lossy(&line)),
        Frame::TooLong => log(
            label,
            &format!("(a stderr line of more than {STDERR_LINE_MAX} bytes was dropped)"),
        ),
    }
}

/// One line to the gateway's stderr; a failure to write it is ignored.
fn log(label: &str, text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "[{label}] {text}");
}

/// The background tasks of one child; aborted when it is dropped.
struct Tasks {
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A started child after a completed handshake.
struct Running {
    child: Child,
    conn: Arc<Conn>,
    init: Arc<Value>,
    tasks: Tasks,
    started: Instant,
}

impl Running {
    /// Kills the child (if it still runs) and reaps it.
    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Closes stdin, gives the child `grace` to exit, then kills it; fails what still waits.
    async fn stop(mut self, grace: Duration) {
        self.conn.closing.store(true, Ordering::Release);
        // Dropping the writer task drops the child's stdin: the child reads end of file.
        self.tasks.writer.abort();
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
        self.conn.fail_all();
    }
}

/// State shared by the handles and the supervising task.
struct Shared {
    config: StdioConfig,
    label: String,
    next_id: AtomicU64,
    restarts: AtomicU64,
    status: Mutex<Status>,
}

enum Status {
    Up { conn: Arc<Conn>, init: Arc<Value> },
    Down,
    Stopped,
}

impl Shared {
    fn ready(&self) -> Result<(Arc<Conn>, Arc<Value>), StdioError> {
        match &*self.status.lock() {
            // A child whose stdout closed is down, even before the supervisor notices.
            Status::Up { conn, .. } if conn.is_dead() => Err(StdioError::Unavailable),
            Status::Up { conn, init } => Ok((conn.clone(), init.clone())),
            Status::Down => Err(StdioError::Unavailable),
            Status::Stopped => Err(StdioError::ShutDown),
        }
    }

    /// Publishes a started child; false when the upstream was stopped meanwhile.
    fn set_up(&self, running: &Running) -> bool {
        let mut status = self.status.lock();
        if matches!(*status, Status::Stopped) {
            return false;
        }
        *status = Status::Up {
            conn: running.conn.clone(),
            init: running.init.clone(),
        };
        true
    }

    fn set_down(&self) {
        let mut status = self.status.lock();
        if !matches!(*status, Status::Stopped) {
            *status = Status::Down;
        }
    }

    fn set_stopped(&self) {
        *self.status.lock() = Status::Stopped;
    }

    /// Upstream lifecycle (start failures, crashes, restarts): a tracing event, and with
    /// `forward_stderr` also a line on stderr as before.
    fn note(&self, text: &str) {
        tracing::warn!(upstream = %self.label, "{text}");
        if self.config.forward_stderr {
            log(&self.label, text);
        }
    }

    /// Starts a child and does the MCP handshake with it.
    async fn start_child(&self) -> Result<Running, StdioError> {
        let cfg = &self.config;
        let mut cmd = Command::new(&cfg.command);
        cmd.args(&cfg.args)
            .envs(cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if cfg.forward_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        if let Some(dir) = &cfg.current_dir {
            cmd.current_dir(dir);
        }
        let spawn_error = |source| StdioError::Spawn {
            command: cfg.command.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill().await;
            return Err(spawn_error(std::io::Error::other("stdio was not piped")));
        };
        if let Some(stderr) = child.stderr.take() {
            let label = match pid {
                Some(pid) => format!("{} {pid}", self.label),
                None => self.label.clone(),
            };
            // Not aborted with the child: it ends at end of file, after the last lines.
            tokio::spawn(stderr_loop(stderr, label));
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let conn = Arc::new(Conn::new(pid, tx));
        let tasks = Tasks {
            reader: tokio::spawn(read_loop(conn.clone(), stdout, cfg.max_message_bytes)),
            writer: tokio::spawn(write_loop(stdin, rx)),
        };
        let mut running = Running {
            child,
            conn,
            init: Arc::new(Value::Null),
            tasks,
            started: Instant::now(),
        };
        match self.handshake(&running.conn).await {
            Ok(init) => {
                running.init = Arc::new(init);
                Ok(running)
            }
            Err(reason) => {
                running.kill().await;
                Err(StdioError::Handshake {
                    command: cfg.command.clone(),
                    reason,
                })
            }
        }
    }

    /// `initialize`, its result, then `notifications/initialized`.
    async fn handshake(&self, conn: &Conn) -> Result<Value, String> {
        let cfg = &self.config;
        let params = serde_json::value::to_raw_value(&json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "paygate-mcp", "version": env!("CARGO_PKG_VERSION")},
        }))
        .map_err(|e| e.to_string())?;
        let call = Call::Parts {
            method: "initialize",
            params: Some(&params),
        };
        let answer = conn
            .request(
                &self.next_id,
                Value::Null,
                call,
                cfg.handshake_timeout,
                cfg.max_message_bytes,
            )
            .await
            .map_err(|e| e.to_string())?;
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        let result = match answer.get("result") {
            Some(result @ Value::Object(_)) => result.clone(),
            _ => {
                let error = answer.get("error").cloned().unwrap_or(Value::Null);
                return Err(format!("initialize was answered with {error}"));
            }
        };
        let initialized = Call::Parts {
            method: "notifications/initialized",
            params: None,
        };
        conn.notify(initialized, cfg.handshake_timeout, cfg.max_message_bytes)
            .await
            .map_err(|e| e.to_string())?;
        Ok(result)
    }
}

/// Waits until a stop is asked for or the last handle is gone.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Watches the child, restarts it when it exits, and stops it when asked.
/// With no child yet (`first` is `None`: the first start failed) it starts at the restart
/// loop, so a server that is down at start-up is retried like one that crashed.
async fn supervise(
    shared: Arc<Shared>,
    first: Option<Running>,
    mut stop: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    let min = shared.config.restart_min_backoff;
    let max = shared.config.restart_max_backoff;
    let stable = STABLE_UPTIME.max(max);
    let grace = shared.config.shutdown_grace;
    let mut backoff = min;
    let mut pending = first;
    'child: loop {
        let Some(mut running) = pending.take() else {
            // Nothing running: straight to the restart loop below.
            match restart(&shared, &mut backoff, max, grace, &mut stop).await {
                Some(next) => {
                    pending = Some(next);
                    continue 'child;
                }
                None => break 'child,
            }
        };
        let ended = tokio::select! {
            status = running.child.wait() => match status {
                Ok(status) => format!("exited ({status})"),
                Err(e) => format!("could not be watched ({e})"),
            },
            _ = &mut running.tasks.reader => "closed its stdout".to_string(),
            _ = &mut running.tasks.writer => "stopped reading its stdin".to_string(),
            _ = stop_requested(&mut stop) => {
                shared.set_stopped();
                running.stop(grace).await;
                break 'child;
            }
        };
        // Whatever ended it, the child is of no more use: make sure it is gone and reaped.
        shared.set_down();
        running.kill().await;
        running.conn.fail_all();
        let uptime = running.started.elapsed();
        drop(running);
        if uptime >= stable {
            backoff = min;
        }
        shared.note(&format!("{ended}; restarting"));
        match restart(&shared, &mut backoff, max, grace, &mut stop).await {
            Some(next) => pending = Some(next),
            None => break 'child,
        }
    }
    done.send_replace(true);
}

/// Starts a new child after the backoff, doubling it after each failure; `None` when the
/// upstream is stopped meanwhile.
async fn restart(
    shared: &Arc<Shared>,
    backoff: &mut Duration,
    max: Duration,
    grace: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<Running> {
    loop {
        let delay = *backoff;
        *backoff = backoff.saturating_mul(2).min(max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(stop) => {
                shared.set_stopped();
                return None;
            }
        }
        let started = tokio::select! {
            started = shared.start_child() => started,
            _ = stop_requested(stop) => {
                shared.set_stopped();
                return None;
            }
        };
        match started {
            Ok(next) => {
                if !shared.set_up(&next) {
                    next.stop(grace).await;
                    return None;
                }
                shared.restarts.fetch_add(1, Ordering::Relaxed);
                return Some(next);
            }
            Err(e) => shared.note(&format!("restart failed: {e}")),
        }
    }
}

/// What the handles own: dropping the last one stops the child.
struct Handle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

/// An MCP server run as a child process over stdio, as a cloneable tower service.
///
/// Every clone shares the one child. See the [module docs](self) for how requests are
/// correlated and how failures are answered.
///
/// ```no_run
/// # async fn run() -> Result<(), paygate_mcp::upstream::StdioError> {
/// use paygate_mcp::{StdioConfig, StdioUpstream};
/// use serde_json::json;
///
/// let upstream = StdioUpstream::spawn(StdioConfig::new("node", ["server.js", "stdio"])).await?;
/// let answer = upstream
///     .call_json(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
///     .await?;
/// println!("{answer:?}");
/// upstream.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StdioUpstream {
    handle: Arc<Handle>,
}

impl fmt::Debug for StdioUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioUpstream")
            .field("command", &self.handle.shared.config.command)
            .field("child_pid", &self.child_pid())
            .field("restarts", &self.restarts())
            .finish()
    }
}

impl StdioUpstream {
    /// Starts the child and completes the MCP handshake with it.
    ///
    /// Must be called inside a tokio runtime (outside one it returns
    /// [`StdioError::NoRuntime`]); like any tokio process or timer, it needs the runtime's I/O
    /// and time drivers enabled (`#[tokio::main]` and `Builder::enable_all` do that).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), paygate_mcp::upstream::StdioError> {
    /// let cfg = paygate_mcp::StdioConfig::new("uvx", ["mcp-server-fetch"]);
    /// let upstream = paygate_mcp::StdioUpstream::spawn(cfg).await?;
    /// assert!(upstream.child_pid().is_some());
    /// # Ok(()) }
    /// ```
    pub async fn spawn(config: StdioConfig) -> Result<Self, StdioError> {
        Self::launch(config, true).await
    }

    /// Like [`StdioUpstream::spawn`], but a server that cannot be started or fails its
    /// handshake does not fail the call: the upstream starts degraded ([`is_ready`] is
    /// false, calls answer `503` with a JSON-RPC error) and keeps retrying with backoff, so
    /// a gateway comes up and heals when its server does.
    ///
    /// [`is_ready`]: StdioUpstream::is_ready
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), paygate_mcp::upstream::StdioError> {
    /// let cfg = paygate_mcp::StdioConfig::new("node", ["server.js"]);
    /// let upstream = paygate_mcp::StdioUpstream::start(cfg).await?;
    /// if !upstream.is_ready() {
    ///     eprintln!("MCP server not up yet; retrying in the background");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn start(config: StdioConfig) -> Result<Self, StdioError> {
        Self::launch(config, false).await
    }

    async fn launch(config: StdioConfig, strict: bool) -> Result<Self, StdioError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StdioError::NoRuntime);
        }
        let config = config.normalized();
        let shared = Arc::new(Shared {
            label: config.label(),
            config,
            next_id: AtomicU64::new(1),
            restarts: AtomicU64::new(0),
            status: Mutex::new(Status::Down),
        });
        let first = match shared.start_child().await {
            Ok(running) => {
                shared.set_up(&running);
                Some(running)
            }
            Err(e) if strict => return Err(e),
            Err(e) => {
                shared.note(&format!("{e}; retrying in the background"));
                None
            }
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        tokio::spawn(supervise(shared.clone(), first, stop_rx, done_tx));
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                stop: stop_tx,
                done: done_rx,
            }),
        })
    }

    /// Sends one JSON-RPC message and returns the child's answer with the original id, or
    /// `None` for a notification. `initialize` is answered from the cached handshake and
    /// `notifications/initialized` is swallowed; `notifications/cancelled` is swallowed too,
    /// since a client's request id means nothing to the child (the gateway cancels requests
    /// it stops waiting for itself).
    ///
    /// ```no_run
    /// # async fn run(upstream: paygate_mcp::StdioUpstream) -> Result<(), paygate_mcp::upstream::StdioError> {
    /// use serde_json::json;
    /// let answer = upstream
    ///     .call_json(json!({
    ///         "jsonrpc": "2.0", "id": "a-1", "method": "tools/call",
    ///         "params": {"name": "echo", "arguments": {"message": "hi"}},
    ///     }))
    ///     .await?
    ///     .expect("a request is answered");
    /// assert_eq!(answer["id"], "a-1");
    /// # Ok(()) }
    /// ```
    pub async fn call_json(&self, request: Value) -> Result<Option<Value>, StdioError> {
        let Value::Object(mut msg) = request else {
            return Err(StdioError::InvalidRequest(
                "a JSON-RPC message must be an object".into(),
            ));
        };
        if msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(StdioError::InvalidRequest("jsonrpc must be \"2.0\"".into()));
        }
        let Some(Value::String(method)) = msg.remove("method") else {
            return Err(StdioError::InvalidRequest("method must be a string".into()));
        };
        let id = msg.remove("id");
        if id
            .as_ref()
            .is_some_and(|id| !(id.is_string() || id.is_number() || id.is_null()))
        {
            return Err(StdioError::InvalidRequest(
                "id must be a string, number or null".into(),
            ));
        }
        let params = msg
            .get("params")
            .map(serde_json::value::to_raw_value)
            .transpose()
            .map_err(|e| StdioError::InvalidRequest(e.to_string()))?;
        let call = Call::Parts {
            method: &method,
            params: params.as_deref(),
        };
        let Some(answer) = self.exchange(id, call).await? else {
            return Ok(None);
        };
        // The answer was assembled from JSON the child sent and the reader checked.
        serde_json::from_slice(&answer)
            .map(Some)
            .map_err(|_| StdioError::Crashed)
    }

    /// Sends one message; the answer (with the client's id) as JSON text, or `None` for a
    /// notification.
    async fn exchange(
        &self,
        id: Option<Value>,
        call: Call<'_>,
    ) -> Result<Option<Vec<u8>>, StdioError> {
        let shared = &self.handle.shared;
        let cfg = &shared.config;
        match (id, call.method()) {
            (None, "notifications/initialized" | "initialized" | "notifications/cancelled") => {
                Ok(None)
            }
            (None, _) => {
                let (conn, _) = shared.ready()?;
                conn.notify(call, cfg.request_timeout, cfg.max_message_bytes)
                    .await?;
                Ok(None)
            }
            (Some(id), "initialize") => {
                let (_, init) = shared.ready()?;
                let result = serde_json::value::to_raw_value(&*init)
                    .map_err(|e| StdioError::InvalidRequest(e.to_string()))?;
                Ok(Some(answer_line(&id, Some(&result), None)))
            }
            (Some(id), _) => {
                let (conn, _) = shared.ready()?;
                conn.request(
                    &shared.next_id,
                    id,
                    call,
                    cfg.request_timeout,
                    cfg.max_message_bytes,
                )
                .await
                .map(Some)
            }
        }
    }

    /// Closes the child's stdin, waits up to [`StdioConfig::shutdown_grace`] for it to exit,
    /// then kills it. No restart follows; requests are answered 503 from the moment this is
    /// called. Calling it again (from any clone) waits for the same stop.
    ///
    /// ```no_run
    /// # async fn run(upstream: paygate_mcp::StdioUpstream) {
    /// upstream.shutdown().await;
    /// assert_eq!(upstream.child_pid(), None);
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        self.handle.shared.set_stopped();
        self.handle.stop.send_replace(true);
        let mut done = self.handle.done.clone();
        let _ = done.wait_for(|done| *done).await;
    }

    /// How many times the child was restarted after exiting (successful restarts only).
    ///
    /// ```no_run
    /// # fn f(upstream: paygate_mcp::StdioUpstream) {
    /// println!("restarted {} times", upstream.restarts());
    /// # }
    /// ```
    pub fn restarts(&self) -> u64 {
        self.handle.shared.restarts.load(Ordering::Relaxed)
    }

    /// The pid of the current child, or `None` while it is down or after shutdown.
    ///
    /// ```no_run
    /// # fn f(upstream: paygate_mcp::StdioUpstream) {
    /// if let Some(pid) = upstream.child_pid() {
    ///     println!("MCP server runs as pid {pid}");
    /// }
    /// # }
    /// ```
    pub fn child_pid(&self) -> Option<u32> {
        match &*self.handle.shared.status.lock() {
            Status::Up { conn, .. } if !conn.is_dead() => conn.pid,
            _ => None,
        }
    }

    /// Whether a child is up and has completed the handshake.
    ///
    /// ```no_run
    /// # fn f(upstream: paygate_mcp::StdioUpstream) {
    /// assert!(upstream.is_ready());
    /// # }
    /// ```
    pub fn is_ready(&self) -> bool {
        self.handle.shared.ready().is_ok()
    }

    /// The current child's `initialize` result (server info, capabilities, instructions).
    ///
    /// ```no_run
    /// # fn f(upstream: paygate_mcp::StdioUpstream) {
    /// let info = upstream.initialize_result().expect("up");
    /// println!("{}", info["serverInfo"]["name"]);
    /// # }
    /// ```
    pub fn initialize_result(&self) -> Option<Value> {
        self.handle
            .shared
            .ready()
            .ok()
            .map(|(_, init)| (*init).clone())
    }

    /// The configuration the upstream runs with.
    ///
    /// ```no_run
    /// # fn f(upstream: paygate_mcp::StdioUpstream) {
    /// println!("{}", upstream.config().command);
    /// # }
    /// ```
    pub fn config(&self) -> &StdioConfig {
        &self.handle.shared.config
    }

    /// Answers one HTTP request.
    async fn serve(self, req: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            let body = jsonrpc::error_body(
                None,
                jsonrpc::INVALID_REQUEST,
                "only POST is supported by this MCP upstream",
                None,
            );
            let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, body);
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        // Behind the gate's layers the body was parsed already; reuse it when it matches.
        let parsed = parts
            .extensions
            .get::<McpContext>()
            .filter(|ctx| ctx.body == body)
            .and_then(|ctx| ctx.rpc.clone());
        let rpc = match parsed {
            Some(rpc) => rpc,
            None => match jsonrpc::parse_request(&body) {
                Ok(rpc) => Arc::new(rpc),
                Err(e) => {
                    let body = jsonrpc::error_body(None, e.code, &e.message, None);
                    return json_response(StatusCode::BAD_REQUEST, body);
                }
            },
        };
        let call = Call::Body {
            body: &body,
            rpc: &rpc,
        };
        match self.exchange(rpc.id.clone(), call).await {
            Ok(Some(answer)) => json_response(StatusCode::OK, answer),
            Ok(None) => {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::ACCEPTED;
                resp
            }
            Err(e) => {
                let body = serde_json::to_vec(&e.to_jsonrpc(rpc.id.as_ref())).unwrap_or_default();
                json_response(e.http_status(), body)
            }
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The response future of [`StdioUpstream`] as a tower service.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

/// What [`ResponseFuture`] resolves to.
type Answer = Result<Response<Full<Bytes>>, Infallible>;

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Answer;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// One JSON-RPC request or notification per HTTP POST, answered `application/json` (or
/// 202 with an empty body for a notification). Never fails: every error is a JSON-RPC error
/// response with the status listed in the [module docs](self).
///
/// ```no_run
/// # async fn run(upstream: paygate_mcp::StdioUpstream) {
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::ServiceExt;
///
/// let req = http::Request::post("http://localhost/mcp")
///     .body(Full::new(Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)))
///     .unwrap();
/// let resp = upstream.clone().oneshot(req).await.unwrap();
/// assert_eq!(resp.status(), 200);
/// # }
/// ```
impl tower::Service<Request<Full<Bytes>>> for StdioUpstream {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let this = self.clone();
        ResponseFuture {
            inner: Box::pin(async move { Ok(this.serve(req).await) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut framer = LineFramer::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, &mut out);
        }
        out.extend(framer.finish());
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn framer_cuts_lines_across_chunks() {
        assert_eq!(
            frames(100, &[b"ab", b"c\nde", b"f\n\ng\r\n", b"tail"]),
            [line("abc"), line("def"), line(""), line("g"), line("tail")]
        );
    }

    #[test]
    fn framer_drops_over_long_lines_and_resyncs() {
        // Too long within one chunk, then too long across chunks, then fine again.
        assert_eq!(
            frames(4, &[b"12345\nok\n", b"abc", b"defgh", b"ij\nyes\n"]),
            [Frame::TooLong, line("ok"), Frame::TooLong, line("yes")]
        );
        // Exactly at the limit passes.
        assert_eq!(frames(4, &[b"1234\n"]), [line("1234")]);
        // An over-long unterminated tail yields nothing more.
        assert_eq!(frames(4, &[b"123456789"]), [Frame::TooLong]);
    }

    #[test]
    fn framer_never_buffers_more_than_the_limit() {
        let mut framer = LineFramer::new(1024);
        let mut out = Vec::new();
        for _ in 0..1000 {
            framer.push(&[b'x'; 4096], &mut out);
            assert!(framer.buf.len() <= 1024);
        }
        framer.push(b"\n{}\n", &mut out);
        assert_eq!(out, [Frame::TooLong, line("{}")]);
    }

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

    #[tokio::test]
    async fn answers_of_every_shape_reach_their_caller() {
        let (conn, mut rx) = conn();
        let next = AtomicU64::new(1);
        let p = echo("x");
        let t = Duration::from_secs(5);
        let calls = async {
            let mut answers = Vec::new();
            for id in [json!("a"), json!(2), json!(null)] {
                answers.push(parsed(conn.request(&next, id, call(&p), t, 1 << 20).await));
            }
            answers
        };
        let child = async {
            let replies: [&[u8]; 3] = [
                // Extra members and spacing; an error answer; a null result (read the slow way).
                br#"{ "id" : 1 , "jsonrpc":"2.0", "result" : {"content":[{"type":"text","text":"ok"}]}, "x": 1 }"#,
                br#"{"jsonrpc":"2.0","id":2,"error":{"code":-32000,"message":"no"}}"#,
                br#"{"jsonrpc":"2.0","id":3,"result":null}"#,
            ];
            for reply in replies {
                let _ = rx.recv().await.unwrap();
                conn.handle_line(reply);
            }
        };
        let (answers, ()) = tokio::join!(calls, child);
        assert_eq!(answers[0]["id"], "a");
        assert_eq!(answers[0]["result"]["content"][0]["text"], "ok");
        assert_eq!(answers[1]["id"], 2);
        assert_eq!(answers[1]["error"]["message"], "no");
        assert_eq!(answers[2]["id"], Value::Null);
        assert!(answers[2].get("result").is_some_and(Value::is_null));
        assert_eq!(conn.pending_len(), 0);
    }

    /// A connection with no process: returns it and the receiving end of its stdin queue.
    fn conn() -> (Arc<Conn>, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(16);
        (Arc::new(Conn::new(None, tx)), rx)
    }

    /// `tools/call` params for the echo tool.
    fn echo(text: &str) -> Box<RawValue> {
        serde_json::value::to_raw_value(&json!({"name": "echo", "arguments": {"message": text}}))
            .unwrap()
    }

    fn call(params: &RawValue) -> Call<'_> {
        Call::Parts {
            method: "tools/call",
            params: Some(params),
        }
    }

    fn parsed(answer: Result<Vec<u8>, StdioError>) -> Value {
        serde_json::from_slice(&answer.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn ids_are_rewritten_and_restored() {
        let (conn, mut rx) = conn();
        let next = AtomicU64::new(41);
        let t = Duration::from_secs(5);
        let (p_a, p_b, p_c) = (echo("a"), echo("b"), echo("c"));
        // Two clients, both with id 1, plus one with a string id.
        let a = conn.request(&next, json!(1), call(&p_a), t, 1 << 20);
        let b = conn.request(&next, json!(1), call(&p_b), t, 1 << 20);
        let c = conn.request(&next, json!("c"), call(&p_c), t, 1 << 20);
        let child = async {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let line = rx.recv().await.unwrap();
                let msg: Value = serde_json::from_slice(&line).unwrap();
                seen.push((
                    msg["id"].as_u64().unwrap(),
                    msg["params"]["arguments"]["message"].clone(),
                ));
            }
            let ids: Vec<u64> = seen.iter().map(|s| s.0).collect();
            assert_eq!(ids, [41, 42, 43], "fresh internal ids");
            // Answer out of order, with noise in between.
            conn.handle_line(b"not json at all");
            conn.handle_line(br#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#);
            conn.handle_line(br#"{"jsonrpc":"2.0","id":999,"result":{}}"#);
            for (id, text) in seen.iter().rev() {
                let answer = json!({"jsonrpc": "2.0", "id": id, "result": {"echo": text}});
                conn.handle_line(&serde_json::to_vec(&answer).unwrap());
            }
        };
        let (a, b, c, ()) = tokio::join!(a, b, c, child);
        let (a, b, c) = (parsed(a), parsed(b), parsed(c));
        assert_eq!(
            (a["id"].clone(), a["result"]["echo"].clone()),
            (json!(1), json!("a"))
        );
        assert_eq!(
            (b["id"].clone(), b["result"]["echo"].clone()),
            (json!(1), json!("b"))
        );
        assert_eq!(
            (c["id"].clone(), c["result"]["echo"].clone()),
            (json!("c"), json!("c"))
        );
        assert_eq!(conn.pending_len(), 0);
    }

    #[tokio::test]
    async fn a_timed_out_request_is_forgotten_and_cancelled() {
        let (conn, mut rx) = conn();
        let next = AtomicU64::new(7);
        let p_x = echo("x");
        let err = conn
            .request(
                &next,
                json!(1),
                call(&p_x),
                Duration::from_millis(20),
                1 << 20,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StdioError::Timeout(_)));
        assert_eq!(conn.pending_len(), 0);
        let sent: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(sent["id"], 7);
        let cancel: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(cancel["method"], "notifications/cancelled");
        assert_eq!(cancel["params"]["requestId"], 7);
        // A late answer goes nowhere and breaks nothing.
        conn.handle_line(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#);
        assert_eq!(conn.pending_len(), 0);
    }

    #[tokio::test]
    async fn a_dead_child_fails_pending_requests_at_once() {
        let (conn, _rx) = conn();
        let next = AtomicU64::new(1);
        let (p_x, p_y) = (echo("x"), echo("y"));
        let waiting = conn.request(
            &next,
            json!(5),
            call(&p_x),
            Duration::from_secs(30),
            1 << 20,
        );
        let crash = async {
            tokio::task::yield_now().await;
            conn.fail_all();
        };
        let (result, ()) = tokio::join!(waiting, crash);
        assert!(matches!(result, Err(StdioError::Crashed)));
        // Nothing new may wait on a dead child.
        let later = conn
            .request(
                &next,
                json!(6),
                call(&p_y),
                Duration::from_secs(30),
                1 << 20,
            )
            .await;
        assert!(matches!(later, Err(StdioError::Crashed)));
    }

    #[tokio::test]
    async fn server_requests_are_answered() {
        let (conn, mut rx) = conn();
        conn.handle_line(br#"{"jsonrpc":"2.0","id":"s1","method":"ping"}"#);
        conn.handle_line(
            br#"{"jsonrpc":"2.0","id":2,"method":"sampling/createMessage","params":{}}"#,
        );
        let ping: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(ping, json!({"jsonrpc": "2.0", "id": "s1", "result": {}}));
        let other: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(other["id"], 2);
        assert_eq!(other["error"]["code"], METHOD_NOT_FOUND);
    }

    #[tokio::test]
    async fn the_reader_correlates_through_garbage_and_fails_all_at_eof() {
        let (conn, mut rx) = conn();
        let (mut child_out, gateway_in) = tokio::io::duplex(1024);
        let reader = tokio::spawn(read_loop(conn.clone(), gateway_in, 64));
        let next = AtomicU64::new(1);
        let (p_x, p_y) = (echo("x"), echo("y"));
        let answer = conn.request(&next, json!(1), call(&p_x), Duration::from_secs(5), 1 << 20);
        let child = async {
            let _ = rx.recv().await.unwrap();
            child_out.write_all(b"log line\n").await.unwrap();
            child_out.write_all(&[b'z'; 300]).await.unwrap();
            child_out
                .write_all(b"\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"ok\":true}}\n")
                .await
                .unwrap();
        };
        let (answer, ()) = tokio::join!(answer, child);
        assert_eq!(
            parsed(answer),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"ok": true}})
        );
        let pending = conn.request(&next, json!(2), call(&p_y), Duration::from_secs(5), 1 << 20);
        let close = async {
            let _ = rx.recv().await.unwrap();
            drop(child_out);
        };
        let (pending, ()) = tokio::join!(pending, close);
        assert!(matches!(pending, Err(StdioError::Crashed)));
        reader.await.unwrap();
    }

    #[test]
    fn the_service_can_be_boxed_and_shared() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        fn sendable<T: Send + 'static>() {}
        shareable::<StdioUpstream>();
        sendable::<ResponseFuture>();
    }

    #[test]
    fn config_is_normalized() {
        let cfg = StdioConfig::new("x", Vec::<String>::new())
            .with_request_timeout(Duration::ZERO)
            .with_handshake_timeout(Duration::ZERO)
            .with_restart_backoff(Duration::from_secs(3), Duration::from_secs(1))
            .with_max_message_bytes(0)
            .normalized();
        assert!(cfg.request_timeout > Duration::ZERO);
        assert!(cfg.handshake_timeout > Duration::ZERO);
        assert_eq!(cfg.restart_max_backoff, Duration::from_secs(3));
        assert_eq!(cfg.max_message_bytes, 1);
        assert_eq!(StdioConfig::new("/usr/bin/node", ["a"]).label(), "node");
    }

    #[tokio::test]
    async fn spawn_reports_a_missing_program() {
        let err = StdioUpstream::spawn(StdioConfig::new(
            "/nonexistent/paygate-test-server",
            Vec::<String>::new(),
        ))
        .await
        .unwrap_err();
        assert!(matches!(err, StdioError::Spawn { .. }), "{err}");
    }

    #[tokio::test]
    async fn spawn_reports_a_child_that_exits_during_the_handshake() {
        let started = std::time::Instant::now();
        let err = StdioUpstream::spawn(
            StdioConfig::new("sh", ["-c", "echo not-mcp; exit 3"]).with_forward_stderr(false),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, StdioError::Handshake { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no waiting for a timeout"
        );
    }

    #[test]
    fn spawn_outside_a_runtime_is_an_error() {
        let fut = StdioUpstream::spawn(StdioConfig::new("true", Vec::<String>::new()));
        let err = crate::gate::block_on(fut).unwrap_err();
        assert!(matches!(err, StdioError::NoRuntime));
    }
}
