//! OAuth grants in Redis: every gateway sharing the store honours every token, and each
//! change (a code taken, a refresh token spent, a revocation) is one Lua script, so two
//! gateways racing on one refresh token can never both rotate it.
//!
//! Layout, under the store's prefix (secrets only as hex SHA-256 digests):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `oauth:client:<id>` | hash | `json` (the client), `revoked` |
//! | `oauth:clients`, `oauth:unused` | sorted set | every client / those never granted anything, by registration time |
//! | `oauth:code:<digest>` | string | a code's grant (JSON), expiring with it; `oauth:codes` bounds their number, `oauth:issued:<keyId>` each account's |
//! | `oauth:used:<digest>` | string | for a code's lifetime after its exchange, the grant it made |
//! | `oauth:grant:<family>` | hash | a grant: client, account, scope, current token digests and expiries, spent refresh tokens; expires with its refresh token |
//! | `oauth:tok:<digest>` | string | `a<family>` or `r<family>` for each live token, expiring with it |
//! | `oauth:spent:<digest>` | string | the family of a spent refresh token (a replay ends it) |
//! | `oauth:account:<keyId>`, `oauth:byclient:<id>` | sorted set / set | the grants of an account / a client |

use redis::{Script, Value};

use super::{unavailable, RedisKeyStore};
use crate::key::{KeyDigest, KeyId};
use crate::store::grants::{
    Client, CodeGrant, CodeTaken, Grant, GrantLimits, GrantStore, Refreshed, TokenDigest, TokenPair,
};
use crate::store::StoreError;

const COMMON: &str = include_str!("lua/oauth/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// The OAuth scripts.
pub(super) struct GrantScripts {
    client_add: Script,
    client_revoke: Script,
    code_add: Script,
    code_take: Script,
    grant_add: Script,
    refresh: Script,
    access: Script,
    token_revoke: Script,
    account_revoke: Script,
}

impl GrantScripts {
    pub(super) fn new() -> Self {
        Self {
            client_add: script(include_str!("lua/oauth/client_add.lua")),
            client_revoke: script(include_str!("lua/oauth/client_revoke.lua")),
            code_add: script(include_str!("lua/oauth/code_add.lua")),
            code_take: script(include_str!("lua/oauth/code_take.lua")),
            grant_add: script(include_str!("lua/oauth/grant_add.lua")),
            refresh: script(include_str!("lua/oauth/refresh.lua")),
            access: script(include_str!("lua/oauth/access.lua")),
            token_revoke: script(include_str!("lua/oauth/token_revoke.lua")),
            account_revoke: script(include_str!("lua/oauth/account_revoke.lua")),
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("OAuth {what} is not what this store writes"))
}

/// Text of a reply element (bulk string or simple string).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn digest_of(hex_text: &str) -> Option<TokenDigest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// A grant from the fields the scripts return: family, client, key id, key, scope, created,
/// access, access expiry, refresh, refresh expiry, resource (absent in grants stored before
/// it was recorded).
fn grant_from(fields: &[String]) -> Result<Grant, StoreError> {
    let num = |i: usize| -> Result<i64, StoreError> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt("grant"))
    };
    let field = |i: usize| fields.get(i).ok_or_else(|| corrupt("grant"));
    let digest = |i: usize| field(i).and_then(|v| digest_of(v).ok_or_else(|| corrupt("grant")));
    Ok(Grant {
        family: field(0)?.clone(),
        client_id: field(1)?.clone(),
        key_id: field(2)?.parse::<KeyId>().map_err(|_| corrupt("grant"))?,
        key: KeyDigest::from_hex(field(3)?).ok_or_else(|| corrupt("grant"))?,
        scope: field(4)?.clone(),
        created_ms: num(5)?,
        access: digest(6)?,
        access_expires_ms: num(7)?,
        refresh: digest(8)?,
        refresh_expires_ms: num(9)?,
        resource: fields.get(10).cloned().unwrap_or_default(),
    })
}

/// A client from its hash's `json` and `revoked` fields (`None` when it is gone).
fn client_from(
    json: Option<String>,
    revoked: Option<String>,
) -> Result<Option<Client>, StoreError> {
    let Some(json) = json else {
        return Ok(None);
    };
    let mut client: Client = serde_json::from_str(&json).map_err(|_| corrupt("client"))?;
    client.revoked = revoked.as_deref() == Some("1");
    Ok(Some(client))
}

impl RedisKeyStore {
    fn oauth_key(&self, parts: &[&str]) -> String {
        format!("{}oauth:{}", self.prefix, parts.join(":"))
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        let mut inv = script.prepare_invoke();
        inv.arg(&*self.prefix);
        for a in args {
            inv.arg(a);
        }
        inv.invoke_async(&mut conn).await.map_err(unavailable)
    }

    async fn add_client_inner(
        &self,
        client: Client,
        limits: GrantLimits,
    ) -> Result<bool, StoreError> {
        let json =
            serde_json::to_string(&client).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let n: i64 = self
            .run(
                &self.scripts.oauth.client_add,
                &[
                    client.client_id.clone(),
                    json,
                    client.created_ms.to_string(),
                    limits.clients.to_string(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn client_inner(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        let mut conn = self.conn.clone();
        let (json, revoked): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.oauth_key(&["client", client_id]))
            .arg("json")
            .arg("revoked")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        client_from(json, revoked)
    }

    async fn clients_inner(&self) -> Result<Vec<Client>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.oauth_key(&["clients"]))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(256) {
            let mut pipe = redis::pipe();
            for id in batch {
                pipe.cmd("HMGET")
                    .arg(self.oauth_key(&["client", id]))
                    .arg("json")
                    .arg("revoked");
            }
            let rows: Vec<(Option<String>, Option<String>)> =
                pipe.query_async(&mut conn).await.map_err(unavailable)?;
            for (json, revoked) in rows {
                out.extend(client_from(json, revoked)?);
            }
        }
        Ok(out)
    }
}

impl GrantStore for RedisKeyStore {
    async fn add_client(&self, client: Client, limits: GrantLimits) -> Result<bool, StoreError> {
        self.add_client_inner(client, limits).await
    }

