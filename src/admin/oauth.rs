//! The built-in OAuth 2.1 authorization server's endpoints (SPEC §12), served beside the admin
//! API when [`AdminService::with_oauth`](super::AdminService::with_oauth) is set: RFC 8414
//! and RFC 9728 metadata, RFC 7591 registration, the consent page and its form, the token
//! endpoint, RFC 7009 revocation, and the operator's client listing. Without it they are 404.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{CACHE_CONTROL, LOCATION};
use http::{HeaderValue, StatusCode};
use serde_json::json;

use super::{
    bad_request, error, json_reply, reply, AdminRequest, AdminState, ApiError, Handled, Reply,
};
use crate::key::KeyRef;
use crate::oauth::consent::{consent_page, ConsentView};
use crate::oauth::{Approvable, AuthorizeRequest, OAuthError, OAuthServer, Registration};
use crate::store::KeyStore;

fn server<St>(state: &AdminState<St>) -> Result<&OAuthServer<St>, ApiError> {
    state
        .oauth
        .as_deref()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "not found"))
}

/// The fields of a urlencoded form body; a repeated parameter is refused (RFC 6749 §3.1).
fn form(req: &AdminRequest) -> Result<Vec<(String, String)>, Box<Reply>> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    let mut seen = std::collections::HashSet::new();
    if pairs.iter().any(|(k, _)| !seen.insert(k.as_str())) {
        return Err(Box::new(oauth_reply(&invalid_request(
            "a parameter is repeated",
        ))));
    }
    Ok(pairs)
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An OAuth error answer (RFC 6749 §5.2): `{error, error_description}`, 400, or 401 for a
/// client that failed to authenticate.
fn oauth_reply(e: &OAuthError) -> Reply {
    let status = if e.error == "invalid_client" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut resp = no_store(json_reply(
        status,
        &json!({"error": e.error, "error_description": e.description}),
    ));
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6749 §5.2: a failed client authentication names the scheme to use.
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"oauth\""),
        );
    }
    resp
}

fn invalid_request(description: &str) -> OAuthError {
    OAuthError {
        error: "invalid_request",
        description: description.into(),
    }
}

/// No cache may keep an answer that carries a token (RFC 6749 §5.1).
fn no_store(mut resp: Reply) -> Reply {
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub(crate) fn metadata<St: KeyStore>(state: &AdminState<St>) -> Handled {
    let s = server(state)?;
    let issuer = s.issuer();
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/oauth/authorize"),
            "token_endpoint": format!("{issuer}/oauth/token"),
            "registration_endpoint": format!("{issuer}/oauth/register"),
            "revocation_endpoint": format!("{issuer}/oauth/revoke"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "scopes_supported": s.settings().scopes,
        }),
    ))
}

/// `GET /.well-known/oauth-protected-resource[/mcp]` (RFC 9728).
pub(crate) fn resource_metadata<St: KeyStore>(state: &AdminState<St>) -> Handled {
    let s = server(state)?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "resource": s.resource(),
            "authorization_servers": s.authorization_servers(),
            "bearer_methods_supported": ["header"],
            "scopes_supported": s.settings().scopes,
        }),
    ))
}

/// `POST /oauth/register` (RFC 7591): JSON in, 201 with the client (and its secret, once).
pub(crate) async fn register<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let s = server(state)?;
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        redirect_uris: Vec<String>,
        client_name: Option<String>,
        token_endpoint_auth_method: Option<String>,
    }
    let body: Body = req.json()?;
    let registered = s
        .register(Registration {
            redirect_uris: body.redirect_uris,
            client_name: body.client_name,
            token_endpoint_auth_method: body.token_endpoint_auth_method,
        })
        .await;
    let registered = match registered {
        Ok(r) => r,
        Err(e) => return Ok(oauth_reply(&e)),
    };
    let c = &registered.client;
    let mut doc = json!({
        "client_id": c.client_id,
        "client_id_issued_at": c.created_ms / 1000,
        "client_name": c.client_name,
        "redirect_uris": c.redirect_uris,
        "token_endpoint_auth_method": c.auth.as_str(),
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    });
    if let (Some(secret), Some(map)) = (&registered.client_secret, doc.as_object_mut()) {
        map.insert("client_secret".into(), json!(secret));
        map.insert("client_secret_expires_at".into(), json!(0));
    }
    Ok(no_store(json_reply(StatusCode::CREATED, &doc)))
}

fn authorize_request(params: &[(String, String)]) -> AuthorizeRequest {
    let get = |name: &str| field(params, name).map(str::to_string);
    AuthorizeRequest {
        response_type: get("response_type").unwrap_or_default(),
        client_id: get("client_id").unwrap_or_default(),
        redirect_uri: get("redirect_uri"),
        code_challenge: get("code_challenge").unwrap_or_default(),
        code_challenge_method: get("code_challenge_method"),
        resource: get("resource"),
        scope: get("scope"),
    }
}

