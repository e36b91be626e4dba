//! Latency a gated call through `PayGateLayer` + `StdioUpstream` adds over calling the same
//! stdio MCP server directly. Uses the reference server-everything that `scripts/test.sh`
//! installs into `.test-deps/`.
//!
//! `cargo bench --bench stdio_overhead`: sequential `echo` calls, median latency of each path.
//! The paths take turns in runs of calls within one loop, so drift in the host's load
//! touches them all alike; the benchmark and the servers sit on separate cores (see
//! [`cores`]). Without `--bench` (as `cargo test` runs it) it makes a few calls only.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use paygate_mcp::{Gate, PayGateConfig, PayGateLayer, StdioConfig, StdioUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tower::{ServiceBuilder, ServiceExt};

fn server_script() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".test-deps/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        path.exists(),
        "run scripts/test.sh first: it installs server-everything into .test-deps/"
    );
    path
}

/// With two cores or more, the benchmark runs on the first and the servers on the second, so
/// every child gets the same placement (left to the scheduler, one child may keep landing on
/// the benchmark's core and answer 15–25 µs slower than the other). Decided once, before the
/// benchmark pins itself (after that it sees one core).
static CORES: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();

/// The first two CPUs this process may run on, from `Cpus_allowed_list` (`0-1`, `2,5-7`).
fn cores() -> Option<&'static (String, String)> {
    CORES
        .get_or_init(|| {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
                .trim();
            let mut cpus = list.split(',').flat_map(|part| {
                let (lo, hi) = part.split_once('-').unwrap_or((part, part));
                let range = lo.parse::<u32>().ok().zip(hi.parse::<u32>().ok());
                range.into_iter().flat_map(|(lo, hi)| lo..=hi)
            });
            Some((cpus.next()?.to_string(), cpus.next()?.to_string()))
        })
        .as_ref()
}

fn pin_self(cpu: &str) {
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("taskset")
        .args(["-p", "-c", cpu, &pid])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux) pins the benchmark to one core");
    assert!(status.success(), "taskset failed");
}

/// `node <server-everything> stdio`, on the servers' core.
fn node_command() -> (String, Vec<String>) {
    let script = server_script().display().to_string();
    let node = vec!["node".to_string(), script, "stdio".into()];
    match cores() {
        Some((_, servers)) => {
            let mut args = vec!["-c".to_string(), servers.clone()];
            args.extend(node);
            ("taskset".into(), args)
        }
        None => (node[0].clone(), node[1..].to_vec()),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn echo(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hello"}}}}}}"#
    )
}

/// A minimal client speaking to its own child over stdin/stdout: what "calling the server's
/// stdio directly" costs, with nothing of the gateway in between.
struct Direct {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes read but not yet cut into lines.
    pending: Vec<u8>,
    chunk: Vec<u8>,
}

impl Direct {
    async fn spawn() -> Self {
        let (program, args) = node_command();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut direct = Self {
            child,
            stdin,
            stdout,
            pending: Vec::new(),
            chunk: vec![0; 64 * 1024],
        };
        direct
            .send(
                r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#,
                Some(0),
            )
            .await;
        direct
            .send(
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                None,
            )
            .await;
        direct
    }

    /// Writes one line and, for a request, reads lines until its answer.
    async fn send(&mut self, msg: &str, id: Option<u64>) {
        // One write per message, as the gateway does: two would wake the server twice.
        let mut line = Vec::with_capacity(msg.len() + 1);
        line.extend_from_slice(msg.as_bytes());
        line.push(b'\n');
        self.stdin.write_all(&line).await.expect("write");
        let Some(id) = id else { return };
        let (end, more) = (format!("\"id\":{id}}}"), format!("\"id\":{id},"));
        let answered = |line: &[u8]| {
            let line = String::from_utf8_lossy(line);
            line.contains(&end) || line.contains(&more)
        };
        loop {
            while let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                if answered(&line) {
                    return;
                }
            }
            let n = self.stdout.read(&mut self.chunk).await.expect("read");
            assert!(n > 0, "the server closed its stdout");
            self.pending.extend_from_slice(&self.chunk[..n]);
        }
    }
}

/// Calls each path makes in a row.
const RUN: u64 = 20;

/// Every order of the four paths.
const ORDERS: [[u8; 4]; 24] = [
    [0, 1, 2, 3],
    [0, 1, 3, 2],
    [0, 2, 1, 3],
    [0, 2, 3, 1],
    [0, 3, 1, 2],
    [0, 3, 2, 1],
    [1, 0, 2, 3],
    [1, 0, 3, 2],
    [1, 2, 0, 3],
    [1, 2, 3, 0],
    [1, 3, 0, 2],
    [1, 3, 2, 0],
    [2, 0, 1, 3],
    [2, 0, 3, 1],
    [2, 1, 0, 3],
    [2, 1, 3, 0],
    [2, 3, 0, 1],
    [2, 3, 1, 0],
    [3, 0, 1, 2],
    [3, 0, 2, 1],
    [3, 1, 0, 2],
    [3, 1, 2, 0],
    [3, 2, 0, 1],
    [3, 2, 1, 0],
];

