//! [`StdioConfig`]: how to run the MCP server and how patient to be with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(doc)]
use super::StdioUpstream;

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
    pub(super) fn normalized(mut self) -> Self {
        let ms = Duration::from_millis(1);
        self.request_timeout = self.request_timeout.max(ms);
        self.handshake_timeout = self.handshake_timeout.max(ms);
        self.restart_min_backoff = self.restart_min_backoff.max(ms);
        self.restart_max_backoff = self.restart_max_backoff.max(self.restart_min_backoff);
        self.max_message_bytes = self.max_message_bytes.max(1);
        self
    }

    /// A short name for log lines: the command's file name.
    pub(super) fn label(&self) -> String {
        Path::new(&self.command)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.command.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
