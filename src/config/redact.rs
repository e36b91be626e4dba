//! The config as it may be shown (`GET /status`, `Debug`): nothing in it opens a door.
//!
//! Fields whose name speaks of a secret, key, token or password show `***` when set; URLs
//! show only their scheme and host (webhook URLs often carry their secret in the path);
//! command arguments show `***` and a command only its program, since either may carry a
//! credential.

use serde_json::Value;

use super::PayGateConfig;

/// Words in a field name that mark its value as a secret.
const SECRET_WORDS: [&str; 4] = ["secret", "key", "token", "password"];

impl PayGateConfig {
    /// The config as JSON with every secret masked (see the module docs).
    ///
    /// ```
    /// use paygate_mcp::PayGateConfig;
    /// let cfg = PayGateConfig::from_json_str(r#"{
    ///     "webhookUrl": "https://hooks.example/services/T0/B0/s3cr3t",
    ///     "webhookSecret": "whsec_0123456789",
    ///     "serverCommand": "node server.js --token=abc",
    ///     "serverArgs": ["postgresql://app:pw@db/prod"]
    /// }"#).unwrap();
    /// let shown = cfg.redacted();
    /// assert_eq!(shown["webhookUrl"], "https://hooks.example");
    /// assert_eq!(shown["webhookSecret"], "***");
    /// assert_eq!(shown["serverCommand"], "node");
    /// assert_eq!(shown["serverArgs"], "***");
    /// ```
    pub fn redacted(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        redact(&mut value);
        value
    }
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (name, v) in map.iter_mut() {
                let lower = name.to_ascii_lowercase();
                if v.is_null() {
                    continue;
                }
                if SECRET_WORDS.iter().any(|w| lower.contains(w)) || lower.ends_with("args") {
                    *v = Value::String("***".into());
                } else if lower.ends_with("url") {
                    if let Value::String(url) = v {
                        *url = origin_only(url);
                    }
                } else if lower.ends_with("command") {
                    if let Value::String(cmd) = v {
                        *cmd = cmd
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                    }
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `scheme://host[:port]` of `url`, or `***` when its authority is anything but a plain host
/// (credentials, or characters a host cannot have).
fn origin_only(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Any `@` may be credentials, however the rest reads.
    let plain = !url.contains('@') && is_host_and_port(authority);
    let scheme_ok = !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric());
    if plain && scheme_ok {
        format!("{scheme}://{authority}")
    } else {
        "***".into()
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with a plain host name or address.
fn is_host_and_port(authority: &str) -> bool {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) => {
                let ok =
                    !addr.is_empty() && addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
                (
                    if ok { "v6" } else { "" },
                    rest.strip_prefix(':').or((rest.is_empty()).then_some("")),
                )
            }
            None => ("", None),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, Some("")),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    let port_ok = port.is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_only_a_plain_origin() {
        for (url, shown) in [
            ("http://h.example", "http://h.example"),
            (
                "https://h.example:8443/in?token=abc#x",
                "https://h.example:8443",
            ),
            ("https://user:pw@h.example/in", "***"),
            ("https://user:pa/LEAK@h.example/in", "***"),
            ("https://user:p?LEAK@h.example", "***"),
            ("https://user:p#LEAK@h.example", "***"),
            ("not a url", "***"),
            ("https://[::1]:9/x", "https://[::1]:9"),
            ("https://h.example:/x", "https://h.example:"),
            ("https://user:pa/x", "***"),
            ("https://[::1]x/", "***"),
        ] {
            assert_eq!(origin_only(url), shown, "{url}");
        }
    }

    #[test]
    fn nothing_secret_survives_in_any_field() {
        let cfg = PayGateConfig::from_json_str(
            r#"{"webhookUrl": "https://user:pw@hooks.example/in?token=abc#x",
                "webhookSecret": "whsec_0123456789",
                "importKeys": {"pg_0123456789abcdef0123": 5},
                "adminKey": "admin-secret-0123456789",
                "servers": [{"prefix": "db", "serverCommand": "env TOKEN=LEAK5 server",
                             "serverArgs": ["--api-token=LEAK6"]},
                            {"prefix": "web", "remoteUrl": "https://hooks.example/LEAK7"}],
                "defaultCreditsPerCall": 3}"#,
        )
        .unwrap();
        let shown = cfg.redacted();
        assert_eq!(shown["defaultCreditsPerCall"], 3);
        let text = shown.to_string();
        for secret in [
            "pw",
            "abc",
            "whsec_",
            "pg_0123",
            "admin-secret",
            "LEAK5",
            "LEAK6",
            "LEAK7",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            !format!("{cfg:?}").contains("admin-secret"),
            "Debug masks too"
        );
        assert!(!format!("{cfg:?}").contains("whsec_"), "Debug masks too");
    }
}
