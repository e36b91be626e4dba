//! The memory store's OAuth grants: one table behind a read-write lock. Checking an access
//! token (every gated call made with one) only reads, so calls never wait for each other;
//! every change (a code taken, a refresh token spent, a revocation) is one write section, so
//! no interleaving can outlive a revocation or spend a token twice.

use std::collections::{HashMap, VecDeque};
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::MemoryKeyStore;
use crate::key::KeyId;
use crate::store::grants::{
    hex_digest, Client, CodeGrant, CodeTaken, Grant, GrantLimits, GrantStore, Refreshed,
    TokenDigest, TokenPair,
};
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Access,
    Refresh,
}

/// A live token: which grant it belongs to.
#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    family: String,
}

/// A grant and the refresh tokens it spent (a few, to catch a replay).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Family {
    #[serde(flatten)]
    grant: Grant,
    #[serde(default)]
    spent: VecDeque<Spent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct Spent(#[serde(with = "hex_digest")] TokenDigest);

#[derive(Default)]
struct Table {
    clients: HashMap<String, Client>,
    codes: HashMap<TokenDigest, CodeGrant>,
    /// Codes already exchanged → (their grant, until when it matters).
    used_codes: HashMap<TokenDigest, (String, i64)>,
    tokens: HashMap<TokenDigest, Token>,
    families: HashMap<String, Family>,
    /// Spent refresh tokens → their grant.
    spent: HashMap<TokenDigest, String>,
    /// Each account's grants, oldest first.
    by_account: HashMap<KeyId, VecDeque<String>>,
    /// Live grants per client.
    granted: HashMap<String, usize>,
    /// Expiries of the codes issued to each account, oldest first.
    issued: HashMap<KeyId, VecDeque<i64>>,
    /// Clients holding no grant, oldest first: the ones a registration at the bound evicts.
    idle: std::collections::BTreeSet<(i64, String)>,
}

impl Table {
    /// Ends a grant: its tokens, its spent tokens, its place in the account's list.
    fn end(&mut self, family: &str) {
        let Some(f) = self.families.remove(family) else {
            return;
        };
        self.tokens.remove(&f.grant.access);
        self.tokens.remove(&f.grant.refresh);
        for d in &f.spent {
            self.spent.remove(&d.0);
        }
        if let Some(list) = self.by_account.get_mut(&f.grant.key_id) {
            list.retain(|g| g != family);
            if list.is_empty() {
                self.by_account.remove(&f.grant.key_id);
            }
        }
        let client = &f.grant.client_id;
        let left = self.granted.get_mut(client).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            self.granted.remove(client);
            if let Some(c) = self.clients.get(client) {
                self.idle.insert((c.created_ms, c.client_id.clone()));
            }
        }
    }

    fn add_client(&mut self, client: Client) {
        self.idle
            .insert((client.created_ms, client.client_id.clone()));
        self.clients.insert(client.client_id.clone(), client);
    }

    fn install(&mut self, family: &str, grant: &Grant) {
        for (digest, kind) in [(grant.access, Kind::Access), (grant.refresh, Kind::Refresh)] {
            let family = family.to_string();
            self.tokens.insert(digest, Token { kind, family });
        }
    }

    fn insert_family(&mut self, f: Family) {
        let family = f.grant.family.clone();
        self.install(&family, &f.grant);
        for d in &f.spent {
            self.spent.insert(d.0, family.clone());
        }
        self.by_account
            .entry(f.grant.key_id)
            .or_default()
            .push_back(family.clone());
        let client = f.grant.client_id.clone();
        *self.granted.entry(client.clone()).or_default() += 1;
        if let Some(c) = self.clients.get(&client) {
            self.idle.remove(&(c.created_ms, client));
        }
        self.families.insert(family, f);
    }
}

/// OAuth clients, codes and grants of a [`MemoryKeyStore`].
#[derive(Default)]
pub(crate) struct GrantTable {
    table: RwLock<Table>,
    /// Bumped on every change, so the state file is saved only when something changed.
    version: AtomicU64,
}

/// What a state file holds of the grants: clients and live grants (codes live a minute and
/// are not kept).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GrantSnapshot {
    clients: Vec<Client>,
    grants: Vec<Family>,
}

impl GrantSnapshot {
    pub(crate) fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.grants.is_empty()
    }
}

/// The `oauth` section as read: each entry on its own, so one damaged entry costs that
/// client or grant (its user signs in again), not the keys of the whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GrantSection {
    #[serde(default)]
    clients: Vec<serde_json::Value>,
    #[serde(default)]
    grants: Vec<serde_json::Value>,
}

