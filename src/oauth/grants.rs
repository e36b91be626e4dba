//! The authorization server's flows: authorization requests, codes with PKCE, the token
//! endpoint's two grants (code exchange, refresh with rotation and reuse detection),
//! revocation, and checking a bearer access token.
//!
//! Every secret handed out (client secret, code, token) is random and kept only as its
//! SHA-256 digest, in the key store ([`GrantStore`]). Codes are single-use and live at most
//! a minute; a code or refresh token presented again ends the grant it made or belongs to
//! (the thief and the victim both lose it, and the victim signs in again). A grant acts for
//! the account (`keyId`) whose key approved it, and ends with that key.

use super::client::{new_client, same_redirect, Registered, Registration, MAX_CLIENT_ID};
use super::{pkce, OAuthServer};
use crate::key::KeyRecord;
use crate::store::{
    token_digest, Client, CodeGrant, CodeTaken, Grant, KeyStore, Refreshed, StoreError, TokenPair,
};

/// What every access token this server issues starts with.
pub const ACCESS_TOKEN_PREFIX: &str = "pgat_";
/// Longest scope accepted.
const MAX_SCOPE: usize = 256;

/// Lifetimes, scopes and the resource this server issues tokens for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSettings {
    /// The protected resource tokens are bound to (`<publicUrl>/mcp`).
    pub resource: String,
    /// Access token lifetime in seconds (default 3,600).
    pub access_ttl_secs: u64,
    /// Refresh token lifetime in seconds (default 30 days).
    pub refresh_ttl_secs: u64,
    /// Authorization code lifetime in seconds (default and at most 60).
    pub code_ttl_secs: u64,
    /// The scopes a token needs to call the server (empty: scopes are not checked). A
    /// request may ask only for these; one that asks for none gets them all.
    pub scopes: Vec<String>,
}

impl GrantSettings {
    /// Defaults for `resource`.
    ///
    /// ```
    /// let s = paygate_mcp::oauth::GrantSettings::new("https://mcp.example.com/mcp");
    /// assert_eq!((s.access_ttl_secs, s.code_ttl_secs), (3_600, 60));
    /// ```
    pub fn new(resource: impl Into<String>) -> Self {
        Self {
            resource: resource.into(),
            access_ttl_secs: 3_600,
            refresh_ttl_secs: 30 * 86_400,
            code_ttl_secs: 60,
            scopes: Vec::new(),
        }
    }
}

/// An OAuth error as RFC 6749 §5.2 names it, with a description safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    /// The RFC 6749 / 7591 / 8707 error code (`invalid_grant`, ...).
    pub error: &'static str,
    /// What is wrong, for people.
    pub description: String,
}

pub(crate) fn err(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        error,
        description: description.into(),
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "OAuth grant store");
        err(
            "temporarily_unavailable",
            "the server cannot reach its store; try again",
        )
    }
}

/// An authorization request, as the consent page carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// Must be `code`.
    pub response_type: String,
    /// The registered client.
    pub client_id: String,
    /// One of the client's redirect URIs, exactly (may be left out when it has only one).
    pub redirect_uri: Option<String>,
    /// PKCE challenge.
    pub code_challenge: String,
    /// Must be `S256`.
    pub code_challenge_method: Option<String>,
    /// RFC 8707: must name the protected resource (taken as it when left out).
    pub resource: Option<String>,
    /// Requested scope.
    pub scope: Option<String>,
}

/// A request checked against its client: where the answer goes, and what is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approvable {
    /// The client asking.
    pub client: Client,
    /// The redirect URI the answer goes to.
    pub redirect_uri: String,
    /// The scope that will be granted (may be empty).
    pub scope: String,
}

/// Tokens answered by the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// Seconds it lives.
    pub expires_in: u64,
    /// The refresh token (rotated on every use).
    pub refresh_token: String,
    /// The scope granted.
    pub scope: String,
}

/// What a valid access token acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrant {
    /// The account billed for the calls.
    pub key_id: crate::key::KeyId,
    /// The digest of the account's key when the grant was made (rotating the key ends its
    /// grants, so this is its current key while the grant lives).
    pub key: crate::key::KeyDigest,
    /// The client it was issued to (the identity provider's issuer for a JWT).
    pub client_id: String,
    /// The scope granted.
    pub scope: String,
}

/// Why a bearer token does not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// Unknown, expired, revoked, or issued for another resource.
    #[error("the access token is invalid or expired")]
    Invalid,
    /// Valid, but without a scope the server needs (403).
    #[error("the access token lacks the scope {0}")]
    InsufficientScope(String),
    /// The store could not be asked.
    #[error("the token could not be checked")]
    Unavailable,
}

