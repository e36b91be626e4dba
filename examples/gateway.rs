//! The complete gateway: the demo MCP server behind PayGate, with the admin API, on one port.
//!
//! ```text
//! cargo run --example gateway -- [--port 3402] [--admin-key KEY] [--config FILE]
//!     [--price N] [--rate-limit N] [--tool-price "search:5,echo:1"] [--shadow]
//!     [--refund-on-failure] [--import-key "pg_...:100"] [--state-file FILE]
//!     [--webhook-url URL] [--webhook-secret SECRET] [--redis-url redis://127.0.0.1:6379]
//!     [--server "npx -y @modelcontextprotocol/server-everything"] [--remote-url URL]
//!     [--print-keys] [--oauth] [--public-url URL] [--oauth-access-ttl SECS]
//!     [--stripe-webhook-secret whsec_...] [--stripe-secret-key sk_...]
//!     [--stripe-package "id:credits:price_..."] [--stripe-success-url URL]
//!
//! `--redis-url` needs `--features redis`; without it keys live in memory (and in the
//! `--state-file`, when given).
//! ```
//!
//! A paygate-mcp 1.8 config file loads unchanged with `--config`: its `port`, `adminKey`,
//! `stateFile`, `importKeys`, `publicUrl`, `oauth` and `stripeWebhookSecret` are used when
//! the matching flag is absent (a flag wins).
//! `oauth.jwt` (an external identity provider) needs `--features jwt`.

#[path = "common/baseline.rs"]
mod baseline;
#[path = "common/client_addr.rs"]
mod client_addr;
#[path = "common/demo_server.rs"]
mod demo_server;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::middleware;
use clap::Parser;
use client_addr::client_addr;
use paygate_mcp::admin::check_admin_key;
use paygate_mcp::upstream::{boxed, UpstreamService};
use paygate_mcp::{
    generate_key, AdminService, AuditLog, EventSink, FanOut, Gate, HealthCheck, HttpUpstream,
    HttpUpstreamConfig, KeyStore, McpRouter, MemoryKeyStore, Metrics, PayGateConfig, PayGateLayer,
    StdioConfig, StdioUpstream, SystemClock, WebhookConfig, WebhookSink,
};
use tower::ServiceBuilder;

/// How often the state file is rewritten when keys changed.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);

