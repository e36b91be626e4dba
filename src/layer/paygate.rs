//! [`PayGate`]: the handle every layer is made from.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use super::stage::StageSet;
use super::{
    AlertLayer, AuthLayer, BearerResolver, BillingLayer, PayGateLayer, QuotaLayer, RateLimitLayer,
};
use crate::config::{ConfigError, PayGateConfig};
use crate::gate::{Decision, Gate};
use crate::store::MemoryKeyStore;

/// Shapes the response to a denied call: given the gate's decision and the default answer
/// (SPEC §4: HTTP 200, a JSON-RPC error with `data.reason`, credit and rate-limit headers),
/// returns the answer to send.
pub type DenialHandler = Arc<dyn Fn(&Decision, Response<Bytes>) -> Response<Bytes> + Send + Sync>;

/// The handle the layers are made from: one [`Gate`] with the options its layers share.
///
/// Each layer does only its concern ([`PayGate::auth`] checks keys, [`PayGate::rate_limit`]
/// applies rate windows, [`PayGate::quota`] quotas, [`PayGate::billing`] credits and
/// refunds, [`PayGate::alerts`] fires alert rules). Stacked in any order, the layers over
/// one gate read and parse a request once and, from the second call on a route, make **one**
/// atomic store call covering exactly the stages on it: the outermost layer decides for the
/// stages it learned are further in and the others pass the request on (on a route's first
/// call, a layer whose stage was not decided yet decides for it itself). Configure the
/// handle (`with_*`) before making its layers.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use paygate_mcp::{PayGate, PayGateConfig};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// let pg = PayGate::new(PayGateConfig::default().with_tool_price("search", 5).with_rate_limit(100));
/// let key = pg.gate().create_key("alice", 10).await.unwrap();
/// # let mcp = tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
/// #     let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
/// # });
/// // Keys and rate limits, no billing: the call costs nothing.
/// let svc = ServiceBuilder::new().layer(pg.auth()).layer(pg.rate_limit()).service(mcp);
/// let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#;
/// let req = http::Request::post("/mcp").header("x-api-key", &key).body(Full::new(Bytes::from(call))).unwrap();
/// let resp = svc.oneshot(req).await.unwrap();
/// assert_eq!(resp.headers()["x-ratelimit-remaining"], "99");
/// assert!(resp.headers().get("x-credits-remaining").is_none());
/// assert_eq!(pg.gate().get_key(&key).await.unwrap().unwrap().credits, 10);
/// # });
/// ```
pub struct PayGate<St = MemoryKeyStore> {
    pub(crate) gate: Arc<Gate<St>>,
    pub(crate) bearer: Option<BearerResolver>,
    /// The authorization server whose access tokens authenticate calls (SPEC §12).
    pub(crate) oauth: Option<Arc<crate::oauth::OAuthServer<St>>>,
    pub(crate) denial: Option<DenialHandler>,
    /// The stages of the layers made into services from this handle (see [`PayGate::layered`]).
    layered: Arc<AtomicU8>,
}

impl<St> Clone for PayGate<St> {
    fn clone(&self) -> Self {
        Self {
            gate: self.gate.clone(),
            bearer: self.bearer.clone(),
            oauth: self.oauth.clone(),
            denial: self.denial.clone(),
            layered: self.layered.clone(),
        }
    }
}

impl<St> std::fmt::Debug for PayGate<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayGate")
            .field("gate", &self.gate)
            .field("bearer_resolver", &self.bearer.is_some())
            .field("denial_handler", &self.denial.is_some())
            .finish()
    }
}

impl PayGate<MemoryKeyStore> {
    /// A handle over a new in-memory gate.
    ///
    /// # Panics
    /// When `config` is invalid; [`PayGate::try_new`] returns the error instead.
    pub fn new(config: PayGateConfig) -> Self {
        match Self::try_new(config) {
            Ok(pg) => pg,
            Err(e) => panic!("invalid PayGate config: {e}"),
        }
    }

    /// A handle over a new in-memory gate, or the config's error.
    pub fn try_new(config: PayGateConfig) -> Result<Self, ConfigError> {
        Ok(Self::from_gate(Arc::new(Gate::new(config)?)))
    }
}

