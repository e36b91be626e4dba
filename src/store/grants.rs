//! OAuth grants kept beside the keys (SPEC §12): registered clients, authorization codes and
//! token families, in whatever store holds the keys, so a token survives a restart (memory
//! store with a state file) and works on every gateway sharing the store (Redis).
//!
//! Every secret is kept as its SHA-256 digest. The operations that decide who holds a token
//! are each one atomic step of the store: taking a code once, spending a refresh token once
//! (a second use ends its whole family), ending every grant of an account or client. The
//! rules around them (PKCE, redirect URIs, client authentication) are the authorization
//! server's, in the `oauth` module.

use std::future::Future;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::key::{KeyDigest, KeyId};

/// The SHA-256 digest of a secret (client secret, code, token).
pub type TokenDigest = [u8; 32];

/// The digest of `secret`.
///
/// ```
/// let d = paygate_mcp::store::token_digest("pgat_x");
/// assert_eq!(d, paygate_mcp::store::token_digest("pgat_x"));
/// ```
pub fn token_digest(secret: &str) -> TokenDigest {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(secret.as_bytes()).into()
}

/// How a client proves itself at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientAuth {
    /// A public client (PKCE alone).
    #[serde(rename = "none")]
    None,
    /// `client_secret` in the form.
    #[serde(rename = "client_secret_post")]
    SecretPost,
    /// HTTP Basic with the client id and secret.
    #[serde(rename = "client_secret_basic")]
    SecretBasic,
}

impl ClientAuth {
    /// The RFC 7591 name.
    ///
    /// ```
    /// assert_eq!(paygate_mcp::store::ClientAuth::SecretBasic.as_str(), "client_secret_basic");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::SecretPost => "client_secret_post",
            ClientAuth::SecretBasic => "client_secret_basic",
        }
    }
}

/// A registered client (RFC 7591).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
    #[serde(default)]
    pub revoked: bool,
    /// Hex SHA-256 of its secret, for `client_secret_*` clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_digest: Option<String>,
}

/// What an authorization code stands for until it is exchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeGrant {
    /// The client it was issued to.
    pub client_id: String,
    /// The redirect URI the code was sent to.
    pub redirect_uri: String,
    /// Whether the authorization request named the redirect URI (then the token request
    /// must name it too, RFC 6749 §4.1.3).
    #[serde(default)]
    pub redirect_uri_given: bool,
    /// The PKCE challenge (S256).
    pub challenge: String,
    /// The scope granted.
    pub scope: String,
    /// The account that approved it.
    pub key_id: KeyId,
    /// The digest of the account's key when it approved.
    pub key: KeyDigest,
    /// When the code stops working.
    pub expires_ms: i64,
}

/// One grant (a token family): what it acts for, and its current access and refresh tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Its id (random, hex).
    pub family: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The account billed for calls made with it.
    pub key_id: KeyId,
    /// The digest of the account's key (revoking or rotating the key ends the grant).
    pub key: KeyDigest,
    /// The scope granted.
    pub scope: String,
    /// The protected resource it was issued for (RFC 8707); empty in grants stored before
    /// it was recorded.
    #[serde(default)]
    pub resource: String,
    /// When it was granted.
    pub created_ms: i64,
    /// The current access token's digest.
    #[serde(with = "hex_digest")]
    pub access: TokenDigest,
    /// When the access token expires.
    pub access_expires_ms: i64,
    /// The current refresh token's digest.
    #[serde(with = "hex_digest")]
    pub refresh: TokenDigest,
    /// When the refresh token expires (the grant ends then).
    pub refresh_expires_ms: i64,
}

/// A fresh pair of tokens for a grant (digests and expiries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPair {
    /// The access token's digest.
    pub access: TokenDigest,
    /// When it expires.
    pub access_expires_ms: i64,
    /// The refresh token's digest.
    pub refresh: TokenDigest,
    /// When it expires.
    pub refresh_expires_ms: i64,
}

/// What taking a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeTaken {
    /// The code, now spent.
    Fresh(CodeGrant),
    /// The code was exchanged before: the grant it made has been ended (RFC 6749 §4.1.2).
    Reused,
    /// No such code (or it expired).
    Unknown,
    /// The code (or the grant it made) is another client's; nothing changed.
    OtherClient,
}

