//! Client registration (RFC 7591): which redirect URIs a client may register, and whether a
//! redirect URI in a request names one of them.

use super::grants::{err, random_token, OAuthError};
use crate::store::{token_digest, Client, ClientAuth};

/// Most redirect URIs one client may register.
const MAX_REDIRECT_URIS: usize = 10;
/// Longest redirect URI accepted.
const MAX_TEXT: usize = 512;
/// Longest client name.
const MAX_NAME: usize = 200;
/// Longest client id looked up (ours are far shorter).
pub(crate) const MAX_CLIENT_ID: usize = 100;

/// What a client sends to register (RFC 7591; unknown fields are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// Redirect URIs: https, http on a loopback host, or a private-use scheme of a native
    /// app (`cursor://...`, RFC 8252 §7.1); no fragment.
    pub redirect_uris: Vec<String>,
    /// A name to show on the consent page.
    pub client_name: Option<String>,
    /// `none` (default), `client_secret_post` or `client_secret_basic`.
    pub token_endpoint_auth_method: Option<String>,
}

/// A client just registered, with its secret (shown once) when it has one.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The client as stored.
    pub client: Client,
    /// The secret, for `client_secret_*` clients.
    pub client_secret: Option<String>,
}

/// Schemes a browser or the system runs or reads locally: never a redirect target.
const UNSAFE_SCHEMES: &[&str] = &[
    "javascript",
    "data",
    "vbscript",
    "file",
    "blob",
    "about",
    "filesystem",
    "ftp",
    "ws",
    "wss",
];

/// Whether `uri` may be registered: absolute https, http on a loopback host, or a
/// private-use scheme (a native app's, RFC 8252 §7.1); no fragment, no userinfo.
pub(crate) fn redirect_allowed(uri: &str) -> bool {
    if uri.len() > MAX_TEXT
        || uri.contains('#')
        || uri.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return false;
    }
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        "http" | "https" => {
            let Some(rest) = rest.strip_prefix("//") else {
                return false;
            };
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            crate::config::secure_or_loopback(uri)
                && !authority.is_empty()
                && !authority.contains('@')
        }
        s if UNSAFE_SCHEMES.contains(&s) => false,
        // A native app's own scheme: the operating system hands the answer to that app.
        _ => {
            let authority = rest
                .strip_prefix("//")
                .map(|r| r.split(['/', '?']).next().unwrap_or_default());
            !rest.is_empty() && authority.is_none_or(|a| !a.contains('@'))
        }
    }
}

/// Whether `requested` names the registered redirect URI `registered`: exactly, or for a
/// loopback IP literal with any port (RFC 8252 §7.3: a native app listens where it can).
pub(crate) fn same_redirect(registered: &str, requested: &str) -> bool {
    if registered == requested {
        return true;
    }
    // (host, what follows the authority) of an http URI on a loopback IP literal.
    fn loopback(uri: &str) -> Option<(&str, &str)> {
        let rest = uri.strip_prefix("http://")?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']')?;
                (host, after.strip_prefix(':').unwrap_or(after))
            }
            None => authority.split_once(':').unwrap_or((authority, "")),
        };
        let port_ok = port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        (port_ok && matches!(host, "127.0.0.1" | "::1")).then_some((host, tail))
    }
    matches!((loopback(registered), loopback(requested)), (Some(a), Some(b)) if a == b)
}

/// A new client from a registration, with its secret when it has one.
pub(crate) fn new_client(reg: Registration, now_ms: i64) -> Result<Registered, OAuthError> {
    let bad = |d: &str| err("invalid_client_metadata", d);
    if reg.redirect_uris.is_empty() || reg.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(err(
            "invalid_redirect_uri",
            format!("give 1 to {MAX_REDIRECT_URIS} redirect_uris"),
        ));
    }
    if let Some(uri) = reg.redirect_uris.iter().find(|u| !redirect_allowed(u)) {
        let shown: String = uri.chars().take(100).collect();
        return Err(err(
            "invalid_redirect_uri",
            format!(
                "'{shown}' is not https, http on a loopback host or an app's own scheme, or has a fragment"
            ),
        ));
    }
    let auth = match reg.token_endpoint_auth_method.as_deref() {
        None | Some("none") => ClientAuth::None,
        Some("client_secret_post") => ClientAuth::SecretPost,
        Some("client_secret_basic") => ClientAuth::SecretBasic,
        Some(_) => return Err(bad(
            "token_endpoint_auth_method must be none, client_secret_post or client_secret_basic",
        )),
    };
    let name = reg.client_name.unwrap_or_default();
    if name.chars().count() > MAX_NAME {
        return Err(bad("client_name is longer than 200 characters"));
    }
    let client_secret = match auth {
        ClientAuth::None => None,
        _ => Some(random_token("pgcs_")?),
    };
    let client = Client {
        client_id: random_token("pgc_")?,
        client_name: name,
        redirect_uris: reg.redirect_uris,
        auth,
        created_ms: now_ms,
        revoked: false,
        secret_digest: client_secret
            .as_deref()
            .map(|s| hex::encode(token_digest(s))),
    };
    Ok(Registered {
        client,
        client_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_redirect_uris_register() {
        for uri in [
            "http://example.com/cb",
            "https://h.example/cb#frag",
            "ftp://h.example/cb",
            "http://user@127.0.0.1/cb",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "cursor://user@host/cb",
            "1bad://cb",
            "https://h.example/c b",
        ] {
            assert!(!redirect_allowed(uri), "{uri}");
        }
        for uri in [
            "https://app.example/cb",
            "http://localhost:8080/cb",
            "http://[::1]:9/cb",
            "cursor://anysphere.cursor-retrieval/oauth/callback",
            "com.example.app:/oauth2redirect",
        ] {
            assert!(redirect_allowed(uri), "{uri}");
        }
    }

    #[test]
    fn loopback_ip_redirects_match_on_any_port_others_exactly() {
        let registered = "http://127.0.0.1:53682/callback";
        assert!(same_redirect(registered, "http://127.0.0.1:61000/callback"));
        assert!(same_redirect("http://[::1]/cb", "http://[::1]:5000/cb"));
        for uri in [
            "http://127.0.0.1:53682/callback/",
            "http://127.0.0.1:53682/Callback",
            "http://127.0.0.2:53682/callback",
            "http://localhost:53682/callback",
            "http://127.0.0.1:53682@evil.example/callback",
            "http://127.0.0.1:x/callback",
        ] {
            assert!(!same_redirect(registered, uri), "{uri}");
        }
        assert!(!same_redirect(
            "https://app.example/cb",
            "https://app.example:444/cb"
        ));
    }
}
