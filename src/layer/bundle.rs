//! [`PayGateLayer`]: every stage in one layer.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use super::stage::StageSet;
use super::stage_layer::stage_layer;
use super::PayGate;
use crate::config::{ConfigError, PayGateConfig};
use crate::gate::{Decision, Gate};
use crate::store::MemoryKeyStore;

stage_layer!(
    /// The whole gate as one layer: authentication, rate limits, quotas, billing with
    /// refunds, and alerts, over one [`Gate`].
    ///
    /// ```
    /// use paygate_mcp::{PayGateConfig, PayGateLayer};
    /// use tower::ServiceBuilder;
    /// # let mcp = tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
    /// # });
    /// let layer = PayGateLayer::new(PayGateConfig::default().with_tool_price("search", 5));
    /// let gate = layer.gate().clone(); // for keys, analytics, alerts, the admin API
    /// let service = ServiceBuilder::new().layer(layer).service(mcp);
    /// # let _ = (service, gate);
    /// ```
    PayGateLayer,
    StageSet::ALL
);

impl PayGateLayer<MemoryKeyStore> {
    /// A layer over a new in-memory gate.
    ///
    /// # Panics
    /// When `config` is invalid; [`PayGateLayer::try_new`] returns the error instead.
    pub fn new(config: PayGateConfig) -> Self {
        PayGate::new(config).layer()
    }

    /// A layer over a new in-memory gate, or the config's error.
    pub fn try_new(config: PayGateConfig) -> Result<Self, ConfigError> {
        Ok(PayGate::try_new(config)?.layer())
    }
}

impl<St> PayGateLayer<St> {
    /// A layer over an existing gate (any store).
    pub fn from_gate(gate: Arc<Gate<St>>) -> Self {
        PayGate::from_gate(gate).layer()
    }

    /// The gate behind the layer.
    pub fn gate(&self) -> &Arc<Gate<St>> {
        self.pg.gate()
    }

    /// Resolves `Authorization: Bearer` tokens to API keys (see
    /// [`PayGate::with_bearer_resolver`]).
    pub fn with_bearer_resolver(
        self,
        resolve: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self::from_handle(self.pg.with_bearer_resolver(resolve))
    }

    /// Accepts the access tokens of a built-in authorization server (see
    /// [`PayGate::with_oauth`]).
    pub fn with_oauth(self, oauth: std::sync::Arc<crate::oauth::OAuthServer<St>>) -> Self {
        Self::from_handle(self.pg.with_oauth(oauth))
    }

    /// Shapes denial responses (see [`PayGate::with_denial_response`]).
    pub fn with_denial_response(
        self,
        handler: impl Fn(&Decision, Response<Bytes>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        Self::from_handle(self.pg.with_denial_response(handler))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "invalid config at 'trustedProxies'")]
    fn new_names_the_bad_field_when_it_panics() {
        let _ = PayGateLayer::new(PayGateConfig::default().with_trusted_proxy_hops(1));
    }

    #[test]
    fn try_new_returns_the_error_instead() {
        let err = PayGateLayer::try_new(PayGateConfig::default().with_max_body_bytes(0))
            .expect_err("refused");
        assert!(err.to_string().contains("maxBodyBytes"), "{err}");
    }
}
