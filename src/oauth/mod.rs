//! OAuth 2.1 for MCP clients that sign in (SPEC §12).
//!
//! Built so far: [`pkce`] (S256 only) and [`grants`], the logic of the built-in authorization
//! server — client registration with exact, safe redirect URIs, single-use codes bound to
//! client, redirect URI, PKCE challenge and resource, access and refresh tokens kept as
//! digests, refresh rotation with reuse detection that revokes the family, and revocation by
//! token, client or account. Its HTTP endpoints, the resource-server stage of the layers,
//! persistence in the key store and JWTs from an external identity provider build on these.

pub mod consent;
pub mod grants;
pub mod pkce;

use crate::clock::SharedClock;

pub use grants::{
    AccessGrant, AuthorizeRequest, BearerError, Client, ClientAuth, GrantSettings, Grants,
    OAuthError, Registered, Registration, TokenResponse,
};

/// The built-in authorization server: its issuer (the gateway's public URL), the protected
/// resource (`<issuer>/mcp`) and its grants. Mounted in the admin service with
/// [`AdminService::with_oauth`](crate::AdminService::with_oauth).
///
/// ```
/// use std::sync::Arc;
/// let server = paygate_mcp::oauth::OAuthServer::new("http://127.0.0.1:3402/", Arc::new(paygate_mcp::SystemClock));
/// assert_eq!(server.issuer(), "http://127.0.0.1:3402");
/// assert_eq!(server.resource(), "http://127.0.0.1:3402/mcp");
/// ```
#[derive(Debug)]
pub struct OAuthServer {
    issuer: String,
    grants: Grants,
}

impl OAuthServer {
    /// A server whose issuer is `public_url` (without a trailing `/`, as clients compare it
    /// exactly) with default lifetimes.
    pub fn new(public_url: &str, clock: SharedClock) -> Self {
        let issuer = public_url.trim_end_matches('/').to_string();
        let settings = GrantSettings::new(format!("{issuer}/mcp"));
        Self::with_settings(&issuer, settings, clock)
    }

    /// A server with explicit grant settings (lifetimes; the resource they name).
    pub fn with_settings(public_url: &str, settings: GrantSettings, clock: SharedClock) -> Self {
        Self {
            issuer: public_url.trim_end_matches('/').to_string(),
            grants: Grants::new(settings, clock),
        }
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The protected resource tokens are bound to.
    pub fn resource(&self) -> &str {
        &self.grants.settings().resource
    }

    /// The grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Whether `token` has the form of an access token this server issues (so a gate hands
    /// it here rather than reading it as an API key).
    pub fn issued(&self, token: &str) -> bool {
        token.starts_with(grants::ACCESS_TOKEN_PREFIX)
    }
}
