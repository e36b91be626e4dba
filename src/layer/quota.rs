//! [`QuotaLayer`].

use super::{stage_layer, Stages};

stage_layer!(
    /// Makes the gate's decision (unless a layer outside already did), which enforces the daily and monthly quotas.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use paygate_mcp::{Gate, PayGateConfig, QuotaLayer};
    /// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    /// let layer = QuotaLayer::new(gate);
    /// # let _ = layer;
    /// ```
    QuotaLayer,
    Stages {
        quota: true,
        ..Stages::default()
    }
);
