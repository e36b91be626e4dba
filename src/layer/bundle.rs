//! [`PayGateLayer`]: every stage in one service over one gate.

use std::sync::Arc;

use super::{shared, GateService, Shared, Stages};
use crate::config::{ConfigError, PayGateConfig};
use crate::gate::Gate;
use crate::store::{KeyStore, MemoryKeyStore};

/// The whole gate as one layer: authentication, rate limits, quotas, billing with refunds,
/// and alerts, in that order, over one shared [`Gate`].
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
pub struct PayGateLayer<St = MemoryKeyStore> {
    shared: Shared<St>,
}

impl<St> Clone for PayGateLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl PayGateLayer<MemoryKeyStore> {
    /// A layer over a new in-memory gate.
    ///
    /// # Panics
    /// When `config` is invalid; [`PayGateLayer::try_new`] returns the error instead.
    pub fn new(config: PayGateConfig) -> Self {
        match Self::try_new(config) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid PayGate config: {e}"),
        }
    }

    /// A layer over a new in-memory gate, or the config's error.
    pub fn try_new(config: PayGateConfig) -> Result<Self, ConfigError> {
        Ok(Self::from_gate(Arc::new(Gate::new(config)?)))
    }
}

impl<St: KeyStore> PayGateLayer<St> {
    /// A layer over an existing gate (any store).
    pub fn from_gate(gate: Arc<Gate<St>>) -> Self {
        Self {
            shared: shared(gate, None),
        }
    }

    /// The gate behind the layer.
    pub fn gate(&self) -> &Arc<Gate<St>> {
        &self.shared.gate
    }

    /// Resolves `Authorization: Bearer` tokens to API keys (by default the token is the key).
    pub fn with_bearer_resolver(
        mut self,
        resolve: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.shared.bearer = Some(Arc::new(resolve));
        self
    }
}

impl<S, St> tower::Layer<S> for PayGateLayer<St> {
    type Service = GateService<S, St>;
    fn layer(&self, inner: S) -> Self::Service {
        GateService::new(inner, self.shared.clone(), Stages::ALL)
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
            .err()
            .expect("refused");
        assert!(err.to_string().contains("maxBodyBytes"), "{err}");
    }
}
