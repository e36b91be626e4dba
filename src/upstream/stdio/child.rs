//! One child process: starting it with its stdio piped, the tasks that serve its streams,
//! the MCP handshake with it, and stopping it.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conn::Conn;
use super::error::StdioError;
use super::framing::{read_loop, stderr_loop, write_loop};
use super::message::Call;
use super::supervisor::Shared;
use super::PROTOCOL_VERSION;

/// Lines queued for the child's stdin before senders wait.
const WRITE_QUEUE: usize = 256;

/// The background tasks of one child; aborted when it is dropped.
pub(super) struct Tasks {
    pub(super) reader: JoinHandle<()>,
    pub(super) writer: JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A started child after a completed handshake.
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) conn: Arc<Conn>,
    pub(super) init: Arc<Value>,
    pub(super) tasks: Tasks,
    pub(super) started: Instant,
}

impl Running {
    /// Kills the child (if it still runs) and reaps it.
    pub(super) async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Closes stdin, gives the child `grace` to exit, then kills it; fails what still waits.
    pub(super) async fn stop(mut self, grace: Duration) {
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

impl Shared {
    /// Starts a child and does the MCP handshake with it.
    pub(super) async fn start_child(&self) -> Result<Running, StdioError> {
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
