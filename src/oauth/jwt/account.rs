//! An identity provider's token acting for a key: the key whose `oauthSubject` tag equals
//! the token's account claim, made on the first call when `autoProvision` says so.

use std::collections::BTreeMap;

use super::{JwtError, JwtValidator};
use crate::key::{KeyRecord, MAX_TAG_LEN};
use crate::oauth::{AccessGrant, BearerError, OAuthServer};
use crate::store::{KeyStore, KeyUpdate};

/// The tag that names the identity-provider account a key pays for.
pub const OAUTH_SUBJECT_TAG: &str = "oauthSubject";

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
        let rec = match self.subject_key(&valid.account).await? {
            Some(rec) => rec,
            None => self.provision(jwt, &valid.account).await?,
        };
        if !rec.active || rec.is_expired_at(self.gate.clock().now_ms()) {
            return Err(BearerError::Invalid);
        }
        self.check_scope(&valid.scope)?;
        Ok(AccessGrant {
            key_id: rec.id(),
            key: rec.key_hash,
            client_id: jwt.settings().issuer.clone(),
            scope: valid.scope,
        })
    }

    /// The key tagged with `subject`. Two keys carrying one subject is an operator's
    /// mistake: neither is used, rather than billing one of them at random.
    async fn subject_key(&self, subject: &str) -> Result<Option<KeyRecord>, BearerError> {
        let tags = BTreeMap::from([(OAUTH_SUBJECT_TAG.to_string(), subject.to_string())]);
        let found = self
            .gate
            .search_keys(&tags, 2)
            .await
            .map_err(|_| BearerError::Unavailable)?;
        let active: Vec<KeyRecord> = found.into_iter().filter(|r| r.active).collect();
        match active.len() {
            0 | 1 => Ok(active.into_iter().next()),
            _ => {
                tracing::warn!(
                    subject,
                    "more than one active key carries this oauthSubject; the token is refused"
                );
                Err(BearerError::Invalid)
            }
        }
    }

    /// A key for a subject seen for the first time, when the settings allow it. One at a
    /// time, looked up again first, so two first calls make one key.
    async fn provision(&self, jwt: &JwtValidator, subject: &str) -> Result<KeyRecord, BearerError> {
        let Some(auto) = &jwt.settings().auto_provision else {
            return Err(BearerError::Invalid);
        };
        let _one_at_a_time = self.provisioning.lock().await;
        if let Some(rec) = self.subject_key(subject).await? {
            return Ok(rec);
        }
        let tags = BTreeMap::from([(OAUTH_SUBJECT_TAG.to_string(), Some(subject.to_string()))]);
        let name: String = subject.chars().take(100).collect();
        let issued = self
            .gate
            .create_key_with(&name, auto.credits, &[KeyUpdate::MergeTags(tags)])
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "could not provision a key for a signed-in subject");
                BearerError::Unavailable
            })?;
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
