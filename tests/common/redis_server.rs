//! A private `redis-server` for the tests, on a free loopback port. It stops when the test
//! process ends (its wrapper shell watches the test's stdin pipe), or when dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    /// The redis-server process (a child of the wrapper shell, which reaps it only once its
    /// stdin closes, so the id cannot be reused while `child` is held).
    pid: Option<u32>,
    /// Stopped with SIGSTOP and not yet continued.
    paused: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// Starts redis-server with append-only persistence (so a restart keeps the data).
    /// Panics when the binary is missing: a missing dependency is a failure, not a skip.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "paygate-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
            pid: None,
            paused: false,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let which = Command::new("sh")
            .arg("-c")
            .arg("command -v redis-server")
            .output();
        assert!(
            which.map(|o| o.status.success()).unwrap_or(false),
            "redis-server is not installed: run `apt-get install -y redis-server` (scripts/test.sh does)"
        );
        let cmd = format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir {dir} --daemonize no >{dir}/redis.log 2>&1 & pid=$!; echo $pid; cat >/dev/null; kill $pid; wait $pid",
            port = self.port,
            dir = self.dir.display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        self.pid = line.trim().parse().ok();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Sends `signal` to the redis-server process.
    fn signal(&self, signal: &str) {
        let pid = self.pid.expect("redis-server's process id");
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{signal} {pid} failed");
    }

    /// Kills the server with SIGKILL: no shutdown, no last save. What it acknowledged is in
    /// the append-only file already (written before every reply, `appendfsync always`).
    pub fn kill(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal("KILL");
        self.paused = false;
        self.stop();
    }

    /// Freezes the server with SIGSTOP: connections stay open and requests are read by
    /// nobody, as with a hung server. [`RedisServer::resume`] continues it.
    pub fn pause(&mut self) {
        if self.child.is_some() && !self.paused {
            self.signal("STOP");
            self.paused = true;
        }
    }

    /// Continues a paused server; it then runs what it was sent in the meantime.
    pub fn resume(&mut self) {
        if self.paused {
            self.signal("CONT");
            self.paused = false;
        }
    }

    /// Stops the server (its data stays on disk).
    pub fn stop(&mut self) {
        self.resume(); // a stopped process would hold SIGTERM pending forever
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take()); // the wrapper kills redis-server when its stdin closes
            let _ = child.wait();
        }
        self.pid = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs a redis-cli command against the server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the store suites (`store_conformance.rs`, `grant_store.rs`) run on Redis with: one
/// server for the whole test binary, a fresh key prefix per store.
#[cfg(feature = "redis")]
pub mod suite {
    use std::sync::OnceLock;

    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore, RedisTime};

    use super::RedisServer;

    fn server() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(RedisServer::start)
    }

    /// A store with a prefix of its own on the shared server, on the request's time.
    pub async fn store() -> RedisKeyStore {
        let prefix = format!("t{}:", paygate_mcp::generate_key().unwrap_or_default());
        let config = RedisConfig::new(server().url())
            .with_prefix(prefix)
            .with_time(RedisTime::Request);
        RedisKeyStore::connect(config)
            .await
            .expect("connect to the test redis-server")
    }

    /// Runs a test body on a runtime of its own.
    pub fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }
}
