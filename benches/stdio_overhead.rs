//! Latency a gated call through `PayGateLayer` + `StdioUpstream` adds over calling the same
//! stdio MCP server directly. Uses the reference server-everything that `scripts/test.sh`
//! installs into `.test-deps/`.
//!
//! `cargo bench --bench stdio_overhead`: sequential `echo` calls, median latency of each path.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use paygate_mcp::{Gate, PayGateConfig, PayGateLayer, StdioConfig, StdioUpstream};
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn echo(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hello"}}}}}}"#
    )
}

/// Sequential calls straight over the child's stdin/stdout.
fn direct(calls: u64) -> Duration {
    let mut child = Command::new("node")
        .arg(server_script())
        .arg("stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut send_and_wait = |msg: &str, id: Option<u64>| {
        writeln!(stdin, "{msg}").expect("write");
        stdin.flush().expect("flush");
        let Some(id) = id else { return };
        loop {
            line.clear();
            stdout.read_line(&mut line).expect("read");
            if line.contains(&format!("\"id\":{id}")) {
                return;
            }
        }
    };
    send_and_wait(
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#,
        Some(0),
    );
    send_and_wait(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        None,
    );
    for id in 0..500 {
        send_and_wait(&echo(1_000_000 + id), Some(1_000_000 + id));
    }
    let mut times = Vec::new();
    for id in 1..=calls {
        let t = Instant::now();
        send_and_wait(&echo(id), Some(id));
        times.push(t.elapsed());
    }
    let _ = child.kill();
    let _ = child.wait();
    median(times)
}

/// Medians of three interleaved paths on one child: `StdioUpstream::call_json` (the async
/// client alone), `StdioUpstream` as an HTTP service, and the service behind `PayGateLayer`.
fn gated(calls: u64) -> (Duration, Duration, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let upstream = StdioUpstream::spawn(
            StdioConfig::new(
                "node",
                [server_script().display().to_string(), "stdio".into()],
            )
            .with_forward_stderr(false),
        )
        .await
        .expect("spawn");
        let gate =
            Arc::new(Gate::new(PayGateConfig::default().with_rate_limit(0)).expect("config"));
        let key = gate
            .create_key("bench", paygate_mcp::config::MAX_AMOUNT)
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
        // Node compiles its hot paths as it goes: warm the child up first, untimed.
        for id in 0..500 {
            let msg: serde_json::Value = serde_json::from_str(&echo(1_000_000 + id)).expect("json");
            upstream.call_json(msg).await.expect("warm-up");
        }
        let (mut bare, mut service, mut layered) = (Vec::new(), Vec::new(), Vec::new());
        for id in 1..=calls {
            let msg: serde_json::Value = serde_json::from_str(&echo(id)).expect("json");
            let t = Instant::now();
            upstream.call_json(msg).await.expect("answer");
            bare.push(t.elapsed());

            let req = request(id, None);
            let t = Instant::now();
            let resp = upstream.clone().oneshot(req).await.expect("infallible");
            resp.into_body().collect().await.expect("body");
            service.push(t.elapsed());

            let req = request(id, Some(&key));
            let t = Instant::now();
            let resp = svc.clone().oneshot(req).await.expect("infallible");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            layered.push(t.elapsed());
            assert!(
                body.windows(5).any(|w| w == b"Echo:"),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        upstream.shutdown().await;
        (median(bare), median(service), median(layered))
    })
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    let calls = if quick { 20 } else { 3_000 };
    let mut added = Vec::new();
    for _ in 0..if quick { 1 } else { 3 } {
        let d = direct(calls);
        let (bare, service, layered) = gated(calls);
        println!(
            "direct (blocking client) {d:?} | StdioUpstream::call_json {bare:?} | as a service {service:?} | behind PayGateLayer {layered:?}"
        );
        added.push(layered.as_secs_f64() / bare.as_secs_f64() - 1.0);
    }
    added.sort_by(f64::total_cmp);
    println!(
        "stdio_overhead: the gate adds a median {:.1}% over the same stdio client alone",
        added[added.len() / 2] * 100.0
    );
}
