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

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

mod child;
mod config;
mod conn;
mod error;
mod framing;
mod message;
mod service;
mod supervisor;
#[cfg(test)]
mod test_support;

pub use config::StdioConfig;
pub use error::StdioError;
pub use service::ResponseFuture;

use conn::answer_line;
use message::Call;
use supervisor::{supervise, Shared, Status};

/// The MCP protocol version the gateway offers the child in its `initialize`.
pub const PROTOCOL_VERSION: &str = "2025-06-18";

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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
        let err = crate::blocking::block_on(fut).unwrap_err();
        assert!(matches!(err, StdioError::NoRuntime));
    }
}
