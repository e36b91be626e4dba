//! OAuth 2.1 for MCP clients that sign in (SPEC §12).
//!
//! [`OAuthServer`] is the gateway's own authorization server and the check of the tokens
//! it issues: [`client`] registration with safe, exact redirect URIs; [`grants`], the flows
//! (PKCE `S256` codes bound to client, redirect URI and resource; access and refresh tokens
//! with rotation and reuse detection; revocation by token, client or account); [`consent`],
//! the page a person approves a sign-in on with the API key that pays. Clients, codes and
//! grants live in the gate's key store (memory with its state file, or Redis), so tokens
//! survive restarts and work on every gateway sharing the store. The HTTP endpoints are in
//! the admin service ([`AdminService::with_oauth`](crate::AdminService::with_oauth)); the
//! resource-server check is in the layers ([`PayGate::with_oauth`](crate::PayGate::with_oauth)).

pub mod client;
pub mod consent;
pub mod grants;
#[cfg(feature = "jwt")]
pub mod jwt;
pub mod pkce;

use std::sync::Arc;

use crate::gate::Gate;
use crate::store::{GrantLimits, KeyStore, MemoryKeyStore};

pub use crate::store::{Client, ClientAuth};
pub use client::{Registered, Registration};
pub use grants::{
    AccessGrant, Approvable, AuthorizeRequest, BearerError, GrantSettings, OAuthError,
    TokenResponse,
};
#[cfg(feature = "jwt")]
pub use jwt::{JwtError, JwtSettings, JwtValidator};

/// The built-in authorization server of a gate: its issuer (the gateway's public URL), the
/// protected resource (`<issuer>/mcp`), lifetimes and scopes; its clients and grants live in
/// the gate's store.
///
/// ```
/// use std::sync::Arc;
/// use paygate_mcp::{oauth::OAuthServer, Gate, PayGateConfig};
/// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
/// let server = OAuthServer::new("http://127.0.0.1:3402/", gate);
/// assert_eq!(server.issuer(), "http://127.0.0.1:3402");
/// assert_eq!(server.resource(), "http://127.0.0.1:3402/mcp");
/// ```
pub struct OAuthServer<S = MemoryKeyStore> {
    issuer: String,
    settings: GrantSettings,
    limits: GrantLimits,
    gate: Arc<Gate<S>>,
}

impl<S> std::fmt::Debug for OAuthServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthServer")
            .field("issuer", &self.issuer)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> OAuthServer<S> {
    /// A server for `gate` whose issuer is `public_url` (without a trailing `/`, as clients
    /// compare it exactly) with default lifetimes and no scopes.
    pub fn new(public_url: &str, gate: Arc<Gate<S>>) -> Self {
        let issuer = public_url.trim_end_matches('/').to_string();
        let settings = GrantSettings::new(format!("{issuer}/mcp"));
        Self::with_settings(&issuer, settings, gate)
    }

    /// A server with explicit settings (lifetimes, scopes, the resource they name).
    pub fn with_settings(public_url: &str, settings: GrantSettings, gate: Arc<Gate<S>>) -> Self {
        let settings = GrantSettings {
            code_ttl_secs: settings.code_ttl_secs.clamp(1, 60),
            ..settings
        };
        Self {
            issuer: public_url.trim_end_matches('/').to_string(),
            settings,
            limits: GrantLimits::default(),
            gate,
        }
    }

    /// Sets the bounds on clients, codes and grants the store keeps.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use paygate_mcp::{oauth::OAuthServer, store::GrantLimits, Gate, PayGateConfig};
    /// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    /// let limits = GrantLimits { clients: 100, ..GrantLimits::default() };
    /// let server = OAuthServer::new("https://mcp.example.com", gate).with_limits(limits);
    /// # let _ = server;
    /// ```
    pub fn with_limits(mut self, limits: GrantLimits) -> Self {
        self.limits = limits;
        self
    }

    fn store(&self) -> &S {
        self.gate.store()
    }

    /// What a bearer token sent to the protected resource acts for: an access token this
    /// server issued, valid now and holding the scopes the server needs.
    pub async fn authenticate(&self, token: &str) -> Result<AccessGrant, BearerError> {
        if self.issued(token) {
            self.authenticate_access(token).await
        } else {
            Err(BearerError::Invalid)
        }
    }
}

impl<S> OAuthServer<S> {
    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The protected resource tokens are bound to.
    pub fn resource(&self) -> &str {
        &self.settings.resource
    }

    /// The settings in force.
    pub fn settings(&self) -> &GrantSettings {
        &self.settings
    }

    /// The gate whose accounts the grants act for.
    pub fn gate(&self) -> &Arc<Gate<S>> {
        &self.gate
    }

    /// Whether `token` has the form of an access token this server issues.
    pub fn issued(&self, token: &str) -> bool {
        token.starts_with(grants::ACCESS_TOKEN_PREFIX)
    }

    /// Whether a bearer token is this server's to check (rather than an API key sent as a
    /// bearer token).
    pub fn handles(&self, token: &str) -> bool {
        self.issued(token)
    }
}
