//! The complete gateway: the demo MCP server (or your own) behind PayGate on one port.
//!
//! ```text
//! cargo run --example gateway -- [--port 3402] [--admin-key KEY] [--config FILE]
//!     [--price N] [--rate-limit N] [--tool-price "search:5,echo:1"] [--shadow]
//!     [--refund-on-failure] [--import-key "pg_...:100"]
//! ```

#[path = "common/demo_server.rs"]
mod demo_server;

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use paygate_mcp::{
    block_on, generate_key, AdminService, ClientAddr, EventSink, FanOut, Gate, Metrics,
    PayGateConfig, PayGateLayer, SystemClock,
};
use tower::ServiceBuilder;

#[derive(Debug, Default)]
struct Args {
    port: Option<u16>,
    admin_key: Option<String>,
    config: Option<String>,
    price: Option<u64>,
    rate_limit: Option<u64>,
    tool_prices: Vec<(String, u64)>,
    shadow: bool,
    refund_on_failure: bool,
    import_keys: Vec<(String, u64)>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: '{v}' is not a whole number"))
        };
        match flag.as_str() {
            "--port" => {
                let v = value("--port")?;
                args.port = Some(
                    v.parse()
                        .map_err(|_| format!("--port: '{v}' is not a port"))?,
                );
            }
            "--admin-key" => args.admin_key = Some(value("--admin-key")?),
            "--config" => args.config = Some(value("--config")?),
            "--price" => args.price = Some(number("--price", value("--price")?)?),
            "--rate-limit" => {
                args.rate_limit = Some(number("--rate-limit", value("--rate-limit")?)?)
            }
            "--tool-price" => {
                for pair in value("--tool-price")?
                    .split(',')
                    .filter(|p| !p.trim().is_empty())
                {
                    let (tool, price) = pair
                        .rsplit_once(':')
                        .ok_or_else(|| format!("--tool-price: '{pair}' is not tool:price"))?;
                    args.tool_prices.push((
                        tool.trim().to_string(),
                        number("--tool-price", price.trim().to_string())?,
                    ));
                }
            }
            "--shadow" => args.shadow = true,
            "--refund-on-failure" => args.refund_on_failure = true,
            "--import-key" => {
                let v = value("--import-key")?;
                let (key, credits) = v
                    .rsplit_once(':')
                    .ok_or_else(|| "--import-key: expected KEY:CREDITS".to_string())?;
                args.import_keys.push((
                    key.to_string(),
                    number("--import-key", credits.to_string())?,
                ));
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn config_from(args: &Args) -> Result<PayGateConfig, String> {
    let mut cfg = match &args.config {
        Some(path) => PayGateConfig::from_json_file(path).map_err(|e| e.to_string())?,
        None => PayGateConfig::default(),
    };
    if let Some(p) = args.price {
        cfg = cfg.with_default_price(p);
    }
    if let Some(r) = args.rate_limit {
        cfg = cfg.with_rate_limit(r);
    }
    for (tool, price) in &args.tool_prices {
        cfg = cfg.with_tool_price(tool, *price);
    }
    if args.shadow {
        cfg = cfg.with_shadow_mode(true);
    }
    if args.refund_on_failure {
        cfg = cfg.with_refund_on_failure(true);
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Hands the socket's peer address to the layers.
async fn client_addr(
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> axum::response::Response {
    req.extensions_mut().insert(ClientAddr(addr));
    next.run(req).await
}

const USAGE: &str = "usage: cargo run --example gateway -- [--port N] [--admin-key KEY] [--config FILE] [--price N] [--rate-limit N] [--tool-price \"a:1,b:5\"] [--shadow] [--refund-on-failure] [--import-key \"pg_...:100\"]";

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let cfg = match config_from(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics = std::sync::Arc::new(Metrics::new(std::sync::Arc::new(SystemClock)));
    let sinks = FanOut(vec![metrics.clone() as std::sync::Arc<dyn EventSink>]);
    let gate = match Gate::new(cfg) {
        Ok(g) => std::sync::Arc::new(g.with_event_sink(std::sync::Arc::new(sinks))),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let admin_key = match args
        .admin_key
        .clone()
        .map(Ok)
        .unwrap_or_else(|| generate_key().map(|k| format!("admin_{}", &k[3..])))
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: cannot generate an admin key: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut keys = Vec::new();
    for (key, credits) in &args.import_keys {
        if *key == admin_key {
            eprintln!("error: --import-key: an API key cannot be the admin key");
            return ExitCode::from(2);
        }
        if let Err(e) = block_on(gate.import_key(key, "imported", *credits)) {
            eprintln!("error: --import-key: {e}");
            return ExitCode::from(2);
        }
        keys.push(key.clone());
    }
    if keys.is_empty() {
        match block_on(gate.create_key("demo", 100)) {
            Ok(k) => keys.push(k),
            Err(e) => {
                eprintln!("error: cannot create the demo key: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let mcp = ServiceBuilder::new()
        .layer(PayGateLayer::from_gate(gate.clone()))
        .service(demo_server::service(demo_server::Mode::Json));
    let admin = AdminService::new(gate.clone(), &admin_key).with_metrics(metrics);
    let app = axum::Router::new()
        .nest_service("/mcp", mcp)
        .fallback_service(admin)
        .layer(middleware::from_fn(client_addr));

    let port = args.port.unwrap_or(3402);
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("http://127.0.0.1:{port}/mcp");
    let credits = args.import_keys.first().map_or(100, |(_, c)| *c);
    println!("PayGate MCP gateway on {url} ({})", gate.config().name);
    println!("An API key with {credits} credits and the admin key; paste these into your shell:");
    println!("export PAYGATE_KEY={}", keys[0]);
    println!("export PAYGATE_ADMIN_KEY={admin_key}");
    println!();
    println!("Then call a tool:");
    println!(
        "curl -s {url} -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -H \"X-API-Key: $PAYGATE_KEY\" -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"hello\":\"world\"}}}}}}'"
    );
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    if let Err(e) = serve.await {
        eprintln!("error: server stopped: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