/// What spending a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The token was spent and the grant now holds the new pair.
    Rotated(Box<Grant>),
    /// The token was spent before by its own client: its whole family has been ended.
    Reused,
    /// No such live refresh token.
    Unknown,
    /// The token belongs to another client; nothing changed.
    OtherClient,
    /// The token has expired; nothing changed.
    Expired,
}

/// Bounds a store keeps so that open registration and sign-ins cannot grow it without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantLimits {
    /// Most registered clients; at the bound the oldest client that never got a grant makes
    /// room.
    pub clients: usize,
    /// Most codes waiting to be exchanged.
    pub codes: usize,
    /// Most codes one account is issued per code lifetime (a minute), so no key holder can
    /// fill the store's room for codes and stall everyone's sign-in.
    pub codes_per_account: usize,
    /// Most grants per account; a new one ends the oldest.
    pub grants_per_account: usize,
    /// Spent refresh tokens remembered per grant, to spot one presented again.
    pub spent_per_grant: usize,
}

impl Default for GrantLimits {
    fn default() -> Self {
        Self {
            clients: 10_000,
            codes: 100_000,
            codes_per_account: 30,
            grants_per_account: 50,
            spent_per_grant: 8,
        }
    }
}

/// Where OAuth clients, codes and grants live: the same store as the keys.
///
/// Each method is one atomic step of the store; `now_ms` is the caller's clock.
pub trait GrantStore: Send + Sync + 'static {
    /// Registers `client`; `false` when the store holds `limits.clients` clients that have
    /// all been granted something (no room).
    fn add_client(
        &self,
        client: Client,
        limits: GrantLimits,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The client `client_id`, revoked or not.
    fn client(
        &self,
        client_id: &str,
    ) -> impl Future<Output = Result<Option<Client>, StoreError>> + Send;

    /// Every registered client, oldest first.
    fn clients(&self) -> impl Future<Output = Result<Vec<Client>, StoreError>> + Send;

    /// Marks a client revoked and ends every grant issued to it; `false` when unknown.
    fn revoke_client(
        &self,
        client_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Keeps a code until `grant.expires_ms`; `false` when `limits.codes` live codes wait,
    /// or the account was issued `limits.codes_per_account` codes that have not expired.
    fn add_code(
        &self,
        code: TokenDigest,
        grant: CodeGrant,
        now_ms: i64,
        limits: GrantLimits,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Takes a code of client `client_id` out, once. The same client presenting it again
    /// ends the grant its first use made; another client's attempt changes nothing (so a
    /// stolen code cannot be used to burn the victim's sign-in).
    fn take_code(
        &self,
        code: &TokenDigest,
        client_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<CodeTaken, StoreError>> + Send;

    /// Stores a new grant made from `code` (remembered until the code would have expired, so
    /// a replay of it ends this grant). Past `limits.grants_per_account` the account's
    /// oldest grant ends. `false`, storing nothing, when the client is unknown or revoked.
    fn add_grant(
        &self,
        code: TokenDigest,
        code_expires_ms: i64,
        grant: Grant,
        now_ms: i64,
        limits: GrantLimits,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Spends the refresh token `presented` of client `client_id` and installs `next`. A
    /// spent token presented again by its client ends the family; by another client it
    /// changes nothing.
    fn refresh_grant(
        &self,
        presented: &TokenDigest,
        client_id: &str,
        next: TokenPair,
        now_ms: i64,
        limits: GrantLimits,
    ) -> impl Future<Output = Result<Refreshed, StoreError>> + Send;

    /// The grant whose live access token is `access`, if it has not expired.
    fn access_grant(
        &self,
        access: &TokenDigest,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<Grant>, StoreError>> + Send;

    /// RFC 7009: a refresh token ends its grant, an access token only itself, when the
    /// token was issued to `client_id`. `false`, changing nothing, when it was issued to
    /// another client; an unknown token is `true` (there is nothing to revoke).
    fn revoke_token(
        &self,
        token: &TokenDigest,
        client_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends every grant acting for account `key_id`.
    fn revoke_account(&self, key_id: &KeyId)
        -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Digests as hex in JSON.
pub(crate) mod hex_digest {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}
