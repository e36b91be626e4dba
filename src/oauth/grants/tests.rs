use std::sync::Arc;

use super::*;
use crate::blocking::block_on;
use crate::clock::ManualClock;
use crate::config::PayGateConfig;
use crate::store::{GrantLimits, MemoryKeyStore};

const ISSUER: &str = "http://127.0.0.1:3402";
const RESOURCE: &str = "http://127.0.0.1:3402/mcp";
const REDIRECT: &str = "http://127.0.0.1:53682/callback";
// RFC 7636, appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

struct Setup {
    clock: Arc<ManualClock>,
    server: OAuthServer<MemoryKeyStore>,
    client: Registered,
    account: KeyRecord,
}

fn setup_with(auth: Option<&str>, scopes: &[&str]) -> Setup {
    let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
    let gate = Arc::new(
        crate::Gate::with_store(
            PayGateConfig::default(),
            MemoryKeyStore::new(),
            clock.clone(),
        )
        .unwrap(),
    );
    let key = gate.create_key_blocking("alice", 100).unwrap();
    let account = block_on(gate.get_key(key.as_str())).unwrap().unwrap();
    let mut settings = GrantSettings::new(RESOURCE);
    settings.scopes = scopes.iter().map(|s| s.to_string()).collect();
    let server = OAuthServer::with_settings(ISSUER, settings, gate);
    let client = block_on(server.register(Registration {
        redirect_uris: vec![REDIRECT.into()],
        client_name: Some("Test <client>".into()),
        token_endpoint_auth_method: auth.map(str::to_string),
    }))
    .unwrap();
    Setup {
        clock,
        server,
        client,
        account,
    }
}