/// A random token with `prefix`: 32 bytes from the OS CSPRNG, hex.
pub(crate) fn random_token(prefix: &str) -> Result<String, OAuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| err("server_error", "the random source failed"))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// Milliseconds `secs` after `now_ms`, saturating.
fn after(now_ms: i64, secs: u64) -> i64 {
    now_ms.saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// Whether `scope` is RFC 6749 §3.3 text: space-separated tokens of visible ASCII but `"`
/// and `\`.
fn scope_well_formed(scope: &str) -> bool {
    scope.len() <= MAX_SCOPE
        && scope
            .bytes()
            .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'))
}

/// A fresh pair of tokens, drawn before any store step.
struct Pair {
    access: String,
    refresh: String,
}

impl Pair {
    fn new() -> Result<Self, OAuthError> {
        Ok(Self {
            access: random_token(ACCESS_TOKEN_PREFIX)?,
            refresh: random_token("pgrt_")?,
        })
    }

    fn digests(&self, settings: &GrantSettings, now_ms: i64) -> TokenPair {
        TokenPair {
            access: token_digest(&self.access),
            access_expires_ms: after(now_ms, settings.access_ttl_secs),
            refresh: token_digest(&self.refresh),
            refresh_expires_ms: after(now_ms, settings.refresh_ttl_secs),
        }
    }

    fn response(self, settings: &GrantSettings, scope: String) -> TokenResponse {
        TokenResponse {
            access_token: self.access,
            expires_in: settings.access_ttl_secs,
            refresh_token: self.refresh,
            scope,
        }
    }
}

impl<S: KeyStore> OAuthServer<S> {
    fn now_ms(&self) -> i64 {
        self.gate.clock().now_ms()
    }

    /// Registers a client (RFC 7591).
    pub async fn register(&self, reg: Registration) -> Result<Registered, OAuthError> {
        let registered = new_client(reg, self.now_ms())?;
        let added = self
            .store()
            .add_client(registered.client.clone(), self.limits)
            .await?;
        if !added {
            return Err(err(
                "temporarily_unavailable",
                "too many clients registered",
            ));
        }
        self.gate.emit(
            "oauth.client_registered",
            serde_json::json!({
                "actor": "oauth",
                "clientId": registered.client.client_id,
                "clientName": registered.client.client_name,
            }),
        );
        Ok(registered)
    }

    /// The client `client_id`, revoked or not.
    pub async fn client(&self, client_id: &str) -> Result<Option<Client>, OAuthError> {
        if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID {
            return Ok(None);
        }
        Ok(self.store().client(client_id).await?)
    }

    /// Every registered client, oldest first.
    pub async fn clients(&self) -> Result<Vec<Client>, OAuthError> {
        Ok(self.store().clients().await?)
    }

    /// Revokes a client and every token issued to it; `false` when there is no such client.
    pub async fn revoke_client(&self, client_id: &str) -> Result<bool, OAuthError> {
        if client_id.len() > MAX_CLIENT_ID {
            return Ok(false);
        }
        Ok(self.store().revoke_client(client_id).await?)
    }

    /// The scope a request is granted: what it asked for (each one a scope this server
    /// knows, when it names any), or all of them when it asked for none.
    fn granted_scope(&self, asked: Option<&str>) -> Result<String, OAuthError> {
        let asked = asked.unwrap_or_default().trim();
        if !scope_well_formed(asked) {
            return Err(err("invalid_scope", "scope is malformed or too long"));
        }
        let known = &self.settings.scopes;
        if known.is_empty() {
            return Ok(asked.to_string());
        }
        if asked.is_empty() {
            return Ok(known.join(" "));
        }
        match asked
            .split(' ')
            .find(|s| !s.is_empty() && !known.iter().any(|k| k == s))
        {
            Some(unknown) => Err(err(
                "invalid_scope",
                format!(
                    "unknown scope '{}'; this server knows: {}",
                    unknown.chars().take(40).collect::<String>(),
                    known.join(" ")
                ),
            )),
            None => Ok(asked.split_whitespace().collect::<Vec<_>>().join(" ")),
        }
    }

    /// Checks an authorization request before consent is asked: a known client, a
    /// registered redirect URI, `code` with PKCE `S256`, our resource, known scopes.
    pub async fn check_authorize(&self, req: &AuthorizeRequest) -> Result<Approvable, OAuthError> {
        let client = self
            .client(&req.client_id)
            .await?
            .filter(|c| !c.revoked)
            .ok_or_else(|| err("invalid_client", "unknown client_id"))?;
        let redirect_uri = match &req.redirect_uri {
            Some(uri) if client.redirect_uris.iter().any(|r| same_redirect(r, uri)) => uri.clone(),
            None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
            _ => {
                return Err(err(
                    "invalid_request",
                    "redirect_uri is not one the client registered",
                ))
            }
        };
        if req.response_type != "code" {
            return Err(err(
                "unsupported_response_type",
                "response_type must be code",
            ));
        }
        pkce::check_challenge(&req.code_challenge, req.code_challenge_method.as_deref())
            .map_err(|e| err("invalid_request", e.to_string()))?;
        self.check_resource(req.resource.as_deref())?;
        let scope = self.granted_scope(req.scope.as_deref())?;
        Ok(Approvable {
            client,
            redirect_uri,
            scope,
        })
    }

    /// Issues a code for an approved request, acting for the account of `account`.
    pub async fn issue_code(
        &self,
        req: &AuthorizeRequest,
        account: &KeyRecord,
    ) -> Result<String, OAuthError> {
        let approved = self.check_authorize(req).await?;
        let code = random_token("pgac_")?;
        let now = self.now_ms();
        let grant = CodeGrant {
            client_id: approved.client.client_id,
            redirect_uri: approved.redirect_uri,
            redirect_uri_given: req.redirect_uri.is_some(),
            challenge: req.code_challenge.clone(),
            scope: approved.scope,
            key_id: account.id(),
            key: account.key_hash,
            expires_ms: after(now, self.settings.code_ttl_secs),
        };
        let added = self
            .store()
            .add_code(token_digest(&code), grant, now, self.limits)
            .await?;
        if !added {
            return Err(err(
                "temporarily_unavailable",
                "too many sign-ins in progress for this key or this server; try again in a minute",
            ));
        }
        Ok(code)
    }

    /// Authenticates a client at the token or revocation endpoint. `secret` is what it sent
    /// (form or Basic).
    async fn authenticate_client(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<Client, OAuthError> {
        use subtle::ConstantTimeEq;
        let client = self
            .client(client_id)
            .await?
            .filter(|c| !c.revoked)
            .ok_or_else(|| err("invalid_client", "unknown client"))?;
        let sent = secret.map(|s| hex::encode(token_digest(s)));
        match (&client.secret_digest, sent) {
            (None, _) => Ok(client),
            (Some(want), Some(got)) if bool::from(want.as_bytes().ct_eq(got.as_bytes())) => {
                Ok(client)
            }
            _ => Err(err("invalid_client", "client authentication failed")),
        }
    }

    fn check_resource(&self, resource: Option<&str>) -> Result<(), OAuthError> {
        match resource {
            Some(r) if r != self.settings.resource => Err(err(
                "invalid_target",
                "resource must name this server's MCP endpoint",
            )),
            _ => Ok(()),
        }
    }

    /// `grant_type=authorization_code`: exchanges a code (once) for tokens. A code presented
    /// again ends the grant its first exchange made.
    #[allow(clippy::too_many_arguments)]
    pub async fn exchange_code(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate_client(client_id, client_secret).await?;
        let (pair, family) = (Pair::new()?, random_token("")?);
        let now = self.now_ms();
        let code_digest = token_digest(code);
        // Taken out first: whatever follows, this code is spent.
        let taken = self
            .store()
            .take_code(&code_digest, &client.client_id, now)
            .await?;
        let grant = match taken {
            CodeTaken::Fresh(grant) => grant,
            CodeTaken::Reused => {
                return Err(err(
                    "invalid_grant",
                    "the code was already used: the tokens it gave are revoked",
                ))
            }
            CodeTaken::Unknown => {
                return Err(err("invalid_grant", "the code is unknown or has expired"))
            }
            CodeTaken::OtherClient => {
                return Err(err(
                    "invalid_grant",
                    "the code was issued to another client",
                ))
            }
        };
        // RFC 6749 §4.1.3: named in the authorization request, so required here, identical.
        let redirect_ok = match redirect_uri {
            Some(uri) => uri == grant.redirect_uri,
            None => !grant.redirect_uri_given,
        };
        if !redirect_ok {
            return Err(err(
                "invalid_grant",
                "redirect_uri differs from the authorization request",
            ));
        }
        let verifier =
            code_verifier.ok_or_else(|| err("invalid_grant", "code_verifier is missing"))?;
        pkce::verify(verifier, &grant.challenge)
            .map_err(|e| err("invalid_grant", e.to_string()))?;
        self.check_resource(resource)?;
        // The key that approved must still hold the account (not revoked, not rotated).
        let current = self.store().get(&grant.key).await?;
        if !current.is_some_and(|r| r.active && !r.is_expired_at(now)) {
            return Err(err(
                "invalid_grant",
                "the API key that approved this sign-in no longer works",
            ));
        }
        let tokens = pair.digests(&self.settings, now);
        let stored = Grant {
            family,
            client_id: client.client_id,
            key_id: grant.key_id,
            key: grant.key,
            scope: grant.scope.clone(),
            resource: self.settings.resource.clone(),
            created_ms: now,
            access: tokens.access,
            access_expires_ms: tokens.access_expires_ms,
            refresh: tokens.refresh,
            refresh_expires_ms: tokens.refresh_expires_ms,
        };
        let added = self
            .store()
            .add_grant(code_digest, grant.expires_ms, stored, now, self.limits)
            .await?;
        if !added {
            return Err(err("invalid_client", "the client was revoked"));
        }
        Ok(pair.response(&self.settings, grant.scope))
    }

    /// `grant_type=refresh_token`: a new pair for a refresh token, which is spent. Presenting
    /// a spent one revokes its whole family.
    pub async fn refresh(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        refresh_token: &str,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate_client(client_id, client_secret).await?;
        self.check_resource(resource)?;
        let pair = Pair::new()?;
        let now = self.now_ms();
        let next = pair.digests(&self.settings, now);
        let outcome = self
            .store()
            .refresh_grant(
                &token_digest(refresh_token),
                &client.client_id,
                next,
                now,
                self.limits,
            )
            .await?;
        match outcome {
            Refreshed::Rotated(grant) => Ok(pair.response(&self.settings, grant.scope)),
            Refreshed::Reused => Err(err(
                "invalid_grant",
                "the refresh token was already used: every token of this grant is revoked",
            )),
            Refreshed::Unknown => Err(err(
                "invalid_grant",
                "the refresh token is unknown or revoked",
            )),
            Refreshed::OtherClient => {
                Err(err("invalid_grant", "not a refresh token of this client"))
            }
            Refreshed::Expired => Err(err("invalid_grant", "the refresh token has expired")),
        }
    }

    /// RFC 7009: revokes a token of the client that authenticates; a refresh token ends its
    /// whole grant, an access token only itself. Unknown tokens are ignored, as the RFC
    /// asks; another client's token is refused.
    pub async fn revoke_token(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        token: &str,
    ) -> Result<(), OAuthError> {
        let client = self.authenticate_client(client_id, client_secret).await?;
        let revoked = self
            .store()
            .revoke_token(&token_digest(token), &client.client_id)
            .await?;
        if revoked {
            Ok(())
        } else {
            Err(err(
                "unauthorized_client",
                "the token was issued to another client",
            ))
        }
    }

    /// Ends every grant acting for `key_id` (its key was revoked or rotated; the gate does
    /// this by itself on [`Gate::revoke`](crate::Gate::revoke) and
    /// [`Gate::rotate`](crate::Gate::rotate)).
    pub async fn revoke_account(&self, key_id: &crate::key::KeyId) -> Result<(), OAuthError> {
        Ok(self.store().revoke_account(key_id).await?)
    }

    /// What a bearer access token of this server acts for, if it is valid now and holds
    /// the scopes the server needs.
    pub async fn authenticate_access(
        &self,
        access_token: &str,
    ) -> Result<AccessGrant, BearerError> {
        let grant = self
            .store()
            .access_grant(&token_digest(access_token), self.now_ms())
            .await
            .map_err(|_| BearerError::Unavailable)?
            .ok_or(BearerError::Invalid)?;
        // RFC 8707: a token is for the resource it was issued for (gateways with another
        // public URL may share the store).
        if !grant.resource.is_empty() && grant.resource != self.settings.resource {
            return Err(BearerError::Invalid);
        }
        self.check_scope(&grant.scope)?;
        Ok(AccessGrant {
            key_id: grant.key_id,
            key: grant.key,
            client_id: grant.client_id,
            scope: grant.scope,
        })
    }

    /// Whether a token granted `scope` may call the server: it holds every scope needed.
    pub(crate) fn check_scope(&self, scope: &str) -> Result<(), BearerError> {
        let held: Vec<&str> = scope.split_whitespace().collect();
        let needed = &self.settings.scopes;
        if needed.iter().all(|s| held.contains(&s.as_str())) {
            Ok(())
        } else {
            Err(BearerError::InsufficientScope(needed.join(" ")))
        }
    }
}

#[cfg(test)]
mod tests;
