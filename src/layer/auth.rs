//! [`AuthLayer`].

use super::{stage_layer, Stages};

stage_layer!(
    /// Authentication and protocol checks: body limit, one parse, JSON-RPC validation, the key (`X-API-Key` or bearer) and client IP, free methods, `tools/list` ACL filtering and pricing, and a valid key for every other method.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use paygate_mcp::{Gate, PayGateConfig, AuthLayer};
    /// let gate = Arc::new(Gate::new(PayGateConfig::default()).unwrap());
    /// let layer = AuthLayer::new(gate);
    /// # let _ = layer;
    /// ```
    AuthLayer,
    Stages {
        auth: true,
        ..Stages::default()
    }
);
