//! [`AlertLayer`].

use super::{stage_layer, Stages};

stage_layer!(
    /// Hands the alerts a call fired, and a key's first expiry, to the gate's event sink.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use paygate_mcp::{Gate, PayGateConfig, AlertLayer};
    /// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    /// let layer = AlertLayer::new(gate);
    /// # let _ = layer;
    /// ```
    AlertLayer,
    Stages {
        alert: true,
        ..Stages::default()
    }
);
