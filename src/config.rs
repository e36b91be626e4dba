//! Gateway configuration: serde (camelCase), loadable from a JSON file, validated at
//! construction with errors that name the offending field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::alerts::{AlertRule, AlertType};
pub(crate) use crate::amount::whole;
use crate::key::MAX_NAME_LEN;
use crate::quota::Quota;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.len() >= 10
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
            ConfigError::invalid(field, e.inner().to_string())
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
        self.validate_servers()
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
