//! The authorization server's grants: client registration (RFC 7591), authorization codes
//! with PKCE, access and refresh tokens with rotation and reuse detection, revocation.
//!
//! Every secret it hands out (client secret, code, token) is random and kept only as its
//! SHA-256 digest, as keys are. Codes are single-use and live at most a minute; a refresh
//! token works once, and presenting it again revokes every token of its family (the thief
//! and the victim both lose it, and the victim signs in again). A grant acts for the account
//! (`keyId`) whose key approved it, and dies with that account's key.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::pkce;
use crate::clock::SharedClock;
use crate::key::{KeyDigest, KeyId};

/// Most redirect URIs one client may register.
const MAX_REDIRECT_URIS: usize = 10;
/// Longest redirect URI accepted.
const MAX_TEXT: usize = 512;
/// What every access token this server issues starts with.
pub const ACCESS_TOKEN_PREFIX: &str = "pgat_";

/// Most clients registered (registration is open: a flood must not grow memory unbounded).
pub const MAX_CLIENTS: usize = 10_000;
/// Most codes waiting to be exchanged (each lives a minute).
pub const MAX_CODES: usize = 100_000;
/// Most grants (token families) one account holds: a new one ends the oldest, so no key
/// holder can grow the server's memory by signing in over and over.
pub const MAX_GRANTS_PER_ACCOUNT: usize = 50;
/// Spent refresh tokens remembered per grant, to spot one presented again.
const SPENT_KEPT: usize = 8;
/// Longest scope accepted.
const MAX_SCOPE: usize = 256;

/// Lifetimes and the names this server issues tokens for.
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
}

impl GrantSettings {
    /// Defaults for `resource`.
    pub fn new(resource: impl Into<String>) -> Self {
        Self {
            resource: resource.into(),
            access_ttl_secs: 3_600,
            refresh_ttl_secs: 30 * 86_400,
            code_ttl_secs: 60,
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

fn err(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        error,
        description: description.into(),
    }
}

/// How a client proves itself at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A public client (PKCE alone).
    None,
    /// `client_secret` in the form.
    SecretPost,
    /// HTTP Basic with the client id and secret.
    SecretBasic,
}

impl ClientAuth {
    /// The RFC 7591 name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::SecretPost => "client_secret_post",
            ClientAuth::SecretBasic => "client_secret_basic",
        }
    }
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Its id.
    pub client_id: String,
    /// Its name, as it registered it (shown on the consent page, escaped).
    pub client_name: String,
    /// Exact redirect URIs.
    pub redirect_uris: Vec<String>,
    /// How it authenticates.
    pub auth: ClientAuth,
    /// When it registered.
    pub created_ms: i64,
    /// Revoked by an operator: it gets no more codes or tokens.
    pub revoked: bool,
    secret: Option<[u8; 32]>,
}

/// What a client sends to register (RFC 7591; unknown fields are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// Redirect URIs: https, or http on a loopback host; no fragment.
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
    /// The scope asked for (may be empty).
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
    pub key_id: KeyId,
    /// The digest of the account's key when the grant was made (rotating the key revokes
    /// its grants, so this is its current key while the grant lives).
    pub key: KeyDigest,
    /// The client it was issued to.
    pub client_id: String,
    /// The scope granted.
    pub scope: String,
}

/// What a [`Grants`] holds ([`Grants::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantCounts {
    /// Registered clients.
    pub clients: usize,
    /// Codes waiting to be exchanged.
    pub codes: usize,
    /// Live access and refresh tokens.
    pub tokens: usize,
    /// Grants (token families).
    pub grants: usize,
    /// Spent refresh tokens remembered to catch replays.
    pub spent: usize,
}

/// Why a bearer token does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// Unknown, expired, revoked, or issued for another resource.
    #[error("the access token is invalid or expired")]
    Invalid,
}

type Digest = [u8; 32];

fn digest(text: &str) -> Digest {
    Sha256::digest(text.as_bytes()).into()
}

#[derive(Debug, Clone)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    key_id: KeyId,
    key: KeyDigest,
    expires_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Access,
    Refresh,
}

