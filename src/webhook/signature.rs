//! Signing and verification: the `X-PayGate-Signature` header, an HMAC-SHA256 over
//! `"<unix seconds>.<body>"`, checked strictly and in constant time. Available without the
//! `webhook` feature, so receivers can verify.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying a webhook POST's signature.
pub const SIGNATURE_HEADER: &str = "X-PayGate-Signature";

/// Length of the hex HMAC-SHA256 in a signature.
const SIGNATURE_HEX_LEN: usize = 64;

fn mac_for(secret: &str, timestamp: &str, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// The `X-PayGate-Signature` value for `body` sent at `unix_secs`:
/// `t=<unix_secs>,v1=<lowercase hex HMAC-SHA256(secret, "<unix_secs>.<body>")>`.
///
/// ```
/// use paygate_mcp::webhook::signature_header;
/// let h = signature_header("s3cret", 1_700_000_000, b"{}");
/// assert!(h.starts_with("t=1700000000,v1="));
/// assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
/// ```
pub fn signature_header(secret: &str, unix_secs: i64, body: &[u8]) -> String {
    let t = unix_secs.to_string();
    let hex = mac_for(secret, &t, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={t},v1={hex}")
}

/// Checks an `X-PayGate-Signature` header against the raw request body.
///
/// True only when the header is exactly `t=<digits>,v1=<64 lowercase hex digits>`, the
/// timestamp is within `tolerance_secs` of `now_unix` (either side), the secret is not empty,
/// and the HMAC matches. The HMAC is compared in constant time.
///
/// ```
/// use paygate_mcp::verify_signature;
/// use paygate_mcp::webhook::signature_header;
///
/// let body = br#"{"events":[],"adminEvents":[]}"#;
/// let header = signature_header("s3cret", 1_700_000_000, body);
/// assert!(verify_signature("s3cret", &header, body, 1_700_000_010, 300));
/// assert!(!verify_signature("wrong", &header, body, 1_700_000_010, 300));
/// assert!(!verify_signature("s3cret", &header, b"{}", 1_700_000_010, 300));
/// assert!(!verify_signature("s3cret", &header, body, 1_700_001_000, 300)); // too old
/// ```
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> bool {
    if secret.is_empty() || tolerance_secs < 0 {
        return false;
    }
    let Some((t_part, v_part)) = header.split_once(',') else {
        return false;
    };
    let (Some(t), Some(v1)) = (t_part.strip_prefix("t="), v_part.strip_prefix("v1=")) else {
        return false;
    };
    if t.is_empty() || t.len() > 18 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    if v1.len() != SIGNATURE_HEX_LEN || !v1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return false;
    }
    let Ok(timestamp) = t.parse::<i64>() else {
        return false;
    };
    if timestamp.abs_diff(now_unix) > tolerance_secs.unsigned_abs() {
        return false;
    }
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    mac_for(secret, t, body).is_some_and(|mac| mac.verify_slice(&expected).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn signatures_round_trip() {
        let body = br#"{"events":[],"adminEvents":[]}"#;
        let h = signature_header("k", NOW, body);
        assert!(verify_signature("k", &h, body, NOW, 0));
        assert!(verify_signature("k", &h, body, NOW + 300, 300));
        assert!(verify_signature("k", &h, body, NOW - 300, 300));
        assert!(!verify_signature("k", &h, body, NOW + 301, 300));
        assert!(!verify_signature("k", &h, body, NOW - 301, 300));
        assert!(!verify_signature("K", &h, body, NOW, 300));
        assert!(!verify_signature("k", &h, b"{}", NOW, 300));
        assert!(!verify_signature("k", &h, body, NOW, -1));
    }

    #[test]
    fn a_known_vector() {
        // HMAC-SHA256(key "secret", "1700000000.{}"), computed with another implementation.
        assert_eq!(
            signature_header("secret", NOW, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn the_header_is_parsed_strictly() {
        let body = b"payload";
        let good = signature_header("k", NOW, body);
        let v1 = &good["t=1700000000,v1=".len()..];
        let upper = v1.to_uppercase();
        let bad = [
            String::new(),
            "t=1700000000".to_string(),
            format!("v1={v1},t=1700000000"),
            format!("t=1700000000,v1={v1},"),
            format!("t=1700000000,v1={v1},v1={v1}"),
            format!(" t=1700000000,v1={v1}"),
            format!("t=1700000000, v1={v1}"),
            format!("t= 1700000000,v1={v1}"),
            format!("t=+1700000000,v1={v1}"),
            format!("t=-1700000000,v1={v1}"),
            format!("t=,v1={v1}"),
            format!("t=1700000000,v1={upper}"),
            format!("t=1700000000,v1={}", &v1[..63]),
            format!("t=1700000000,v1={v1}0"),
            format!("t=1700000000,v0={v1}"),
            format!("t=99999999999999999999999,v1={v1}"),
            format!("t=1700000000,v1={}", "g".repeat(64)),
            format!("t=1700000000,v1={}é", &v1[..62]),
        ];
        for header in &bad {
            assert!(!verify_signature("k", header, body, NOW, 300), "{header:?}");
        }
        assert!(verify_signature("k", &good, body, NOW, 300));
    }

    #[test]
    fn an_empty_secret_never_verifies() {
        let h = signature_header("", NOW, b"x");
        assert!(!verify_signature("", &h, b"x", NOW, 300));
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let h = signature_header("k", 0, b"x");
        assert!(!verify_signature("k", &h, b"x", i64::MAX, i64::MAX - 1));
        assert!(verify_signature("k", &h, b"x", i64::MAX, i64::MAX));
        assert!(!verify_signature("k", &h, b"x", i64::MIN, 300));
    }
}
