//! [`RateLimitLayer`].

use super::{stage_layer, Stages};

stage_layer!(
    /// Makes the gate's decision (unless a layer outside already did) and reports the rate window in `X-RateLimit-*` headers and `Retry-After`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use paygate_mcp::{Gate, PayGateConfig, RateLimitLayer};
    /// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    /// let layer = RateLimitLayer::new(gate);
    /// # let _ = layer;
    /// ```
    RateLimitLayer,
    Stages {
        rate_limit: true,
        ..Stages::default()
    }
);
