//! End-to-end HTTP throughput of a gated `tools/call` against the same server without the
//! layers, driven by `wrk` over loopback: `cargo bench --bench http_e2e` (wrk must be
//! installed; `scripts/bench_http.sh` installs it).
//!
//! Two downstreams: a minimal JSON-RPC responder (the layers' worst case: nothing else costs
//! anything) and the rmcp demo server in stateless JSON mode (a real MCP server).

#[path = "../examples/common/demo_server.rs"]
mod demo_server;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use paygate_mcp::{Gate, PayGateConfig, PayGateLayer};
use tower::{service_fn, ServiceBuilder};

const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"q":"hello"}}}"#;

/// What the no-op downstream answers to every call.
fn noop_reply() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}"#,
    )));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Requests per second `wrk` reaches against `url` with `key`.
fn wrk(url: &str, key: &str, seconds: u32) -> f64 {
    let script = std::env::temp_dir().join(format!("paygate-wrk-{}.lua", std::process::id()));
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\nwrk.headers[\"X-API-Key\"] = \"{key}\"\n"
    );
    std::fs::write(&script, lua).expect("write wrk script");
    let out = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .expect("wrk must be installed (scripts/bench_http.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let quick = std::env::args().all(|a| a != "--bench");
    if quick {
        // `cargo test --benches` builds this; the measurement needs wrk and minutes.
        println!("http_e2e: run `cargo bench --bench http_e2e` to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (urls, key) = rt.block_on(async {
        let cfg = PayGateConfig::default().with_rate_limit(0);
        let gate = Arc::new(Gate::new(cfg).expect("config"));
        let key = gate
            .create_key("bench", paygate_mcp::amount::MAX_AMOUNT)
            .await
            .expect("key");
        let noop =
            service_fn(|_r: Request<axum::body::Body>| async { Ok::<_, Infallible>(noop_reply()) });
        let noop_gated =
            service_fn(|_r: Request<Full<Bytes>>| async { Ok::<_, Infallible>(noop_reply()) });
        let mode = demo_server::Mode::Json;
        let urls = [
            serve(axum::Router::new().route_service("/mcp", noop)).await,
            serve(
                axum::Router::new().route_service(
                    "/mcp",
                    ServiceBuilder::new()
                        .layer(PayGateLayer::from_gate(gate.clone()))
                        .service(noop_gated),
                ),
            )
            .await,
            serve(axum::Router::new().nest_service("/mcp", demo_server::service(mode))).await,
            serve(
                axum::Router::new().nest_service(
                    "/mcp",
                    ServiceBuilder::new()
                        .layer(PayGateLayer::from_gate(gate.clone()))
                        .service(demo_server::service(mode)),
                ),
            )
            .await,
        ]
        .map(|a| format!("http://{a}/mcp"));
        (urls, key)
    });
    let _guard = rt.enter();
    let seconds = 5;
    let rounds = 3;
    let mut table = Vec::new();
    for (name, plain, gated) in [
        ("no-op JSON-RPC responder", &urls[0], &urls[1]),
        ("rmcp demo server (JSON)", &urls[2], &urls[3]),
    ] {
        let mut ratios = Vec::new();
        let mut plain_rates = Vec::new();
        let mut gated_rates = Vec::new();
        for _ in 0..rounds {
            let p = wrk(plain, &key, seconds);
            let g = wrk(gated, &key, seconds);
            plain_rates.push(p);
            gated_rates.push(g);
            ratios.push(g / p);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        table.push((
            name,
            median(plain_rates),
            median(gated_rates),
            median(ratios),
        ));
    }
    println!("| downstream | without layers (req/s) | with PayGateLayer (req/s) | ratio |");
    println!("|---|---|---|---|");
    for (name, p, g, r) in table {
        println!("| {name} | {p:.0} | {g:.0} | {:.0}% |", r * 100.0);
    }
}