/// A live token: the current access or refresh token of a grant.
#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    family: u128,
    expires_ms: i64,
}

/// One grant (a token family): what it acts for and its current tokens. A refresh replaces
/// both tokens; the spent refresh tokens are remembered (a few) to catch a replay.
#[derive(Debug, Clone)]
struct Family {
    client_id: String,
    key_id: KeyId,
    key: KeyDigest,
    scope: String,
    access: Digest,
    refresh: Digest,
    spent: VecDeque<Digest>,
}

#[derive(Default)]
struct State {
    clients: HashMap<String, Client>,
    codes: HashMap<Digest, Code>,
    tokens: HashMap<Digest, Token>,
    families: HashMap<u128, Family>,
    /// Spent refresh tokens → their grant.
    spent: HashMap<Digest, u128>,
    /// Each account's grants, oldest first.
    by_account: HashMap<KeyId, VecDeque<u128>>,
}

impl State {
    /// Ends a grant: its tokens, its spent tokens, its place in the account's list.
    fn end(&mut self, family: u128) {
        let Some(f) = self.families.remove(&family) else {
            return;
        };
        self.tokens.remove(&f.access);
        self.tokens.remove(&f.refresh);
        for d in &f.spent {
            self.spent.remove(d);
        }
        if let Some(list) = self.by_account.get_mut(&f.key_id) {
            list.retain(|g| *g != family);
            if list.is_empty() {
                self.by_account.remove(&f.key_id);
            }
        }
    }

    /// Ends every grant `keep` refuses.
    fn end_where(&mut self, keep: impl Fn(&Family) -> bool) {
        let gone: Vec<u128> = self
            .families
            .iter()
            .filter(|(_, f)| !keep(f))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.end(id);
        }
    }
}

/// Fresh token pairs are drawn before the lock is taken: the random source may block.
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
}

/// The grants of one authorization server, in memory.
pub struct Grants {
    settings: GrantSettings,
    clock: SharedClock,
    state: Mutex<State>,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A random token with `prefix`: 32 bytes from the OS CSPRNG, hex.
fn random_token(prefix: &str) -> Result<String, OAuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| err("server_error", "the random source failed"))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

fn random_family() -> Result<u128, OAuthError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| err("server_error", "the random source failed"))?;
    Ok(u128::from_le_bytes(bytes))
}

/// Whether `uri` may be registered: absolute https, or http on a loopback host; no fragment
/// and no userinfo.
fn redirect_allowed(uri: &str) -> bool {
    if uri.len() > MAX_TEXT || uri.contains('#') || uri.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((_, rest)) = uri.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    crate::config::secure_or_loopback(uri) && !authority.is_empty() && !authority.contains('@')
}