/// Medians of four interleaved paths: a direct client on its own child, and on a second
/// child `StdioUpstream::call_json` (the async client alone), `StdioUpstream` as an HTTP
/// service, and the service behind `PayGateLayer`.
struct Medians {
    direct: Duration,
    call_json: Duration,
    service: Duration,
    layered: Duration,
}

fn run(calls: u64) -> Medians {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (program, args) = node_command();
        let upstream =
            StdioUpstream::spawn(StdioConfig::new(program, args).with_forward_stderr(false))
                .await
                .expect("spawn");
        let mut direct = Direct::spawn().await;
        let gate =
            Arc::new(Gate::new(PayGateConfig::default().with_rate_limit(0)).expect("config"));
        let key = gate
            .create_key("bench", paygate_mcp::amount::MAX_AMOUNT)
            .await
            .expect("key");
        let svc = ServiceBuilder::new()
            .layer(PayGateLayer::from_gate(gate))
            .service(upstream.clone());
        let request = |id: u64, key: Option<&str>| {
            let mut b = Request::post("http://localhost/mcp");
            if let Some(k) = key {
                b = b.header("x-api-key", k);
            }
            b.body(Full::new(Bytes::from(echo(id)))).expect("request")
        };
        // Node compiles its hot paths as it goes: warm both children up first, untimed.
        for id in 0..500 {
            let msg = echo(1_000_000 + id);
            direct.send(&msg, Some(1_000_000 + id)).await;
            let msg: serde_json::Value = serde_json::from_str(&msg).expect("json");
            upstream.call_json(msg).await.expect("warm-up");
        }
        let mut times: [Vec<Duration>; 4] = Default::default();
        for round in 0..calls.div_ceil(RUN) {
            // Each path serves a run of calls back to back, as a gateway does; the order of
            // the runs changes every round, so slow drift touches every path alike.
            for path in ORDERS[(round as usize * 7) % ORDERS.len()] {
                for id in round * RUN + 1..=(round + 1) * RUN {
                    let t = Instant::now();
                    match path {
                        0 => direct.send(&echo(id), Some(id)).await,
                        1 => {
                            let msg = serde_json::from_str(&echo(id)).expect("json");
                            let t = Instant::now();
                            upstream.call_json(msg).await.expect("answer");
                            times[1].push(t.elapsed());
                            continue;
                        }
                        2 => {
                            let req = request(id, None);
                            let t = Instant::now();
                            let resp = upstream.clone().oneshot(req).await.expect("infallible");
                            resp.into_body().collect().await.expect("body");
                            times[2].push(t.elapsed());
                            continue;
                        }
                        _ => {
                            let req = request(id, Some(&key));
                            let t = Instant::now();
                            let resp = svc.clone().oneshot(req).await.expect("infallible");
                            let body = resp.into_body().collect().await.expect("body").to_bytes();
                            times[3].push(t.elapsed());
                            assert!(
                                body.windows(5).any(|w| w == b"Echo:"),
                                "{}",
                                String::from_utf8_lossy(&body)
                            );
                            continue;
                        }
                    }
                    times[0].push(t.elapsed());
                }
            }
        }
        upstream.shutdown().await;
        let _ = direct.child.kill().await;
        let [direct, call_json, service, layered] = times.map(median);
        Medians {
            direct,
            call_json,
            service,
            layered,
        }
    })
}

fn main() {
    if let Some((bench, _)) = cores() {
        pin_self(bench);
    }
    let quick = std::env::args().all(|a| a != "--bench");
    let calls = if quick { 20 } else { 3_000 };
    let (mut over_direct, mut over_client) = (Vec::new(), Vec::new());
    for _ in 0..if quick { 1 } else { 3 } {
        let m = run(calls);
        println!(
            "direct client {:?} | StdioUpstream::call_json {:?} | as a service {:?} | behind PayGateLayer {:?}",
            m.direct, m.call_json, m.service, m.layered
        );
        over_direct.push(m.layered.as_secs_f64() / m.direct.as_secs_f64() - 1.0);
        over_client.push(m.layered.as_secs_f64() / m.call_json.as_secs_f64() - 1.0);
    }
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 100.0
    };
    println!(
        "stdio_overhead: the gateway adds a median {:.1}% over a direct client, {:.1}% over StdioUpstream::call_json",
        mid(over_direct),
        mid(over_client)
    );
}
