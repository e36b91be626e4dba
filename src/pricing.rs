//! What a tool call costs: flat per-call prices and per-KB input surcharges.

use std::collections::BTreeMap;
use std::io;

use serde::Serialize;

use crate::amount::MAX_AMOUNT;
use crate::config::{PayGateConfig, ToolPricing};

impl ToolPricing {
    /// Price of one call whose arguments serialize to `input_bytes` of compact JSON:
    /// base + ceil(KB × creditsPerKbInput), counting at least 1 KB when a surcharge applies.
    pub fn price_for_input(&self, input_bytes: usize) -> u64 {
        let base = self.credits_per_call;
        match self.credits_per_kb_input {
            Some(per_kb) if per_kb > 0 => {
                let bytes = (input_bytes as u128).max(1024);
                let surcharge = (bytes * u128::from(per_kb)).div_ceil(1024);
                let total = u128::from(base) + surcharge;
                u64::try_from(total).unwrap_or(u64::MAX).min(MAX_AMOUNT)
            }
            _ => base,
        }
    }

    /// `"dynamic"` when a per-KB surcharge applies, else `"flat"`.
    pub fn model(&self) -> PricingModel {
        match self.credits_per_kb_input {
            Some(k) if k > 0 => PricingModel::Dynamic,
            _ => PricingModel::Flat,
        }
    }
}

/// Whether a tool's price depends on its input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PricingModel {
    /// Same price for every call.
    Flat,
    /// Base price plus a per-KB input surcharge.
    Dynamic,
}

/// The price list of a gateway: per-tool pricing over a default.
///
/// ```
/// use paygate_mcp::{PayGateConfig, Pricing};
/// let pricing = Pricing::from_config(&PayGateConfig::default().with_default_price(2).with_tool_price("search", 5));
/// assert_eq!(pricing.price("search", 10), 5);
/// assert_eq!(pricing.price("other", 10), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    default_credits_per_call: u64,
    tools: BTreeMap<String, ToolPricing>,
}

/// The `_pricing` object attached to each tool in `tools/list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolPriceTag {
    /// Base credits per call.
    pub credits_per_call: u64,
    /// Flat or dynamic.
    pub pricing_model: PricingModel,
    /// The tool's own rate limit, if any.
    pub rate_limit_per_min: Option<u64>,
    /// Per-KB surcharge, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits_per_kb_input: Option<u64>,
}

impl Pricing {
    /// The price list a config describes.
    pub fn from_config(cfg: &PayGateConfig) -> Self {
        Self {
            default_credits_per_call: cfg.default_credits_per_call,
            tools: cfg.tool_pricing.clone(),
        }
    }

    /// Price of a call to `tool` with `input_bytes` of compact-JSON arguments.
    pub fn price(&self, tool: &str, input_bytes: usize) -> u64 {
        match self.tools.get(tool) {
            Some(p) => p.price_for_input(input_bytes),
            None => self.default_credits_per_call,
        }
    }

    /// The tool's own per-key rate limit (calls per rolling minute); 0 = none.
    pub fn tool_rate_limit(&self, tool: &str) -> u64 {
        self.tools
            .get(tool)
            .and_then(|p| p.rate_limit_per_min)
            .unwrap_or(0)
    }

    /// The `_pricing` tag for `tool`.
    pub fn tag(&self, tool: &str) -> ToolPriceTag {
        match self.tools.get(tool) {
            Some(p) => ToolPriceTag {
                credits_per_call: p.credits_per_call,
                pricing_model: p.model(),
                rate_limit_per_min: p.rate_limit_per_min.filter(|r| *r > 0),
                credits_per_kb_input: p.credits_per_kb_input.filter(|k| *k > 0),
            },
            None => ToolPriceTag {
                credits_per_call: self.default_credits_per_call,
                pricing_model: PricingModel::Flat,
                rate_limit_per_min: None,
                credits_per_kb_input: None,
            },
        }
    }

    /// The default price per call.
    pub fn default_price(&self) -> u64 {
        self.default_credits_per_call
    }

    /// Every tool with its own pricing.
    pub fn tools(&self) -> &BTreeMap<String, ToolPricing> {
        &self.tools
    }
}

/// Length in bytes of `value` serialized as compact JSON, without building the string.
///
/// ```
/// let v = serde_json::json!({"q": "héllo", "n": [1, 2]});
/// assert_eq!(paygate_mcp::compact_json_len(&v), serde_json::to_string(&v).unwrap().len());
/// ```
pub fn compact_json_len(value: &serde_json::Value) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(base: u64, per_kb: u64) -> ToolPricing {
        ToolPricing {
            credits_per_call: base,
            rate_limit_per_min: None,
            credits_per_kb_input: Some(per_kb),
        }
    }

    #[test]
    fn spec_example_base_2_five_per_kb_three_kb() {
        assert_eq!(dynamic(2, 5).price_for_input(3 * 1024), 17);
    }

    #[test]
    fn surcharge_counts_at_least_one_kb_and_rounds_up() {
        assert_eq!(dynamic(2, 5).price_for_input(0), 7);
        assert_eq!(dynamic(2, 5).price_for_input(10), 7);
        assert_eq!(dynamic(0, 1).price_for_input(1025), 2);
        assert_eq!(dynamic(0, 3).price_for_input(1536), 5); // 1.5 KB × 3 = 4.5 → 5
    }

    #[test]
    fn flat_ignores_input_and_huge_inputs_saturate() {
        let flat = ToolPricing {
            credits_per_call: 4,
            ..Default::default()
        };
        assert_eq!(flat.price_for_input(usize::MAX), 4);
        assert_eq!(flat.model(), PricingModel::Flat);
        assert_eq!(
            dynamic(1, MAX_AMOUNT).price_for_input(usize::MAX),
            MAX_AMOUNT
        );
    }

    #[test]
    fn tags_describe_models() {
        let cfg = PayGateConfig::default().with_tool_pricing("big", dynamic(1, 2));
        let p = Pricing::from_config(&cfg);
        assert_eq!(p.tag("big").pricing_model, PricingModel::Dynamic);
        assert_eq!(p.tag("other").credits_per_call, 1);
        let json = serde_json::to_value(p.tag("other")).unwrap();
        assert_eq!(json["pricingModel"], "flat");
        assert!(json["rateLimitPerMin"].is_null());
    }
}