    async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        self.client_inner(client_id).await
    }

    async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        self.clients_inner().await
    }

    async fn revoke_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .run(&self.scripts.oauth.client_revoke, &[client_id.to_string()])
            .await?;
        Ok(n == 1)
    }

    async fn add_code(
        &self,
        code: TokenDigest,
        grant: CodeGrant,
        now_ms: i64,
        limits: GrantLimits,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(&grant).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let n: i64 = self
            .run(
                &self.scripts.oauth.code_add,
                &[
                    hex::encode(code),
                    json,
                    grant.expires_ms.to_string(),
                    now_ms.to_string(),
                    limits.codes.to_string(),
                    grant.key_id.to_string(),
                    limits.codes_per_account.to_string(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn take_code(
        &self,
        code: &TokenDigest,
        client_id: &str,
        now_ms: i64,
    ) -> Result<CodeTaken, StoreError> {
        let reply: Vec<Value> = self
            .run(
                &self.scripts.oauth.code_take,
                &[hex::encode(code), client_id.to_string()],
            )
            .await?;
        let parts: Vec<Option<String>> = reply.iter().map(text).collect();
        match parts.as_slice() {
            [Some(tag), Some(json)] if tag == "fresh" => {
                let grant: CodeGrant = serde_json::from_str(json).map_err(|_| corrupt("code"))?;
                // Redis expires codes itself; this closes the last millisecond.
                Ok(if now_ms < grant.expires_ms {
                    CodeTaken::Fresh(grant)
                } else {
                    CodeTaken::Unknown
                })
            }
            [Some(tag)] if tag == "reused" => Ok(CodeTaken::Reused),
            [Some(tag)] if tag == "unknown" => Ok(CodeTaken::Unknown),
            [Some(tag)] if tag == "other_client" => Ok(CodeTaken::OtherClient),
            _ => Err(corrupt("code reply")),
        }
    }

    async fn add_grant(
        &self,
        code: TokenDigest,
        code_expires_ms: i64,
        grant: Grant,
        now_ms: i64,
        limits: GrantLimits,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .run(
                &self.scripts.oauth.grant_add,
                &[
                    hex::encode(code),
                    code_expires_ms.to_string(),
                    grant.family,
                    grant.client_id,
                    grant.key_id.to_string(),
                    grant.key.to_hex(),
                    grant.scope,
                    grant.created_ms.to_string(),
                    hex::encode(grant.access),
                    grant.access_expires_ms.to_string(),
                    hex::encode(grant.refresh),
                    grant.refresh_expires_ms.to_string(),
                    now_ms.to_string(),
                    limits.grants_per_account.to_string(),
                    grant.resource,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn refresh_grant(
        &self,
        presented: &TokenDigest,
        client_id: &str,
        next: TokenPair,
        now_ms: i64,
        limits: GrantLimits,
    ) -> Result<Refreshed, StoreError> {
        let reply: Vec<Value> = self
            .run(
                &self.scripts.oauth.refresh,
                &[
                    hex::encode(presented),
                    client_id.to_string(),
                    hex::encode(next.access),
                    next.access_expires_ms.to_string(),
                    hex::encode(next.refresh),
                    next.refresh_expires_ms.to_string(),
                    now_ms.to_string(),
                    limits.spent_per_grant.to_string(),
                ],
            )
            .await?;
        let parts: Vec<String> = reply.iter().filter_map(text).collect();
        match parts.first().map(String::as_str) {
            Some("ok") if parts.len() >= 8 => {
                // family, client, key id, key, scope, created, then the new pair, resource.
                let mut fields = parts[1..7].to_vec();
                fields.extend([
                    hex::encode(next.access),
                    next.access_expires_ms.to_string(),
                    hex::encode(next.refresh),
                    next.refresh_expires_ms.to_string(),
                    parts[7].clone(),
                ]);
                Ok(Refreshed::Rotated(Box::new(grant_from(&fields)?)))
            }
            Some("reused") => Ok(Refreshed::Reused),
            Some("unknown") => Ok(Refreshed::Unknown),
            Some("other_client") => Ok(Refreshed::OtherClient),
            Some("expired") => Ok(Refreshed::Expired),
            _ => Err(corrupt("refresh reply")),
        }
    }

    async fn access_grant(
        &self,
        access: &TokenDigest,
        now_ms: i64,
    ) -> Result<Option<Grant>, StoreError> {
        let reply: Option<Vec<String>> = self
            .run(
                &self.scripts.oauth.access,
                &[hex::encode(access), now_ms.to_string()],
            )
            .await?;
        reply.map(|fields| grant_from(&fields)).transpose()
    }

    async fn revoke_token(&self, token: &TokenDigest, client_id: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .run(
                &self.scripts.oauth.token_revoke,
                &[hex::encode(token), client_id.to_string()],
            )
            .await?;
        Ok(n == 1)
    }

    async fn revoke_account(&self, key_id: &KeyId) -> Result<(), StoreError> {
        let _: i64 = self
            .run(&self.scripts.oauth.account_revoke, &[key_id.to_string()])
            .await?;
        Ok(())
    }
}
