//! OAuth 2.1 for MCP clients that sign in (SPEC §12).
//!
//! Built so far: [`pkce`] (S256 only) and [`grants`], the logic of the built-in authorization
//! server — client registration with exact, safe redirect URIs, single-use codes bound to
//! client, redirect URI, PKCE challenge and resource, access and refresh tokens kept as
//! digests, refresh rotation with reuse detection that revokes the family, and revocation by
//! token, client or account. Its HTTP endpoints, the resource-server stage of the layers,
//! persistence in the key store and JWTs from an external identity provider build on these.

pub mod grants;
pub mod pkce;

pub use grants::{
    AccessGrant, AuthorizeRequest, BearerError, Client, ClientAuth, GrantSettings, Grants,
    OAuthError, Registered, Registration, TokenResponse,
};
