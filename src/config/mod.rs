//! Gateway configuration: serde (camelCase), loadable from a JSON file, validated at
//! construction with errors that name the offending field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alerts::{AlertRule, AlertType};
pub(crate) use crate::amount::whole;
use crate::key::{mask_key, MAX_NAME_LEN};
use crate::quota::Quota;

pub mod jwt;
mod redact;
pub mod stripe;

pub use jwt::{AutoProvision, JwtSettings};
pub use stripe::{CreditPackage, StripeSettings};

/// The methods that pass without a key and without billing unless configured otherwise.
pub const DEFAULT_FREE_METHODS: [&str; 7] = [
    "initialize",
    "notifications/initialized",
    "initialized",
    "ping",
    "tools/list",
    "resources/list",
    "prompts/list",
];

/// The shortest admin key accepted (by [`check_admin_key`], so by the config's `adminKey` and
/// by `AdminService::new`).
pub const MIN_ADMIN_KEY_LEN: usize = 16;

/// Why an admin key was refused. The messages never repeat the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminKeyError {
    /// No key at all: anyone could administer the gateway.
    #[error("the admin key is empty; it must be at least {MIN_ADMIN_KEY_LEN} characters")]
    Empty,
    /// Too short to withstand guessing.
    #[error(
        "the admin key is {0} characters long; it must be at least {MIN_ADMIN_KEY_LEN} characters"
    )]
    TooShort(usize),
    /// A character no `X-Admin-Key` header could carry as sent.
    #[error("the admin key must be printable ASCII without spaces (it is sent in the X-Admin-Key header)")]
    NotPrintable,
}

/// Checks that `admin_key` can guard the admin API: at least [`MIN_ADMIN_KEY_LEN`] printable
/// ASCII characters, no spaces. `AdminService::new` refuses any other, and so does
/// [`PayGateConfig::validate`] for `adminKey`; call this to check a key before starting
/// anything else. A pure rule of the core, re-exported as `paygate_mcp::admin::check_admin_key`.
///
/// ```
/// use paygate_mcp::admin::{check_admin_key, AdminKeyError};
/// assert_eq!(check_admin_key(""), Err(AdminKeyError::Empty));
/// assert_eq!(check_admin_key("secret"), Err(AdminKeyError::TooShort(6)));
/// assert!(check_admin_key("admin-secret-123").is_ok());
/// ```
pub fn check_admin_key(admin_key: &str) -> Result<(), AdminKeyError> {
    if admin_key.is_empty() {
        return Err(AdminKeyError::Empty);
    }
    if !admin_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AdminKeyError::NotPrintable);
    }
    if admin_key.len() < MIN_ADMIN_KEY_LEN {
        return Err(AdminKeyError::TooShort(admin_key.len()));
    }
    Ok(())
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or a field has the wrong type or value.
    #[error("invalid config at '{field}': {message}")]
    Invalid {
        /// Dotted path of the field (`toolPricing.search.creditsPerCall`), or `(root)`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Price and limits of one tool.
///
/// ```
/// use paygate_mcp::ToolPricing;
/// let p: ToolPricing = serde_json::from_str(r#"{"creditsPerCall": 2, "creditsPerKbInput": 5}"#).unwrap();
/// assert_eq!(p.price_for_input(3 * 1024), 17);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolPricing {
    /// Base credits per call.
    #[serde(deserialize_with = "whole::de")]
    pub credits_per_call: u64,
    /// Calls per rolling minute per key for this tool; absent or 0 = no per-tool limit.
    #[serde(
        default,
        deserialize_with = "whole::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limit_per_min: Option<u64>,
    /// Surcharge per KB of arguments (compact JSON); absent or 0 = flat price.
    #[serde(
        default,
        deserialize_with = "whole::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub credits_per_kb_input: Option<u64>,
}