fn setup(auth: Option<&str>) -> Setup {
    setup_with(auth, &[])
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

impl Setup {
    fn id(&self) -> &str {
        &self.client.client.client_id
    }

    fn code(&self) -> String {
        block_on(self.server.issue_code(&request(self.id()), &self.account)).unwrap()
    }

    fn exchange(&self, code: &str, verifier: Option<&str>) -> Result<TokenResponse, OAuthError> {
        block_on(
            self.server
                .exchange_code(self.id(), None, code, Some(REDIRECT), verifier, None),
        )
    }

    fn pair(&self) -> TokenResponse {
        self.exchange(&self.code(), Some(VERIFIER)).unwrap()
    }

    fn auth(&self, token: &str) -> Result<AccessGrant, BearerError> {
        block_on(self.server.authenticate_access(token))
    }

    fn refresh(&self, token: &str) -> Result<TokenResponse, OAuthError> {
        block_on(self.server.refresh(self.id(), None, token, None))
    }

    fn check(&self, req: &AuthorizeRequest) -> Result<Approvable, OAuthError> {
        block_on(self.server.check_authorize(req))
    }
}

#[test]
fn the_whole_grant_works_once() {
    let s = setup(None);
    let c = s.code();
    let tokens = s.exchange(&c, Some(VERIFIER)).unwrap();
    let grant = s.auth(&tokens.access_token).unwrap();
    assert_eq!(
        (grant.key_id, grant.scope.as_str()),
        (s.account.id(), "mcp")
    );
    // The refresh token is not an access token.
    assert!(s.auth(&tokens.refresh_token).is_err());
    // The code presented again: refused, and the tokens its first use gave are revoked.
    let again = s.exchange(&c, Some(VERIFIER));
    assert_eq!(again.unwrap_err().error, "invalid_grant");
    assert_eq!(s.auth(&tokens.access_token), Err(BearerError::Invalid));
    assert!(s.refresh(&tokens.refresh_token).is_err());
}

#[test]
fn pkce_is_required_and_exact() {
    let s = setup(None);
    let mut plain = request(s.id());
    plain.code_challenge_method = Some("plain".into());
    assert_eq!(s.check(&plain).unwrap_err().error, "invalid_request");
    let mut none = request(s.id());
    none.code_challenge_method = None;
    assert!(s.check(&none).is_err());
    for verifier in [None, Some("wrong-verifier-wrong-verifier-wrong-verifier-1")] {
        let r = s.exchange(&s.code(), verifier);
        assert_eq!(r.unwrap_err().error, "invalid_grant", "{verifier:?}");
    }
}

#[test]
fn redirect_uris_match_as_registered_and_bind_the_code() {
    let s = setup(None);
    let mut req = request(s.id());
    req.redirect_uri = Some("http://127.0.0.1:53682/callback/".into());
    assert_eq!(s.check(&req).unwrap_err().error, "invalid_request");
    // A loopback IP literal matches on any port, and the code is bound to the port asked for.
    req.redirect_uri = Some("http://127.0.0.1:61000/callback".into());
    let c = block_on(s.server.issue_code(&req, &s.account)).unwrap();
    assert_eq!(
        s.exchange(&c, Some(VERIFIER)).unwrap_err().error,
        "invalid_grant"
    );
    // Named in the authorization request: required at the token endpoint, identical.
    for uri in [Some("http://127.0.0.1:1/x"), None] {
        let c = s.code();
        let r = block_on(
            s.server
                .exchange_code(s.id(), None, &c, uri, Some(VERIFIER), None),
        );
        assert_eq!(r.unwrap_err().error, "invalid_grant", "{uri:?}");
    }
    // Left out of both (the client has one redirect URI): fine.
    let mut req = request(s.id());
    req.redirect_uri = None;
    let c = block_on(s.server.issue_code(&req, &s.account)).unwrap();
    assert!(block_on(
        s.server
            .exchange_code(s.id(), None, &c, None, Some(VERIFIER), None)
    )
    .is_ok());
}

#[test]
fn codes_expire_within_a_minute_and_bind_client_and_resource() {
    let s = setup(None);
    let c = s.code();
    s.clock.advance_secs(61);
    assert_eq!(
        s.exchange(&c, Some(VERIFIER)).unwrap_err().error,
        "invalid_grant"
    );
    // Another client cannot redeem it.
    let other = block_on(s.server.register(Registration {
        redirect_uris: vec![REDIRECT.into()],
        ..Default::default()
    }))
    .unwrap();
    let c = s.code();
    let r = block_on(s.server.exchange_code(
        &other.client.client_id,
        None,
        &c,
        Some(REDIRECT),
        Some(VERIFIER),
        None,
    ));
    assert_eq!(r.unwrap_err().error, "invalid_grant");
    // A resource other than ours is refused, at both ends.
    let mut req = request(s.id());
    req.resource = Some("https://other.example/mcp".into());
    assert_eq!(s.check(&req).unwrap_err().error, "invalid_target");
    let c = s.code();
    let r = block_on(s.server.exchange_code(
        s.id(),
        None,
        &c,
        Some(REDIRECT),
        Some(VERIFIER),
        Some("https://other.example/mcp"),
    ));
    assert_eq!(r.unwrap_err().error, "invalid_target");
}

#[test]
fn refresh_rotates_and_a_reused_refresh_token_revokes_the_family() {
    let s = setup(None);
    let first = s.pair();
    s.clock.advance_secs(3_601);
    assert!(s.auth(&first.access_token).is_err(), "expired");
    let second = s.refresh(&first.refresh_token).unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert!(s.auth(&second.access_token).is_ok());
    // The old refresh token comes back (stolen): the whole family dies.
    let reuse = s.refresh(&first.refresh_token);
    assert_eq!(reuse.unwrap_err().error, "invalid_grant");
    assert!(s.auth(&second.access_token).is_err());
    assert!(s.refresh(&second.refresh_token).is_err());
}

#[test]
fn what_one_key_holder_can_make_the_server_hold_is_bounded() {
    let s = setup(None);
    let limits = GrantLimits::default();
    // Refreshing in a loop keeps one pair and a few spent tokens per grant.
    let mut t = s.pair();
    for _ in 0..1_000 {
        t = s.refresh(&t.refresh_token).unwrap();
    }
    let [_, _, tokens, grants, spent] = s.server.gate().store().grant_counts();
    assert_eq!((grants, tokens, spent), (1, 2, limits.spent_per_grant));
    assert!(s.auth(&t.access_token).is_ok());
    // Signing in over and over ends the oldest grants past the bound.
    let first = t;
    for _ in 0..limits.grants_per_account + 10 {
        // Within the per-key bound on sign-ins in progress (codes live a minute).
        s.clock.advance_secs(3);
        s.pair();
    }
    let [_, _, tokens, grants, _] = s.server.gate().store().grant_counts();
    assert_eq!(
        (grants, tokens),
        (limits.grants_per_account, 2 * limits.grants_per_account)
    );
    assert!(
        s.auth(&first.access_token).is_err(),
        "the oldest grant ended"
    );
    // A malformed or long scope is refused.
    for scope in ["a\"b", &"s".repeat(300)] {
        let mut req = request(s.id());
        req.scope = Some(scope.to_string());
        assert_eq!(s.check(&req).unwrap_err().error, "invalid_scope");
    }
}

#[test]
fn a_registration_flood_cannot_lock_out_real_clients() {
    let s = setup(None);
    let limits = GrantLimits {
        clients: 50,
        ..GrantLimits::default()
    };
    let server = OAuthServer::new(ISSUER, s.server.gate().clone()).with_limits(limits);
    // The first client gets a grant, so it is kept.
    s.pair();
    for _ in 0..limits.clients + 5 {
        block_on(server.register(Registration {
            redirect_uris: vec![REDIRECT.into()],
            ..Default::default()
        }))
        .unwrap();
    }
    assert_eq!(s.server.gate().store().grant_counts()[0], limits.clients);
    assert!(
        block_on(server.client(s.id())).unwrap().is_some(),
        "a client in use is never evicted"
    );
}

#[test]
fn confidential_clients_must_authenticate() {
    let s = setup(Some("client_secret_basic"));
    let secret = s.client.client_secret.clone().unwrap();
    let exchange = |secret: Option<&str>| {
        let c = s.code();
        block_on(
            s.server
                .exchange_code(s.id(), secret, &c, Some(REDIRECT), Some(VERIFIER), None),
        )
    };
    assert_eq!(exchange(Some("wrong")).unwrap_err().error, "invalid_client");
    assert_eq!(exchange(None).unwrap_err().error, "invalid_client");
    let t = exchange(Some(&secret)).unwrap();
    // Revocation authenticates the client too.
    let r = block_on(
        s.server
            .revoke_token(s.id(), Some("wrong"), &t.refresh_token),
    );
    assert_eq!(r.unwrap_err().error, "invalid_client");
    assert!(s.auth(&t.access_token).is_ok());
    block_on(
        s.server
            .revoke_token(s.id(), Some(&secret), &t.refresh_token),
    )
    .unwrap();
    assert!(s.auth(&t.access_token).is_err());
}

#[test]
fn a_client_cannot_revoke_another_clients_token() {
    let s = setup(None);
    let t = s.pair();
    let other = block_on(s.server.register(Registration {
        redirect_uris: vec![REDIRECT.into()],
        ..Default::default()
    }))
    .unwrap();
    let r = block_on(
        s.server
            .revoke_token(&other.client.client_id, None, &t.refresh_token),
    );
    assert_eq!(r.unwrap_err().error, "unauthorized_client");
    assert!(s.auth(&t.access_token).is_ok());
    // Unknown tokens are fine (RFC 7009 §2.2).
    block_on(s.server.revoke_token(s.id(), None, "pgrt_nothing")).unwrap();
}

#[test]
fn revocation_reaches_every_token_of_the_account_client_or_family() {
    let s = setup(None);
    let t = s.pair();
    block_on(s.server.revoke_account(&s.account.id())).unwrap();
    assert!(s.auth(&t.access_token).is_err());
    assert!(s.refresh(&t.refresh_token).is_err());
    // Through the gate: revoking or rotating the key ends the account's grants.
    let t = s.pair();
    block_on(s.server.gate().rotate(s.account.id()))
        .unwrap()
        .unwrap();
    assert!(s.auth(&t.access_token).is_err());
    // A code approved with the old key no longer gives tokens.
    let c = s.code();
    assert_eq!(
        s.exchange(&c, Some(VERIFIER)).unwrap_err().error,
        "invalid_grant"
    );
    let s = setup(None);
    let t = s.pair();
    block_on(s.server.revoke_token(s.id(), None, &t.refresh_token)).unwrap();
    assert!(s.auth(&t.access_token).is_err(), "the family goes");
    let t = s.pair();
    assert!(block_on(s.server.revoke_client(s.id())).unwrap());
    assert!(s.auth(&t.access_token).is_err());
    assert_eq!(
        s.check(&request(s.id())).unwrap_err().error,
        "invalid_client"
    );
    let s = setup(None);
    let t = s.pair();
    block_on(s.server.gate().revoke(s.account.id()))
        .unwrap()
        .unwrap();
    assert!(s.auth(&t.access_token).is_err());
}

#[test]
fn scopes_are_known_defaulted_and_needed() {
    let s = setup_with(None, &["mcp:tools", "mcp:read"]);
    let mut req = request(s.id());
    req.scope = Some("admin".into());
    assert_eq!(s.check(&req).unwrap_err().error, "invalid_scope");
    req.scope = None;
    assert_eq!(s.check(&req).unwrap().scope, "mcp:tools mcp:read");
    // A token with only some of the scopes is valid but insufficient.
    req.scope = Some("mcp:read".into());
    let c = block_on(s.server.issue_code(&req, &s.account)).unwrap();
    let t = s.exchange(&c, Some(VERIFIER)).unwrap();
    assert_eq!(t.scope, "mcp:read");
    assert_eq!(
        s.auth(&t.access_token),
        Err(BearerError::InsufficientScope("mcp:tools mcp:read".into()))
    );
}
