//! [`BillingLayer`].

use super::{stage_layer, Stages};

stage_layer!(
    /// Makes the gate's decision (unless a layer outside already did), reports `X-Credits-Remaining`, and refunds calls that fail downstream when refund-on-failure is on.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use paygate_mcp::{Gate, PayGateConfig, BillingLayer};
    /// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    /// let layer = BillingLayer::new(gate);
    /// # let _ = layer;
    /// ```
    BillingLayer,
    Stages {
        billing: true,
        ..Stages::default()
    }
);