impl GrantTable {
    fn changed(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Clients and grants, for the state file.
    pub(crate) fn snapshot(&self) -> GrantSnapshot {
        let t = self.table.read();
        let mut clients: Vec<Client> = t.clients.values().cloned().collect();
        clients.sort_by(|a, b| (a.created_ms, &a.client_id).cmp(&(b.created_ms, &b.client_id)));
        let mut grants: Vec<Family> = t.families.values().cloned().collect();
        grants.sort_by(|a, b| {
            (a.grant.created_ms, &a.grant.family).cmp(&(b.grant.created_ms, &b.grant.family))
        });
        GrantSnapshot { clients, grants }
    }

    /// Restores the `oauth` section of a state file (into an empty table). Entries that do
    /// not parse, repeat a client or grant, share a token with another grant, or belong to
    /// an unknown or revoked client are skipped; returns how many.
    pub(crate) fn restore(&self, section: GrantSection) -> usize {
        let mut t = self.table.write();
        let mut skipped = 0;
        for value in section.clients {
            match serde_json::from_value::<Client>(value) {
                Ok(c) if !t.clients.contains_key(&c.client_id) => t.add_client(c),
                _ => skipped += 1,
            }
        }
        for value in section.grants {
            let Ok(f) = serde_json::from_value::<Family>(value) else {
                skipped += 1;
                continue;
            };
            let known = t
                .clients
                .get(&f.grant.client_id)
                .is_some_and(|c| !c.revoked);
            let clash = t.families.contains_key(&f.grant.family)
                || [f.grant.access, f.grant.refresh]
                    .iter()
                    .chain(f.spent.iter().map(|d| &d.0))
                    .any(|d| t.tokens.contains_key(d) || t.spent.contains_key(d));
            if known && !clash {
                t.insert_family(f);
            } else {
                skipped += 1;
            }
        }
        skipped
    }

    /// How much the table holds: clients, codes, live tokens, grants, spent refresh tokens.
    pub(crate) fn counts(&self) -> [usize; 5] {
        let t = self.table.read();
        [
            t.clients.len(),
            t.codes.len() + t.used_codes.len(),
            t.tokens.len(),
            t.families.len(),
            t.spent.len(),
        ]
    }

    /// Drops expired codes and grants whose refresh token expired.
    pub(crate) fn sweep(&self, now_ms: i64) {
        let mut t = self.table.write();
        t.codes.retain(|_, c| now_ms < c.expires_ms);
        t.used_codes.retain(|_, (_, until)| now_ms < *until);
        t.issued
            .retain(|_, q| q.back().is_some_and(|until| now_ms < *until));
        let ended: Vec<String> = t
            .families
            .values()
            .filter(|f| now_ms >= f.grant.refresh_expires_ms)
            .map(|f| f.grant.family.clone())
            .collect();
        for family in &ended {
            t.end(family);
        }
        // Expired access tokens of live grants.
        let stale: Vec<TokenDigest> = t
            .families
            .values()
            .filter(|f| now_ms >= f.grant.access_expires_ms)
            .map(|f| f.grant.access)
            .collect();
        for d in &stale {
            t.tokens.remove(d);
        }
        if !ended.is_empty() {
            self.changed();
        }
    }

    fn add_client(&self, client: Client, limits: GrantLimits) -> bool {
        let mut t = self.table.write();
        if t.clients.len() >= limits.clients {
            // Registration is open to anyone: at the bound, the oldest client holding no
            // grant (never used, revoked, or its grants ended) makes room, so a flood cannot
            // lock real clients out.
            let Some((_, id)) = t.idle.pop_first() else {
                return false;
            };
            // Its codes (if any) die at the exchange: the client is unknown by then.
            t.clients.remove(&id);
        }
        t.add_client(client);
        self.changed();
        true
    }

    fn revoke_client(&self, client_id: &str) -> bool {
        let mut t = self.table.write();
        let Some(client) = t.clients.get_mut(client_id) else {
            return false;
        };
        client.revoked = true;
        let gone: Vec<String> = t
            .families
            .values()
            .filter(|f| f.grant.client_id == client_id)
            .map(|f| f.grant.family.clone())
            .collect();
        for family in &gone {
            t.end(family);
        }
        t.codes.retain(|_, c| c.client_id != client_id);
        self.changed();
        true
    }

    fn add_code(
        &self,
        code: TokenDigest,
        grant: CodeGrant,
        now_ms: i64,
        limits: GrantLimits,
    ) -> bool {
        let mut t = self.table.write();
        if t.codes.len() >= limits.codes {
            t.codes.retain(|_, c| now_ms < c.expires_ms);
            t.used_codes.retain(|_, (_, until)| now_ms < *until);
            t.issued
                .retain(|_, q| q.back().is_some_and(|until| now_ms < *until));
            if t.codes.len() >= limits.codes {
                return false;
            }
        }
        let issued = t.issued.entry(grant.key_id).or_default();
        while issued.front().is_some_and(|until| *until <= now_ms) {
            issued.pop_front();
        }
        if issued.len() >= limits.codes_per_account {
            return false;
        }
        issued.push_back(grant.expires_ms);
        t.codes.insert(code, grant);
        true
    }

    fn take_code(&self, code: &TokenDigest, client_id: &str, now_ms: i64) -> CodeTaken {
        let mut t = self.table.write();
        if let Some(grant) = t.codes.get(code) {
            if grant.client_id != client_id {
                return CodeTaken::OtherClient;
            }
            return match t.codes.remove(code) {
                Some(grant) if now_ms < grant.expires_ms => CodeTaken::Fresh(grant),
                _ => CodeTaken::Unknown,
            };
        }
        let Some((family, until)) = t.used_codes.get(code).cloned() else {
            return CodeTaken::Unknown;
        };
        if now_ms >= until {
            t.used_codes.remove(code);
            return CodeTaken::Unknown;
        }
        let owner = t.families.get(&family).map(|f| f.grant.client_id.clone());
        if owner.is_some_and(|o| o != client_id) {
            return CodeTaken::OtherClient;
        }
        t.used_codes.remove(code);
        t.end(&family);
        self.changed();
        CodeTaken::Reused
    }

    fn add_grant(
        &self,
        code: TokenDigest,
        code_expires_ms: i64,
        grant: Grant,
        now_ms: i64,
        limits: GrantLimits,
    ) -> bool {
        let mut t = self.table.write();
        if t.clients.get(&grant.client_id).is_none_or(|c| c.revoked) {
            return false;
        }
        // Each exchanged code is remembered for its minute; without a periodic sweep the
        // expired ones go here, so the table stays within a minute of exchanges.
        if t.used_codes.len() >= limits.codes {
            t.used_codes.retain(|_, (_, until)| now_ms < *until);
        }
        t.used_codes
            .insert(code, (grant.family.clone(), code_expires_ms));
        let key_id = grant.key_id;
        t.insert_family(Family {
            grant,
            spent: VecDeque::new(),
        });
        // Past the bound, the account's oldest grant ends.
        while t
            .by_account
            .get(&key_id)
            .is_some_and(|l| l.len() > limits.grants_per_account)
        {
            let oldest = t.by_account.get_mut(&key_id).and_then(VecDeque::pop_front);
            match oldest {
                Some(family) => t.end(&family),
                None => break,
            }
        }
        self.changed();
        true
    }

    fn refresh_grant(
        &self,
        presented: &TokenDigest,
        client_id: &str,
        next: TokenPair,
        now_ms: i64,
        limits: GrantLimits,
    ) -> Refreshed {
        let mut t = self.table.write();
        if let Some(family) = t.spent.get(presented).cloned() {
            let owner = t.families.get(&family).map(|f| f.grant.client_id.as_str());
            if owner.is_some_and(|o| o != client_id) {
                return Refreshed::OtherClient;
            }
            t.end(&family);
            self.changed();
            return Refreshed::Reused;
        }
        let family = match t.tokens.get(presented) {
            Some(Token {
                kind: Kind::Refresh,
                family,
            }) => family.clone(),
            _ => return Refreshed::Unknown,
        };
        let Some(f) = t.families.get(&family) else {
            return Refreshed::Unknown;
        };
        if f.grant.client_id != client_id {
            return Refreshed::OtherClient;
        }
        if now_ms >= f.grant.refresh_expires_ms {
            return Refreshed::Expired;
        }
        let old_access = f.grant.access;
        t.tokens.remove(presented);
        t.tokens.remove(&old_access);
        t.spent.insert(*presented, family.clone());
        let Some(f) = t.families.get_mut(&family) else {
            return Refreshed::Unknown;
        };
        f.spent.push_back(Spent(*presented));
        let forgotten = (f.spent.len() > limits.spent_per_grant)
            .then(|| f.spent.pop_front())
            .flatten();
        f.grant.access = next.access;
        f.grant.access_expires_ms = next.access_expires_ms;
        f.grant.refresh = next.refresh;
        f.grant.refresh_expires_ms = next.refresh_expires_ms;
        let grant = f.grant.clone();
        if let Some(old) = forgotten {
            t.spent.remove(&old.0);
        }
        t.install(&family, &grant);
        self.changed();
        Refreshed::Rotated(Box::new(grant))
    }

    fn access_grant(&self, access: &TokenDigest, now_ms: i64) -> Option<Grant> {
        let t = self.table.read();
        let token = t.tokens.get(access).filter(|t| t.kind == Kind::Access)?;
        let f = t.families.get(&token.family)?;
        let live = now_ms < f.grant.access_expires_ms && now_ms < f.grant.refresh_expires_ms;
        (f.grant.access == *access && live).then(|| f.grant.clone())
    }

    fn revoke_token(&self, token: &TokenDigest, client_id: &str) -> bool {
        let mut t = self.table.write();
        let Some(found) = t.tokens.get(token).cloned() else {
            return true;
        };
        let owner = t
            .families
            .get(&found.family)
            .map(|f| f.grant.client_id.as_str());
        if owner.is_some_and(|o| o != client_id) {
            return false;
        }
        match found.kind {
            Kind::Refresh => t.end(&found.family),
            Kind::Access => {
                t.tokens.remove(token);
                // Kept in the grant for the state file: expired, so a reload cannot revive it.
                if let Some(f) = t.families.get_mut(&found.family) {
                    f.grant.access_expires_ms = i64::MIN;
                }
            }
        }
        self.changed();
        true
    }

    fn revoke_account(&self, key_id: &KeyId) {
        let mut t = self.table.write();
        for family in t.by_account.remove(key_id).unwrap_or_default() {
            t.end(&family);
        }
        t.codes.retain(|_, c| c.key_id != *key_id);
        self.changed();
    }
}

// Ready futures, as for the keys: callers that know the store need no runtime.
#[allow(refining_impl_trait)]
impl GrantStore for MemoryKeyStore {
    fn add_client(&self, client: Client, limits: GrantLimits) -> Ready<Result<bool, StoreError>> {
        ready(Ok(self.grants.add_client(client, limits)))
    }

