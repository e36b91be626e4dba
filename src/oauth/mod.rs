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
pub use jwt::{JwtError, JwtSettings, JwtValidator, OAUTH_SUBJECT_TAG};

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
    /// An external identity provider whose JWTs are accepted too.
    #[cfg(feature = "jwt")]
    jwt: Option<Arc<JwtValidator>>,
    /// One key provisioned at a time (for a JWT subject seen for the first time).
    #[cfg(feature = "jwt")]
    provisioning: tokio::sync::Mutex<()>,
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
            #[cfg(feature = "jwt")]
            jwt: None,
            #[cfg(feature = "jwt")]
            provisioning: tokio::sync::Mutex::new(()),
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

    /// Accepts the JWT access tokens of an external identity provider as well (SPEC §12,
    /// `oauth.jwt`): each acts for the key whose `oauthSubject` tag is its account claim.
    /// The protected resource metadata then names the provider first, so clients sign in
    /// there.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// use paygate_mcp::oauth::{JwtSettings, JwtValidator, OAuthServer};
    /// use paygate_mcp::{Gate, PayGateConfig};
    /// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    /// let idp = JwtSettings::new("https://id.example.com/", "https://id.example.com/jwks");
    /// let jwt = JwtValidator::with_http(idp, "https://mcp.example.com/mcp", gate.clock().clone()).unwrap();
    /// let server = OAuthServer::new("https://mcp.example.com", gate).with_jwt(jwt);
    /// # let _ = server;
    /// ```
    #[cfg(feature = "jwt")]
    pub fn with_jwt(mut self, validator: JwtValidator) -> Self {
        self.jwt = Some(Arc::new(validator));
        self
    }

    fn store(&self) -> &S {
        self.gate.store()
    }

    /// What a bearer token sent to the protected resource acts for: an access token this
    /// server issued, or a JWT of the configured identity provider; valid now and holding
    /// the scopes the server needs.
    pub async fn authenticate(&self, token: &str) -> Result<AccessGrant, BearerError> {
        if self.issued(token) {
            return self.authenticate_access(token).await;
        }
        #[cfg(feature = "jwt")]
        if let Some(jwt) = &self.jwt {
            if jwt::looks_like_jwt(token) {
                return self.authenticate_jwt(jwt, token).await;
            }
        }
        Err(BearerError::Invalid)
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
        #[cfg(feature = "jwt")]
        if self.jwt.is_some() && jwt::looks_like_jwt(token) {
            return true;
        }
        self.issued(token)
    }

    /// The authorization servers clients are sent to: the identity provider first when one
    /// is configured, then this gateway's own.
    pub fn authorization_servers(&self) -> Vec<String> {
        let mut servers = Vec::new();
        #[cfg(feature = "jwt")]
        if let Some(jwt) = &self.jwt {
            servers.push(jwt.settings().issuer.clone());
        }
        servers.push(self.issuer.clone());
        servers
    }
}