/// Everything the gate needs to know. Field names follow the original product's config file.
///
/// ```
/// use paygate_mcp::PayGateConfig;
/// let cfg = PayGateConfig::from_json_str(r#"{
///     "name": "My server",
///     "defaultCreditsPerCall": 2,
///     "toolPricing": {"search": {"creditsPerCall": 5, "rateLimitPerMin": 10}},
///     "globalQuota": {"dailyCallLimit": 1000}
/// }"#).unwrap();
/// assert_eq!(cfg.global_rate_limit_per_min, 60);
///
/// let err = PayGateConfig::from_json_str(r#"{"toolPricing": {"x": {"creditsPerCall": -1}}}"#)
///     .unwrap_err();
/// assert!(err.to_string().contains("toolPricing.x.creditsPerCall"));
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PayGateConfig {
    /// Server name shown in discovery documents.
    pub name: String,
    /// Price of a tool without its own pricing.
    #[serde(deserialize_with = "whole::de")]
    pub default_credits_per_call: u64,
    /// Per-tool pricing, by exact tool name.
    pub tool_pricing: BTreeMap<String, ToolPricing>,
    /// Calls per rolling minute per key across all tools; 0 = off.
    #[serde(deserialize_with = "whole::de")]
    pub global_rate_limit_per_min: u64,
    /// JSON-RPC methods that need no key and cost nothing.
    pub free_methods: Vec<String>,
    /// Run every check and record it, but allow every call and charge nothing.
    pub shadow_mode: bool,
    /// Refund a call whose downstream answered a JSON-RPC error, 5xx, failed or timed out.
    pub refund_on_failure: bool,
    /// Also refund a `CallToolResult` with `isError: true`.
    pub refund_on_tool_error: bool,
    /// Quota for keys without their own.
    pub global_quota: Option<Quota>,
    /// Alert rules evaluated after every gated call.
    pub alert_rules: Vec<AlertRule>,
    /// Where usage and admin events are POSTed.
    pub webhook_url: Option<String>,
    /// Secret for the `X-PayGate-Signature` HMAC.
    pub webhook_secret: Option<String>,
    /// Largest request body read, in bytes.
    #[serde(deserialize_with = "whole::de")]
    pub max_body_bytes: u64,
    /// How many reverse proxies in front of the gateway to trust in `X-Forwarded-For`.
    #[serde(deserialize_with = "whole::de")]
    pub trusted_proxy_hops: u64,
    /// The addresses (IPs or CIDRs) of those proxies. `X-Forwarded-For` is believed only on
    /// a connection from one of them; from any other peer the peer's own address counts.
    #[serde(deserialize_with = "ip_entries")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Longest a `tools/call` may take, answer included, in milliseconds; 0 = no limit.
    /// A call that runs out of time is answered with a JSON-RPC error and refunded.
    #[serde(deserialize_with = "whole::de")]
    pub call_timeout_ms: u64,
    /// Gateway: an MCP server command to run and wrap over stdio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_command: Option<String>,
    /// Gateway: arguments of `serverCommand`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_args: Vec<String>,
    /// Gateway: a remote Streamable-HTTP MCP server to wrap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_url: Option<String>,
    /// Gateway: several MCP servers behind one endpoint, tools named `prefix:tool`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerSpec>,
    /// Gateway: the port to listen on (`--port` wins; 3402 when neither is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Gateway: the admin API key, checked by [`check_admin_key`] (`--admin-key` and
    /// `PAYGATE_ADMIN_KEY` win; generated when none is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
    /// Gateway: keep keys across restarts in this JSON file (`--state-file` wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// Gateway: existing API keys to import at start with their credits, 1.8's
    /// `{"pg_...": 100}`; a key already stored keeps its balance, and `--import-key` wins for
    /// the same key.
    #[serde(
        deserialize_with = "import_key_credits",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub import_keys: BTreeMap<String, u64>,
    /// Gateway: the public base URL clients reach it at (`--public-url` wins); the OAuth
    /// issuer, and the protected resource is `<publicUrl>/mcp`. Default
    /// `http://127.0.0.1:<port>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Gateway: OAuth 2.1 sign-in with the built-in authorization server (1.8's `oauth`
    /// settings; the same as `--oauth`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthSettings>,
    /// 1.8's Stripe webhook signing secret: the same as `stripe.webhookSecret` (which wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stripe_webhook_secret: Option<String>,
    /// Gateway: selling credits with Stripe (SPEC §13).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stripe: Option<StripeSettings>,
}

/// The `oauth` section: the built-in OAuth 2.1 authorization server (SPEC §12), as
/// paygate-mcp 1.8 configured it. `{}` turns it on with the defaults.
///
/// ```
/// use paygate_mcp::PayGateConfig;
/// let cfg = PayGateConfig::from_json_str(r#"{"oauth": {"issuer": "https://mcp.example.com", "accessTokenTtl": 600}}"#).unwrap();
/// assert_eq!(cfg.oauth.unwrap().access_token_ttl, Some(600));
/// let err = PayGateConfig::from_json_str(r#"{"oauth": {"jwt": {}}}"#).unwrap_err();
/// assert!(err.to_string().contains("oauth.jwt"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuthSettings {
    /// The public base URL, the issuer (`--public-url` wins; default
    /// `http://127.0.0.1:<port>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Access token lifetime in seconds (default 3,600).
    #[serde(
        default,
        deserialize_with = "whole::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_token_ttl: Option<u64>,
    /// Refresh token lifetime in seconds (default 30 days).
    #[serde(
        default,
        deserialize_with = "whole::de_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh_token_ttl: Option<u64>,
    /// The scopes a token needs to call the server (advertised in the metadata and the
    /// 401 challenge; a token without them is answered 403 `insufficient_scope`). A client
    /// that asks for no scope is granted all of them. Empty: scopes are not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// An external identity provider whose JWT access tokens are accepted (SPEC §12):
    /// `issuer`, `jwksUri`, `audiences`, `accountClaim`, `algorithms`, `autoProvision`
    /// (see `oauth::JwtSettings`; needs the `jwt` feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSettings>,
}

/// Checks the `oauth.jwt` section; without the `jwt` feature nothing could validate the
/// tokens, so it is refused with the way to build with it.
fn check_jwt(jwt: &JwtSettings) -> Result<(), ConfigError> {
    if cfg!(not(feature = "jwt")) {
        return Err(ConfigError::invalid(
            "oauth.jwt",
            "tokens from an external identity provider need the `jwt` feature: build with --features jwt",
        ));
    }
    jwt.check()
        .map_err(|e| ConfigError::invalid("oauth.jwt", e))
}