/// A paid MCP gateway: the demo MCP server (or your own, over stdio or HTTP) behind PayGate,
/// with the admin API on the same port.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Args {
    /// Port to listen on (127.0.0.1; 0 takes a free one); else the config's port, else 3402.
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Admin API key (16+ printable characters); else PAYGATE_ADMIN_KEY, else the config's
    /// adminKey, else generated.
    #[arg(long, value_name = "KEY", value_parser = admin_key)]
    admin_key: Option<String>,
    /// A JSON PayGateConfig file.
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Default credits per call.
    #[arg(long, value_name = "N")]
    price: Option<u64>,
    /// Calls per key per rolling minute (0 = off).
    #[arg(long, value_name = "N")]
    rate_limit: Option<u64>,
    /// Per-tool prices, "search:5,echo:1" (repeatable).
    #[arg(long = "tool-price", value_name = "TOOL:N,...", value_parser = tool_prices)]
    tool_prices: Vec<Vec<(String, u64)>>,
    /// Record every check but allow every call and charge nothing.
    #[arg(long)]
    shadow: bool,
    /// Refund calls whose tool fails.
    #[arg(long)]
    refund_on_failure: bool,
    /// Import an existing key with its credits, "pg_...:100" (repeatable); imported with the
    /// config's importKeys, and wins for the same key.
    #[arg(long = "import-key", value_name = "KEY:CREDITS", value_parser = import_key)]
    import_keys: Vec<(String, u64)>,
    /// Keep keys across restarts in this JSON file; else the config's stateFile.
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    /// Import the keys of a paygate-mcp 1.8 (TypeScript) state file at start.
    #[arg(long, value_name = "FILE")]
    import_state: Option<PathBuf>,
    /// POST usage and admin events here.
    #[arg(long, value_name = "URL")]
    webhook_url: Option<String>,
    /// Sign webhook POSTs with this secret.
    #[arg(long, value_name = "SECRET")]
    webhook_secret: Option<String>,
    /// Keep keys in Redis (needs --features redis).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// With --redis-url: keep charges owed back after an outage in this file.
    #[arg(long, value_name = "FILE")]
    owed_file: Option<PathBuf>,
    /// Wrap an MCP server run as this command over stdio.
    #[arg(long, value_name = "CMD ARGS")]
    server: Option<String>,
    /// Wrap a remote Streamable-HTTP MCP server.
    #[arg(long, value_name = "URL")]
    remote_url: Option<String>,
    /// Print the API and admin keys even when stdout is not a terminal.
    #[arg(long)]
    print_keys: bool,
    /// Log as JSON lines (the level comes from RUST_LOG, default info).
    #[arg(long)]
    log_json: bool,
    /// Let MCP clients sign in with OAuth 2.1 (the gateway is its own authorization server;
    /// the consent page asks for the API key that pays).
    #[arg(long)]
    oauth: bool,
    /// The gateway's public base URL, the OAuth issuer (default http://127.0.0.1:<port>).
    #[arg(long, value_name = "URL", value_parser = public_url)]
    public_url: Option<String>,
    /// Lifetime of OAuth access tokens in seconds (default 3600, or the config's
    /// oauth.accessTokenTtl).
    #[arg(long, value_name = "SECS")]
    oauth_access_ttl: Option<u64>,
    /// Stripe's webhook signing secret (whsec_...): POST /stripe/webhook credits paid
    /// checkouts.
    #[arg(long, value_name = "SECRET")]
    stripe_webhook_secret: Option<String>,
    /// Stripe's secret API key (sk_...): POST /checkout sells the --stripe-package packages.
    #[arg(long, value_name = "KEY")]
    stripe_secret_key: Option<String>,
    /// A credit package for sale, "id:credits:price_..." (repeatable).
    #[arg(long = "stripe-package", value_name = "ID:CREDITS:PRICE", value_parser = stripe_package)]
    stripe_packages: Vec<paygate_mcp::config::CreditPackage>,
    /// Where Stripe Checkout sends a buyer after paying (and after cancelling).
    #[arg(long, value_name = "URL")]
    stripe_success_url: Option<String>,
    /// Stripe's API base (default https://api.stripe.com).
    #[arg(long, value_name = "URL")]
    stripe_api_base: Option<String>,
    /// Browser origins allowed to call the gateway, e.g. "https://app.example" (repeatable);
    /// any origin when not given. Keys travel in headers, never cookies.
    #[arg(long = "cors-origin", value_name = "ORIGIN", value_parser = cors_origin)]
    cors_origins: Vec<http::HeaderValue>,
    /// For benchmarks: answer every call at once with an empty result instead of running an
    /// MCP server, so only the gateway's own cost is measured.
    #[arg(long)]
    noop_server: bool,
    /// For benchmarks: serve the MCP server without the gate (no key checked, nothing
    /// charged), the baseline a gated run is compared with. Never in production.
    #[arg(long)]
    ungated: bool,
}

fn public_url(v: &str) -> Result<String, String> {
    paygate_mcp::config::check_public_url(v)
}

fn cors_origin(v: &str) -> Result<http::HeaderValue, String> {
    let ok = (v.starts_with("https://") || v.starts_with("http://")) && !v.ends_with('/');
    match http::HeaderValue::from_str(v) {
        Ok(value) if ok => Ok(value),
        _ => Err(format!("'{v}' is not an origin like https://app.example")),
    }
}

/// CORS for browser MCP clients: the MCP and PayGate request headers are allowed, and the
/// headers the gate sets are exposed (the layers name them on every answer).
fn cors(origins: &[http::HeaderValue]) -> tower_http::cors::CorsLayer {
    use http::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::DELETE])
        .allow_headers([
            CONTENT_TYPE,
            AUTHORIZATION,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-admin-key"),
            HeaderName::from_static("mcp-session-id"),
            HeaderName::from_static("mcp-protocol-version"),
            HeaderName::from_static("mcp-method"),
            HeaderName::from_static("mcp-name"),
        ])
        .max_age(Duration::from_secs(600))
}

