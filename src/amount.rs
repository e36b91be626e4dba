//! Credit amounts: the bound every figure stays under, and reading whole amounts from JSON.
//!
//! A leaf of the core, shared by the config, keys, quotas, alerts and stores.

/// The largest credit amount or limit accepted anywhere (2^53 − 1), so every figure stays
/// exact in JSON consumers that use doubles and sums cannot overflow `u64`.
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;

/// Deserializers for whole amounts: fractional input is floored, negative input refused.
pub(crate) mod whole {
    use serde::{Deserialize, Deserializer};

    use super::MAX_AMOUNT;

    /// Converts a JSON number to a whole amount, or says why it cannot be one.
    pub(crate) fn from_number(n: &serde_json::Number) -> Result<u64, String> {
        if let Some(u) = n.as_u64() {
            return if u <= MAX_AMOUNT {
                Ok(u)
            } else {
                Err(format!("{u} is larger than {MAX_AMOUNT}"))
            };
        }
        if n.as_i64().is_some() {
            return Err(format!("{n} is negative; amounts must be 0 or more"));
        }
        match n.as_f64() {
            Some(f) if f.is_finite() && f < 0.0 && f > -1.0 => Ok(0),
            Some(f) if f.is_finite() && f < 0.0 => {
                Err(format!("{n} is negative; amounts must be 0 or more"))
            }
            Some(f) if f.is_finite() && f.floor() <= MAX_AMOUNT as f64 => Ok(f.floor() as u64),
            _ => Err(format!("{n} is larger than {MAX_AMOUNT}")),
        }
    }

    pub(crate) fn de<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        from_number(&n).map_err(serde::de::Error::custom)
    }

    pub(crate) fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            None => Ok(None),
            Some(n) => from_number(&n).map(Some).map_err(serde::de::Error::custom),
        }
    }
}