/// One MCP server behind a multi-server gateway: a command over stdio or a remote URL.
///
/// ```
/// use paygate_mcp::PayGateConfig;
/// let cfg = PayGateConfig::from_json_str(r#"{"servers": [
///     {"prefix": "fs", "serverCommand": "npx", "serverArgs": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]},
///     {"prefix": "web", "remoteUrl": "https://mcp.example.com/mcp"}
/// ]}"#).unwrap();
/// assert_eq!(cfg.servers.len(), 2);
/// assert!(PayGateConfig::from_json_str(r#"{"servers": [{"prefix": "a:b", "remoteUrl": "http://x.example"}]}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    /// Tool name prefix (`prefix:tool`): letters, digits, `-`, `_`.
    pub prefix: String,
    /// Command to run over stdio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_command: Option<String>,
    /// Arguments of `serverCommand`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_args: Vec<String>,
    /// Remote Streamable-HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_url: Option<String>,
}

/// Whether a public URL keeps what is typed into its pages private: https, or http that
/// never leaves the machine.
///
/// ```
/// use paygate_mcp::config::secure_or_loopback;
/// assert!(secure_or_loopback("https://mcp.example.com"));
/// assert!(secure_or_loopback("http://127.0.0.1:3402"));
/// assert!(!secure_or_loopback("http://mcp.example.com"));
/// ```
pub fn secure_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// The gateway's public base URL (`publicUrl`, `--public-url`, `oauth.issuer`), without a
/// trailing `/`: an origin (the OAuth endpoints and metadata are served at its root), https
/// or http on a loopback host (API keys are typed into its consent page).
///
/// ```
/// use paygate_mcp::config::check_public_url;
/// assert_eq!(check_public_url("https://mcp.example.com/").unwrap(), "https://mcp.example.com");
/// assert!(check_public_url("http://mcp.example.com").is_err());
/// assert!(check_public_url("https://mcp.example.com/tenant").is_err());
/// ```
pub fn check_public_url(url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    let plain = is_http_url(url) && !url.contains(['?', '#', '@', ' ']);
    if !plain {
        return Err(format!(
            "'{url}' is not an http:// or https:// URL without query, fragment or credentials"
        ));
    }
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    if rest.contains('/') {
        return Err(format!(
            "'{url}' has a path: give the origin the gateway is reached at (its OAuth endpoints and metadata are served at the root)"
        ));
    }
    if !secure_or_loopback(url) {
        return Err(format!(
            "'{url}' must be https (API keys are typed into its consent page), or http on 127.0.0.1, localhost or [::1]"
        ));
    }
    Ok(url.to_string())
}

fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.len() >= 10
}

/// Shows the config with its secrets masked ([`PayGateConfig::redacted`]), so a `{:?}` in a
/// log never prints the admin key, imported keys or the webhook secret.
impl std::fmt::Debug for PayGateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PayGateConfig {}", self.redacted())
    }
}

impl Default for PayGateConfig {
    fn default() -> Self {
        Self {
            name: "PayGate MCP Server".to_string(),
            default_credits_per_call: 1,
            tool_pricing: BTreeMap::new(),
            global_rate_limit_per_min: 60,
            free_methods: DEFAULT_FREE_METHODS.iter().map(|m| m.to_string()).collect(),
            shadow_mode: false,
            refund_on_failure: false,
            refund_on_tool_error: false,
            global_quota: None,
            alert_rules: Vec::new(),
            webhook_url: None,
            webhook_secret: None,
            max_body_bytes: 1024 * 1024,
            trusted_proxy_hops: 0,
            trusted_proxies: Vec::new(),
            call_timeout_ms: 0,
            server_command: None,
            server_args: Vec::new(),
            remote_url: None,
            servers: Vec::new(),
            port: None,
            admin_key: None,
            state_file: None,
            import_keys: BTreeMap::new(),
            oauth: None,
            stripe_webhook_secret: None,
            stripe: None,
            public_url: None,
        }
    }
}