fn whole(v: &str) -> Result<u64, String> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| format!("'{v}' is not a whole number"))
}

fn admin_key(v: &str) -> Result<String, String> {
    check_admin_key(v).map_err(|e| e.to_string())?;
    Ok(v.to_string())
}

fn tool_prices(v: &str) -> Result<Vec<(String, u64)>, String> {
    v.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (tool, price) = pair
                .rsplit_once(':')
                .ok_or_else(|| format!("'{pair}' is not tool:price"))?;
            Ok((tool.trim().to_string(), whole(price)?))
        })
        .collect()
}

fn stripe_package(v: &str) -> Result<paygate_mcp::config::CreditPackage, String> {
    let mut parts = v.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(id), Some(credits), Some(price)) if !id.is_empty() && !price.is_empty() => {
            Ok(paygate_mcp::config::CreditPackage {
                id: id.to_string(),
                credits: whole(credits)?,
                price_id: price.to_string(),
            })
        }
        _ => Err("expected ID:CREDITS:PRICE_ID, e.g. starter:500:price_1Nx...".to_string()),
    }
}

fn import_key(v: &str) -> Result<(String, u64), String> {
    let (key, credits) = v
        .rsplit_once(':')
        .ok_or_else(|| "expected KEY:CREDITS".to_string())?;
    Ok((key.to_string(), whole(credits)?))
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
    for (tool, price) in args.tool_prices.iter().flatten() {
        cfg = cfg.with_tool_price(tool, *price);
    }
    if args.shadow {
        cfg = cfg.with_shadow_mode(true);
    }
    if args.refund_on_failure {
        cfg = cfg.with_refund_on_failure(true);
    }
    if let Some(url) = &args.webhook_url {
        cfg.webhook_url = Some(url.clone());
    }
    if let Some(secret) = &args.webhook_secret {
        cfg.webhook_secret = Some(secret.clone());
    }
    if let Some(server) = &args.server {
        let mut words = server.split_whitespace().map(str::to_string);
        cfg.server_command = words.next();
        cfg.server_args = words.collect();
        cfg.servers.clear();
    }
    if let Some(url) = &args.remote_url {
        cfg.remote_url = Some(url.clone());
        cfg.servers.clear();
    }
    let stripe_flags = args.stripe_webhook_secret.is_some()
        || args.stripe_secret_key.is_some()
        || !args.stripe_packages.is_empty()
        || args.stripe_success_url.is_some()
        || args.stripe_api_base.is_some();
    if stripe_flags {
        // Flags win over the config's stripe section, field by field.
        let mut stripe =
            cfg.stripe_settings()
                .unwrap_or_else(|| paygate_mcp::config::StripeSettings {
                    api_base: paygate_mcp::config::stripe::STRIPE_API.to_string(),
                    ..Default::default()
                });
        if let Some(secret) = &args.stripe_webhook_secret {
            stripe.webhook_secret = Some(secret.clone());
        }
        if let Some(key) = &args.stripe_secret_key {
            stripe.secret_key = Some(key.clone());
        }
        if !args.stripe_packages.is_empty() {
            stripe.packages = args.stripe_packages.clone();
        }
        if let Some(url) = &args.stripe_success_url {
            stripe.success_url = Some(url.clone());
        }
        if let Some(base) = &args.stripe_api_base {
            stripe.api_base = base.clone();
        }
        cfg.stripe = Some(stripe);
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// Where an API key to import comes from, to name it when it is refused.
#[derive(Debug, Clone, Copy)]
enum ImportSource {
    Flag,
    Config,
}

impl ImportSource {
    fn refused(self, key: &str, why: impl std::fmt::Display) -> String {
        match self {
            Self::Flag => format!("--import-key: {why}"),
            Self::Config => format!(
                "invalid config at 'importKeys': {}: {why}",
                paygate_mcp::mask_key(key)
            ),
        }
    }
}

/// The gateway settings a flag or the config file gives: the flag wins.
struct Settings {
    port: u16,
    state_file: Option<PathBuf>,
    /// `--import-key` flags first, then the config's `importKeys` the flags do not name.
    import_keys: Vec<(String, u64, ImportSource)>,
}

impl Settings {
    fn resolve(args: &Args, cfg: &PayGateConfig) -> Self {
        let flagged = |key: &str| args.import_keys.iter().any(|(k, _)| k == key);
        let mut import_keys: Vec<_> = args
            .import_keys
            .iter()
            .map(|(key, credits)| (key.clone(), *credits, ImportSource::Flag))
            .collect();
        import_keys.extend(
            cfg.import_keys
                .iter()
                .filter(|(key, _)| !flagged(key))
                .map(|(key, credits)| (key.clone(), *credits, ImportSource::Config)),
        );
        Self {
            port: args.port.or(cfg.port).unwrap_or(3402),
            state_file: args.state_file.clone().or_else(|| cfg.state_file.clone()),
            import_keys,
        }
    }
}

/// Loads the state file, if any, saying what was skipped.
fn load_store(path: Option<&PathBuf>) -> Result<MemoryKeyStore, String> {
    let Some(path) = path else {
        return Ok(MemoryKeyStore::new());
    };
    let (store, report) = MemoryKeyStore::load_from(path).map_err(|e| e.to_string())?;
    if report.found {
        tracing::info!(
            path = %path.display(),
            loaded = report.loaded,
            skipped = report.skipped,
            "state file loaded"
        );
        for reason in &report.reasons {
            tracing::warn!(path = %path.display(), "state file record skipped: {reason}");
        }
        if let Some(kept) = &report.rejected_file {
            tracing::warn!(kept = %kept.display(), "skipped state file records kept aside");
        }
    }
    Ok(store)
}

/// Rewrites the state file whenever keys changed, every few seconds.
fn spawn_snapshots(gate: Arc<Gate<MemoryKeyStore>>, path: PathBuf) {
    tokio::spawn(async move {
        let mut saved = gate.store().version();
        loop {
            tokio::time::sleep(SNAPSHOT_EVERY).await;
            gate.store().sweep_grants(gate.clock().now_ms());
            let now = gate.store().version();
            if now == saved {
                continue;
            }
            let (g, p) = (gate.clone(), path.clone());
            match tokio::task::spawn_blocking(move || g.store().save_to(&p)).await {
                Ok(Ok(_)) => saved = now,
                // The store logs the failed save; the next round tries again.
                Ok(Err(_)) => {}
                Err(e) => tracing::error!(error = %e, "state file snapshot task failed"),
            }
        }
    });
}

/// Ctrl-C, or SIGTERM from a service manager.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run(args: Args) -> Result<(), String> {
    let cfg = config_from(&args)?;
    let settings = Settings::resolve(&args, &cfg);
    let metrics = Arc::new(Metrics::new(Arc::new(SystemClock)));
    let audit = Arc::new(AuditLog::new(Arc::new(SystemClock)));
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![metrics.clone(), audit.clone()];
    let webhook = match WebhookConfig::from_paygate(&cfg) {
        Some(wcfg) => {
            let (sink, handle) = WebhookSink::start(wcfg).map_err(|e| e.to_string())?;
            sinks.push(sink);
            Some(handle)
        }
        None => None,
    };
    let sinks: Arc<dyn EventSink> = Arc::new(FanOut(sinks));
    let mut health = Vec::new();
    let downstream = if args.noop_server {
        baseline::noop_server()
    } else {
        downstream(&cfg, &mut health).await?
    };
    let observers = Observers {
        metrics,
        audit,
        health,
    };

    if let Some(url) = &args.redis_url {
        if settings.state_file.is_some() {
            let state_file = if args.state_file.is_some() {
                "--state-file"
            } else {
                "the config's stateFile"
            };
            return Err(format!(
                "{state_file} and --redis-url exclude each other: Redis keeps the state"
            ));
        }
        let store = redis_store(url, args.owed_file.as_deref()).await?;
        let gate =
            Gate::with_store(cfg, store, Arc::new(SystemClock)).map_err(|e| e.to_string())?;
        serve(
            Arc::new(gate.with_event_sink(sinks)),
            &args,
            &settings,
            observers,
            downstream,
        )
        .await?;
    } else {
        let store = load_store(settings.state_file.as_ref())?;
        let gate =
            Gate::with_store(cfg, store, Arc::new(SystemClock)).map_err(|e| e.to_string())?;
        let gate = Arc::new(gate.with_event_sink(sinks));
        if let Some(path) = &settings.state_file {
            spawn_snapshots(gate.clone(), path.clone());
        }
        serve(gate.clone(), &args, &settings, observers, downstream).await?;
        if let Some(path) = &settings.state_file {
            let saved = gate.store().save_to(path).map_err(|e| e.to_string())?;
            tracing::info!(path = %path.display(), keys = saved, "state file saved on shutdown");
        }
    }
    if let Some(handle) = webhook {
        // Deliver what is queued, but never hang the shutdown on a dead endpoint.
        handle.shutdown_within(Duration::from_secs(10)).await;
    }
    Ok(())
}

#[cfg(feature = "redis")]
async fn redis_store(
    url: &str,
    owed_file: Option<&std::path::Path>,
) -> Result<paygate_mcp::store::redis::RedisKeyStore, String> {
    use paygate_mcp::store::redis::{RedisConfig, RedisKeyStore};
    let mut config = RedisConfig::new(url);
    if let Some(path) = owed_file {
        // Charges owed back after an outage survive a restart of this gateway.
        config = config.with_owed_file(path);
    }
    RedisKeyStore::connect(config)
        .await
        .map_err(|e| format!("--redis-url: {e}"))
}

#[cfg(not(feature = "redis"))]
async fn redis_store(
    _url: &str,
    _owed_file: Option<&std::path::Path>,
) -> Result<MemoryKeyStore, String> {
    Err("--redis-url needs the redis feature: cargo run --features redis --example gateway -- --redis-url URL".into())
}

/// The MCP server behind the gate: the config's `servers` behind a router, its
/// `remoteUrl`, or else the built-in demo server.
/// Upstreams that can be down get a health check in `health`, for `GET /` and `/metrics`.
async fn downstream(
    cfg: &PayGateConfig,
    health: &mut Vec<(String, HealthCheck)>,
) -> Result<UpstreamService, String> {
    if !cfg.servers.is_empty() {
        let mut router = McpRouter::new(&cfg.name);
        for spec in &cfg.servers {
            let upstream = match (&spec.remote_url, &spec.server_command) {
                (Some(url), _) => boxed(
                    HttpUpstream::managed(HttpUpstreamConfig::new(url))
                        .map_err(|e| e.to_string())?,
                ),
                (None, Some(command)) => {
                    stdio(command, &spec.server_args, &spec.prefix, health).await?
                }
                (None, None) => {
                    return Err(format!(
                        "server '{}' has no serverCommand or remoteUrl",
                        spec.prefix
                    ))
                }
            };
            router = router
                .route(&spec.prefix, upstream)
                .map_err(|e| e.to_string())?;
        }
        return Ok(boxed(router));
    }
    if let Some(url) = &cfg.remote_url {
        return Ok(boxed(
            HttpUpstream::new(HttpUpstreamConfig::new(url)).map_err(|e| e.to_string())?,
        ));
    }
    if let Some(command) = &cfg.server_command {
        return stdio(command, &cfg.server_args, "server", health).await;
    }
    Ok(boxed(demo_server::service(demo_server::Mode::Json)))
}

/// Starts an MCP server command and speaks to it over stdio. A server that is down or fails
/// its handshake does not stop the gateway: calls to it are refused (and refunded) until
/// the background retries bring it up.
async fn stdio(
    command: &str,
    args: &[String],
    name: &str,
    health: &mut Vec<(String, HealthCheck)>,
) -> Result<UpstreamService, String> {
    let upstream = StdioUpstream::start(StdioConfig::new(command, args.iter().cloned()))
        .await
        .map_err(|e| e.to_string())?;
    if !upstream.is_ready() {
        tracing::warn!(command, "MCP server is not up; retrying in the background");
    }
    let probe = upstream.clone();
    health.push((name.to_string(), Arc::new(move || probe.is_ready())));
    Ok(boxed(upstream))
}

/// The event sinks the admin API reads back.
struct Observers {
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    health: Vec<(String, HealthCheck)>,
}

/// Serves `/mcp` and the admin API over `gate` until Ctrl-C or SIGTERM.
async fn serve<St: KeyStore>(
    gate: Arc<Gate<St>>,
    args: &Args,
    settings: &Settings,
    observers: Observers,
    downstream: UpstreamService,
) -> Result<(), String> {
    // PAYGATE_ADMIN_KEY keeps the key off the command line, where other local users can
    // read it; it is also what the printed export line sets, so a restart keeps the key.
    let from_env = match std::env::var("PAYGATE_ADMIN_KEY") {
        Ok(key) if args.admin_key.is_none() => {
            check_admin_key(&key).map_err(|e| format!("PAYGATE_ADMIN_KEY: {e}"))?;
            Some(key)
        }
        _ => None,
    };
    let from_config = gate.config().admin_key.clone();
    if from_env.is_some() && from_config.is_some() && from_env != from_config {
        tracing::warn!("PAYGATE_ADMIN_KEY is used, not the config file's adminKey");
    }
    let admin_key = match args.admin_key.clone().or(from_env).or(from_config) {
        Some(k) => k,
        None => generate_key()
            .map(|k| format!("admin_{}", &k[3..]))
            .map_err(|e| e.to_string())?,
    };
    if let Some(path) = &args.import_state {
        let report = gate
            .import_ts18_state(path)
            .await
            .map_err(|e| format!("--import-state: {e}"))?;
        tracing::info!(
            path = %path.display(),
            imported = report.imported,
            skipped = report.skipped,
            "paygate-mcp 1.8 state imported"
        );
        for reason in &report.reasons {
            tracing::warn!("--import-state skipped {reason}");
        }
    }
    let mut shown_key = None;
    for (key, credits, source) in &settings.import_keys {
        if *key == admin_key {
            return Err(source.refused(key, "an API key cannot be the admin key"));
        }
        match gate.import_key(key, "imported", *credits).await {
            Ok(()) => {}
            // Already stored: keep its balance.
            Err(paygate_mcp::GateError::Store(paygate_mcp::StoreError::Duplicate)) => {}
            Err(e) => return Err(source.refused(key, e)),
        }
        shown_key.get_or_insert((key.clone(), *credits));
    }
    let empty = gate
        .store()
        .stats()
        .await
        .map_err(|e| e.to_string())?
        .total_keys
        == 0;
    if shown_key.is_none() && empty {
        let key = gate
            .create_key("demo", 100)
            .await
            .map_err(|e| e.to_string())?;
        shown_key = Some((key, 100));
    }

    // On with --oauth or the config's `oauth` section; a flag wins over the file.
    let file = gate.config().oauth.clone();
    let oauth = (args.oauth || file.is_some()).then(|| -> Result<_, String> {
        let file = file.unwrap_or_default();
        let issuer = args
            .public_url
            .clone()
            .or_else(|| gate.config().public_url.clone())
            .or_else(|| file.issuer.clone())
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", settings.port))
            .trim_end_matches('/')
            .to_string();
        let defaults = paygate_mcp::oauth::GrantSettings::new(format!("{issuer}/mcp"));
        let grant_settings = paygate_mcp::oauth::GrantSettings {
            access_ttl_secs: args
                .oauth_access_ttl
                .or(file.access_token_ttl)
                .unwrap_or(defaults.access_ttl_secs)
                .clamp(1, 366 * 86_400),
            refresh_ttl_secs: file.refresh_token_ttl.unwrap_or(defaults.refresh_ttl_secs),
            scopes: file.scopes.clone(),
            ..defaults
        };
        let server =
            paygate_mcp::oauth::OAuthServer::with_settings(&issuer, grant_settings, gate.clone());
        // An external identity provider's tokens, besides the built-in sign-in.
        #[cfg(feature = "jwt")]
        let server = match file.jwt.clone() {
            Some(jwt) => {
                let resource = format!("{issuer}/mcp");
                let validator = paygate_mcp::oauth::JwtValidator::with_http(
                    jwt,
                    resource,
                    gate.clock().clone(),
                )
                .map_err(|e| format!("oauth.jwt: {e}"))?;
                server.with_jwt(validator)
            }
            None => server,
        };
        Ok(Arc::new(server))
    });
    let oauth = oauth.transpose()?;
    let mut layer = PayGateLayer::from_gate(gate.clone());
    let mut admin = AdminService::new(gate.clone(), &admin_key)
        .map_err(|e| format!("--admin-key: {e}"))?
        .with_metrics(observers.metrics)
        .with_audit(observers.audit);
    if let Some(oauth) = &oauth {
        layer = layer.with_oauth(oauth.clone());
        admin = admin.with_oauth(oauth.clone());
        tracing::info!(
            issuer = oauth.issuer(),
            authorization_servers = ?oauth.authorization_servers(),
            "OAuth sign-in enabled"
        );
    }
    if let Some(stripe) = gate.config().stripe_settings() {
        tracing::info!(
            webhook = stripe.webhook_secret.is_some(),
            checkout = stripe.secret_key.is_some(),
            packages = stripe.packages.len(),
            "Stripe payments enabled: POST /stripe/webhook, POST /checkout"
        );
    }
    let mcp = ServiceBuilder::new()
        .layer(layer)
        .service(downstream.clone());
    let admin = observers
        .health
        .into_iter()
        .fold(admin, |admin, (name, check)| {
            admin.with_upstream_health(&name, move || check())
        });
    let app = if args.ungated {
        tracing::warn!("--ungated: /mcp is served without the gate; nothing is checked or charged");
        axum::Router::new().nest_service("/mcp", baseline::ungated(downstream))
    } else {
        axum::Router::new().nest_service("/mcp", mcp)
    };
    let app = app
        .fallback_service(admin)
        .layer(middleware::from_fn(client_addr))
        .layer(cors(&args.cors_origins));

    let port = settings.port;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    // `--port 0` takes a free port: name the one the system gave.
    let port = listener.local_addr().map_or(port, |a| a.port());
    let url = format!("http://127.0.0.1:{port}/mcp");
    println!(
        "PayGate MCP gateway on {url} ({}), admin API on http://127.0.0.1:{port}/",
        gate.config().name
    );
    println!("Dashboard: http://127.0.0.1:{port}/dashboard (sign in with the admin key)");
    // Secrets go to a person at a terminal, never into a log file by default.
    if args.print_keys || std::io::stdout().is_terminal() {
        println!("Paste these into your shell:");
        if let Some((key, credits)) = &shown_key {
            println!("export PAYGATE_KEY={key}   # an API key with {credits} credits");
        }
        println!("export PAYGATE_ADMIN_KEY={admin_key}");
    } else {
        println!("(API and admin keys not printed: stdout is not a terminal; pass --print-keys)");
    }
    println!();
    println!("Then call a tool:");
    println!(
        "curl -s {url} -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -H \"X-API-Key: $PAYGATE_KEY\" -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"hello\":\"world\"}}}}}}'"
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(|e| format!("server stopped: {e}"))
}

/// Logs to stderr at the RUST_LOG level (default `info`, rmcp's own at `warn`), as text or
/// JSON lines.
fn init_logging(json: bool) {
    // rmcp logs every session it opens and closes at INFO, and the demo server opens one per
    // request: at INFO that is four lines a call, more work than the call itself.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // clap prints usage errors and exits with code 2, and --help / --version with 0.
    let args = Args::parse();
    init_logging(args.log_json);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(2)
        }
    }
}