/// Whether `requested` names the registered redirect URI `registered`: exactly, or for a
/// loopback IP literal with any port (RFC 8252 §7.3: a native app listens where it can).
fn same_redirect(registered: &str, requested: &str) -> bool {
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

impl Grants {
    /// An empty set of grants.
    pub fn new(settings: GrantSettings, clock: SharedClock) -> Self {
        let settings = GrantSettings {
            code_ttl_secs: settings.code_ttl_secs.clamp(1, 60),
            ..settings
        };
        Self {
            settings,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &GrantSettings {
        &self.settings
    }

    /// Registers a client (RFC 7591).
    pub fn register(&self, reg: Registration) -> Result<Registered, OAuthError> {
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
                format!("'{shown}' is not https, nor http on a loopback host, or has a fragment"),
            ));
        }
        let auth = match reg.token_endpoint_auth_method.as_deref() {
            None | Some("none") => ClientAuth::None,
            Some("client_secret_post") => ClientAuth::SecretPost,
            Some("client_secret_basic") => ClientAuth::SecretBasic,
            Some(_) => {
                return Err(bad(
                    "token_endpoint_auth_method must be none, client_secret_post or client_secret_basic",
                ))
            }
        };
        let name = reg.client_name.unwrap_or_default();
        if name.chars().count() > 200 {
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
            created_ms: self.clock.now_ms(),
            revoked: false,
            secret: client_secret.as_deref().map(digest),
        };
        let mut state = self.state.lock();
        if state.clients.len() >= MAX_CLIENTS {
            // Registration is open to anyone: at the bound, the oldest client that never
            // got a grant makes room, so a flood cannot lock real clients out.
            let unused = state
                .clients
                .values()
                .filter(|c| !state.families.values().any(|f| f.client_id == c.client_id))
                .min_by_key(|c| c.created_ms)
                .map(|c| c.client_id.clone());
            match unused {
                Some(id) => {
                    state.clients.remove(&id);
                    state.codes.retain(|_, c| c.client_id != id);
                }
                None => {
                    return Err(err(
                        "temporarily_unavailable",
                        "too many clients registered",
                    ))
                }
            }
        }
        state
            .clients
            .insert(client.client_id.clone(), client.clone());
        Ok(Registered {
            client,
            client_secret,
        })
    }

    /// The client `client_id`, revoked or not.
    pub fn client(&self, client_id: &str) -> Option<Client> {
        self.state.lock().clients.get(client_id).cloned()
    }

    /// Every registered client.
    pub fn clients(&self) -> Vec<Client> {
        let mut all: Vec<Client> = self.state.lock().clients.values().cloned().collect();
        all.sort_by(|a, b| {
            a.created_ms
                .cmp(&b.created_ms)
                .then(a.client_id.cmp(&b.client_id))
        });
        all
    }

    /// Revokes a client and every token issued to it; `false` when there is no such client.
    pub fn revoke_client(&self, client_id: &str) -> bool {
        let mut state = self.state.lock();
        let Some(client) = state.clients.get_mut(client_id) else {
            return false;
        };
        client.revoked = true;
        state.end_where(|f| f.client_id != client_id);
        state.codes.retain(|_, c| c.client_id != client_id);
        true
    }

    /// Checks an authorization request before consent is asked: a known client, an exact
    /// redirect URI, `code` with PKCE `S256`, and our resource. An error here must not be
    /// redirected when the client or redirect URI is in doubt (`redirectable` says).
    pub fn check_authorize(
        &self,
        req: &AuthorizeRequest,
    ) -> Result<Approvable, (OAuthError, bool)> {
        let client = self
            .state
            .lock()
            .clients
            .get(&req.client_id)
            .filter(|c| !c.revoked)
            .cloned()
            .ok_or_else(|| (err("invalid_client", "unknown client_id"), false))?;
        let redirect_uri = match &req.redirect_uri {
            Some(uri) if client.redirect_uris.iter().any(|r| same_redirect(r, uri)) => uri.clone(),
            None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
            _ => {
                return Err((
                    err(
                        "invalid_request",
                        "redirect_uri is not one the client registered",
                    ),
                    false,
                ))
            }
        };
        if req.response_type != "code" {
            return Err((
                err("unsupported_response_type", "response_type must be code"),
                true,
            ));
        }
        pkce::check_challenge(&req.code_challenge, req.code_challenge_method.as_deref())
            .map_err(|e| (err("invalid_request", e.to_string()), true))?;
        if let Some(resource) = &req.resource {
            if *resource != self.settings.resource {
                return Err((
                    err(
                        "invalid_target",
                        "resource must name this server's MCP endpoint",
                    ),
                    true,
                ));
            }
        }
        let scope = req.scope.clone().unwrap_or_default();
        // RFC 6749 §3.3: space-separated tokens of visible ASCII but `"` and `\\`.
        let scope_ok = scope.len() <= MAX_SCOPE
            && scope
                .bytes()
                .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b'"' && b != b'\\'));
        if !scope_ok {
            return Err((err("invalid_scope", "scope is malformed or too long"), true));
        }
        Ok(Approvable {
            client,
            redirect_uri,
            scope,
        })
    }

    /// Issues a code for an approved request, acting for the account `key_id` whose key's
    /// digest is `key`.
    pub fn issue_code(
        &self,
        req: &AuthorizeRequest,
        key_id: KeyId,
        key: KeyDigest,
    ) -> Result<String, OAuthError> {
        let approved = self.check_authorize(req).map_err(|(e, _)| e)?;
        let code = random_token("pgac_")?;
        let now = self.clock.now_ms();
        let expires_ms = now + (self.settings.code_ttl_secs * 1000) as i64;
        let mut state = self.state.lock();
        if state.codes.len() >= MAX_CODES {
            state.codes.retain(|_, c| now < c.expires_ms);
            if state.codes.len() >= MAX_CODES {
                return Err(err(
                    "temporarily_unavailable",
                    "too many sign-ins in progress",
                ));
            }
        }
        state.codes.insert(
            digest(&code),
            Code {
                client_id: approved.client.client_id,
                redirect_uri: approved.redirect_uri,
                challenge: req.code_challenge.clone(),
                scope: approved.scope,
                key_id,
                key,
                expires_ms,
            },
        );
        Ok(code)
    }

    /// Authenticates a client at the token endpoint. `secret` is what it sent (form or Basic).
    fn authenticate_client(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<Client, OAuthError> {
        let client = self
            .state
            .lock()
            .clients
            .get(client_id)
            .filter(|c| !c.revoked)
            .cloned()
            .ok_or_else(|| err("invalid_client", "unknown client"))?;
        match (&client.secret, secret) {
            (None, _) => Ok(client),
            (Some(want), Some(got)) if bool::from(want.ct_eq(&digest(got))) => Ok(client),
            _ => Err(err("invalid_client", "client authentication failed")),
        }
    }

    /// `grant_type=authorization_code`: exchanges a code (once) for tokens.
    pub fn exchange_code(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate_client(client_id, client_secret)?;
        let (pair, family) = (Pair::new()?, random_family()?);
        let mut state = self.state.lock();
        // Taken out first: whatever follows, this code is spent.
        let grant = state
            .codes
            .remove(&digest(code))
            .ok_or_else(|| err("invalid_grant", "the code is unknown or was used"))?;
        if grant.client_id != client.client_id {
            return Err(err(
                "invalid_grant",
                "the code was issued to another client",
            ));
        }
        if self.clock.now_ms() >= grant.expires_ms {
            return Err(err("invalid_grant", "the code has expired"));
        }
        if redirect_uri.is_some_and(|u| u != grant.redirect_uri) {
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
        if state
            .clients
            .get(&client.client_id)
            .is_none_or(|c| c.revoked)
        {
            return Err(err("invalid_client", "the client was revoked"));
        }
        // A new grant for the account; past its bound, its oldest grant ends.
        let grants = state.by_account.entry(grant.key_id).or_default();
        grants.push_back(family);
        let oldest = (grants.len() > MAX_GRANTS_PER_ACCOUNT).then(|| grants.pop_front());
        if let Some(Some(oldest)) = oldest {
            state.end(oldest);
        }
        let f = Family {
            client_id: client.client_id,
            key_id: grant.key_id,
            key: grant.key,
            scope: grant.scope,
            access: [0; 32],
            refresh: [0; 32],
            spent: VecDeque::new(),
        };
        state.families.insert(family, f);
        Ok(self.install(&mut state, family, pair))
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

    /// Makes `pair` the current tokens of grant `family` (under the state lock).
    fn install(&self, state: &mut State, family: u128, pair: Pair) -> TokenResponse {
        let now = self.clock.now_ms();
        let ttl = |secs: u64| {
            now.saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
        };
        let (access, refresh) = (digest(&pair.access), digest(&pair.refresh));
        state.tokens.insert(
            access,
            Token {
                kind: Kind::Access,
                family,
                expires_ms: ttl(self.settings.access_ttl_secs),
            },
        );
        state.tokens.insert(
            refresh,
            Token {
                kind: Kind::Refresh,
                family,
                expires_ms: ttl(self.settings.refresh_ttl_secs),
            },
        );
        let scope = match state.families.get_mut(&family) {
            Some(f) => {
                f.access = access;
                f.refresh = refresh;
                f.scope.clone()
            }
            None => String::new(),
        };
        TokenResponse {
            access_token: pair.access,
            expires_in: self.settings.access_ttl_secs,
            refresh_token: pair.refresh,
            scope,
        }
    }

    /// `grant_type=refresh_token`: a new pair for a refresh token, which is spent. Presenting
    /// a spent one revokes its whole family.
    pub fn refresh(
        &self,
        client_id: &str,
        client_secret: Option<&str>,
        refresh_token: &str,
        resource: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self.authenticate_client(client_id, client_secret)?;
        self.check_resource(resource)?;
        let pair = Pair::new()?;
        let now = self.clock.now_ms();
        let presented = digest(refresh_token);
        // One critical section: a second refresh, a revocation or a replay cannot slip in
        // between spending this token and installing its successors.
        let mut state = self.state.lock();
        if let Some(family) = state.spent.get(&presented).copied() {
            state.end(family);
            return Err(err(
                "invalid_grant",
                "the refresh token was already used: every token of this grant is revoked",
            ));
        }
        let token = state
            .tokens
            .get(&presented)
            .copied()
            .filter(|t| t.kind == Kind::Refresh)
            .ok_or_else(|| err("invalid_grant", "the refresh token is unknown or revoked"))?;
        let family = state
            .families
            .get(&token.family)
            .filter(|f| f.client_id == client.client_id)
            .ok_or_else(|| err("invalid_grant", "not a refresh token of this client"))?;
        if now >= token.expires_ms {
            return Err(err("invalid_grant", "the refresh token has expired"));
        }
        let old_access = family.access;
        state.tokens.remove(&presented);
        state.tokens.remove(&old_access);
        state.spent.insert(presented, token.family);
        let forgotten = state.families.get_mut(&token.family).and_then(|f| {
            f.spent.push_back(presented);
            (f.spent.len() > SPENT_KEPT)
                .then(|| f.spent.pop_front())
                .flatten()
        });
        if let Some(old) = forgotten {
            state.spent.remove(&old);
        }
        Ok(self.install(&mut state, token.family, pair))
    }

    /// RFC 7009: revokes a token; a refresh token ends its whole grant, an access token
    /// only itself. Unknown tokens are ignored, as the RFC asks.
    pub fn revoke_token(&self, token: &str) {
        let mut state = self.state.lock();
        let d = digest(token);
        match state.tokens.get(&d).copied() {
            Some(t) if t.kind == Kind::Refresh => state.end(t.family),
            Some(_) => {
                state.tokens.remove(&d);
            }
            None => {}
        }
    }

    /// Ends every code and grant acting for `key_id` (its key was revoked or rotated).
    pub fn revoke_account(&self, key_id: KeyId) {
        let mut state = self.state.lock();
        for family in state.by_account.remove(&key_id).unwrap_or_default() {
            state.end(family);
        }
        state.codes.retain(|_, c| c.key_id != key_id);
    }

    /// What a bearer access token acts for, if it is valid now.
    pub fn authenticate(&self, access_token: &str) -> Result<AccessGrant, BearerError> {
        let now = self.clock.now_ms();
        let state = self.state.lock();
        let token = state
            .tokens
            .get(&digest(access_token))
            .filter(|t| t.kind == Kind::Access && now < t.expires_ms)
            .ok_or(BearerError::Invalid)?;
        let f = state
            .families
            .get(&token.family)
            .ok_or(BearerError::Invalid)?;
        Ok(AccessGrant {
            key_id: f.key_id,
            key: f.key,
            client_id: f.client_id.clone(),
            scope: f.scope.clone(),
        })
    }

    /// How much the server holds: clients, codes, live tokens, grants, spent refresh tokens
    /// remembered.
    pub fn counts(&self) -> GrantCounts {
        let state = self.state.lock();
        GrantCounts {
            clients: state.clients.len(),
            codes: state.codes.len(),
            tokens: state.tokens.len(),
            grants: state.families.len(),
            spent: state.spent.len(),
        }
    }

    /// Drops expired codes, expired access tokens, and grants whose refresh token expired.
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        state.codes.retain(|_, c| now < c.expires_ms);
        let ended: Vec<u128> = state
            .tokens
            .values()
            .filter(|t| t.kind == Kind::Refresh && now >= t.expires_ms)
            .map(|t| t.family)
            .collect();
        for family in ended {
            state.end(family);
        }
        state.tokens.retain(|_, t| now < t.expires_ms);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;

    const RESOURCE: &str = "http://127.0.0.1:3402/mcp";
    const REDIRECT: &str = "http://127.0.0.1:53682/callback";
    // RFC 7636, appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn setup(auth: Option<&str>) -> (Arc<ManualClock>, Grants, Registered) {
        let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
        let grants = Grants::new(GrantSettings::new(RESOURCE), clock.clone());
        let reg = grants
            .register(Registration {
                redirect_uris: vec![REDIRECT.into()],
                client_name: Some("Test <client>".into()),
                token_endpoint_auth_method: auth.map(str::to_string),
            })
            .unwrap();
        (clock, grants, reg)
    }

    fn request(client_id: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            response_type: "code".into(),
            client_id: client_id.into(),
            redirect_uri: Some(REDIRECT.into()),
            code_challenge: CHALLENGE.into(),
            code_challenge_method: Some("S256".into()),
            resource: Some(RESOURCE.into()),
            scope: Some("mcp".into()),
        }
    }

    fn account() -> KeyId {
        "kid_0123456789abcdef0123".parse().unwrap()
    }

    fn code(grants: &Grants, client_id: &str) -> String {
        grants
            .issue_code(&request(client_id), account(), KeyDigest::of("pg_alice"))
            .unwrap()
    }

    #[test]
    fn the_whole_grant_works_once() {
        let (_, grants, reg) = setup(None);
        let id = &reg.client.client_id;
        let c = code(&grants, id);
        let tokens = grants
            .exchange_code(id, None, &c, Some(REDIRECT), Some(VERIFIER), Some(RESOURCE))
            .unwrap();
        let grant = grants.authenticate(&tokens.access_token).unwrap();
        assert_eq!((grant.key_id, grant.scope.as_str()), (account(), "mcp"));
        // The refresh token is not an access token.
        assert!(grants.authenticate(&tokens.refresh_token).is_err());
        // The code is spent.
        let again = grants.exchange_code(id, None, &c, Some(REDIRECT), Some(VERIFIER), None);
        assert_eq!(again.unwrap_err().error, "invalid_grant");
    }

    #[test]
    fn pkce_is_required_and_exact() {
        let (_, grants, reg) = setup(None);
        let id = &reg.client.client_id;
        let mut plain = request(id);
        plain.code_challenge_method = Some("plain".into());
        assert_eq!(
            grants.check_authorize(&plain).unwrap_err().0.error,
            "invalid_request"
        );
        let mut none = request(id);
        none.code_challenge_method = None;
        assert!(grants.check_authorize(&none).is_err());
        for verifier in [None, Some("wrong-verifier-wrong-verifier-wrong-verifier-1")] {
            let c = code(&grants, id);
            let r = grants.exchange_code(id, None, &c, Some(REDIRECT), verifier, None);
            assert_eq!(r.unwrap_err().error, "invalid_grant", "{verifier:?}");
        }
    }

    #[test]
    fn redirect_uris_match_exactly_and_only_safe_ones_register() {
        let (_, grants, reg) = setup(None);
        let id = &reg.client.client_id;
        for uri in [
            "http://127.0.0.1:53682/callback/",
            "http://127.0.0.1:53682/Callback",
            "http://127.0.0.2:53682/callback",
            "http://localhost:53682/callback",
            "http://127.0.0.1:53682@evil.example/callback",
            "http://127.0.0.1:x/callback",
            "http://evil.example/callback",
        ] {
            let mut req = request(id);
            req.redirect_uri = Some(uri.into());
            let (e, redirectable) = grants.check_authorize(&req).unwrap_err();
            assert_eq!(e.error, "invalid_request", "{uri}");
            assert!(!redirectable, "never redirect to an unregistered URI");
        }
        // A loopback IP literal matches on any port (RFC 8252 §7.3), and the code is bound to
        // the port asked for.
        let mut req = request(id);
        req.redirect_uri = Some("http://127.0.0.1:61000/callback".into());
        assert!(grants.check_authorize(&req).is_ok());
        let c = grants
            .issue_code(&req, account(), KeyDigest::of("pg_alice"))
            .unwrap();
        let r = grants.exchange_code(id, None, &c, Some(REDIRECT), Some(VERIFIER), None);
        assert_eq!(r.unwrap_err().error, "invalid_grant");
        // The token request must name the same URI as the authorization request.
        let c = code(&grants, id);
        let r = grants.exchange_code(
            id,
            None,
            &c,
            Some("http://127.0.0.1:1/x"),
            Some(VERIFIER),
            None,
        );
        assert_eq!(r.unwrap_err().error, "invalid_grant");
        for uri in [
            "http://example.com/cb",
            "https://h.example/cb#frag",
            "ftp://h.example/cb",
            "http://user@127.0.0.1/cb",
            "javascript:alert(1)",
        ] {
            let r = grants.register(Registration {
                redirect_uris: vec![uri.into()],
                ..Default::default()
            });
            assert_eq!(r.unwrap_err().error, "invalid_redirect_uri", "{uri}");
        }
        for uri in [
            "https://app.example/cb",
            "http://localhost:8080/cb",
            "http://[::1]:9/cb",
        ] {
            assert!(
                grants
                    .register(Registration {
                        redirect_uris: vec![uri.into()],
                        ..Default::default()
                    })
                    .is_ok(),
                "{uri}"
            );
        }
    }

    #[test]
    fn codes_expire_within_a_minute_and_bind_client_and_resource() {
        let (clock, grants, reg) = setup(None);
        let id = &reg.client.client_id;
        let c = code(&grants, id);
        clock.advance_secs(61);
        let r = grants.exchange_code(id, None, &c, Some(REDIRECT), Some(VERIFIER), None);
        assert_eq!(r.unwrap_err().error, "invalid_grant");
        // Another client cannot redeem it.
        let other = grants
            .register(Registration {
                redirect_uris: vec![REDIRECT.into()],
                ..Default::default()
            })
            .unwrap();
        let c = code(&grants, id);
        let r = grants.exchange_code(
            &other.client.client_id,
            None,
            &c,
            Some(REDIRECT),
            Some(VERIFIER),
            None,
        );
        assert_eq!(r.unwrap_err().error, "invalid_grant");
        // A resource other than ours is refused, at both ends.
        let mut req = request(id);
        req.resource = Some("https://other.example/mcp".into());
        assert_eq!(
            grants.check_authorize(&req).unwrap_err().0.error,
            "invalid_target"
        );
        let c = code(&grants, id);
        let r = grants.exchange_code(
            id,
            None,
            &c,
            Some(REDIRECT),
            Some(VERIFIER),
            Some("https://other.example/mcp"),
        );
        assert_eq!(r.unwrap_err().error, "invalid_target");
    }

    #[test]
    fn refresh_rotates_and_a_reused_refresh_token_revokes_the_family() {
        let (clock, grants, reg) = setup(None);
        let id = &reg.client.client_id;
        let c = code(&grants, id);
        let first = grants
            .exchange_code(id, None, &c, Some(REDIRECT), Some(VERIFIER), None)
            .unwrap();
        clock.advance_secs(3_601);
        assert!(grants.authenticate(&first.access_token).is_err(), "expired");
        let second = grants
            .refresh(id, None, &first.refresh_token, None)
            .unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        assert!(grants.authenticate(&second.access_token).is_ok());
        // The old refresh token comes back (stolen): the whole family dies.
        let reuse = grants.refresh(id, None, &first.refresh_token, Some(RESOURCE));
        assert_eq!(reuse.unwrap_err().error, "invalid_grant");
        assert!(grants.authenticate(&second.access_token).is_err());
        assert!(grants
            .refresh(id, None, &second.refresh_token, None)
            .is_err());
    }

    #[test]
    fn what_one_key_holder_can_make_the_server_hold_is_bounded() {
        let (_, grants, reg) = setup(None);
        let id = &reg.client.client_id;
        // Refreshing in a loop keeps one pair and a few spent tokens per grant.
        let c = code(&grants, id);
        let mut t = grants
            .exchange_code(id, None, &c, Some(REDIRECT), Some(VERIFIER), None)
            .unwrap();
        for _ in 0..1_000 {
            t = grants.refresh(id, None, &t.refresh_token, None).unwrap();
        }
        let n = grants.counts();
        assert_eq!((n.grants, n.tokens, n.spent), (1, 2, SPENT_KEPT));
        assert!(grants.authenticate(&t.access_token).is_ok());
        // Signing in over and over ends the oldest grants past the bound.
        let first = t;
        for _ in 0..MAX_GRANTS_PER_ACCOUNT + 10 {
            let c = code(&grants, id);
            grants
                .exchange_code(id, None, &c, Some(REDIRECT), Some(VERIFIER), None)
                .unwrap();
        }
        let n = grants.counts();
        assert_eq!(
            (n.grants, n.tokens),
            (MAX_GRANTS_PER_ACCOUNT, 2 * MAX_GRANTS_PER_ACCOUNT)
        );
        assert!(
            grants.authenticate(&first.access_token).is_err(),
            "the oldest grant ended"
        );
        // A malformed or long scope is refused.
        for scope in ["a\"b", &"s".repeat(300)] {
            let mut req = request(id);
            req.scope = Some(scope.to_string());
            assert_eq!(
                grants.check_authorize(&req).unwrap_err().0.error,
                "invalid_scope"
            );
        }
    }

    #[test]
    fn a_registration_flood_cannot_lock_out_real_clients() {
        let (_, grants, reg) = setup(None);
        let id = reg.client.client_id.clone();
        // The first client gets a grant, so it is kept.
        let c = code(&grants, &id);
        grants
            .exchange_code(&id, None, &c, Some(REDIRECT), Some(VERIFIER), None)
            .unwrap();
        for _ in 0..MAX_CLIENTS + 5 {
            grants
                .register(Registration {
                    redirect_uris: vec![REDIRECT.into()],
                    ..Default::default()
                })
                .unwrap();
        }
        assert_eq!(grants.counts().clients, MAX_CLIENTS);
        assert!(
            grants.client(&id).is_some(),
            "a client in use is never evicted"
        );
    }

    #[test]
    fn confidential_clients_must_authenticate() {
        let (_, grants, reg) = setup(Some("client_secret_basic"));
        let id = &reg.client.client_id;
        let secret = reg.client_secret.clone().unwrap();
        let c = code(&grants, id);
        let r = grants.exchange_code(id, Some("wrong"), &c, Some(REDIRECT), Some(VERIFIER), None);
        assert_eq!(r.unwrap_err().error, "invalid_client");
        let c = code(&grants, id);
        let r = grants.exchange_code(id, None, &c, Some(REDIRECT), Some(VERIFIER), None);
        assert_eq!(r.unwrap_err().error, "invalid_client");
        let c = code(&grants, id);
        assert!(grants
            .exchange_code(id, Some(&secret), &c, Some(REDIRECT), Some(VERIFIER), None)
            .is_ok());
    }

    #[test]
    fn revocation_reaches_every_token_of_the_account_client_or_family() {
        let (_, grants, reg) = setup(None);
        let id = &reg.client.client_id;
        let pair = |g: &Grants| {
            let c = code(g, id);
            g.exchange_code(id, None, &c, Some(REDIRECT), Some(VERIFIER), None)
                .unwrap()
        };
        let t = pair(&grants);
        grants.revoke_account(account());
        assert!(grants.authenticate(&t.access_token).is_err());
        assert!(grants.refresh(id, None, &t.refresh_token, None).is_err());
        let t = pair(&grants);
        grants.revoke_token(&t.refresh_token);
        assert!(
            grants.authenticate(&t.access_token).is_err(),
            "the family goes"
        );
        let t = pair(&grants);
        assert!(grants.revoke_client(id));
        assert!(grants.authenticate(&t.access_token).is_err());
        assert_eq!(
            grants.check_authorize(&request(id)).unwrap_err().0.error,
            "invalid_client"
        );
    }
}
