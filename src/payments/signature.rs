//! Stripe's webhook signature: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`,
//! each `v1` an HMAC-SHA256 of `"<t>.<raw body>"` keyed with the endpoint's signing secret.
//! Several `v1` values appear while a secret is being rolled; one matching is enough.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far the signed time may be from now, in seconds (Stripe's own default).
pub const TOLERANCE_SECS: i64 = 300;

/// Longest `Stripe-Signature` header read.
const MAX_HEADER: usize = 4096;

/// Why a webhook's signature does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("no Stripe-Signature header")]
    Missing,
    /// The header is not `t=...,v1=...`.
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    /// The signed time is more than five minutes from now.
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    /// No `v1` signature matches the body.
    #[error("no signature matches the payload")]
    Mismatch,
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `"<t>.<body>"`, `t` as the header wrote it (HMAC takes keys of any
/// length, so this is always `Some`).
fn digest(secret: &str, t: &str, body: &[u8]) -> Option<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac.finalize().into_bytes().into())
}

/// The header Stripe would send for `body` signed at `t` with `secret` (for tests and tools
/// that replay events).
///
/// ```
/// use paygate_mcp::payments::signature::{sign, verify};
/// let body = br#"{"id":"evt_1"}"#;
/// let header = sign(body, "whsec_test", 1_700_000_000);
/// assert!(header.starts_with("t=1700000000,v1="));
/// assert_eq!(verify(Some(&header), body, "whsec_test", 1_700_000_100), Ok(()));
/// ```
pub fn sign(body: &[u8], secret: &str, t: i64) -> String {
    let digest = digest(secret, &t.to_string(), body).unwrap_or_default();
    format!("t={t},v1={}", hex::encode(digest))
}

/// Checks `header` (the `Stripe-Signature` value) against the raw `body` at `now_secs`.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > MAX_HEADER {
        return Err(SignatureError::Malformed);
    }
    let mut t = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (name, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match name {
            "t" => {
                // Digits only: the signed text is the header's own.
                let digits = !value.is_empty()
                    && value.len() <= 12
                    && value.bytes().all(|b| b.is_ascii_digit());
                let at: i64 = match value.parse() {
                    Ok(at) if digits => at,
                    _ => return Err(SignatureError::Malformed),
                };
                if t.replace((at, value)).is_some() {
                    return Err(SignatureError::Malformed);
                }
            }
            "v1" => {
                let mut sig = [0u8; 32];
                if hex::decode_to_slice(value, &mut sig).is_ok() {
                    signatures.push(sig);
                }
            }
            // Other schemes (v0 in test mode) are not ours to check.
            _ => {}
        }
    }
    let (t, t_text) = t.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Mismatch);
    }
    if now_secs.abs_diff(t) > TOLERANCE_SECS as u64 {
        return Err(SignatureError::Stale);
    }
    let expected = digest(secret, t_text, body).ok_or(SignatureError::Mismatch)?;
    let matched = signatures.iter().fold(subtle::Choice::from(0), |any, sig| {
        any | sig.ct_eq(&expected[..])
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_0123456789";
    const T: i64 = 1_773_568_800;

    #[test]
    fn every_malformed_or_wrong_signature_is_refused() {
        let body = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;
        let good = sign(body, SECRET, T);
        assert_eq!(verify(Some(&good), body, SECRET, T), Ok(()));
        // A rolled secret: the second v1 matches.
        let other = sign(body, "whsec_old", T);
        let both = format!("{other},{}", good.split_once(',').unwrap().1);
        assert_eq!(verify(Some(&both), body, SECRET, T), Ok(()));
        let wrong_sig = format!("t={T},v1={}", "0".repeat(64));
        for (header, err) in [
            (None, SignatureError::Missing),
            (Some("garbage"), SignatureError::Malformed),
            (Some("v1=abcd"), SignatureError::Malformed),
            (
                Some(&format!("t={T},t={T},{}", &good[13..])[..]),
                SignatureError::Malformed,
            ),
            (Some(&format!("t={T}")[..]), SignatureError::Mismatch),
            (Some(&wrong_sig[..]), SignatureError::Mismatch),
            (
                Some(&sign(body, "whsec_other", T)[..]),
                SignatureError::Mismatch,
            ),
        ] {
            assert_eq!(verify(header, body, SECRET, T), Err(err), "{header:?}");
        }
        // The body changed by one byte.
        assert_eq!(
            verify(
                Some(&good),
                br#"{"id":"evt_2","type":"checkout.session.completed"}"#,
                SECRET,
                T
            ),
            Err(SignatureError::Mismatch)
        );
        // Outside five minutes either way.
        assert_eq!(
            verify(Some(&good), body, SECRET, T + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(Some(&good), body, SECRET, T - 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(verify(Some(&good), body, SECRET, T + 300), Ok(()));
    }
}
