//! The `tools/list` answer as a key sees it: only the tools its ACL allows, each with its
//! price when billing is present.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::gate::Gate;
use crate::key::KeyRecord;
use crate::store::KeyStore;

/// Rewrites the JSON-RPC response to the request.
pub(crate) type Transform = Box<dyn Fn(Value) -> Value + Send>;

/// Keeps the tools `acl` permits (all without a known key) and, with `priced`, adds
/// `_pricing` to each.
pub(crate) fn tools_list_rewrite<St: KeyStore>(
    gate: &Arc<Gate<St>>,
    acl: Option<KeyRecord>,
    priced: bool,
) -> Transform {
    let pricing = gate.pricing().clone();
    Box::new(move |mut message: Value| {
        let Some(tools) = message
            .get_mut("result")
            .and_then(|r| r.get_mut("tools"))
            .and_then(Value::as_array_mut)
        else {
            return message;
        };
        let name = |t: &Value| {
            t.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        tools.retain(|t| acl.as_ref().is_none_or(|r| r.permits_tool(&name(t))));
        if priced {
            for tool in tools.iter_mut() {
                let tag = json!(pricing.tag(&name(tool)));
                if let Some(obj) = tool.as_object_mut() {
                    obj.insert("_pricing".into(), tag);
                }
            }
        }
        message
    })
}