impl<St> PayGate<St> {
    /// A handle over an existing gate (any store). Handles over one gate share its keys,
    /// meter and analytics; each one is its own stack of layers.
    pub fn from_gate(gate: Arc<Gate<St>>) -> Self {
        Self {
            gate,
            bearer: None,
            oauth: None,
            denial: None,
            layered: Arc::default(),
        }
    }

    /// The gate behind the layers: keys, analytics, alerts, the admin API.
    pub fn gate(&self) -> &Arc<Gate<St>> {
        &self.gate
    }

    /// Resolves `Authorization: Bearer` tokens to API keys (by default the token is the
    /// key). Set it before making the layers.
    pub fn with_bearer_resolver(
        mut self,
        resolve: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.bearer = Some(Arc::new(resolve));
        self
    }

    /// Makes the gated endpoint an OAuth 2.1 protected resource of `oauth` (SPEC §12): its
    /// access tokens (`Authorization: Bearer pgat_...`) authenticate calls as the account
    /// that approved them, billed, limited and reported as its key; a call without valid
    /// credentials is answered HTTP 401 with `WWW-Authenticate` pointing at the resource
    /// metadata; tokens in the query string are refused; an access token is never passed on
    /// downstream. `X-API-Key` keeps working beside it. Set it before making the layers.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use paygate_mcp::{oauth::OAuthServer, PayGate, PayGateConfig};
    /// let pg = PayGate::new(PayGateConfig::default());
    /// let oauth = Arc::new(OAuthServer::new("https://mcp.example.com", pg.gate().clone()));
    /// let pg = pg.with_oauth(oauth);
    /// # let _ = pg;
    /// ```
    pub fn with_oauth(mut self, oauth: Arc<crate::oauth::OAuthServer<St>>) -> Self {
        self.oauth = Some(oauth);
        self
    }

    /// Shapes denial responses (see [`DenialHandler`]), like `tower_governor`'s error
    /// handler. Set it before making the layers.
    ///
    /// ```
    /// use paygate_mcp::{PayGate, PayGateConfig};
    /// let pg = PayGate::new(PayGateConfig::default()).with_denial_response(|decision, mut resp| {
    ///     if decision.reason.is_some_and(|r| r.as_str() == "insufficient_credits") {
    ///         *resp.status_mut() = http::StatusCode::PAYMENT_REQUIRED;
    ///     }
    ///     resp
    /// });
    /// # let _ = pg;
    /// ```
    pub fn with_denial_response(
        mut self,
        handler: impl Fn(&Decision, Response<Bytes>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.denial = Some(Arc::new(handler));
        self
    }

    /// Authentication: a valid key (`X-API-Key` or bearer) for every method but the free
    /// ones, `tools/list` filtered by the key's ACL; charges nothing.
    pub fn auth(&self) -> AuthLayer<St> {
        AuthLayer::from_handle(self.clone())
    }

    /// Per-key rate windows (global and per tool) with `X-RateLimit-*` and `Retry-After`;
    /// charges nothing.
    pub fn rate_limit(&self) -> RateLimitLayer<St> {
        RateLimitLayer::from_handle(self.clone())
    }

    /// Daily and monthly quotas; charges nothing.
    pub fn quota(&self) -> QuotaLayer<St> {
        QuotaLayer::from_handle(self.clone())
    }

    /// Credits and spending limits: charges the price, reports `X-Credits-Remaining`,
    /// refunds calls that fail, adds `_pricing` to `tools/list`.
    pub fn billing(&self) -> BillingLayer<St> {
        BillingLayer::from_handle(self.clone())
    }

    /// Alert rules, fired to the gate's event sink with `key.expired`; denies nothing.
    pub fn alerts(&self) -> AlertLayer<St> {
        AlertLayer::from_handle(self.clone())
    }

    /// Every stage in one layer.
    pub fn layer(&self) -> PayGateLayer<St> {
        PayGateLayer::from_handle(self.clone())
    }

    /// Notes that a layer of `stage` made from this handle was put in front of a service.
    pub(crate) fn register(&self, stage: StageSet) {
        self.layered.fetch_or(stage.bits(), Ordering::AcqRel);
    }

    /// The stages of the layers made from this handle: what a route's first call is
    /// decided for, before the route's own stages are known.
    pub(crate) fn layered(&self) -> StageSet {
        StageSet::from_bits(self.layered.load(Ordering::Acquire))
    }
}