impl PayGateConfig {
    /// Parses and validates a JSON config.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let cfg: Self = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." {
                "(root)".to_string()
            } else {
                field
            };
            // A wrong value is named by its field; only a syntax error needs the position.
            let inner = e.inner();
            let message = if inner.is_data() {
                crate::json_errors::without_position(inner)
            } else {
                inner.to_string()
            };
            ConfigError::invalid(field, message)
        })?;
        de.end()
            .map_err(|_| ConfigError::invalid("(root)", "trailing data after the JSON document"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a JSON config file.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// Checks the rules serde cannot express; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() || self.name.chars().count() > MAX_NAME_LEN {
            return Err(ConfigError::invalid(
                "name",
                format!("must be 1 to {MAX_NAME_LEN} characters"),
            ));
        }
        for tool in self.tool_pricing.keys() {
            if tool.is_empty() || tool.chars().count() > MAX_NAME_LEN {
                return Err(ConfigError::invalid(
                    "toolPricing",
                    format!("tool names must be 1 to {MAX_NAME_LEN} characters"),
                ));
            }
        }
        for (i, method) in self.free_methods.iter().enumerate() {
            if method == "tools/call" {
                return Err(ConfigError::invalid(
                    format!("freeMethods[{i}]"),
                    "tools/call cannot be free: every tool call would bypass the gate",
                ));
            }
        }
        for (i, rule) in self.alert_rules.iter().enumerate() {
            let percent = matches!(
                rule.rule_type,
                AlertType::SpendingThreshold | AlertType::QuotaWarning
            );
            if percent && rule.threshold > 100 {
                return Err(ConfigError::invalid(
                    format!("alertRules[{i}].threshold"),
                    "a percentage must be between 0 and 100",
                ));
            }
        }
        if let Some(url) = &self.webhook_url {
            if !is_http_url(url) {
                return Err(ConfigError::invalid(
                    "webhookUrl",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > 1 << 30 {
            return Err(ConfigError::invalid(
                "maxBodyBytes",
                "must be between 1 byte and 1 GiB",
            ));
        }
        if self.trusted_proxy_hops > 16 {
            return Err(ConfigError::invalid(
                "trustedProxyHops",
                "must be at most 16",
            ));
        }
        if self.trusted_proxy_hops > 0 && self.trusted_proxies.is_empty() {
            return Err(ConfigError::invalid(
                "trustedProxies",
                "must list the proxies' addresses when trustedProxyHops is set, or any client could forge X-Forwarded-For",
            ));
        }
        self.validate_servers()?;
        self.validate_gateway()
    }

    /// The gateway's own settings, and the 1.8 fields this gateway refuses by name.
    fn validate_gateway(&self) -> Result<(), ConfigError> {
        if self.port == Some(0) {
            return Err(ConfigError::invalid("port", "must be between 1 and 65535"));
        }
        if let Some(key) = &self.admin_key {
            check_admin_key(key).map_err(|e| ConfigError::invalid("adminKey", e.to_string()))?;
        }
        if self
            .state_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::invalid(
                "stateFile",
                "must name a file; remove the field to keep keys in memory only",
            ));
        }
        for key in self.import_keys.keys() {
            if self.admin_key.as_deref() == Some(key.as_str()) {
                return Err(ConfigError::invalid(
                    "importKeys",
                    format!("{} is the admin key; an API key cannot be", mask_key(key)),
                ));
            }
        }
        if let Some(url) = &self.public_url {
            check_public_url(url).map_err(|e| ConfigError::invalid("publicUrl", e))?;
        }
        if let Some(oauth) = &self.oauth {
            if let Some(issuer) = &oauth.issuer {
                check_public_url(issuer).map_err(|e| ConfigError::invalid("oauth.issuer", e))?;
            }
            for (field, ttl) in [
                ("oauth.accessTokenTtl", oauth.access_token_ttl),
                ("oauth.refreshTokenTtl", oauth.refresh_token_ttl),
            ] {
                if ttl.is_some_and(|t| t == 0 || t > 366 * 86_400) {
                    return Err(ConfigError::invalid(
                        field,
                        "must be 1 second to 366 days, in seconds",
                    ));
                }
            }
            // RFC 6749 §3.3 scope tokens: visible ASCII but `"` and `\`, no spaces.
            let bad_scope = oauth.scopes.iter().any(|s| {
                s.is_empty()
                    || s.len() > 64
                    || !s
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            });
            if bad_scope || oauth.scopes.len() > 16 {
                return Err(ConfigError::invalid(
                    "oauth.scopes",
                    "at most 16 scopes, each 1 to 64 visible ASCII characters without spaces, quotes or backslashes",
                ));
            }
            if let Some(jwt) = &oauth.jwt {
                check_jwt(jwt)?;
            }
        }
        if self
            .stripe_webhook_secret
            .as_deref()
            .is_some_and(|s| s.trim().is_empty() || s.len() > 512)
        {
            return Err(ConfigError::invalid(
                "stripeWebhookSecret",
                "is empty: give the webhook endpoint's signing secret (whsec_...) or remove the field",
            ));
        }
        if let Some(stripe) = &self.stripe {
            stripe
                .check()
                .map_err(|e| ConfigError::invalid("stripe", e))?;
        }
        // Selling without hearing of the payments would take money and credit nothing.
        if self
            .stripe_settings()
            .is_some_and(|s| s.secret_key.is_some() && s.webhook_secret.is_none())
        {
            return Err(ConfigError::invalid(
                "stripe",
                "secretKey sells credits, but without a webhookSecret no payment would ever be credited: add the webhook endpoint's signing secret",
            ));
        }
        Ok(())
    }

    /// The Stripe settings in force: the `stripe` section, with 1.8's `stripeWebhookSecret`
    /// as its webhook secret when the section has none; `None` when neither is given.
    ///
    /// ```
    /// use paygate_mcp::PayGateConfig;
    /// let cfg = PayGateConfig::from_json_str(r#"{"stripeWebhookSecret": "whsec_123"}"#).unwrap();
    /// assert_eq!(cfg.stripe_settings().unwrap().webhook_secret.as_deref(), Some("whsec_123"));
    /// ```
    pub fn stripe_settings(&self) -> Option<StripeSettings> {
        let mut settings = match (&self.stripe, &self.stripe_webhook_secret) {
            (None, None) => return None,
            (Some(s), _) => s.clone(),
            (None, Some(_)) => StripeSettings {
                api_base: stripe::STRIPE_API.to_string(),
                ..StripeSettings::default()
            },
        };
        if settings.webhook_secret.is_none() {
            settings.webhook_secret = self.stripe_webhook_secret.clone();
        }
        Some(settings)
    }

    fn validate_servers(&self) -> Result<(), ConfigError> {
        if self.server_command.is_some() && self.remote_url.is_some() {
            return Err(ConfigError::invalid(
                "remoteUrl",
                "give serverCommand or remoteUrl, not both",
            ));
        }
        if !self.servers.is_empty() && (self.server_command.is_some() || self.remote_url.is_some())
        {
            return Err(ConfigError::invalid(
                "servers",
                "give servers, or serverCommand/remoteUrl, not both",
            ));
        }
        if self.remote_url.as_deref().is_some_and(|u| !is_http_url(u)) {
            return Err(ConfigError::invalid(
                "remoteUrl",
                "must be an http:// or https:// URL",
            ));
        }
        if self
            .server_command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(ConfigError::invalid("serverCommand", "must not be empty"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, spec) in self.servers.iter().enumerate() {
            let field = |f: &str| format!("servers[{i}].{f}");
            let prefix_ok = !spec.prefix.is_empty()
                && spec.prefix.len() <= 64
                && spec
                    .prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !prefix_ok {
                return Err(ConfigError::invalid(
                    field("prefix"),
                    "must be 1 to 64 letters, digits, '-' or '_'",
                ));
            }
            if !seen.insert(spec.prefix.as_str()) {
                return Err(ConfigError::invalid(field("prefix"), "is used twice"));
            }
            match (&spec.server_command, &spec.remote_url) {
                (Some(c), None) if !c.trim().is_empty() => {}
                (None, Some(url)) if is_http_url(url) => {}
                (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        field("remoteUrl"),
                        "must be an http:// or https:// URL",
                    ))
                }
                _ => {
                    return Err(ConfigError::invalid(
                        field("serverCommand"),
                        "give exactly one of serverCommand and remoteUrl",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Sets the default price per call.
    pub fn with_default_price(mut self, credits: u64) -> Self {
        self.default_credits_per_call = credits;
        self
    }

    /// Sets a tool's flat price (keeping any rate limit or per-KB surcharge it had).
    pub fn with_tool_price(mut self, tool: &str, credits: u64) -> Self {
        self.tool_pricing
            .entry(tool.to_string())
            .or_default()
            .credits_per_call = credits;
        self
    }

    /// Sets a tool's full pricing.
    pub fn with_tool_pricing(mut self, tool: &str, pricing: ToolPricing) -> Self {
        self.tool_pricing.insert(tool.to_string(), pricing);
        self
    }

    /// Sets the per-key global rate limit (calls per rolling minute; 0 = off).
    pub fn with_rate_limit(mut self, per_min: u64) -> Self {
        self.global_rate_limit_per_min = per_min;
        self
    }

    /// Sets the global quota.
    pub fn with_global_quota(mut self, quota: Quota) -> Self {
        self.global_quota = Some(quota);
        self
    }

    /// Turns shadow mode on or off.
    pub fn with_shadow_mode(mut self, on: bool) -> Self {
        self.shadow_mode = on;
        self
    }

    /// Turns refund-on-failure on or off.
    pub fn with_refund_on_failure(mut self, on: bool) -> Self {
        self.refund_on_failure = on;
        self
    }

    /// Adds an alert rule.
    pub fn with_alert_rule(mut self, rule: AlertRule) -> Self {
        self.alert_rules.push(rule);
        self
    }

    /// Sets the request body limit in bytes.
    pub fn with_max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Sets the `tools/call` time limit in milliseconds (0 = none).
    pub fn with_call_timeout_ms(mut self, ms: u64) -> Self {
        self.call_timeout_ms = ms;
        self
    }

    /// Sets how many proxy hops of `X-Forwarded-For` to trust.
    pub fn with_trusted_proxy_hops(mut self, hops: u64) -> Self {
        self.trusted_proxy_hops = hops;
        self
    }

    /// Sets the addresses of the trusted proxies (see [`trusted_proxies`](Self::trusted_proxies)).
    pub fn with_trusted_proxies(mut self, proxies: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        self.trusted_proxies = proxies.into_iter().collect();
        self
    }
}

/// 1.8's `importKeys`: `{"pg_...": credits}`, whole amounts as everywhere (`null` = none).
/// Values are read as JSON first, so neither an error nor its path ever shows a full key.
fn import_key_credits<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, u64>, D::Error> {
    let raw = Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?.unwrap_or_default();
    raw.into_iter()
        .map(|(key, value)| {
            let credits = match &value {
                serde_json::Value::Number(n) => whole::from_number(n),
                _ => Err("must be a number".to_string()),
            };
            credits.map(|c| (key.clone(), c)).map_err(|e| {
                serde::de::Error::custom(format!("the credits of {}: {e}", mask_key(&key)))
            })
        })
        .collect()
}

/// IPs or CIDR networks, as allowlists take them (`10.0.0.1`, `10.0.0.0/8`).
fn ip_entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|entry| crate::key::parse_ip_entry(entry).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(json: &str) -> String {
        match PayGateConfig::from_json_str(json) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_original_product() {
        let cfg = PayGateConfig::from_json_str("{}").unwrap();
        assert_eq!(cfg, PayGateConfig::default());
        assert_eq!(cfg.default_credits_per_call, 1);
        assert_eq!(cfg.global_rate_limit_per_min, 60);
        assert_eq!(cfg.max_body_bytes, 1 << 20);
        assert!(cfg.free_methods.iter().any(|m| m == "tools/list"));
    }

    #[test]
    fn fractions_floor_and_negatives_name_the_field() {
        let cfg = PayGateConfig::from_json_str(r#"{"defaultCreditsPerCall": 2.9}"#).unwrap();
        assert_eq!(cfg.default_credits_per_call, 2);
        assert_eq!(
            field_of(r#"{"defaultCreditsPerCall": -2}"#),
            "defaultCreditsPerCall"
        );
        assert_eq!(
            field_of(r#"{"defaultCreditsPerCall": -0.5e3}"#),
            "defaultCreditsPerCall"
        );
        assert_eq!(
            field_of(r#"{"globalQuota": {"monthlyCreditLimit": 1e300}}"#),
            "globalQuota.monthlyCreditLimit"
        );
        assert_eq!(
            field_of(r#"{"globalRateLimitPerMin": "60"}"#),
            "globalRateLimitPerMin"
        );
    }

    #[test]
    fn unknown_and_dangerous_fields_are_refused() {
        assert_eq!(
            field_of(r#"{"globalRateLimitPerMinute": 5}"#),
            "globalRateLimitPerMinute"
        );
        assert_eq!(
            field_of(r#"{"freeMethods": ["ping", "tools/call"]}"#),
            "freeMethods[1]"
        );
        assert_eq!(
            field_of(r#"{"alertRules": [{"type": "quota_warning", "threshold": 150}]}"#),
            "alertRules[0].threshold"
        );
        assert_eq!(
            field_of(r#"{"alertRules": [{"type": "nope", "threshold": 1}]}"#),
            "alertRules[0].type"
        );
        assert_eq!(field_of(r#"{"webhookUrl": "ftp://x"}"#), "webhookUrl");
        assert_eq!(field_of(r#"{"maxBodyBytes": 0}"#), "maxBodyBytes");
        assert_eq!(field_of("nope"), "(root)");
    }

    #[test]
    fn server_specs_are_checked() {
        let ok = r#"{"servers": [{"prefix": "fs", "serverCommand": "node", "serverArgs": ["s.js"]}, {"prefix": "web", "remoteUrl": "https://mcp.example.com/mcp"}]}"#;
        assert_eq!(PayGateConfig::from_json_str(ok).unwrap().servers.len(), 2);
        for (json, field) in [
            (
                r#"{"servers": [{"prefix": "", "remoteUrl": "http://a.example"}]}"#,
                "servers[0].prefix",
            ),
            (
                r#"{"servers": [{"prefix": "a", "remoteUrl": "http://a.example"}, {"prefix": "a", "serverCommand": "x"}]}"#,
                "servers[1].prefix",
            ),
            (
                r#"{"servers": [{"prefix": "a"}]}"#,
                "servers[0].serverCommand",
            ),
            (
                r#"{"servers": [{"prefix": "a", "serverCommand": "x", "remoteUrl": "http://a.example"}]}"#,
                "servers[0].serverCommand",
            ),
            (
                r#"{"servers": [{"prefix": "a", "remoteUrl": "file:///etc"}]}"#,
                "servers[0].remoteUrl",
            ),
            (
                r#"{"serverCommand": "x", "remoteUrl": "http://a.example"}"#,
                "remoteUrl",
            ),
            (r#"{"remoteUrl": "gopher://x"}"#, "remoteUrl"),
            (r#"{"serverCommand": " "}"#, "serverCommand"),
            (
                r#"{"serverCommand": "x", "servers": [{"prefix": "a", "serverCommand": "y"}]}"#,
                "servers",
            ),
        ] {
            assert_eq!(field_of(json), field, "{json}");
        }
    }

    #[test]
    fn file_loading_reports_missing_files() {
        let err = PayGateConfig::from_json_file("/nonexistent/paygate.json").unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
    }

    #[test]
    fn builder_setters_compose() {
        let cfg = PayGateConfig::default()
            .with_default_price(3)
            .with_tool_price("search", 5)
            .with_rate_limit(0)
            .with_shadow_mode(true);
        assert_eq!(cfg.tool_pricing["search"].credits_per_call, 5);
        assert_eq!(cfg.global_rate_limit_per_min, 0);
        assert!(cfg.shadow_mode);
        cfg.validate().unwrap();
    }

    fn message_of(json: &str) -> (String, String) {
        match PayGateConfig::from_json_str(json) {
            Err(ConfigError::Invalid { field, message }) => (field, message),
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn port_is_a_gateway_setting() {
        let cfg = PayGateConfig::from_json_str(r#"{"port": 4020}"#).unwrap();
        assert_eq!(cfg.port, Some(4020));
        assert_eq!(PayGateConfig::default().port, None);
        assert_eq!(
            PayGateConfig::from_json_str(r#"{"port": null}"#)
                .unwrap()
                .port,
            None
        );
        for bad in [
            r#"{"port": 0}"#,
            r#"{"port": 70000}"#,
            r#"{"port": -1}"#,
            r#"{"port": "3402"}"#,
        ] {
            assert_eq!(field_of(bad), "port", "{bad}");
        }
    }

    #[test]
    fn admin_key_follows_the_admin_api_rule() {
        let cfg = PayGateConfig::from_json_str(r#"{"adminKey": "admin-secret-1234"}"#).unwrap();
        assert_eq!(cfg.admin_key.as_deref(), Some("admin-secret-1234"));
        for (bad, why) in [
            (r#"{"adminKey": ""}"#, AdminKeyError::Empty),
            (r#"{"adminKey": "short-key"}"#, AdminKeyError::TooShort(9)),
            (
                r#"{"adminKey": "admin secret 1234"}"#,
                AdminKeyError::NotPrintable,
            ),
        ] {
            let (field, message) = message_of(bad);
            assert_eq!(field, "adminKey", "{bad}");
            assert_eq!(message, why.to_string(), "{bad}");
        }
        let (_, message) = message_of(r#"{"adminKey": "short-key"}"#);
        assert!(!message.contains("short-key"), "the key is never repeated");
        assert_eq!(field_of(r#"{"adminKey": 42}"#), "adminKey");
    }

    #[test]
    fn state_file_names_a_file() {
        let cfg = PayGateConfig::from_json_str(r#"{"stateFile": "./state.json"}"#).unwrap();
        assert_eq!(cfg.state_file, Some(PathBuf::from("./state.json")));
        assert_eq!(field_of(r#"{"stateFile": ""}"#), "stateFile");
        assert_eq!(field_of(r#"{"stateFile": ["a"]}"#), "stateFile");
    }

    #[test]
    fn import_keys_take_whole_credits_and_never_show_a_key() {
        const KEY: &str = "pg_0123456789abcdef0123456789abcdef0123456789abcdef";
        let cfg = PayGateConfig::from_json_str(&format!(
            r#"{{"importKeys": {{"{KEY}": 100, "imported-key-123": 2.7}}}}"#
        ))
        .unwrap();
        assert_eq!(cfg.import_keys[KEY], 100);
        assert_eq!(
            cfg.import_keys["imported-key-123"], 2,
            "floored as amounts are"
        );
        assert!(PayGateConfig::from_json_str(r#"{"importKeys": null}"#)
            .unwrap()
            .import_keys
            .is_empty());
        for value in ["-5", "\"100\"", "1e300", "null"] {
            let (field, message) =
                message_of(&format!(r#"{{"importKeys": {{"{KEY}": {value}}}}}"#));
            assert_eq!(field, "importKeys", "{value}");
            assert!(message.contains("pg_0123...cdef"), "{message}");
            assert!(!message.contains(KEY), "{message}");
        }
        let (field, message) = message_of(&format!(
            r#"{{"adminKey": "{KEY}", "importKeys": {{"{KEY}": 1}}}}"#
        ));
        assert_eq!(field, "importKeys");
        assert!(
            message.contains("admin key") && !message.contains(KEY),
            "{message}"
        );
        assert_eq!(field_of(r#"{"importKeys": ["pg_x"]}"#), "importKeys");
    }

    #[test]
    fn oauth_is_read_and_what_is_not_supported_is_refused_by_name() {
        let cfg = PayGateConfig::from_json_str(
            r#"{"oauth": {"issuer": "https://auth.example.com", "refreshTokenTtl": 86400}}"#,
        )
        .unwrap();
        let oauth = cfg.oauth.unwrap();
        assert_eq!(oauth.issuer.as_deref(), Some("https://auth.example.com"));
        assert_eq!(oauth.refresh_token_ttl, Some(86_400));
        let cfg = PayGateConfig::from_json_str(r#"{"publicUrl": "https://mcp.example.com"}"#);
        assert_eq!(
            cfg.unwrap().public_url.as_deref(),
            Some("https://mcp.example.com")
        );
        for bad in [
            r#"{"publicUrl": "http://mcp.example.com"}"#,
            r#"{"publicUrl": "https://mcp.example.com/tenant"}"#,
            r#"{"oauth": {"issuer": "https://mcp.example.com/tenant"}}"#,
        ] {
            assert!(PayGateConfig::from_json_str(bad).is_err(), "{bad}");
        }
        assert!(PayGateConfig::from_json_str(r#"{"oauth": {}}"#)
            .unwrap()
            .oauth
            .is_some());
        for (json, field) in [
            (r#"{"oauth": {"scopes": ["a b"]}}"#, "oauth.scopes"),
            (r#"{"oauth": {"jwt": {"issuer": "x"}}}"#, "oauth.jwt"),
            (
                r#"{"oauth": {"issuer": "ftp://x.example"}}"#,
                "oauth.issuer",
            ),
            (
                r#"{"oauth": {"issuer": "https://u:p@x.example"}}"#,
                "oauth.issuer",
            ),
            (
                r#"{"oauth": {"accessTokenTtl": 0}}"#,
                "oauth.accessTokenTtl",
            ),
            (
                r#"{"oauth": {"issuer": "http://mcp.example.com"}}"#,
                "oauth.issuer",
            ),
            (r#"{"oauth": {"clientSecret": "x"}}"#, "oauth.clientSecret"),
        ] {
            assert_eq!(field_of(json), field, "{json}");
        }
        assert!(PayGateConfig::from_json_str(r#"{"oauth": null}"#).is_ok());
        let cfg = PayGateConfig::from_json_str(r#"{"stripeWebhookSecret": "whsec_abc123"}"#);
        assert!(
            cfg.unwrap().stripe_settings().is_some(),
            "1.8's secret is read"
        );
        let (field, message) = message_of(r#"{"stripeWebhookSecret": ""}"#);
        assert_eq!(field, "stripeWebhookSecret");
        assert!(message.contains("is empty"), "{message}");
        // Selling without a webhook secret would take money and credit nothing.
        let selling = r#"{"stripe": {"secretKey": "sk_test_1", "successUrl": "https://x.example/ok",
            "packages": [{"id": "p", "credits": 1, "priceId": "price_1"}]}}"#;
        let (field, message) = message_of(selling);
        assert_eq!(field, "stripe");
        assert!(message.contains("webhookSecret"), "{message}");
        let with_18_secret = selling.replacen('{', r#"{"stripeWebhookSecret": "whsec_1", "#, 1);
        assert!(PayGateConfig::from_json_str(&with_18_secret).is_ok());
    }

    #[test]
    fn a_paygate_mcp_18_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ts18_config.json");
        let cfg = PayGateConfig::from_json_file(&path).unwrap();
        assert_eq!(cfg.server_command.as_deref(), Some("npx"));
        assert_eq!(
            cfg.server_args,
            ["-y", "@modelcontextprotocol/server-filesystem", "/srv/data"]
        );
        assert_eq!(cfg.port, Some(4020));
        assert_eq!(cfg.admin_key.as_deref(), Some("admin_ts18-config-key-0001"));
        assert_eq!(cfg.state_file, Some(PathBuf::from("./paygate-state.json")));
        assert_eq!(cfg.default_credits_per_call, 2);
        assert_eq!(cfg.tool_pricing.len(), 3);
        assert_eq!(cfg.tool_pricing["search_files"].credits_per_call, 5);
        assert_eq!(
            cfg.tool_pricing["search_files"].rate_limit_per_min,
            Some(10)
        );
        assert_eq!(cfg.tool_pricing["write_file"].credits_per_kb_input, Some(2));
        assert_eq!(cfg.global_rate_limit_per_min, 120);
        assert!(!cfg.shadow_mode);
        assert_eq!(
            cfg.webhook_url.as_deref(),
            Some("https://billing.example.com/paygate/events")
        );
        assert!(cfg.refund_on_failure);
        let quota = cfg.global_quota.expect("globalQuota");
        assert_eq!(
            (
                quota.daily_call_limit,
                quota.monthly_call_limit,
                quota.daily_credit_limit,
                quota.monthly_credit_limit
            ),
            (1000, 20000, 0, 50000)
        );
        assert_eq!(cfg.alert_rules.len(), 3);
        assert_eq!(cfg.alert_rules[0].rule_type, AlertType::CreditsLow);
        assert_eq!(cfg.alert_rules[1].cooldown_seconds, Some(3600));
        assert_eq!(cfg.import_keys.len(), 2);
        assert_eq!(
            cfg.import_keys["pg_ts18cfgalice000000000000000000000000000000001"],
            500
        );
        assert_eq!(
            cfg.import_keys["pg_ts18cfgbob00000000000000000000000000000000002"],
            25
        );
        assert!(cfg.oauth.is_none() && cfg.stripe_webhook_secret.is_none());
        // The same file with 1.8's OAuth or Stripe settings added is read.
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        json["oauth"] = serde_json::json!({"issuer": "http://localhost:4020"});
        assert!(
            PayGateConfig::from_json_str(&json.to_string()).is_ok(),
            "1.8's oauth is read"
        );
        json["oauth"] = serde_json::Value::Null;
        json["stripeWebhookSecret"] = serde_json::json!("whsec_test");
        let cfg = PayGateConfig::from_json_str(&json.to_string()).unwrap();
        assert_eq!(
            cfg.stripe_settings().unwrap().webhook_secret.as_deref(),
            Some("whsec_test"),
            "1.8's Stripe secret is read"
        );
    }

    #[test]
    fn trusted_proxies_take_ips_and_networks_and_trailing_data_is_refused() {
        let cfg = PayGateConfig::from_json_str(
            r#"{"trustedProxyHops": 1, "trustedProxies": ["10.0.0.1", "192.168.0.0/16"]}"#,
        )
        .unwrap();
        assert_eq!(cfg.trusted_proxies.len(), 2);
        assert!(cfg.trusted_proxies[0].contains(&"10.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        let err = PayGateConfig::from_json_str(r#"{"trustedProxies": ["nope"]}"#).unwrap_err();
        assert!(err.to_string().contains("trustedProxies"), "{err}");
        let err = PayGateConfig::from_json_str(r#"{"trustedProxyHops": 1}"#).unwrap_err();
        assert!(err.to_string().contains("trustedProxies"), "{err}");
        let err = PayGateConfig::from_json_str(r#"{"name": "a"} {"name": "b"}"#).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }
}