    fn client(&self, client_id: &str) -> Ready<Result<Option<Client>, StoreError>> {
        ready(Ok(self.grants.table.read().clients.get(client_id).cloned()))
    }

    fn clients(&self) -> Ready<Result<Vec<Client>, StoreError>> {
        ready(Ok(self.grants.snapshot().clients))
    }

    fn revoke_client(&self, client_id: &str) -> Ready<Result<bool, StoreError>> {
        ready(Ok(self.grants.revoke_client(client_id)))
    }

    fn add_code(
        &self,
        code: TokenDigest,
        grant: CodeGrant,
        now_ms: i64,
        limits: GrantLimits,
    ) -> Ready<Result<bool, StoreError>> {
        ready(Ok(self.grants.add_code(code, grant, now_ms, limits)))
    }

    fn take_code(
        &self,
        code: &TokenDigest,
        client_id: &str,
        now_ms: i64,
    ) -> Ready<Result<CodeTaken, StoreError>> {
        ready(Ok(self.grants.take_code(code, client_id, now_ms)))
    }

    fn add_grant(
        &self,
        code: TokenDigest,
        code_expires_ms: i64,
        grant: Grant,
        now_ms: i64,
        limits: GrantLimits,
    ) -> Ready<Result<bool, StoreError>> {
        ready(Ok(self.grants.add_grant(
            code,
            code_expires_ms,
            grant,
            now_ms,
            limits,
        )))
    }

    fn refresh_grant(
        &self,
        presented: &TokenDigest,
        client_id: &str,
        next: TokenPair,
        now_ms: i64,
        limits: GrantLimits,
    ) -> Ready<Result<Refreshed, StoreError>> {
        ready(Ok(self
            .grants
            .refresh_grant(presented, client_id, next, now_ms, limits)))
    }

    fn access_grant(
        &self,
        access: &TokenDigest,
        now_ms: i64,
    ) -> Ready<Result<Option<Grant>, StoreError>> {
        ready(Ok(self.grants.access_grant(access, now_ms)))
    }

    fn revoke_token(
        &self,
        token: &TokenDigest,
        client_id: &str,
    ) -> Ready<Result<bool, StoreError>> {
        ready(Ok(self.grants.revoke_token(token, client_id)))
    }

    fn revoke_account(&self, key_id: &KeyId) -> Ready<Result<(), StoreError>> {
        self.grants.revoke_account(key_id);
        ready(Ok(()))
    }
}