/// A page: consent pages and their errors are never framed and run nothing but themselves.
fn html(status: StatusCode, body: String) -> Reply {
    let mut resp = reply(status, "text/html; charset=utf-8", body);
    let h = resp.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            // No form-action: browsers apply it to the redirect the form answers, which
            // goes to the client.
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A 302 to the client's registered redirect URI with `params` (and `state`, `iss`).
fn redirect(to: &str, params: &[(&str, &str)], state_param: Option<&str>, issuer: &str) -> Reply {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    if let Some(s) = state_param {
        query.append_pair("state", s);
    }
    query.append_pair("iss", issuer);
    let sep = if to.contains('?') { '&' } else { '?' };
    let location = format!("{to}{sep}{}", query.finish());
    let mut resp = reply(StatusCode::FOUND, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    no_store(resp)
}

/// A request that cannot be sent back to the client (unknown client or redirect URI): an
/// error page here, never a redirect.
fn error_page(e: &OAuthError) -> Reply {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign-in error</title></head><body><h1>This sign-in request cannot be completed</h1><p>{}</p></body></html>",
        crate::oauth::consent::escape(&e.description)
    );
    html(StatusCode::BAD_REQUEST, body)
}

/// The request checked against its client, or the answer to give instead: an error page
/// here, never a redirect. Clients register themselves, so a redirect URI is no reason to
/// trust one: sending errors there would make this server an open redirector for any page
/// an attacker registers (RFC 9700 §4.11.2).
async fn checked<St: KeyStore>(
    s: &OAuthServer<St>,
    params: &[(String, String)],
) -> Result<(AuthorizeRequest, Approvable), Box<Reply>> {
    let request = authorize_request(params);
    match s.check_authorize(&request).await {
        Ok(ok) => Ok((request, ok)),
        Err(e) => Err(Box::new(error_page(&e))),
    }
}

/// The consent page for a checked request, with `error` after a refused attempt.
fn consent<St: KeyStore>(
    state: &AdminState<St>,
    ok: &Approvable,
    params: &[(String, String)],
    error: Option<&str>,
) -> Reply {
    let page = consent_page(&ConsentView {
        server_name: &state.gate.config().name,
        client_name: &ok.client.client_name,
        client_id: &ok.client.client_id,
        redirect_uri: &ok.redirect_uri,
        scope: &ok.scope,
        params,
        error,
    });
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    html(status, page)
}

/// `GET /oauth/authorize`: the consent page.
pub(crate) async fn authorize_page<St: KeyStore>(
    state: &AdminState<St>,
    req: &AdminRequest,
) -> Handled {
    let s = server(state)?;
    let params: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(match checked(s, &params).await {
        Ok((_, ok)) => consent(state, &ok, &params, None),
        Err(answer) => *answer,
    })
}

/// `POST /oauth/authorize`: the consent form. `deny` sends `access_denied` back; `approve`
/// with a working API key sends a code; a wrong key shows the page again with an error.
pub(crate) async fn authorize_submit<St: KeyStore>(
    state: &AdminState<St>,
    req: &AdminRequest,
) -> Handled {
    let s = server(state)?;
    let params = match form(req) {
        Ok(p) => p,
        Err(answer) => return Ok(*answer),
    };
    let (request, ok) = match checked(s, &params).await {
        Ok(checked) => checked,
        Err(answer) => return Ok(*answer),
    };
    let state_param = field(&params, "state");
    match field(&params, "decision") {
        Some("approve") => {}
        Some("deny") => {
            return Ok(redirect(
                &ok.redirect_uri,
                &[("error", "access_denied")],
                state_param,
                s.issuer(),
            ))
        }
        _ => return Err(bad_request("decision must be approve or deny")),
    }
    let key = field(&params, "api_key").unwrap_or_default().trim();
    let now_ms = state.gate.clock().now_ms();
    let account = if key.is_empty() {
        None
    } else {
        state
            .gate
            .get_key(KeyRef::Key(key))
            .await?
            .filter(|rec| rec.active && !rec.is_expired_at(now_ms))
    };
    let Some(account) = account else {
        let again = "That API key is not valid. Check it and try again.";
        return Ok(consent(state, &ok, &params, Some(again)));
    };
    let code = match s.issue_code(&request, &account).await {
        Ok(code) => code,
        Err(e) => return Ok(oauth_reply(&e)),
    };
    state.gate.emit(
        "oauth.token_issued",
        json!({"actor": account.key_masked, "keyId": account.id(), "clientId": ok.client.client_id}),
    );
    Ok(redirect(
        &ok.redirect_uri,
        &[("code", &code)],
        state_param,
        s.issuer(),
    ))
}

/// The client id and secret a token or revocation request authenticates with: HTTP Basic
/// (RFC 6749 §2.3.1: each part form-urlencoded) or the form.
fn client_credentials(
    req: &AdminRequest,
    params: &[(String, String)],
) -> Result<(String, Option<String>), Box<Reply>> {
    let invalid = || {
        Box::new(oauth_reply(&OAuthError {
            error: "invalid_client",
            description: "malformed client authentication".into(),
        }))
    };
    if let Some(auth) = req.headers.get(http::header::AUTHORIZATION) {
        let text = auth.to_str().map_err(|_| invalid())?;
        let (scheme, encoded) = text.split_once(' ').ok_or_else(invalid)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD.decode(encoded.trim()).map_err(|_| invalid())?;
            let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
            let (id, secret) = decoded.split_once(':').ok_or_else(invalid)?;
            let unescape = |t: &str| -> String {
                form_urlencoded::parse(format!("x={t}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let id = unescape(id);
            if field(params, "client_id").is_some_and(|f| f != id) {
                return Err(invalid());
            }
            return Ok((id, Some(unescape(secret))));
        }
    }
    let id = field(params, "client_id")
        .ok_or_else(|| {
            Box::new(oauth_reply(&OAuthError {
                error: "invalid_client",
                description: "client_id is missing".into(),
            }))
        })?
        .to_string();
    Ok((id, field(params, "client_secret").map(str::to_string)))
}

/// `POST /oauth/token`: `authorization_code` and `refresh_token` grants.
pub(crate) async fn token<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let s = server(state)?;
    let params = match form(req) {
        Ok(p) => p,
        Err(answer) => return Ok(*answer),
    };
    let (client_id, secret) = match client_credentials(req, &params) {
        Ok(c) => c,
        Err(answer) => return Ok(*answer),
    };
    let tokens = match field(&params, "grant_type") {
        Some("authorization_code") => {
            s.exchange_code(
                &client_id,
                secret.as_deref(),
                field(&params, "code").unwrap_or_default(),
                field(&params, "redirect_uri"),
                field(&params, "code_verifier"),
                field(&params, "resource"),
            )
            .await
        }
        Some("refresh_token") => {
            s.refresh(
                &client_id,
                secret.as_deref(),
                field(&params, "refresh_token").unwrap_or_default(),
                field(&params, "resource"),
            )
            .await
        }
        _ => Err(OAuthError {
            error: "unsupported_grant_type",
            description: "grant_type must be authorization_code or refresh_token".into(),
        }),
    };
    let tokens = match tokens {
        Ok(t) => t,
        Err(e) => return Ok(oauth_reply(&e)),
    };
    Ok(no_store(json_reply(
        StatusCode::OK,
        &json!({
            "access_token": tokens.access_token,
            "token_type": "Bearer",
            "expires_in": tokens.expires_in,
            "refresh_token": tokens.refresh_token,
            "scope": tokens.scope,
        }),
    )))
}

/// `POST /oauth/revoke` (RFC 7009): the client authenticates as at the token endpoint and
/// may revoke only its own tokens; 200 whether the token was known or not.
pub(crate) async fn revoke<St: KeyStore>(state: &AdminState<St>, req: &AdminRequest) -> Handled {
    let s = server(state)?;
    let params = match form(req) {
        Ok(p) => p,
        Err(answer) => return Ok(*answer),
    };
    let Some(token) = field(&params, "token") else {
        return Ok(oauth_reply(&invalid_request("token is missing")));
    };
    let (client_id, secret) = match client_credentials(req, &params) {
        Ok(c) => c,
        Err(answer) => return Ok(*answer),
    };
    if let Err(e) = s.revoke_token(&client_id, secret.as_deref(), token).await {
        return Ok(oauth_reply(&e));
    }
    Ok(no_store(json_reply(StatusCode::OK, &json!({}))))
}

/// `GET /oauth/clients` (admin): every registered client, without secrets.
pub(crate) async fn clients<St: KeyStore>(state: &AdminState<St>) -> Handled {
    let s = server(state)?;
    let all = match s.clients().await {
        Ok(all) => all,
        Err(e) => return Ok(oauth_reply(&e)),
    };
    let clients: Vec<_> = all
        .into_iter()
        .map(|c| {
            json!({
                "clientId": c.client_id,
                "clientName": c.client_name,
                "redirectUris": c.redirect_uris,
                "tokenEndpointAuthMethod": c.auth.as_str(),
                "createdAt": crate::clock::ms_to_datetime(c.created_ms),
                "revoked": c.revoked,
            })
        })
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({"clients": clients, "count": clients.len()}),
    ))
}

/// `POST /oauth/clients/revoke` (admin) `{clientId}`: the client and all its tokens.
pub(crate) async fn revoke_client<St: KeyStore>(
    state: &AdminState<St>,
    req: &AdminRequest,
) -> Handled {
    let s = server(state)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        client_id: String,
    }
    let body: Body = req.json()?;
    let revoked = match s.revoke_client(&body.client_id).await {
        Ok(revoked) => revoked,
        Err(e) => return Ok(oauth_reply(&e)),
    };
    if !revoked {
        return Err(error(StatusCode::NOT_FOUND, "no such client"));
    }
    state.gate.emit(
        "oauth.token_revoked",
        json!({"actor": "admin", "clientId": body.client_id}),
    );
    Ok(json_reply(
        StatusCode::OK,
        &json!({"revoked": true, "clientId": body.client_id, "message": "Client and its tokens revoked"}),
    ))
}
