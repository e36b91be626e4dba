//! An identity provider's token acting for a key: the key whose `oauthSubject` tag equals
//! the token's account claim, made on the first call when `autoProvision` says so.

use std::collections::BTreeMap;

use super::{JwtError, JwtValidator};
use crate::gate::GateError;
use crate::key::{KeyDigest, KeyId, KeyRecord, MAX_TAG_LEN};
use crate::oauth::{AccessGrant, BearerError, OAuthServer};
use crate::store::{KeyStore, KeyUpdate, StoreError};

/// The tag that names the identity-provider account a key pays for.
pub const OAUTH_SUBJECT_TAG: &str = "oauthSubject";

/// Keys found for a subject.
enum Subject {
    /// Its one working key.
    Key(Box<KeyRecord>),
    /// Keys carry it, none of them usable (revoked), or more than one active: refused,
    /// never provisioned again (an operator who revoked a subject's key meant it).
    Refused,
    /// No key carries it.
    Unknown,
}

/// Keys read per subject lookup; more than a handful carrying one subject is an operator's
/// mistake, refused either way.
const SUBJECT_LOOKUP: usize = 16;

impl<S: KeyStore> OAuthServer<S> {
    /// What a JWT of the configured identity provider acts for: the active key whose
    /// `oauthSubject` tag is the token's account claim.
    pub(crate) async fn authenticate_jwt(
        &self,
        jwt: &JwtValidator,
        token: &str,
    ) -> Result<AccessGrant, BearerError> {
        let valid = jwt.validate_token(token).await.map_err(|e| {
            tracing::debug!(error = %e, "identity provider token refused");
            match e {
                JwtError::JwksUnavailable => BearerError::Unavailable,
                _ => BearerError::Invalid,
            }
        })?;
        if valid.account.chars().count() > MAX_TAG_LEN {
            return Err(BearerError::Invalid);
        }
        // Before anything is made for it: a token without the needed scopes gets nothing.
        self.check_scope(&valid.scope)?;
        let rec = match self.subject_key(&valid.account).await? {
            Subject::Key(rec) => *rec,
            Subject::Refused => return Err(BearerError::Invalid),
            Subject::Unknown => self.provision(jwt, &valid.account).await?,
        };
        if !rec.active || rec.is_expired_at(self.gate.clock().now_ms()) {
            return Err(BearerError::Invalid);
        }
        Ok(AccessGrant {
            key_id: rec.id(),
            key: rec.key_hash,
            client_id: jwt.settings().issuer.clone(),
            scope: valid.scope,
        })
    }

    /// The keys tagged with `subject`.
    async fn subject_key(&self, subject: &str) -> Result<Subject, BearerError> {
        let tags = BTreeMap::from([(OAUTH_SUBJECT_TAG.to_string(), subject.to_string())]);
        let found = self
            .gate
            .search_keys(&tags, SUBJECT_LOOKUP)
            .await
            .map_err(|_| BearerError::Unavailable)?;
        if found.is_empty() {
            return Ok(Subject::Unknown);
        }
        let mut active: Vec<KeyRecord> = found.into_iter().filter(|r| r.active).collect();
        if active.len() > 1 {
            tracing::warn!(
                subject,
                "more than one active key carries this oauthSubject; its tokens are refused"
            );
        }
        Ok(match (active.pop(), active.is_empty()) {
            (Some(rec), true) => Subject::Key(Box::new(rec)),
            _ => Subject::Refused,
        })
    }

    /// A key for a subject seen for the first time, when the settings allow it. Its account
    /// id is derived from the issuer and subject, so gateways racing to make it (on one
    /// Redis) make one: the store refuses a second key for an id.
    async fn provision(&self, jwt: &JwtValidator, subject: &str) -> Result<KeyRecord, BearerError> {
        let Some(auto) = &jwt.settings().auto_provision else {
            return Err(BearerError::Invalid);
        };
        let _one_at_a_time = self.provisioning.lock().await;
        let issuer = &jwt.settings().issuer;
        let id = KeyId::derived(&KeyDigest::of(&format!(
            "oauthSubject\n{issuer}\n{subject}"
        )));
        let tags = BTreeMap::from([(OAUTH_SUBJECT_TAG.to_string(), Some(subject.to_string()))]);
        let name: String = subject.chars().take(100).collect();
        let made = self
            .gate
            .create_key_as(Some(id), &name, auto.credits, &[KeyUpdate::MergeTags(tags)])
            .await;
        let issued = match made {
            Ok(issued) => issued,
            // Made a moment ago, here or by another gateway.
            Err(GateError::Store(StoreError::Duplicate)) => {
                return match self.subject_key(subject).await? {
                    Subject::Key(rec) => Ok(*rec),
                    _ => Err(BearerError::Invalid),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not provision a key for a signed-in subject");
                return Err(BearerError::Unavailable);
            }
        };
        self.gate.emit(
            "key.created",
            serde_json::json!({
                "actor": "oauth",
                "keyMasked": issued.record.key_masked,
                "keyId": issued.record.id(),
                "name": issued.record.name,
                "credits": auto.credits,
            }),
        );
        Ok(issued.record)
    }
}
